"""Mesh scene: DMTet extraction, rendering invariants, gradients to every parameter group, regularisers, the
registry/CLI entry and the light-aware shapes prior."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from foundation.cameras import orbit_cameras
from renderers import dmtet
from renderers.base import DensityField
from renderers.mesh import Mesh, MeshConfig, projection
from renderers.reference import primitive_mesh


def test_dmtet_sphere_is_closed_and_differentiable():
    import trimesh

    v, t = dmtet.tet_grid(12, 0.8)
    assert t.shape == (6 * 12**3, 4) and v.shape == (13**3, 3)
    sdf = (v.norm(dim=-1) - 0.5).requires_grad_()
    pts, f = dmtet.marching_tets(v, sdf, t)
    m = trimesh.Trimesh(pts.detach().numpy(), f.numpy(), process=False)
    assert m.is_watertight and m.is_winding_consistent
    assert abs(m.volume - 4 / 3 * math.pi * 0.125) / (4 / 3 * math.pi * 0.125) < 0.1
    assert m.volume > 0  # outward winding
    pts.sum().backward()
    assert sdf.grad.abs().sum() > 0
    assert dmtet.sdf_sign_bce(sdf.detach(), dmtet.grid_edges(t)) > 0


def test_projection_puts_up_at_the_top():
    cams = orbit_cameras([0.0], 0.0, 2.5, 40.0, 32)
    P = projection(cams)[0]
    for y, top in ((0.3, True), (-0.3, False)):
        clip = P @ torch.tensor([0.0, y, 0.0, 1.0])
        ndc_y = clip[1] / clip[3]
        assert (ndc_y < 0) == top  # clip y = -1 is image row 0


@pytest.fixture(scope="module")
def cams():
    return orbit_cameras([20.0, 200.0], 20.0, 2.5, 40.0, 32)


def test_deformable_scene_renders_and_gets_gradients(cams):
    scene = MeshConfig(init_shape="torus", tet_resolution=12, envs=("white",), eval_env="white").build(
        torch.Generator().manual_seed(0))
    scene.train()
    out = scene.render(cams, torch.ones(2, 32, 32, 3))
    assert out.rgb.shape == (2, 32, 32, 3) and out.alpha.min() >= 0 and out.alpha.max() <= 1
    assert 0.05 < out.alpha.mean() < 0.6
    regs = scene.regularizers(out, 0)
    assert set(regs) == {"albedo_smooth", "roughness_prior", "metallic_prior", "normal_consistency", "laplacian",
                         "sdf"}
    assert all(torch.isfinite(v) for v in regs.values())
    w = scene.regularizer_weights
    (out.rgb.square().mean() + sum(w[k] * v for k, v in regs.items())).backward()
    for name, group in scene.param_groups().items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in group["params"]), name
    assert scene.sdf.grad.abs().max() < 1e3  # no exploding crossing gradients


def test_fixed_uv_scene_and_albedo_eval(cams):
    v, f = primitive_mesh("cube")
    uv = torch.rand(v.shape[0], 2, generator=torch.Generator().manual_seed(0))
    cfg = MeshConfig(material="uv", texture_resolution=8, eval_shading="albedo", envs=("white",), eval_env="white")
    scene = Mesh.from_arrays(cfg, v, f, uv, torch.Generator().manual_seed(0))
    with torch.no_grad():
        scene.tex_albedo.fill_(0.0)  # sigmoid -> 0.5 linear
    scene.eval()
    out = scene.render(cams, torch.zeros(2, 32, 32, 3))
    inner = out.alpha[..., 0] > 0.999
    expected = 1.055 * 0.5 ** (1 / 2.4) - 0.055
    torch.testing.assert_close(out.rgb[inner], torch.full_like(out.rgb[inner], expected), atol=1e-4, rtol=0)
    scene.train()
    out = scene.render(cams, torch.zeros(2, 32, 32, 3))
    out.rgb.mean().backward()
    assert scene.tex_albedo.grad.abs().sum() > 0 and scene.tex_rm.grad.abs().sum() > 0


def test_pbr_white_furnace_through_the_scene(cams):
    """White albedo, metallic 0, white environment: rendered sRGB ≈ 1 (diffuse) plus a small specular."""
    v, f = primitive_mesh("sphere")
    scene = Mesh.from_arrays(MeshConfig(envs=("white",), eval_env="white", init_metallic=1e-4), v, f, None,
                             torch.Generator().manual_seed(0))
    with torch.no_grad():
        scene.mlp[2].bias[:3] = 12.0  # albedo ≈ 1
    scene.eval()
    out = scene.render(cams, torch.zeros(2, 32, 32, 3))
    inner = out.alpha[..., 0] > 0.999
    assert out.rgb[inner].min() > 0.97


def test_empty_sdf_renders_background(cams):
    scene = MeshConfig(tet_resolution=6, envs=("white",)).build(torch.Generator().manual_seed(0))
    with torch.no_grad():
        scene.sdf.fill_(1.0)
    bg = torch.rand(2, 32, 32, 3)
    out = scene.render(cams, bg)
    assert torch.equal(out.rgb, bg) and out.alpha.sum() == 0


def test_registry_and_cli_parse():
    from engine.cli import build_generate_config
    from renderers import RENDERERS

    assert RENDERERS["mesh"] is MeshConfig
    cfg, _ = build_generate_config(["a blue torus", "--renderer", "mesh", "--renderer.init-from", "/tmp/run",
                                    "--renderer.tet-resolution", "24"])
    assert isinstance(cfg.renderer, MeshConfig) and cfg.renderer.init_from == "/tmp/run"
    assert cfg.renderer.tet_resolution == 24


def test_init_from_rejects_non_run_folder(tmp_path):
    with pytest.raises(ValueError, match="not a run folder"):
        MeshConfig(init_from=str(tmp_path)).build(torch.Generator().manual_seed(0))


def test_light_aware_shapes_prior_conditions_on_lighting(tmp_path):
    from guidance.priors import PriorConfig
    from guidance.priors.shapes import LightAwareShapesPrior, lighting_word

    prior = LightAwareShapesPrior(PriorConfig(resolution=16), envs=("studio", "sky"), rotations=2,
                                  shapes_subset=("cube",))
    assert prior.images.shape[0] == 2 * 2 * 6 * 60  # envs x rotations x colours x (12 azimuths x 5 elevations)
    lp = prior.log_prior(f"a red cube {lighting_word('sky', 1)}")
    assert int((lp == 0).sum()) == 60  # one colour x one lighting x the views
    # the same colour under two environments gives different exemplar images (lighting is not baked in)
    a = prior.images[prior.log_prior(f"a red cube {lighting_word('studio', 0)}") == 0]
    b = prior.images[prior.log_prior(f"a red cube {lighting_word('sky', 0)}") == 0]
    assert (a - b).abs().mean() > 0.02


class _AnalyticDensity(DensityField):
    """A soft density scene of a canonical shape: σ = 40·sigmoid(−sdf/0.02), rendered through the shapes world's
    exact coverage (alpha) and a flat colour, so the transfer is checked against a known silhouette."""

    def __init__(self, shape: str, rgb=(0.2, 0.4, 0.8)):
        self.shape, self.rgb = shape, torch.tensor(rgb)

    def query_density(self, x):
        from foundation import shapes

        return 40.0 * torch.sigmoid(-shapes.sdf(self.shape, x).float() / 0.02)

    def query_albedo(self, x):
        return self.rgb.expand(x.shape[0], 3)

    def render(self, cams, background):
        from foundation import shapes
        from renderers.base import RenderOutput

        a = shapes.render_shape(self.shape, cams).coverage[..., None]
        return RenderOutput(rgb=a * self.rgb + (1 - a) * background, alpha=a)


@pytest.mark.parametrize("shape", ["torus", "cone"])
def test_init_from_density_matches_the_shape(shape):
    """The init-from transfer (iso-level matched to the source's silhouettes, sub-cell SDF, albedo from renders):
    held-out silhouettes of the initial mesh match the shape (IoU >= 0.9) and its colour is the source's."""
    from engine.init_from import init_from_scene
    from foundation import shapes
    from foundation.cameras import orbit_cameras

    scene = MeshConfig(tet_resolution=16, envs=("white",), eval_env="white", eval_shading="albedo").build(
        torch.Generator().manual_seed(0))
    init_from_scene(scene, _AnalyticDensity(shape), albedo_steps=60)
    cams = orbit_cameras([25.0, 115.0, -155.0], [15.0, -10.0, 50.0], 2.5, 40.0, 48)
    scene.eval()
    with torch.no_grad():
        out = scene.render(cams, torch.ones(3, 48, 48, 3))
    ref = shapes.render_shape(shape, cams)
    assert shapes.mask_iou(out.alpha[..., 0], ref.coverage) >= 0.9
    inner = out.alpha[..., 0] > 0.999
    torch.testing.assert_close(out.rgb[inner].mean(0), torch.tensor([0.2, 0.4, 0.8]), atol=0.03, rtol=0)


def test_perturb_normal_is_the_tbn_product_in_any_frame():
    from renderers.mesh import perturb_normal

    g = torch.Generator().manual_seed(0)
    n = torch.nn.functional.normalize(torch.randn(50, 3, generator=g), dim=-1)
    d = 0.4 * torch.randn(50, 3, generator=g)
    out = perturb_normal(n, d)
    for seed in (1, 2):  # two unrelated tangent frames give the same shading normal
        a = torch.randn(50, 3, generator=torch.Generator().manual_seed(seed))
        T = torch.nn.functional.normalize(a - (a * n).sum(-1, keepdim=True) * n, dim=-1)
        B = torch.linalg.cross(n, T, dim=-1)
        tbn = torch.stack([T, B, n], -1)  # columns T, B, N
        ts = torch.stack([(d * T).sum(-1), (d * B).sum(-1), torch.ones(50)], -1)
        ref = torch.nn.functional.normalize(torch.einsum("pij,pj->pi", tbn, ts), dim=-1)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_normal_perturbation_shades_exports_and_gets_gradients(cams):
    kw = dict(init_shape="sphere", tet_resolution=10, envs=("studio",), eval_env="studio")
    plain = MeshConfig(**kw).build(torch.Generator().manual_seed(0))
    bumpy = MeshConfig(normal_perturbation=True, **kw).build(torch.Generator().manual_seed(0))
    for s in (plain, bumpy):
        s.eval()
    with torch.no_grad():
        a, b = plain.render(cams, torch.ones(2, 32, 32, 3)), bumpy.render(cams, torch.ones(2, 32, 32, 3))
    torch.testing.assert_close(a.rgb, b.rgb)  # the perturbation starts flat
    with torch.no_grad():
        bumpy.mlp[2].bias[5:] = torch.tensor([2.0, 0.0, 0.0])  # tilt every normal towards +X
    bumpy.train()
    bumpy.set_lighting("studio", 0.0)
    out = bumpy.render(cams, torch.ones(2, 32, 32, 3))
    regs = bumpy.regularizers(out, 0)
    assert regs["normal_perturbation"] > 0.01 and "normal_perturbation" in bumpy.regularizer_weights
    (out.rgb.mean() + regs["normal_perturbation"]).backward()
    assert bumpy.mlp[2].weight.grad[5:].abs().sum() > 0
    v, f = (t.detach() for t in bumpy.geometry())
    q = bumpy.query_material(v[:20])
    geo = bumpy._nearest_normal(v[:20])
    torch.testing.assert_close(q["normal"].norm(dim=-1), torch.ones(20), atol=1e-5, rtol=0)
    assert ((q["normal"] * geo).sum(-1) < 0.999).all() and ((q["normal"] * geo).sum(-1) > 0.5).all()
    assert "normal" not in plain.query_material(v[:20])
    with pytest.raises(ValueError, match="field"):
        MeshConfig(normal_perturbation=True, material="uv")


def test_mesh_scene_exports_its_surface_and_the_perturbed_normal_map():
    from engine.export import ExportOptions, bake_scene

    kw = dict(init_shape="sphere", tet_resolution=10, envs=("white",))
    maps = {}
    for name, tilt in (("flat", None), ("tilted", 2.0)):
        scene = MeshConfig(normal_perturbation=True, **kw).build(torch.Generator().manual_seed(0))
        if tilt is not None:
            with torch.no_grad():
                scene.mlp[2].bias[5] = tilt
        m = scene.export_mesh()
        assert m["faces"].shape[0] == scene.geometry()[1].shape[0] and m["normals"].shape == m["vertices"].shape
        baked = bake_scene(scene, ExportOptions(texture_size=64, padding=2))
        maps[name] = baked.textures.normal.reshape(-1, 3).astype(float)
    flat_dev, tilted_dev = (float(abs(maps[k] - [128, 128, 255]).mean()) for k in ("flat", "tilted"))
    assert flat_dev < 5 and tilted_dev > 12, (flat_dev, tilted_dev)  # measured 2.3 and 20.5


def _red_cube_mesh() -> Mesh:
    """The world's cube as a mesh scene whose material field gives the world's red albedo everywhere (eval mode)."""
    from foundation import shapes
    from renderers import pbr

    v, f = primitive_mesh("cube")
    scene = Mesh.from_arrays(MeshConfig(eval_shading="albedo"), v, f, None, torch.Generator().manual_seed(0))
    lin = pbr.srgb_to_linear(torch.tensor(shapes.COLOURS["red"]) / 255.0)
    with torch.no_grad():
        scene.mlp[2].weight.zero_()
        scene.mlp[2].bias[:3] = torch.logit(lin)
    return scene.eval()


def test_shapes_evaluation_lights_a_mesh_like_its_ground_truth():
    """A cube mesh with the world's red albedo scores high against the shaded ground truth only when lit like it
    (engine.outputs.ground_truth_light); the scene's own eval shading is restored afterwards."""
    from engine import outputs
    from foundation.cameras import CameraConfig

    scene = _red_cube_mesh()
    lit = outputs.evaluate_shapes(scene, "a red cube", CameraConfig(), 4, 64, "cpu")
    assert scene.cfg.eval_shading == "albedo"
    scene.relightable = False  # as a field scene would be: rendered as it is (unlit albedo)
    flat = outputs.evaluate_shapes(scene, "a red cube", CameraConfig(), 4, 64, "cpu")
    assert lit["psnr"] > 30 and lit["iou"] > 0.97, lit
    assert lit["psnr"] > flat["psnr"] + 5, (lit, flat)


def test_shapes_evaluation_names_the_closest_world_object():
    """eval.json says which of the world's objects a result is closest to (issue #12's "right shape and colour"):
    the red cube mesh is closest to the cube (by silhouette IoU) and to red (by PSNR on the prompted shape), and a
    prompt naming another shape and colour does not change what it is closest to."""
    from engine import outputs
    from foundation import shapes
    from foundation.cameras import CameraConfig

    scene = _red_cube_mesh()
    ev = outputs.evaluate_shapes(scene, "a red cube", CameraConfig(), 4, 64, "cpu")
    assert ev["closest_shape"] == "cube" and ev["closest_colour"] == "red", ev
    ious = ev["iou_by_shape"]
    assert set(ious) == set(shapes.SHAPES) and ious["cube"] == max(ious.values()), ious
    other = outputs.evaluate_shapes(scene, "a green cube", CameraConfig(), 4, 64, "cpu")
    assert other["colour"] == "green" and other["closest_colour"] == "red" and other["psnr"] < ev["psnr"] - 5, other
    # the opaque mesh covers the true silhouette: its mean opacity there is ~1 (edge pixels are partly covered)
    assert 0.9 < ev["mean_alpha_in_mask"] <= 1.0, ev


def test_training_under_the_key_light_renders_the_worlds_shading_and_moves_the_geometry():
    """``light="shapes"``: training renders are the albedo under the shapes world's key light (what the learned shapes
    prior's exemplars show: the true red cube matches foundation.shapes' render), and the shading follows the
    mesh's own normals, so a loss on the image reaches the vertices through the normals too."""
    from foundation import shapes
    from renderers import pbr

    cams = orbit_cameras([30.0, 200.0], 25.0, 2.5, 40.0, 48)
    v, f = primitive_mesh("cube")
    lin = pbr.srgb_to_linear(torch.tensor(shapes.COLOURS["red"]) / 255.0)
    # crease 30 degrees: a cube edge's smooth vertex normal is exactly 45 degrees from both faces, so at the default
    # crease angle rounding decides which corners shade smooth
    scene = Mesh.from_arrays(MeshConfig(light="shapes", antialias=False, crease_angle=30.0), v, f, None,
                             torch.Generator().manual_seed(0))
    with torch.no_grad():
        scene.mlp[2].weight.zero_()
        scene.mlp[2].bias[:3] = torch.logit(lin)
    scene.train()
    out = scene.render(cams, torch.ones(2, 48, 48, 3))
    truth = shapes.render_shape("cube", cams).colourise("red")
    diff = (out.rgb - truth).abs().amax(-1)
    inside = (out.alpha[..., 0] > 0.5) & (truth.sum(-1) < 2.9)
    # away from silhouettes and the cube's edges (one pixel either side), where coverage and face differ by rounding
    smooth = torch.nn.functional.max_pool2d(truth.permute(0, 3, 1, 2), 3, 1, 1) - \
        -torch.nn.functional.max_pool2d(-truth.permute(0, 3, 1, 2), 3, 1, 1)
    inner = inside & (smooth.amax(1) < 1e-3)
    assert inner.sum() > 500
    assert diff[inner].max() < 2e-3, diff[inner].max()
    with pytest.raises(ValueError, match="mesh.light"):
        MeshConfig(light="sun")
    # geometry gradient through the shading alone (no antialiasing, so no silhouette term)
    verts = v.float().clone().requires_grad_(True)
    scene.vertices = verts
    scene.render(cams, torch.ones(2, 48, 48, 3)).rgb.mean().backward()
    assert verts.grad is not None and verts.grad.abs().sum() > 0


class _HollowCube(_AnalyticDensity):
    """A NeRF-like hollow cube: σ 40 /m in an 8 cm shell under the faces, ~0 inside (SDS fields are often hollow)."""

    def query_density(self, x):
        from foundation import shapes

        d = shapes.sdf("cube", x).float()
        return 40.0 * torch.sigmoid(-d / 0.01) * torch.sigmoid((d + 0.08) / 0.01)


def test_init_from_a_hollow_shell_gives_one_solid():
    """The transfer cuts the field as the exporter does (pockets filled, the optical depth seen from outside): a
    hollow shell's mesh is one closed surface, not an outer and an inner one."""
    from engine.export.fidelity import largest_piece_share
    from engine.init_from import init_from_scene

    scene = MeshConfig(tet_resolution=24, envs=("white",), eval_env="white", eval_shading="albedo").build(
        torch.Generator().manual_seed(0))
    init_from_scene(scene, _HollowCube("cube"), albedo_steps=5)
    with torch.no_grad():
        v, f = (t.detach().cpu().numpy() for t in scene.geometry())
    share, pieces = largest_piece_share(v.astype(np.float64), f)
    assert pieces == 1 and share == 1.0
    assert np.abs(v).max() < 0.48 and np.abs(v).max(0).min() > 0.34  # the outer faces (0.4), no inner ones


def test_unlit_render_hands_over_the_albedo_not_the_key_light():
    """A scene trained under the shapes world's key light gives the mesh transfer its albedo: the NeRF's albedo map,
    the Gaussians' colour with the light off; without a light model its render as it is."""
    from engine.init_from import unlit_render
    from foundation.cameras import orbit_cameras
    from renderers.gaussians import GaussiansConfig
    from renderers.nerf import NeRFConfig

    cams = orbit_cameras([30.0], [20.0], 2.5, 40.0, 24)
    bg = torch.ones(1, 24, 24, 3)
    gen = torch.Generator().manual_seed(0)
    nerf = NeRFConfig(light="shapes", density_activation="exp", init_albedo="random").build(gen).eval()
    rgb, alpha = unlit_render(nerf, cams, bg)
    out = nerf.render(cams, bg)
    torch.testing.assert_close(rgb, out.albedo + (1 - out.alpha) * bg)
    opaque = alpha[..., 0] > 0.9
    assert opaque.any() and (rgb - out.rgb)[opaque].abs().max() > 0.05  # the shading is not in it
    splats = GaussiansConfig(light="shapes").build(torch.Generator().manual_seed(0)).eval()
    own = splats.cfg
    rgb, _ = unlit_render(splats, cams, bg)
    assert splats.cfg is own  # the scene's own config is back
    lit = splats.render(cams, bg).rgb
    splats.cfg = dataclasses.replace(own, light="none")
    torch.testing.assert_close(rgb, splats.render(cams, bg).rgb)
    assert (rgb - lit).abs().max() > 0.05
