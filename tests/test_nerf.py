"""NeRF renderer: invariants, kernels against brute-force float64 references, backend switch, a tiny fit."""

import contextlib
import math
import re
import warnings

import pytest
import torch
from jaxtyping import TypeCheckError

from foundation.cameras import orbit_cameras
from renderers import kernels
from renderers.base import Scene
from renderers.kernels import volume_torch
from renderers.kernels.hashgrid_torch import PRIMES, HashGrid
from renderers.nerf import NeRF, NeRFConfig


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on this shared 2-core machine, two threads spin against other jobs and run slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# A small, fast configuration: two dense levels and one hashed level, so both grid paths are exercised.
SMALL = dict(levels=3, base_resolution=8, max_resolution=32, log2_hashmap_size=15, samples_per_ray=24,
             occupancy_resolution=16, backend="torch")


@contextlib.contextmanager
def raises_shape_error(match: str):
    """Our ValueError, or jaxtyping's TypeCheckError when runtime type checking is on (it fires first)."""
    with pytest.raises((ValueError, TypeCheckError)) as info:
        yield
    if info.type is ValueError:
        assert re.search(match, str(info.value)), str(info.value)


def build(seed: int = 0, **overrides) -> NeRF:
    return NeRFConfig(**{**SMALL, **overrides}).build(torch.Generator().manual_seed(seed))


def cams(n: int = 1, res: int = 24):
    return orbit_cameras(torch.linspace(-60.0, 60.0, n) if n > 1 else [30.0], 20.0, 2.5, 40.0, res)


def white(c, res=24):
    return torch.ones(len(c), res, res, 3)


# ---- Scene invariants ----------------------------------------------------------------------------------------------


def test_is_a_scene_with_expected_level_layout():
    nerf = build()
    assert isinstance(nerf, Scene)
    assert nerf.grid.resolutions == [8, 16, 32]
    assert nerf.grid.is_dense == [True, True, False]  # 33³ > 2**15 rows
    assert set(nerf.param_groups()) == {"grid", "mlp"}


@pytest.mark.parametrize("occupancy_resolution", [16, 0])
def test_empty_scene_renders_exactly_the_background(occupancy_resolution):
    nerf = build(occupancy_resolution=occupancy_resolution)
    with torch.no_grad():
        nerf.mlp[2].bias[0] = -1e4  # σ = softplus(-1e4 + blob) = 0 exactly in float32
    nerf.refresh_occupancy()
    c = cams(2)
    bg = torch.rand(2, 24, 24, 3, generator=torch.Generator().manual_seed(1))
    for training in (True, False):
        nerf.train(training)
        out = nerf.render(c, bg)
        assert torch.equal(out.rgb, bg)
        assert torch.equal(out.alpha, torch.zeros_like(out.alpha))


@pytest.mark.parametrize("training", [True, False])
def test_alpha_in_unit_range_and_depth_finite(training):
    nerf = build(ambient_only_steps=0, shading_probs=(0.0, 0.0, 1.0))
    nerf.train(training)
    c = cams(2)
    out = nerf.render(c, white(c))
    assert out.rgb.shape == (2, 24, 24, 3) and out.alpha.shape == (2, 24, 24, 1)
    assert out.alpha.min() >= 0 and out.alpha.max() <= 1 + 1e-6
    assert out.alpha.max() > 0.5  # the initial blob is visible
    assert torch.isfinite(out.depth).all() and torch.isfinite(out.rgb).all()
    assert out.rgb.min() >= 0 and out.rgb.max() <= 1 + 1e-6
    assert out.normal is not None and torch.isfinite(out.normal).all()
    hit = out.alpha[..., 0] > 0.5
    # Depth of visible pixels lies between the camera's distance to the bbox and through it.
    assert out.depth[hit].min() > 2.5 - 0.8 * math.sqrt(3) and out.depth[hit].max() < 2.5 + 0.8 * math.sqrt(3)
    assert torch.allclose(out.normal[hit].norm(dim=-1), torch.ones(()), atol=1e-4)
    # The blob's normals face outwards, so at the image centre the composited normal leans towards the camera.
    to_cam = torch.nn.functional.normalize(c.position, dim=-1)
    assert ((out.normal[:, 12, 12] * to_cam).sum(-1) > 0.5).all()


def test_density_gradient_normals_point_outwards():
    nerf = build()
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(64, 3, generator=g), dim=-1)
    x = 0.3 * dirs
    raw, _ = nerf._field(x)
    n = nerf._normals(x, raw)
    assert ((n * dirs).sum(-1) > 0.98).all()  # the blob dominates the untrained field: radial normals


def test_gradients_reach_every_parameter_group():
    nerf = build(ambient_only_steps=0, shading_probs=(0.0, 0.0, 1.0))
    c = cams()
    out = nerf.render(c, white(c))
    assert out.extras["shading"] == "lambertian" and "orient" in out.extras
    regs = nerf.regularizers(out, 0)
    assert set(regs) == {"orient", "sparsity", "opaque", "distortion", "albedo_smooth"}
    (out.rgb.mean() + sum(regs.values())).backward()
    for name, group in nerf.param_groups().items():
        grads = [p.grad for p in group["params"]]
        assert all(g is not None for g in grads), name
        assert all(g.abs().sum() > 0 for g in grads), name  # every level and every MLP tensor


def test_shading_schedule_and_orient_flag():
    nerf = build(ambient_only_steps=5)
    c = cams()
    out = nerf.render(c, white(c))
    assert out.extras["shading"] == "albedo" and out.normal is None and "orient" not in out.extras
    assert nerf.regularizers(out, 0)["orient"].item() == 0.0
    nerf.set_step(5)
    modes = {nerf._shading_mode() for _ in range(40)}
    assert modes == {"albedo", "textureless", "lambertian"}
    nerf = build(ambient_only_steps=5, orient_always=True)
    assert "orient" in nerf.render(c, white(c)).extras


def test_determinism_same_seed_same_render():
    c = cams()
    a, b, other = build(seed=3), build(seed=3), build(seed=4)
    ra, rb = a.render(c, white(c)), b.render(c, white(c))
    assert torch.equal(ra.rgb, rb.rgb) and torch.equal(ra.depth, rb.depth)
    assert not torch.equal(ra.rgb, other.render(c, white(c)).rgb)


def test_state_dict_round_trip():
    a, b = build(seed=0), build(seed=1)
    c = cams()
    a.after_step(15, a.render(c, white(c)))  # refreshes the occupancy grid, so its buffers differ from b's
    b.load_state_dict(a.state_dict())
    a.eval()
    b.eval()
    assert torch.equal(a.render(c, white(c)).rgb, b.render(c, white(c)).rgb)


def test_hierarchical_render_step_state_and_weights():
    nerf = build(importance_samples=8)
    c = cams()
    out = nerf.render(c, white(c))
    assert out.alpha.max() > 0.5 and out.alpha.max() <= 1 + 1e-6 and torch.isfinite(out.depth).all()
    nerf.after_step(41, out)
    other = build(seed=1, importance_samples=8)
    other.load_state_dict(nerf.state_dict())
    assert nerf.step == other.step == 42  # a resumed run keeps its place in the shading schedule
    assert nerf.regularizer_weights == {"orient": 10.0, "sparsity": 0.0, "opaque": 0.0, "distortion": 0.0,
                                        "albedo_smooth": 0.0}


def test_query_density_and_albedo():
    nerf = build()
    x = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [0.95, 0.0, 0.0]])
    sigma = nerf.query_density(x)
    assert sigma.shape == (3,) and sigma[0] > 1.0 and sigma[2] == 0.0  # blob inside, zero outside the bbox
    albedo = nerf.query_albedo(x)
    assert albedo.shape == (3, 3) and albedo.min() >= 0 and albedo.max() <= 1
    with raises_shape_error(r"\[N,3\]"):
        nerf.query_density(x[:, :2])


# ---- hash grid -----------------------------------------------------------------------------------------------------


def _reference_encoding(grid: HashGrid, u: torch.Tensor) -> torch.Tensor:
    """Trilinear blend per level with explicit corner loops, reading the storage directly (float64)."""
    rows = []
    for p in u.tolist():
        feats = []
        for level, n in enumerate(grid.resolutions):
            param = grid.levels[level].detach().double()
            pos = [c * n for c in p]
            i0 = [min(max(math.floor(c), 0), n - 1) for c in pos]
            f = [c - i for c, i in zip(pos, i0)]
            acc = torch.zeros(grid.features_per_level, dtype=torch.float64)
            for a in (0, 1):
                for b in (0, 1):
                    for c in (0, 1):
                        i, j, k = i0[0] + a, i0[1] + b, i0[2] + c
                        wgt = (f[0] if a else 1 - f[0]) * (f[1] if b else 1 - f[1]) * (f[2] if c else 1 - f[2])
                        if grid.is_dense[level]:
                            v = param[0, :, k, j, i]
                        else:
                            v = param[((i * PRIMES[0]) ^ (j * PRIMES[1]) ^ (k * PRIMES[2])) % grid.table_size]
                        acc += wgt * v
            feats.append(acc)
        rows.append(torch.cat(feats))
    return torch.stack(rows)


def test_hashgrid_matches_brute_force_trilinear():
    gen = torch.Generator().manual_seed(0)
    grid = HashGrid(n_levels=3, base_resolution=2, max_resolution=8, features_per_level=2, log2_hashmap_size=6,
                    gen=gen, init_scale=1.0).double()
    assert grid.resolutions == [2, 4, 8] and grid.is_dense == [True, False, False]
    u = torch.rand(40, 3, generator=gen, dtype=torch.float64)
    u[:4] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.25, 1.0], [0.125, 0.875, 0.0]])  # vertices, faces
    torch.testing.assert_close(grid(u), _reference_encoding(grid, u), rtol=1e-10, atol=1e-12)


def test_hashgrid_gradient_matches_autograd_reference():
    gen = torch.Generator().manual_seed(1)
    grid = HashGrid(2, 4, 8, 2, 6, gen=gen, init_scale=1.0).double()
    u = torch.rand(30, 3, generator=gen, dtype=torch.float64)
    cot = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    (grid(u) * cot).sum().backward()
    got = [p.grad.clone() for p in grid.levels]
    grid.zero_grad()
    (_reference_encoding_autograd(grid, u) * cot).sum().backward()
    for g, ref in zip(got, [p.grad for p in grid.levels]):
        torch.testing.assert_close(g, ref)
    # Gradients to the points flow through the hashed level too.
    u.requires_grad_(True)
    gu, = torch.autograd.grad((grid(u) * cot).sum(), u)
    gu_ref, = torch.autograd.grad((_reference_encoding_autograd(grid, u) * cot).sum(), u)
    torch.testing.assert_close(gu, gu_ref)


def _reference_encoding_autograd(grid: HashGrid, u: torch.Tensor) -> torch.Tensor:
    """Plain-indexing version of the hashed path (autograd's own backward) for gradient checks."""
    feats = []
    for level, n in enumerate(grid.resolutions):
        idx, w = grid.corner_indices_weights(u, n)
        if grid.is_dense[level]:
            feats.append(grid._sample_dense(grid.levels[level], (u * 2 - 1).view(1, -1, 1, 1, 3)))
        else:
            feats.append((grid.levels[level][idx] * w[..., None]).sum(1))
    return torch.cat(feats, -1)


# ---- sampler -------------------------------------------------------------------------------------------------------


def _rays(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 2.5
    target = (torch.rand(n, 3, generator=g) * 2 - 1) * 0.7
    d = torch.nn.functional.normalize(target - o, dim=-1)
    return o, d


def _check_samples(s: volume_torch.RaySamples, o, d, radius):
    x = s.positions(o, d)
    assert (x.abs() <= radius + 1e-5).all()
    assert (s.t_starts <= s.t + 1e-6).all() and (s.t <= s.t_ends + 1e-6).all()
    same_ray = s.ray_indices[1:] == s.ray_indices[:-1]
    assert (s.ray_indices[1:] >= s.ray_indices[:-1]).all()
    assert (s.t[1:][same_ray] >= s.t[:-1][same_ray]).all()
    assert (s.t_starts[1:][same_ray] >= s.t_ends[:-1][same_ray] - 1e-6).all()  # intervals do not overlap


def test_sampler_inside_bbox_and_sorted():
    o, d = _rays()
    near, far, hit = volume_torch.ray_aabb(o, d, 0.8)
    assert hit.all()  # every ray aims inside the box
    gen = torch.Generator().manual_seed(0)
    s = volume_torch.sample_rays(o, d, 0.8, 16, gen=gen)
    assert len(s) == 64 * 16
    _check_samples(s, o, d, 0.8)
    density = lambda x: 50.0 * (x.norm(dim=-1) < 0.4).float()  # noqa: E731
    s = volume_torch.sample_rays(o, d, 0.8, 16, n_importance=16, density_fn=density, gen=gen)
    _check_samples(s, o, d, 0.8)
    # Rays that miss the box get no samples.
    o2 = torch.tensor([[0.0, 2.0, 2.5]])
    d2 = torch.tensor([[0.0, 0.0, -1.0]])
    assert len(volume_torch.sample_rays(o2, d2, 0.8, 16)) == 0


def test_occupancy_skips_empty_cells():
    grid = volume_torch.OccupancyGrid(0.8, 8)
    u = torch.full((8**3, 3), 0.5)
    grid.update(lambda x: 100.0 * (x[:, 0] > 0).float(), 0.05, u)
    assert grid.mask[4:].all() and not grid.mask[:4].any()
    o, d = _rays()
    s = volume_torch.sample_rays(o, d, 0.8, 32, occupancy=grid)
    assert len(s) > 0 and (s.positions(o, d)[:, 0] > -1e-6).all()


def test_hierarchical_sampling_concentrates_where_the_weights_are():
    edges = torch.linspace(0.0, 1.0, 11).expand(3, 11)
    weights = torch.zeros(3, 10)
    weights[:, 6] = 1.0
    u = ((torch.arange(32) + 0.5) / 32).expand(3, 32)
    t = volume_torch.sample_pdf(edges, weights, u)
    assert ((t >= 0.6) & (t <= 0.7)).float().mean() > 0.95
    assert (t[:, 1:] >= t[:, :-1]).all()
    # End to end: a thin dense slab at z in [-0.05, 0.05]; rays along -z through it.
    o = torch.tensor([[0.1 * i, 0.0, 2.5] for i in range(-3, 4)])
    d = torch.tensor([[0.0, 0.0, -1.0]]).expand(7, 3)
    slab = lambda x: 200.0 * (x[:, 2].abs() < 0.05).float()  # noqa: E731
    s = volume_torch.sample_rays(o, d, 0.8, 16, n_importance=32, density_fn=slab, early_stop_eps=0.0)
    z = s.positions(o, d)[:, 2]
    assert ((z.abs() < 0.1).sum() / len(s)) > 0.5  # uniform sampling would put 1/8 there


# ---- compositing ---------------------------------------------------------------------------------------------------


def _reference_composite(s: volume_torch.RaySamples, sigma, values):
    """Front-to-back loop per ray in float64: T_i = exp(-Σ_{j<i} σ_j δ_j), w_i = T_i (1 - exp(-σ_i δ_i))."""
    w = torch.zeros(len(s), dtype=torch.float64)
    out = torch.zeros(s.n_rays, values.shape[1], dtype=torch.float64)
    for r in range(s.n_rays):
        ids = (s.ray_indices == r).nonzero()[:, 0].tolist()
        optical_depth = 0.0
        for i in ids:
            delta = float(s.t_ends[i] - s.t_starts[i])
            w[i] = math.exp(-optical_depth) * (1 - math.exp(-float(sigma[i]) * delta))
            optical_depth += float(sigma[i]) * delta
            out[r] += w[i] * values[i].double()
    return w, out


def test_compositing_matches_float64_reference():
    o, d = _rays(12)
    grid = volume_torch.OccupancyGrid(0.8, 4)
    grid.update(lambda x: 10.0 * (x.norm(dim=-1) < 0.6).float(), 0.1, torch.rand(64, 3))  # skip some samples
    s = volume_torch.sample_rays(o, d, 0.8, 20, occupancy=grid, gen=torch.Generator().manual_seed(2))
    assert 0 < len(s) < 12 * 20
    g = torch.Generator().manual_seed(3)
    sigma = torch.rand(len(s), generator=g, dtype=torch.float64) * 8
    values = torch.rand(len(s), 3, generator=g, dtype=torch.float64)
    s64 = volume_torch.RaySamples(s.ray_indices, s.t_starts.double(), s.t_ends.double(), s.t.double(), s.n_rays,
                                  s.dense_index, s.dense_t_starts.double(), s.dense_t_ends.double())
    w = kernels.render_weights("torch", s64, sigma)
    out = kernels.accumulate_along_rays("torch", s64, w, values)
    w_ref, out_ref = _reference_composite(s64, sigma, values)
    torch.testing.assert_close(w, w_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    alpha = kernels.accumulate_along_rays("torch", s64, w)
    assert alpha.shape == (12, 1) and (alpha <= 1).all()


def test_kernel_shape_validation():
    o, d = _rays(4)
    s = volume_torch.sample_rays(o, d, 0.8, 8)
    with raises_shape_error("sigmas must be"):
        kernels.render_weights("torch", s, torch.rand(len(s) + 1))
    with raises_shape_error("values must be"):
        kernels.accumulate_along_rays("torch", s, torch.rand(len(s)), torch.rand(len(s), 3, 1))
    with raises_shape_error(r"rays_o must be \[R,3\]"):
        kernels.sample_rays("torch", o[:, :2], d[:, :2], radius=0.8, n_samples=8, n_importance=0, occupancy=None,
                            density_fn=None, gen=None, cuda_step_size=0.01)
    with pytest.raises(ValueError, match="unknown backend"):
        kernels.render_weights("metal", s, torch.rand(len(s)))


# ---- backend switch ------------------------------------------------------------------------------------------------


def test_resolve_backend(monkeypatch):
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    assert kernels.resolve_backend("torch") == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        kernels.resolve_backend("vulkan")
    monkeypatch.setenv(kernels.ENV_VAR, "torch")
    assert kernels.resolve_backend("cuda") == "torch"  # the debug override wins
    monkeypatch.delenv(kernels.ENV_VAR)
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the CPU fallback paths cannot be exercised")
    with pytest.raises(RuntimeError, match="backend 'cuda' was requested"):
        kernels.resolve_backend("cuda")
    kernels._warn_fallback.cache_clear()
    with pytest.warns(UserWarning, match="falls back to the torch backend"):
        assert kernels.resolve_backend("auto") == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.resolve_backend("auto") == "torch"  # warns once only


def test_distortion_loss_matches_the_double_sum_and_prefers_a_surface():
    """Mip-NeRF 360's distortion loss (eq. 15) in O(M) over packed samples equals its O(S²) double sum per ray, with
    the same gradient; rays without samples score 0; one ray's weight gathered in a thin shell scores lower than the
    same total weight spread through a cloud (what the "distortion" regulariser rewards)."""
    g = torch.Generator().manual_seed(0)
    counts = [3, 0, 7, 1, 4]
    ray = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    edges = [torch.sort(torch.rand(c + 1, generator=g, dtype=torch.float64))[0] for c in counts]
    t0 = torch.cat([e[:-1] for e in edges])
    t1 = torch.cat([e[1:] for e in edges])
    s = volume_torch.RaySamples(ray, t0, t1, (t0 + t1) / 2, len(counts))
    w = torch.rand(len(ray), generator=g, dtype=torch.float64).requires_grad_(True)
    got = volume_torch.distortion(s, w)
    ref = []
    for r in range(len(counts)):
        k = ray == r
        wr, m, dt = w[k], (t0[k] + t1[k]) / 2, t1[k] - t0[k]
        ref.append((wr[:, None] * wr[None] * (m[:, None] - m[None]).abs()).sum() + (wr**2 * dt).sum() / 3)
    ref = torch.stack(ref)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    assert got[1] == 0
    torch.testing.assert_close(torch.autograd.grad(got.sum(), w)[0], torch.autograd.grad(ref.sum(), w)[0])
    e = torch.linspace(0, 1, 33)
    one = volume_torch.RaySamples(torch.zeros(32, dtype=torch.long), e[:-1], e[1:], (e[:-1] + e[1:]) / 2, 1)
    shell = torch.zeros(32).index_fill(0, torch.tensor([10, 11]), 0.45)
    cloud = torch.full((32,), 0.9 / 32)
    assert volume_torch.distortion(one, shell) < 0.1 * volume_torch.distortion(one, cloud)
    nerf = build(seed=0).train()
    out = nerf.render(cams(1, 16), torch.ones(1, 16, 16, 3))
    reg = nerf.regularizers(out, 0)
    assert reg["distortion"] > 0 and reg["distortion"].requires_grad and "distortion" in nerf.regularizer_weights
    # a run that does not weight it does not pay for it (the training loop passes its weights)
    assert "distortion" not in nerf.regularizers(out, 0, {"distortion": 0.0})
    assert nerf.regularizers(out, 0, {"distortion": 1.0})["distortion"] == reg["distortion"]


def test_albedo_smoothness_draws_surface_points_and_evens_the_colour():
    """"albedo_smooth" is E|a(x + δ) − a(x)|₁ at points drawn by the render's weights: positive on the random start's
    mottled colour, with gradients into the field, 0 outside training, left out (drawing nothing) when unweighted, and
    descending it evens the albedo the renders show."""
    nerf = build(seed=0).train()
    c = cams(2, 16)
    out = nerf.render(c, torch.ones(2, 16, 16, 3))
    reg = nerf.regularizers(out, 0)
    assert reg["albedo_smooth"] > 0 and "albedo_smooth" in nerf.regularizer_weights
    reg["albedo_smooth"].backward()
    assert nerf.grid.parameters().__next__().grad.abs().sum() > 0 and nerf.mlp[2].weight.grad.abs().sum() > 0
    state = nerf.gen.get_state()
    assert "albedo_smooth" not in nerf.regularizers(out, 0, {"albedo_smooth": 0.0})
    assert torch.equal(nerf.gen.get_state(), state)  # an unweighted term does not move the run's random stream
    assert nerf.eval().regularizers(nerf.render(c, torch.ones(2, 16, 16, 3)), 0)["albedo_smooth"] == 0

    def spread(scene):  # std of the albedo the renders show where they are opaque
        with torch.no_grad():
            o = scene.eval().render(c, torch.ones(2, 16, 16, 3))
        return float((o.albedo / o.alpha.clamp_min(1e-6))[o.alpha[..., 0] > 0.5].std(0).mean())

    with torch.no_grad():  # a strongly mottled colour: large random albedo logits from the hash grid
        for p in nerf.grid.parameters():
            p.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
    before = spread(nerf)
    opt = torch.optim.Adam(nerf.parameters(), lr=1e-2)
    for step in range(40):
        nerf.train()
        term = nerf.regularizers(nerf.render(c, torch.ones(2, 16, 16, 3)), step, {"distortion": 0.0})["albedo_smooth"]
        opt.zero_grad()
        term.backward()
        opt.step()
    assert spread(nerf) < 0.5 * before, (before, spread(nerf))
    with pytest.raises(ValueError, match="albedo_smooth_eps"):
        NeRFConfig(albedo_smooth_eps=0.0)


def test_draw_by_weight_follows_the_weights_past_multinomials_limit(monkeypatch):
    """renderers.base.draw_by_weight: indices in proportion to the weights, never a zero-weight one, by
    torch.multinomial and, past its category limit (a large GPU render's samples), by inverting the cumulative sum."""
    import renderers.base as base

    w = torch.tensor([0.0, 1.0, 3.0, 0.0, 4.0])
    for limit in (base.MULTINOMIAL_MAX, 3):  # the second forces the cumulative-sum path on 5 categories
        monkeypatch.setattr(base, "MULTINOMIAL_MAX", limit)
        idx = base.draw_by_weight(w, 40000, torch.Generator().manual_seed(0))
        freq = torch.bincount(idx, minlength=5).double() / len(idx)
        assert idx.dtype == torch.long and freq[0] == 0 and freq[3] == 0, freq
        torch.testing.assert_close(freq, w.double() / w.sum(), atol=0.01, rtol=0)


def test_exp_density_activation_is_exp_with_a_clamped_gradient():
    """``density_activation="exp"`` (Instant-NGP's trunc_exp): σ = exp(pre-activation), whose backward uses
    exp(min(x, 15)) so that a dense start cannot overflow the gradient; an unknown name is refused."""
    soft, exp = build(seed=0), build(seed=0, density_activation="exp")
    x = torch.rand(64, 3) * 1.2 - 0.6
    raw = soft._field(x)[0].detach()
    torch.testing.assert_close(exp.query_density(x), torch.exp(raw))
    torch.testing.assert_close(soft.query_density(x), torch.nn.functional.softplus(raw))
    z = torch.tensor([0.0, 20.0], requires_grad=True)
    exp._sigma(z).sum().backward()
    torch.testing.assert_close(z.grad, torch.tensor([1.0, math.exp(15.0)]))
    with pytest.raises(ValueError, match="density_activation"):
        NeRFConfig(density_activation="relu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_parity_with_torch_backend():
    dev = torch.device("cuda")
    o, d = _rays(256)
    grid = volume_torch.OccupancyGrid(0.8, 8)
    grid.update(lambda x: 10.0 * (x.norm(dim=-1) < 0.6).float(), 0.1, torch.rand(512, 3))
    s = volume_torch.sample_rays(o, d, 0.8, 32, occupancy=grid, gen=torch.Generator().manual_seed(0)).to(dev)
    g = torch.Generator().manual_seed(1)
    sigma = (torch.rand(len(s), generator=g) * 8).to(dev).requires_grad_(True)
    values = torch.rand(len(s), 3, generator=g).to(dev).requires_grad_(True)
    cot = torch.randn(256, 3, generator=g).to(dev)
    res = {}
    for backend in ("torch", "cuda"):
        w = kernels.render_weights(backend, s, sigma)
        out = kernels.accumulate_along_rays(backend, s, w, values)
        res[backend] = (w, out, *torch.autograd.grad((out * cot).sum(), (sigma, values)))
    for a, b in zip(res["torch"], res["cuda"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # Whole renders: different samplers (stratified vs marching), so compare loosely.
    c = cams(2, 32).to(dev)
    renders = []
    for backend in ("torch", "cuda"):
        nerf = NeRFConfig(**{**SMALL, "backend": backend}).build(torch.Generator().manual_seed(0), dev).eval()
        with torch.no_grad():
            renders.append(nerf.render(c, torch.ones(2, 32, 32, 3, device=dev)))
    assert (renders[0].alpha - renders[1].alpha).abs().mean() < 0.03
    assert (renders[0].rgb - renders[1].rgb).abs().mean() < 0.03


# ---- optimisation sanity -------------------------------------------------------------------------------------------


def test_fits_a_red_disc():
    res = 32
    c = orbit_cameras([0.0], [0.0], 2.5, 40.0, res)
    jj, ii = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    disc = ((ii + 0.5 - res / 2) ** 2 + (jj + 0.5 - res / 2) ** 2 < 7.0**2)[None, ..., None]
    target = torch.where(disc, torch.tensor([0.8, 0.1, 0.1]), torch.ones(3))
    # Learning rates 3× the SDS defaults so that a few dozen steps suffice.
    nerf = build(seed=0, ambient_only_steps=10**9, lr_grid=3e-2, lr_mlp=3e-3)
    opt = torch.optim.Adam(list(nerf.param_groups().values()), betas=(0.9, 0.99))
    bg = torch.ones(1, res, res, 3)
    losses = []
    for step in range(40):
        out = nerf.render(c, bg)
        loss = ((out.rgb - target) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        nerf.after_step(step, out)
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 4, losses


def test_random_initial_albedo_is_a_saturated_colour_per_seed():
    from renderers.nerf import NeRFConfig
    grey = NeRFConfig().build(torch.Generator().manual_seed(0))
    same = NeRFConfig(init_albedo="random").build(torch.Generator().manual_seed(0))
    # the draw comes after every other initialisation: the grey scene's parameters are unchanged
    torch.testing.assert_close(grey.mlp[0].weight, same.mlp[0].weight)
    cols = []
    for seed in range(4):
        scene = NeRFConfig(init_albedo="random").build(torch.Generator().manual_seed(seed))
        c = torch.sigmoid(scene.mlp[2].bias[1:4].detach())
        assert float(c.max() - c.min()) >= 0.6 * 0.5 - 1e-6  # saturation >= 0.5 at value >= 0.6
        cols.append(c)
    assert min(float((a - b).abs().max()) for i, a in enumerate(cols) for b in cols[i + 1:]) > 0.05
    with pytest.raises(ValueError, match="init_albedo"):
        NeRFConfig(init_albedo="pink")


def test_see_through_lets_a_pixel_that_should_be_empty_thin_an_opaque_column():
    """``see_through``: the forward render is unchanged; beyond ``see_through_depth`` a loss asking for more opacity
    gets the exact gradient (one-sided there; at depth 0 everywhere); a loss asking an opaque solid's middle to show
    the background thins its column, which the exact gradient (∝ T ≈ 0 inside a uniformly coloured solid) cannot
    do: a torus's hole opening in a filled blob."""
    c = cams(1, 16)
    target = torch.zeros(1, 16, 16, 3)
    target[..., 2] = 1.0
    target[:, 5:11, 5:11] = 1.0  # a blue object with a white (background) hole in the middle

    def grads(f: float, sign: float, depth: float = 7.0, step: int = 0):
        nerf = build(seed=0, see_through=f, see_through_depth=depth, density_activation="exp",
                     blob_strength=8.0).train()
        nerf.set_step(step)
        nerf.gen.manual_seed(3)
        out = nerf.render(c, torch.ones(1, 16, 16, 3))
        (sign * out.rgb.sum()).backward()
        return out.rgb.detach(), nerf.mlp[2].weight.grad[0]  # the density output's row

    rgb0, g_dark0 = grads(0.0, 1.0)  # descending Σrgb darkens: more opaque
    rgb1, g_dark1 = grads(0.1, 1.0, depth=0.0)
    assert torch.equal(rgb0, rgb1)
    assert torch.allclose(g_dark0, g_dark1)
    assert grads(0.1, 1.0)[1].abs().sum() > g_dark0.abs().sum()  # both ways below the depth (the edges' rays)
    _, g_light0 = grads(0.0, -1.0)
    _, g_light1 = grads(0.1, -1.0)
    assert g_light1.abs().sum() > 5 * g_light0.abs().sum()  # 8x here: the exact one comes from the edges
    assert torch.allclose(grads(0.1, -1.0, step=150)[1], g_light0)  # past see_through_steps: the exact gradient

    def hole_alpha(f: float) -> float:
        nerf = build(seed=0, see_through=f, density_activation="exp", blob_strength=8.0).train()
        opt = torch.optim.Adam(nerf.parameters(), lr=1e-2)
        for _ in range(30):
            loss = ((nerf.render(c, torch.ones(1, 16, 16, 3)).rgb - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return float(nerf.eval().render(c, torch.ones(1, 16, 16, 3)).alpha[0, 6:10, 6:10].mean())

    assert hole_alpha(0.0) > 0.99 and hole_alpha(0.1) < 0.9
    with pytest.raises(ValueError, match="see_through"):
        NeRFConfig(see_through=1.0)
    with pytest.raises(ValueError, match="see_through_steps"):
        NeRFConfig(see_through_steps=-1)
