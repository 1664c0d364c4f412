"""PBR split-sum shading: BRDF LUT against numerical integration, white-furnace energy checks, pre-filtering and
irradiance against closed forms, environment rotation, procedural maps and the .hdr reader."""

import math

import pytest
import torch
import torch.nn.functional as F

from renderers import envmaps, pbr


def _numeric_ab(nv: float, r: float, n: int = 600) -> tuple[float, float]:
    """A and B by midpoint quadrature over the hemisphere of l (no importance sampling)."""
    a = torch.tensor(r * r, dtype=torch.float64)
    th = (torch.arange(n, dtype=torch.float64) + 0.5) / n * math.pi / 2
    ph = (torch.arange(2 * n, dtype=torch.float64) + 0.5) / (2 * n) * 2 * math.pi
    th, ph = torch.meshgrid(th, ph, indexing="ij")
    light = torch.stack([torch.sin(th) * torch.cos(ph), torch.sin(th) * torch.sin(ph), torch.cos(th)], -1)
    dw = torch.sin(th) * (math.pi / 2 / n) * (2 * math.pi / (2 * n))
    v = torch.tensor([math.sqrt(1 - nv * nv), 0, nv], dtype=torch.float64)
    h = F.normalize(light + v, dim=-1)
    nl = light[..., 2]
    g = 1 / (1 + pbr.smith_lambda(torch.tensor(nv, dtype=torch.float64), a) + pbr.smith_lambda(nl, a))
    fs = pbr.ggx_d(h[..., 2], a) * g / (4 * nl * nv)
    fc = (1 - (h * v).sum(-1)) ** 5
    return (fs * (1 - fc) * nl * dw).sum().item(), (fs * fc * nl * dw).sum().item()


@pytest.mark.parametrize("nv,r", [(0.9, 0.5), (0.5, 0.3), (0.2, 0.8), (0.7, 1.0)])
def test_brdf_integrals_match_numerical_integration(nv, r):
    A, B = pbr.brdf_integrals(torch.tensor(nv), torch.tensor(r), 4096)
    A_ref, B_ref = _numeric_ab(nv, r)
    assert abs(A.item() - A_ref) < 2e-3 and abs(B.item() - B_ref) < 1e-3


def test_lut_layout_and_energy_bound():
    lut = pbr.brdf_lut()
    assert lut.shape == (32, 32, 2)
    assert (lut >= 0).all() and (lut.sum(-1) <= 1.0 + 1e-3).all()  # a white metal reflects at most all
    # rows are roughness: rougher loses more energy to masking at normal incidence
    assert lut[2, -1].sum() > lut[-1, -1].sum()
    A, B = pbr.lookup_brdf(lut, torch.tensor([0.9]), torch.tensor([0.5]))
    A_ref, B_ref = pbr.brdf_integrals(torch.tensor(0.9), torch.tensor(0.5))
    assert abs(A.item() - A_ref.item()) < 0.02 and abs(B.item() - B_ref.item()) < 0.01


@pytest.fixture(scope="module")
def white():
    return pbr.EnvironmentLight(envmaps.procedural("white", 16))


def test_white_furnace(white):
    n = F.normalize(torch.randn(256, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    v = F.normalize(n + 0.5 * torch.randn(256, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    v = torch.where(((n * v).sum(-1, keepdim=True)) > 0.05, v, n)
    ones = torch.ones(256, 1)
    # white Lambertian dielectric-free diffuse: exactly 1
    lam = pbr.shade(torch.ones(256, 3), ones, 0 * ones, n, v, white)
    torch.testing.assert_close(lam["diffuse"], torch.ones(256, 3), atol=2e-3, rtol=0)
    # white metal: F0 = 1, so spec = A + B <= 1 (energy is conserved; masking loses some)
    metal = pbr.shade(torch.ones(256, 3), torch.rand(256, 1), ones, n, v, white)
    assert (metal["rgb"] <= 1.0 + 2e-3).all() and (metal["rgb"] > 0.3).all()
    assert metal["diffuse"].abs().max() == 0
    # a dielectric: diffuse 1 plus its specular (the split-sum model does not take the Fresnel-reflected part
    # out of the diffuse, as in nvdiffrec; the excess is the specular term, 4 % head-on, more at grazing angles)
    die = pbr.shade(torch.ones(256, 3), torch.rand(256, 1), 0 * ones, n, v, white)
    torch.testing.assert_close(die["rgb"], 1 + die["specular"], atol=2e-3, rtol=0)
    head_on = pbr.shade(torch.ones(1, 3), torch.full((1, 1), 0.5), torch.zeros(1, 1), n[:1], n[:1], white)
    assert abs(head_on["specular"][0, 0].item() - 0.04 * 0.9) < 0.01


def test_irradiance_matches_closed_form():
    """L(l) = max(l·y, 0) gives E(+y) = (1/π)∫ cos² dω = 2/3 and E(−y) = 0."""
    d = envmaps.directions(64)
    env = pbr.EnvironmentLight(d[..., 1:2].clamp_min(0).expand(-1, -1, 3).contiguous(), irradiance_height=16)
    e = env.irradiance_at(torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert abs(e[0, 0].item() - 2 / 3) < 0.02
    assert e[1, 0].item() < 0.02
    assert abs(e[2, 0].item() - 2 / (3 * math.pi)) < 0.01  # (1/π)∫_{x>0, y>0} (l·x)(l·y) dω = 2/(3π)


def test_prefiltered_levels_blur_and_preserve_energy():
    env = pbr.EnvironmentLight(envmaps.procedural("studio", 32))
    dw = [envmaps.texel_solid_angle(s.shape[0]) for s in env.specular]
    totals = [(s.mean(-1) * w).sum().item() for s, w in zip(env.specular, dw)]
    for t in totals[1:]:
        assert abs(t - totals[0]) / totals[0] < 0.1
    peaks = [s.max().item() for s in env.specular]
    assert peaks[0] > peaks[2] > peaks[-1]  # rougher levels are blurrier
    r = torch.tensor([0.08, 0.5, 1.0])
    torch.testing.assert_close(env.level(r), torch.tensor([0.0, 4.0, 5.0]))


def test_rotation_about_y():
    env = pbr.EnvironmentLight(envmaps.procedural("rgb", 32))
    d = F.normalize(torch.randn(64, 3, generator=torch.Generator().manual_seed(2)), dim=-1)
    a = 0.7
    torch.testing.assert_close(env.irradiance_at(pbr.rotate_y(d, a), rotation=a), env.irradiance_at(d), atol=1e-4,
                               rtol=1e-4)
    assert (env.irradiance_at(d, rotation=2.0) - env.irradiance_at(d)).abs().max() > 0.05


def test_direction_uv_mapping_matches_envmap_texels():
    h = 8
    d = envmaps.directions(h)
    uv = pbr.dir_to_uv(d.reshape(-1, 3)).reshape(h, 2 * h, 2)
    torch.testing.assert_close(uv[..., 0], ((torch.arange(2 * h) + 0.5) / (2 * h)).expand(h, -1), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(uv[..., 1], ((torch.arange(h) + 0.5) / h)[:, None].expand(-1, 2 * h), atol=1e-5,
                               rtol=0)
    assert abs(envmaps.texel_solid_angle(h).sum().item() - 4 * math.pi) < 1e-4


def test_procedural_maps_are_lit_everywhere():
    for name in envmaps.PROCEDURAL:
        env = envmaps.procedural(name, 16)
        assert env.shape == (16, 32, 3) and torch.isfinite(env).all() and env.min() > 0.01, name
    with pytest.raises(ValueError, match="procedural"):
        envmaps.load("moon")


def test_srgb_roundtrip_and_hdr_file(tmp_path):
    x = torch.linspace(0, 1, 101)
    torch.testing.assert_close(pbr.srgb_to_linear(pbr.linear_to_srgb(x)), x, atol=1e-5, rtol=0)
    img = envmaps.procedural("sky", 16).numpy()
    path = str(tmp_path / "sky.hdr")
    envmaps.write_hdr(path, img)
    back = envmaps.read_hdr(path)
    assert back.shape == img.shape
    assert abs(back - img).max() / img.max() < 0.01
    loaded = envmaps.load(path, height=8)
    assert loaded.shape == (8, 16, 3)
    (tmp_path / "bad.hdr").write_bytes(b"not an hdr")
    with pytest.raises(ValueError, match="Radiance"):
        envmaps.load(str(tmp_path / "bad.hdr"))
