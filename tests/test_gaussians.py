"""3D Gaussian splatting: parity with gsplat's torch reference, a brute-force compositor, scene invariants,
densification bookkeeping, checkpoints and the INRIA PLY layout. All CPU and small, except the CUDA parity test."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from foundation.cameras import orbit_cameras
from renderers.gaussians import Gaussians, GaussiansConfig, resolve_splat_backend
from renderers.kernels.splat_torch import (
    ALPHA_MAX,
    ALPHA_MIN,
    T_MIN,
    covariance,
    eval_sh,
    project,
    quat_to_rotmat,
    rasterize,
    splat_torch,
)
from renderers.ply import load_ply, save_ply

gsplat_ref = pytest.importorskip("gsplat.cuda._torch_impl")


def _random_splats(n: int, seed: int = 0, spread: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) * 2 - 1) * spread
    quats = torch.randn(n, 4, generator=g)
    scales = 0.02 + 0.1 * torch.rand(n, 3, generator=g)
    opac = 0.2 + 0.75 * torch.rand(n, generator=g)
    colors = torch.rand(n, 3, generator=g)
    return means, quats, scales, opac, colors


def _cams(n_views: int = 2, size: int = 32, dist: float = 2.0):
    az = torch.linspace(0, 360, n_views + 1)[:-1] + 20.0
    return orbit_cameras(az, 25.0, dist, 45.0, size)


def _scene(seed: int = 0, **kw) -> Gaussians:
    cfg = GaussiansConfig(**{"backend": "torch", "num_points": 64, **kw})
    return cfg.build(torch.Generator().manual_seed(seed))


def _randomise(scene: Gaussians, seed: int = 1) -> Gaussians:
    """Anisotropic, rotated, coloured, view-dependent splats so every parameter matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        n = scene.num_gaussians
        scene.quats.copy_(torch.randn(n, 4, generator=g))
        scene.log_scales.copy_(torch.log(0.03 + 0.08 * torch.rand(n, 3, generator=g)))
        scene.opacity_logits.copy_(torch.randn(n, generator=g))
        scene.sh_dc.copy_(torch.randn(n, 3, generator=g))
        scene.sh_rest.copy_(0.3 * torch.randn(scene.sh_rest.shape, generator=g))
    return scene


# ------------------------------------------------------------------------------------------------ projection
def test_projection_matches_gsplat_torch_reference():
    means, quats, scales, _, _ = _random_splats(200, spread=1.5)
    means[:5, 2] = 3.0  # some behind or at the near plane of a camera, some off-screen
    cams = _cams(3, 48, dist=2.0)
    vm, K = cams.viewmat_opencv(), cams.intrinsics()
    cov = covariance(quats, scales)
    ref_cov, _ = gsplat_ref._quat_scale_to_covar_preci(quats, scales, True, False)
    torch.testing.assert_close(cov, ref_cov, rtol=1e-5, atol=1e-7)
    ours = project(means, cov, vm, K, 64, 48)
    radii, m2d, depths, conics, _ = gsplat_ref._fully_fused_projection(means, ref_cov, vm, K, 64, 48)
    assert (radii == 0).any() and (radii > 0).any()  # the scene exercises culling
    torch.testing.assert_close(ours.radii, radii.to(torch.int32), rtol=0, atol=0)
    valid = radii[..., 0] > 0
    torch.testing.assert_close(ours.means2d[valid], m2d[valid], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours.depths, depths, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.conics[valid], conics[valid], rtol=1e-4, atol=1e-6)


def test_projection_gradients_match_gsplat_torch_reference():
    means, quats, scales, _, _ = _random_splats(64, seed=3)
    cams = _cams(2, 32)
    vm, K = cams.viewmat_opencv(), cams.intrinsics()
    g = torch.Generator().manual_seed(7)
    ct = [torch.randn(2, 64, 2, generator=g), torch.randn(2, 64, 3, generator=g), torch.randn(2, 64, generator=g)]

    def grads(fn):
        x = [t.clone().requires_grad_(True) for t in (means, quats, scales)]
        m2d, conics, depths = fn(*x)
        loss = (m2d * ct[0]).sum() + (conics * ct[1]).sum() + (depths * ct[2]).sum()
        return torch.autograd.grad(loss, x)

    def ours(m, q, s):
        p = project(m, covariance(q, s), vm, K, 32, 32)
        return p.means2d, p.conics, p.depths

    def ref(m, q, s):
        cov, _ = gsplat_ref._quat_scale_to_covar_preci(q, s, True, False)
        _, m2d, depths, conics, _ = gsplat_ref._fully_fused_projection(m, cov, vm, K, 32, 32)
        return m2d, conics, depths

    for a, b, name in zip(grads(ours), grads(ref), ("means", "quats", "scales")):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item(), msg=name)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat(degree):
    g = torch.Generator().manual_seed(degree)
    dirs = torch.randn(100, 3, generator=g)
    coeffs = torch.randn(100, 16, 3, generator=g)
    torch.testing.assert_close(eval_sh(degree, dirs, coeffs), gsplat_ref._spherical_harmonics(degree, dirs, coeffs),
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ compositing
def _brute_force(means2d, conics, opac, feats, depths, radii, W, H):
    """gsplat's per-pixel loop, literally: every Gaussian at every pixel, depth order, skip / clamp / stop rules."""
    C = means2d.shape[0]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=means2d.dtype) + 0.5, torch.arange(W, dtype=means2d.dtype) + 0.5,
                            indexing="ij")
    px, py = xs.reshape(-1), ys.reshape(-1)
    imgs, alphas = [], []
    for c in range(C):
        T = torch.ones(H * W, dtype=means2d.dtype)
        out = torch.zeros(H * W, feats.shape[-1], dtype=means2d.dtype)
        done = torch.zeros(H * W, dtype=torch.bool)
        for g in torch.argsort(depths[c], stable=True).tolist():
            if radii[c, g, 0] <= 0:
                continue
            dx, dy = means2d[c, g, 0] - px, means2d[c, g, 1] - py
            a, b, cc = conics[c, g]
            sigma = 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy
            alpha = torch.clamp_max(opac[c, g] * torch.exp(-sigma), ALPHA_MAX)
            use = ~done & (sigma >= 0) & (alpha >= ALPHA_MIN)
            next_T = T * (1 - alpha)
            stop = use & (next_T <= T_MIN)
            done = done | stop
            use = use & ~stop
            out = out + torch.where(use[:, None], feats[c, g] * (alpha * T)[:, None], 0.0)
            T = torch.where(use, next_T, T)
        imgs.append(out.reshape(H, W, -1))
        alphas.append((1 - T).reshape(H, W, 1))
    return torch.stack(imgs), torch.stack(alphas)


def test_compositor_matches_brute_force_values_and_gradients():
    means, quats, scales, opac, colors = _random_splats(64, seed=5)
    opac[:8] = 0.999  # saturate some pixels so the transmittance cut-off is exercised
    cams = _cams(2, 32)
    vm, K = cams.viewmat_opencv(), cams.intrinsics()
    leaves = [t.clone().requires_grad_(True) for t in (means, scales, opac, colors)]
    m, s, o, col = leaves
    proj = project(m, covariance(quats, s), vm, K, 32, 32, opacities=o)
    feats = col[None].expand(2, -1, -1)
    img, alpha = rasterize(proj.means2d, proj.conics, proj.opacities, feats, proj.depths, proj.radii, 32, 32,
                           tile_size=8)
    ref_img, ref_alpha = _brute_force(proj.means2d, proj.conics, proj.opacities, feats, proj.depths, proj.radii,
                                      32, 32)
    torch.testing.assert_close(img, ref_img, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alpha, ref_alpha, rtol=1e-4, atol=1e-5)
    assert alpha.max() > 0.99  # the scene does reach the cut-off
    ct = torch.randn_like(img)
    ga = torch.autograd.grad((img * ct).sum() + alpha.sum(), leaves, retain_graph=True)
    gb = torch.autograd.grad((ref_img * ct).sum() + ref_alpha.sum(), leaves)
    for a, b, name in zip(ga, gb, ("means", "scales", "opacities", "colors")):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * max(1.0, b.abs().max().item()), msg=name)


@pytest.mark.parametrize("max_dense", [1 << 22, 64 * 8])
def test_compositor_float64_partial_tiles_batches_and_clamped_alpha_match_brute_force(max_dense):
    """The analytic backward against autograd through gsplat's literal loop, in float64: a 30x20 image (partial
    tiles), tiles composited in one batch or in many, and opacities above 0.999 (α clamped: no gradient there)."""
    means, quats, scales, opac, colors = (t.double() for t in _random_splats(48, seed=11))
    opac[:6] = 0.99999
    cams = orbit_cameras(torch.tensor([20.0, 200.0]), 25.0, 2.0, 45.0, 30, 20)
    vm, K = cams.viewmat_opencv().double(), cams.intrinsics().double()
    leaves = [t.clone().requires_grad_(True) for t in (means, scales, opac, colors)]
    m, s, o, col = leaves
    proj = project(m, covariance(quats, s), vm, K, 30, 20, opacities=o)
    feats = col[None].expand(2, -1, -1)
    img, alpha = rasterize(proj.means2d, proj.conics, proj.opacities, feats, proj.depths, proj.radii, 30, 20,
                           tile_size=8, max_dense=max_dense)
    ref_img, ref_alpha = _brute_force(proj.means2d, proj.conics, proj.opacities, feats, proj.depths, proj.radii,
                                      30, 20)
    assert img.shape == (2, 20, 30, 3) and alpha.max() > 0.99
    torch.testing.assert_close(img, ref_img, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(alpha, ref_alpha, rtol=1e-9, atol=1e-12)
    ct = torch.randn_like(img)
    ga = torch.autograd.grad((img * ct).sum() + 0.7 * alpha.sum(), leaves, retain_graph=True)
    gb = torch.autograd.grad((ref_img * ct).sum() + 0.7 * ref_alpha.sum(), leaves)
    for a, b, name in zip(ga, gb, ("means", "scales", "opacities", "colors")):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10 * max(1.0, b.abs().max().item()), msg=name)


def test_tile_checkpointing_gives_same_values_and_gradients():
    means, quats, scales, opac, colors = _random_splats(64, seed=9)
    cams = _cams(1, 32)
    outs = []
    for ckpt in (False, True):
        leaves = [t.clone().requires_grad_(True) for t in (means, scales, colors)]
        r = splat_torch(leaves[0], quats, leaves[1], opac, leaves[2][None], cams.viewmat_opencv(),
                        cams.intrinsics(), 32, 32, checkpoint=ckpt)
        outs.append((r.render, torch.autograd.grad(r.render.square().sum(), leaves)))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------ scene
def test_empty_scene_renders_background_exactly():
    cams = _cams(1, 24)
    bg = torch.rand(1, 24, 24, 3, generator=torch.Generator().manual_seed(0))
    culled = _scene()
    with torch.no_grad():  # every Gaussian behind the camera
        culled.means.copy_(2.0 * cams.position + 0.1 * culled.means)
    empty = _scene()
    empty._rebuild(torch.zeros(0, dtype=torch.long), None)
    assert empty.num_gaussians == 0
    for s in (culled, empty):
        out = s.render(cams, bg)
        assert torch.equal(out.rgb, bg)
        assert torch.equal(out.alpha, torch.zeros_like(out.alpha))
        assert torch.equal(out.depth, torch.zeros_like(out.depth))


def test_render_outputs_are_in_range_and_gradients_reach_every_group():
    scene = _randomise(_scene(sh_degree=1))
    cams = _cams(2, 32)
    out = scene.render(cams, torch.ones(2, 32, 32, 3))
    assert out.rgb.shape == (2, 32, 32, 3) and out.normal.shape == (2, 32, 32, 3)
    assert 0.0 <= out.alpha.min() and out.alpha.max() <= 1.0 and out.alpha.max() > 0.5
    assert 0.0 <= out.rgb.min() and out.rgb.max() <= 1.0
    hit = out.alpha[..., 0] > 0.5
    assert torch.allclose(out.normal[hit].norm(dim=-1), torch.ones(()), atol=1e-4)
    assert ((out.depth[hit] > 1.0) & (out.depth[hit] < 3.0)).all()  # distances around the 2 m orbit
    loss = (out.rgb * torch.rand_like(out.rgb)).sum() + out.depth.sum() + out.normal.sum()
    loss = loss + sum(scene.regularizers(out, 0).values())
    loss.backward()
    groups = scene.param_groups()
    assert set(groups) == {"means", "scales", "quats", "opacities", "sh_dc", "sh_rest"}
    for name, g in groups.items():
        grad = g["params"][0].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert out.extras["means2d"].grad is not None  # densification statistics are available


def test_depth_normals_mode():
    scene = _randomise(_scene(normals="depth"))
    out = scene.render(_cams(1, 32), torch.ones(1, 32, 32, 3))
    hit = out.alpha[..., 0] > 0.5
    assert torch.allclose(out.normal[hit].norm(dim=-1), torch.ones(()), atol=1e-4)
    assert (out.normal[~(out.alpha[..., 0] > 1e-4)] == 0).all()


def test_determinism():
    a = _randomise(_scene(seed=3)).render(_cams(1, 32), torch.ones(1, 32, 32, 3))
    b = _randomise(_scene(seed=3)).render(_cams(1, 32), torch.ones(1, 32, 32, 3))
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.alpha, b.alpha)
    c = _scene(seed=4).render(_cams(1, 32), torch.ones(1, 32, 32, 3))
    assert not torch.equal(a.rgb, c.rgb)


def test_inits(tmp_path):
    ball = _scene(init="random", init_radius=0.6)
    assert ball.means.norm(dim=-1).max() <= 0.6 + 1e-6
    shell = _scene(init="coarse_sphere", init_radius=0.5)
    r = shell.means.norm(dim=-1)
    assert r.min() >= 0.45 - 1e-6 and r.max() <= 0.5 + 1e-6 and shell.opacities.min() >= 0.5 - 1e-6
    pts = np.concatenate([np.random.default_rng(0).normal(size=(30, 3)) * 0.2,
                          np.tile([[255.0, 0.0, 0.0]], (30, 1))], 1).astype(np.float32)
    np.save(tmp_path / "pc.npy", pts)
    pc = _scene(init="file", init_path=str(tmp_path / "pc.npy"), init_scale=0.0)
    assert pc.num_gaussians == 30 and torch.allclose(pc.means, torch.from_numpy(pts[:, :3]))
    assert torch.allclose(0.5 + 0.28209479 * pc.sh_dc, torch.tensor([1.0, 0.0, 0.0]).expand(30, 3), atol=1e-5)
    assert (pc.scales > 0).all() and not torch.allclose(pc.scales, pc.scales[0])  # kNN scales
    save_ply(tmp_path / "pc.ply", pc)
    again = _scene(init="file", init_path=str(tmp_path / "pc.ply"))
    assert torch.allclose(again.means, pc.means)


def test_backend_switch():
    if not torch.cuda.is_available():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fallback warning is emitted once per process
            assert resolve_splat_backend("auto") == "torch"
        with pytest.raises(RuntimeError):
            resolve_splat_backend("cuda")
        with pytest.raises(RuntimeError):
            GaussiansConfig(backend="cuda").build(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError):
        GaussiansConfig(backend="metal")


# ------------------------------------------------------------------------------------------------ densification
def _train_steps(scene: Gaussians, opt, steps: range, cams):
    for step in steps:
        out = scene.render(cams, torch.ones(len(cams), cams.height, cams.width, 3))
        opt.zero_grad(set_to_none=True)
        (out.rgb - torch.tensor([1.0, 0.0, 0.0])).square().sum().backward()
        opt.step()
        scene.after_step(step, out)


def _check_state(scene: Gaussians, opt):
    for p in scene._param_dict().values():
        assert p.shape[0] == scene.num_gaussians
        for v in opt.state.get(p, {}).values():
            if torch.is_tensor(v) and v.ndim > 0:
                assert v.shape == p.shape
    assert scene.grad2d_sum.shape == (scene.num_gaussians,)


def test_densify_and_prune_keep_optimizer_state_consistent_and_respect_cap():
    scene = _randomise(_scene(num_points=64, max_gaussians=80, densify_start=2, densify_every=2,
                              densify_grad_threshold=1e-6, clone_scale_threshold=0.05, prune_opacity=0.05))
    opt = torch.optim.Adam([{**g, "name": k} for k, g in scene.param_groups().items()], eps=1e-15)
    scene.attach_optimizer(opt)
    cams = _cams(1, 32)
    _train_steps(scene, opt, range(0, 2), cams)  # step 0 (no refine), step 1... refine at step 2
    n0 = scene.num_gaussians
    with torch.no_grad():
        scene.opacity_logits[:3] = -10.0  # three dead Gaussians to prune
    _train_steps(scene, opt, range(2, 3), cams)
    assert scene.num_gaussians <= 80 and scene.num_gaussians != n0
    _check_state(scene, opt)
    _train_steps(scene, opt, range(3, 7), cams)  # optimiser keeps working on the resized tensors
    _check_state(scene, opt)
    assert scene.num_gaussians <= 80


def test_densify_clone_split_bookkeeping():
    scene = _scene(num_points=10, max_gaussians=100, prune_opacity=0.0, clone_scale_threshold=0.05)
    opt = torch.optim.Adam(list(scene.param_groups().values()))
    scene.attach_optimizer(opt)
    with torch.no_grad():
        scene.log_scales[:5] = math.log(0.01)  # small: cloned
        scene.log_scales[5:] = math.log(0.2)  # large: split
    for p in scene._param_dict().values():
        p.grad = torch.zeros_like(p)
    opt.step()  # create Adam state
    opt.state[scene.means]["exp_avg"].fill_(1.0)
    scene.grad2d_sum[[0, 1, 5]] = 1.0
    scene.grad2d_count[:] = 1
    before = scene.means.detach().clone()
    counts = scene.densify_and_prune()
    assert counts == {"cloned": 2, "split": 1, "pruned": 0}
    assert scene.num_gaussians == 10 + 2 + 1
    assert torch.equal(scene.means[:9], before[[0, 1, 2, 3, 4, 6, 7, 8, 9]])  # the split parent is gone
    assert torch.equal(scene.means[9:11], before[[0, 1]])  # clones are exact copies
    assert torch.allclose(scene.scales[11:], torch.full((2, 3), 0.2 / 1.6))
    ea = opt.state[scene.means]["exp_avg"]
    assert (ea[:9] == 1).all() and (ea[9:] == 0).all()  # kept rows keep their moments, new rows start at zero
    scene.reset_opacity()
    assert scene.opacities.max() <= 0.01 + 1e-6 and (opt.state[scene.opacity_logits]["exp_avg"] == 0).all()


def test_densify_without_optimizer_is_skipped_with_warning():
    scene = _randomise(_scene(densify_start=0, densify_every=1, densify_grad_threshold=0.0))
    cams = _cams(1, 16)
    out = scene.render(cams, torch.ones(1, 16, 16, 3))
    out.rgb.sum().backward()
    import renderers.gaussians as G
    G._warned.clear()
    with pytest.warns(UserWarning, match="attach_optimizer"):
        scene.after_step(1, out)
    assert scene.num_gaussians == 64


def test_state_dict_round_trip_with_changed_count(tmp_path):
    scene = _randomise(_scene(num_points=64, sh_degree=2))
    scene._rebuild(torch.arange(40), None)  # as after pruning
    state = scene.state_dict()
    fresh = _scene(num_points=64, sh_degree=2, seed=9)
    fresh.load_state_dict(state)
    assert fresh.num_gaussians == 40
    cams = _cams(1, 24)
    bg = torch.ones(1, 24, 24, 3)
    assert torch.equal(scene.render(cams, bg).rgb, fresh.render(cams, bg).rgb)
    # the split RNG continues identically after a resume
    assert torch.equal(torch.randn(3, generator=scene._rng), torch.randn(3, generator=fresh._rng))


def test_sh_degree_grows():
    scene = _scene(sh_degree=2, sh_degree_interval=5)
    assert int(scene.active_sh_degree) == 0
    out = scene.render(_cams(1, 16), torch.ones(1, 16, 16, 3))
    for step in range(1, 16):
        scene.after_step(step, out)
    assert int(scene.active_sh_degree) == 2


def test_query_density_and_albedo():
    scene = _randomise(_scene(num_points=20))
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0)) * 0.3
    prec = torch.linalg.inv(covariance(scene.quats, scene.scales)).detach()
    d = x[:, None] - scene.means.detach()[None]
    w = scene.opacities.detach() * torch.exp(-0.5 * torch.einsum("mni,nij,mnj->mn", d, prec, d))
    dens = scene.query_density(x)
    torch.testing.assert_close(dens, w.sum(-1), rtol=1e-4, atol=1e-4)  # 3.33σ truncation only
    alb = scene.query_albedo(x)
    assert alb.shape == (50, 3) and (alb >= 0).all() and (alb <= 1).all()


# ------------------------------------------------------------------------------------------------ PLY
def _parse_ply(path):
    """Independent minimal reader: header lines, then float32 little-endian rows."""
    data = open(path, "rb").read()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    lines = data[:end].decode().splitlines()
    assert lines[:2] == ["ply", "format binary_little_endian 1.0"]
    n = int(lines[2].split()[2])
    props = [ln.split() for ln in lines[3:-1]]
    assert all(p[0] == "property" and p[1] == "float" for p in props)
    names = [p[2] for p in props]
    return names, np.frombuffer(data[end:], dtype="<f4").reshape(n, len(names)), data[end:]


def test_ply_layout_round_trip_and_rerender(tmp_path):
    scene = _randomise(_scene(num_points=64, sh_degree=1))
    with torch.no_grad():
        scene.opacity_logits[0] = -8.0  # below 1/255: dropped on export
        scene.means[1, 0] = float("nan")  # non-finite: dropped
    n = save_ply(tmp_path / "s.ply", scene)
    assert n == 62
    names, rows, payload = _parse_ply(tmp_path / "s.ply")
    expected = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
                + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == expected
    keep = torch.ones(64, dtype=torch.bool)
    keep[:2] = False
    t = {k: v[keep] for k, v in scene.export_tensors().items()}
    assert np.array_equal(rows[:, 3:6], np.zeros((62, 3), np.float32))
    assert np.array_equal(rows[:, :3], t["means"].numpy())
    assert np.array_equal(rows[:, 54], t["opacity_logits"].numpy())  # logit
    assert np.array_equal(rows[:, 55:58], t["log_scales"].numpy())  # log scales
    assert np.array_equal(rows[:, 58:62], t["quats"].numpy())  # wxyz, unnormalised
    # channel-major f_rest: R of bands 1..3 first (3 real + 12 zero pads), then G, then B
    assert np.array_equal(rows[:, 9:12], t["sh_rest"][:, :, 0].numpy())
    assert np.array_equal(rows[:, 24:27], t["sh_rest"][:, :, 1].numpy())
    assert np.array_equal(rows[:, 39:42], t["sh_rest"][:, :, 2].numpy())
    assert not rows[:, 12:24].any()
    # gsplat's own exporter writes the same floats (it has no normals, so drop ours)
    from gsplat import export_splats

    rest = torch.cat([t["sh_rest"], torch.zeros(62, 12, 3)], 1)
    ref = export_splats(t["means"], t["log_scales"], t["quats"], t["opacity_logits"], t["sh_dc"][:, None], rest,
                        format="ply")
    ref_rows = np.frombuffer(ref[ref.index(b"end_header\n") + 11:], dtype="<f4").reshape(62, -1)
    assert np.array_equal(np.delete(rows, [3, 4, 5], axis=1), ref_rows)
    # read back and re-render to the same image
    back = load_ply(tmp_path / "s.ply")
    other = _scene(num_points=64, sh_degree=3, seed=5)
    other.load_state_dict({**other.state_dict(), **{
        "means": back["means"], "log_scales": back["log_scales"], "quats": back["quats"],
        "opacity_logits": back["opacity_logits"], "sh_dc": back["sh_dc"], "sh_rest": back["sh_rest"]}})
    other.active_sh_degree.fill_(3)
    ref_scene = _scene(num_points=64, sh_degree=1)
    ref_scene.load_state_dict({**ref_scene.state_dict(), **{k2: t[k1] for k1, k2 in [
        ("means", "means"), ("log_scales", "log_scales"), ("quats", "quats"), ("opacity_logits", "opacity_logits"),
        ("sh_dc", "sh_dc"), ("sh_rest", "sh_rest")]}})
    cams = _cams(2, 32)
    bg = torch.ones(2, 32, 32, 3)
    torch.testing.assert_close(other.render(cams, bg).rgb, ref_scene.render(cams, bg).rgb, rtol=0, atol=1e-6)


@pytest.mark.parametrize("up", ["z", "-y"])
def test_ply_up_axis_rotates_the_whole_splat(tmp_path, up):
    scene = _randomise(_scene(num_points=64, sh_degree=2))
    save_ply(tmp_path / "u.ply", scene, up=up, pad_to_degree3=False)
    rotated = load_ply(tmp_path / "u.ply")  # raw, in the exported frame
    back = load_ply(tmp_path / "u.ply", up=up)  # undone
    for k, v in scene.export_tensors().items():
        if k == "quats":  # q and -q are the same rotation
            torch.testing.assert_close(quat_to_rotmat(back[k]), quat_to_rotmat(v), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(back[k].norm(dim=-1), v.norm(dim=-1))
        else:
            torch.testing.assert_close(back[k], v, rtol=1e-4, atol=1e-5, msg=k)
    # rendering the rotated splats with rotated cameras gives the same image (means, quats and SH all rotated)
    from renderers.ply import up_rotation

    R = torch.eye(4)
    R[:3, :3] = up_rotation(up)
    cams = _cams(2, 32)
    cams_r = type(cams)(R @ cams.c2w, cams.fovy, 32, 32, cams.azimuth, cams.elevation, cams.distance)
    rs = _scene(num_points=64, sh_degree=2)
    rs.load_state_dict({**rs.state_dict(), **rotated})
    bg = torch.ones(2, 32, 32, 3)
    torch.testing.assert_close(rs.render(cams_r, bg).rgb, scene.render(cams, bg).rgb, rtol=0, atol=2e-4)


# ------------------------------------------------------------------------------------------------ CUDA parity
@pytest.mark.cuda
def test_cuda_backend_matches_torch_backend():
    from renderers.kernels.splat_cuda import splat_cuda

    dev = torch.device("cuda")
    means, quats, scales, opac, colors = (t.to(dev) for t in _random_splats(500, seed=11))
    cams = _cams(2, 64)
    vm, K = cams.viewmat_opencv().to(dev), cams.intrinsics().to(dev)
    feats = torch.cat([colors, means.norm(dim=-1, keepdim=True)], -1)[None].expand(2, -1, -1).contiguous()
    results = []
    for fn in (splat_torch, splat_cuda):
        leaves = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, feats)]
        r = fn(*leaves[:4], leaves[4], vm, K, 64, 64)
        ct = torch.randn(r.render.shape, generator=torch.Generator().manual_seed(0)).to(dev)
        grads = torch.autograd.grad((r.render * ct).sum() + r.alpha.sum(), leaves)
        results.append((r, grads))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a.radii, b.radii.to(a.radii.dtype), rtol=0, atol=1)
    torch.testing.assert_close(a.render, b.render, rtol=1e-3, atol=2e-3)
    torch.testing.assert_close(a.alpha, b.alpha, rtol=1e-3, atol=2e-3)
    tol = {"means": 5e-2, "quats": 5e-2, "scales": 5e-2, "opacities": 2e-2, "features": 1e-2}
    for x, y, (name, rt) in zip(ga, gb, tol.items()):
        err = (x - y).norm() / y.norm().clamp_min(1e-8)
        assert err < rt, f"{name}: relative gradient error {err:.3g} >= {rt}"


def test_opacity_entropy_is_the_mean_binary_entropy_and_pushes_away_from_one_half():
    """``opacity_entropy``: −o·ln o − (1−o)·ln(1−o) averaged over the splats; its gradient moves opacities below 1/2
    down and above 1/2 up (to gone or solid), and it is off unless weighted."""
    scene = _scene()
    assert scene.regularizer_weights["opacity_entropy"] == 0.0
    o = torch.tensor([0.1, 0.4, 0.6, 0.9])
    with torch.no_grad():
        scene.opacity_logits.data = torch.logit(o).repeat(scene.num_gaussians // 4 + 1)[:scene.num_gaussians]
    out = scene.render(_cams(1, 16), torch.ones(1, 16, 16, 3))
    term = scene.regularizers(out, 0)["opacity_entropy"]
    p = torch.sigmoid(scene.opacity_logits.detach())
    torch.testing.assert_close(term, -(p * p.log() + (1 - p) * (1 - p).log()).mean())
    term.backward()
    g = scene.opacity_logits.grad
    assert (g[p < 0.5] > 0).all() and (g[p > 0.5] < 0).all()  # descent lowers the faint ones, raises the solid ones


def test_albedo_smoothness_moves_only_colours_and_evens_them():
    """"albedo_smooth": E|a(x) − a(x + δ)|₁ of the density-weighted DC colour at jittered centres of shown splats.
    Positive on random colours, its gradient reaches the colours alone, it is 0 outside training and for an unshown
    scene, it is left out (drawing nothing from the scene's stream) when unweighted, and descending it evens the
    colour the renders show."""
    scene = _randomise(_scene(num_points=200, init_radius=0.4)).train()
    with torch.no_grad():  # colours inside (0, 1): a clamped colour has no gradient
        scene.sh_dc.mul_(0.5)
    c = _cams(2, 24)
    out = scene.render(c, torch.ones(2, 24, 24, 3))
    term = scene.regularizers(out, 0)["albedo_smooth"]
    assert term > 0 and scene.regularizer_weights["albedo_smooth"] == 0.0
    term.backward()
    assert scene.sh_dc.grad.abs().sum() > 0
    assert all(p.grad is None for p in (scene.means, scene.log_scales, scene.quats, scene.opacity_logits))
    state = scene._rng.get_state()
    assert "albedo_smooth" not in scene.regularizers(out, 0, {"albedo_smooth": 0.0})
    assert torch.equal(scene._rng.get_state(), state)
    assert scene.eval().regularizers(scene.render(c, torch.ones(2, 24, 24, 3)), 0)["albedo_smooth"] == 0
    scene.train()  # a backend that reports no blending weights (gsplat's): splats drawn by opacity instead
    without = dataclasses.replace(out, extras={k: v for k, v in out.extras.items() if k != "max_weight"})
    assert scene.regularizers(without, 0)["albedo_smooth"] > 0

    def spread(s):  # std over opaque pixels of the colour rendered
        with torch.no_grad():
            o = s.eval().render(c, torch.ones(2, 24, 24, 3))
        return float((o.rgb - (1 - o.alpha)).div(o.alpha.clamp_min(1e-6))[o.alpha[..., 0] > 0.8].std(0).mean())

    before = spread(scene)
    opt = torch.optim.Adam([scene.sh_dc], lr=2e-2)
    for step in range(60):
        scene.train()
        term = scene.regularizers(scene.render(c, torch.ones(2, 24, 24, 3)), step)["albedo_smooth"]
        opt.zero_grad()
        term.backward()
        opt.step()
    assert spread(scene) < 0.2 * before, (before, spread(scene))
    with pytest.raises(ValueError, match="albedo_smooth_eps"):
        GaussiansConfig(albedo_smooth_eps=0.0)
    with pytest.raises(ValueError, match="albedo_smooth_samples"):
        GaussiansConfig(albedo_smooth_samples=0)


def test_means_learning_rate_decays_exponentially_to_its_final_value():
    """lr_means_final: the means' rate goes from the optimiser's start rate (lr_scale included) to lr_scale times
    lr_means_final over lr_means_decay_steps, log-linearly, then stays; other groups keep theirs."""
    cfg = GaussiansConfig(num_points=50, lr_means=2e-3, lr_means_final=1e-4, lr_means_decay_steps=100,
                          densify=False, backend="torch")
    scene = cfg.build(torch.Generator().manual_seed(0))
    groups = [{**g, "lr": g["lr"] * 0.5} for g in scene.param_groups().values()]  # a run's lr_scale 0.5
    opt = torch.optim.Adam(groups)
    scene.attach_optimizer(opt)
    lr = {}
    for step in range(150):
        scene.after_step(step, None)
        lr[step + 1] = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lr[50]["means"] == pytest.approx(0.5 * 2e-3 * (1e-4 / 2e-3) ** 0.5)
    assert lr[100]["means"] == pytest.approx(0.5 * 1e-4) and lr[150]["means"] == pytest.approx(0.5 * 1e-4)
    assert all(lr[s]["scales"] == 0.5 * cfg.lr_scales for s in lr)
    with pytest.raises(ValueError, match="lr_means_final"):
        GaussiansConfig(lr_means_final=-1.0)


# -- the colour the export bakes: what the splats composite to -----------------------------------------------------
def test_surface_colour_composites_like_the_splatter():
    """Along the rays of a far, narrow (nearly orthographic) view, ``surface_colour`` at each pixel's depth point,
    looking back along the ray, is the rendered DC colour (rgb / alpha on black), to the splatter's 0.3 px low-pass."""
    scene = _randomise(_scene(3, num_points=96))
    with torch.no_grad():
        scene.sh_rest.zero_()
        scene.log_scales.copy_(torch.log(0.08 + 0.08 * torch.rand(96, 3, generator=torch.Generator().manual_seed(4))))
    cams = orbit_cameras(torch.tensor([30.0, 150.0]), 20.0, 30.0, 3.5, 96)
    with torch.no_grad():
        out = scene.render(cams, torch.zeros(3))
    o, d = cams.rays()
    hit = out.alpha[..., 0] > 0.5
    x = (o + d * out.depth)[hit]
    got = scene.surface_colour(x, -d.expand_as(o)[hit], outside=2.0, inside=2.0)
    want = (out.rgb / out.alpha)[hit]
    assert hit.sum() > 500
    assert float((got - want).abs().mean()) < 0.004 and float((got - want).abs().max()) < 0.06  # 0.0009, 0.040
    assert float((scene.query_albedo(x) - want).abs().mean()) > 0.03  # the point query there: 0.058


def test_surface_colour_is_the_front_layer_not_the_mean_around_the_point():
    """A red skin over a blue core, and a faint white haze outside: the export's colour is the skin's (front to
    back: 0.9 red, then 0.09 of the blue), where the density-weighted point query mixes all three."""
    scene = _scene(0, num_points=3)
    means = torch.tensor([[0.0, 0.0, 0.1], [0.0, 0.0, -0.1], [0.0, 0.0, 0.25]])
    with torch.no_grad():
        scene.means.copy_(means)
        scene.log_scales.copy_(torch.log(torch.tensor([[0.3, 0.3, 0.03], [0.3, 0.3, 0.03], [0.3, 0.3, 0.03]])))
        scene.quats.copy_(torch.tensor([1.0, 0, 0, 0]).expand(3, 4))
        scene.opacity_logits.copy_(torch.logit(torch.tensor([0.9, 0.9, 0.05])))
        scene.sh_dc.copy_((torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]]) - 0.5) / 0.28209479177387814)
    x, n = torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]])  # a surface between skin and core
    got = scene.surface_colour(x, n, outside=0.4, inside=0.4)[0]
    w = torch.tensor([0.05, 0.95 * 0.9, 0.95 * 0.1 * 0.9])  # haze, skin, core
    want = (w[:, None] * torch.tensor([[1.0, 1, 1], [1, 0, 0], [0, 0, 1]])).sum(0) / w.sum()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    mixed = scene.query_albedo(x)[0]
    assert float(mixed[0]) < 0.6 and float(mixed[2]) > 0.4  # the point query there is half core
    # a ray that starts inside the haze only, or meets nothing, keeps the point query
    far = torch.tensor([[0.9, 0.9, 0.9]])
    torch.testing.assert_close(scene.surface_colour(far, n, outside=0.05, inside=0.05), scene.query_albedo(far))
