"""Issue #17: the fidelity metrics (engine/export/fidelity.py) against known answers, the shapes key light
(renderers/keylight.py), the local Gaussian field query, and the bounds an exported asset reaches per renderer."""

import math

import numpy as np
import pytest
import torch
from tiny_models import split_cube

from engine.export import fidelity as fid
from foundation import shapes
from foundation.cameras import orbit_cameras
from renderers.base import AlbedoField, MeshSource


def _split_cube(half: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """A 24-vertex cube (each face its own 4 vertices, as a UV-seamed export has), counter-clockwise outside."""
    verts, faces, _ = split_cube(half)
    return verts, faces


def _asset(verts, faces, colour="red", scale=1.0) -> fid.LoadedAsset:
    lin = fid.srgb_to_linear(np.array(shapes.COLOURS[colour]) / 255.0) * scale
    return fid.LoadedAsset(verts, faces, None, None, np.r_[lin, 1.0])


def test_perfect_cube_scores_the_sampling_floor():
    v, f = _split_cube()
    s = fid.score_asset(_asset(v, f), "cube", "red")
    assert s.accuracy < 1e-6
    assert 0.010 < s.completeness < 0.016  # ≈ 0.5·√(area / 5000) = 0.014: the point-sample floor
    assert s.largest_piece == 1.0 and s.pieces == 1  # 24 vertices, 6 UV islands, one piece once welded
    assert s.chromaticity_distance < 1e-9 and abs(s.luminance_ratio - 1) < 1e-9 and s.face_spread < 1e-6


def test_metrics_see_a_bigger_shape_a_floater_and_a_darker_colour():
    v, f = _split_cube()
    big = fid.score_asset(_asset(v * 1.1, f), "cube", "red")
    assert 0.04 <= big.accuracy < 0.045  # every point at least 4 cm outside (more near edges and corners)
    fv, ff = _split_cube(0.1)
    verts, faces = np.concatenate([v, fv + [0, -0.7, 0]]), np.concatenate([f, ff + len(v)])
    floater = fid.score_asset(_asset(verts, faces), "cube", "red")
    assert floater.pieces == 2 and math.isclose(floater.largest_piece, 3.84 / (3.84 + 0.24), rel_tol=1e-6)
    dark = fid.score_asset(_asset(v, f, scale=0.5), "cube", "red")
    assert abs(dark.luminance_ratio - 0.5) < 1e-6 and dark.chromaticity_distance < 1e-9


def _drum(radius: float = 0.55, n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A closed cylinder about y, height 0.8 (the cube's): a ring of quads and two fans."""
    a = 2 * math.pi * np.arange(n) / n
    ring = np.stack([radius * np.cos(a), np.zeros(n), radius * np.sin(a)], -1)
    cv = np.concatenate([ring + [0, -0.4, 0], ring + [0, 0.4, 0], [[0, -0.4, 0], [0, 0.4, 0]]])
    k, k1 = np.arange(n), (np.arange(n) + 1) % n
    bottom, top = np.full(n, 2 * n), np.full(n, 2 * n + 1)
    cf = np.concatenate([np.stack([k, k1, k1 + n], -1), np.stack([k, k1 + n, k + n], -1),
                         np.stack([bottom, k1, k], -1), np.stack([top, k + n, k1 + n], -1)])
    return cv, cf


def test_corner_ratio_tells_the_cube_from_its_rotational_average():
    """The demo cube came out a cylinder of radius 0.55 (the union of the cube over every yaw) while its accuracy
    looked like a 35% too wide cube: the sections' radius per azimuth shows which."""
    v, f = _split_cube()
    r = fid.section_radii(v, f, 0.0, sectors=8)
    assert np.allclose(r[::2], 0.4) and np.allclose(r[1::2], 0.4 * math.sqrt(2))  # faces and edges, from +x
    assert math.isclose(fid.corner_ratio(v, f), math.sqrt(2), rel_tol=1e-9)
    yaw = np.array([[math.cos(0.3), 0, -math.sin(0.3)], [0, 1, 0], [math.sin(0.3), 0, math.cos(0.3)]])
    assert 1.33 < fid.corner_ratio(v @ yaw.T, f) <= math.sqrt(2) + 1e-9  # any yaw, to the rays' sampling
    cv, cf = _drum()
    assert abs(fid.corner_ratio(cv, cf) - 1) < 2e-3
    assert fid.score_asset(_asset(cv, cf), "cube", "red").corner_ratio < 1.01
    assert fid.score_asset(_asset(v, f), "cube", "red").corner_ratio > 1.41
    assert fid.score_asset(_asset(cv, cf), "cone", "red").corner_ratio is None  # the cube's measure only
    assert np.isnan(fid.section_radii(v, f, 0.9)).all()  # above the mesh: no section


def test_best_yaw_scores_a_turned_cube_as_the_cube_it_is():
    """A perfect cube turned 30 degrees about y is 5 cm off the axis-aligned truth, and exact at its best yaw (60
    degrees back, the cube's 90-degree symmetry); a drum has no yaw that helps."""
    v, f = _split_cube()
    straight = fid.score_asset(_asset(v, f), "cube", "red")
    assert straight.yaw == 0.0 and straight.yaw_accuracy == straight.accuracy
    assert straight.yaw_completeness == straight.completeness
    turned = fid.score_asset(_asset(v @ fid.yaw_matrix(30.0).T, f), "cube", "red")
    assert turned.accuracy > 0.03 and turned.completeness > 0.03
    assert turned.yaw == 60.0 and turned.yaw_accuracy < 1e-6
    assert abs(turned.yaw_completeness - straight.completeness) < 1e-3
    cv, cf = _drum()
    drum = fid.score_asset(_asset(cv, cf), "cube", "red")
    assert drum.yaw_accuracy > 0.9 * drum.accuracy > 0.04
    assert fid.score_asset(_asset(v, f), "torus", "red").yaw is None  # the cube's measure only


def test_true_surface_samples_lie_on_the_surface():
    for shape in ("cube", "torus", "cone"):
        p = fid.true_surface_samples(shape, 2000)
        assert np.abs(fid._sdf(shape, p)).max() < 1e-4


def test_face_spread_reads_the_texture_per_face(tmp_path):
    """A baked GLB round trip: a texture whose top face is lighter shows up as face spread, through UVs."""
    from engine.export import ExportOptions, export_scene

    # a cube whose colour carries the key light's shading: what an unlit bake must not export
    class LitCube(MeshSource, AlbedoField):
        def export_mesh(self):
            v, f = _split_cube()
            return {"vertices": torch.tensor(v), "faces": torch.tensor(f)}

        def query_albedo(self, x):
            alb = torch.tensor(shapes.COLOURS["red"], dtype=torch.float32) / 255
            n = torch.zeros_like(x).scatter_(1, x.abs().argmax(1, keepdim=True), 1.0) * x.sign()
            light = torch.tensor(shapes.LIGHT_DIR) / torch.tensor(shapes.LIGHT_DIR).norm()
            return alb * (shapes.AMBIENT + shapes.DIFFUSE * (n @ light).clamp_min(0))[:, None]

    path = tmp_path / "lit.glb"
    export_scene(LitCube(), ["glb"], {"glb": str(path)}, ExportOptions(texture_size=64))
    s = fid.score_glb(str(path), "cube", "red")
    assert s.face_spread > 30 and s.luminance_ratio < 0.85


def _front_camera(res=32):
    return orbit_cameras(torch.zeros(1), torch.zeros(1), torch.tensor([2.5]), torch.tensor([40.0]), res)


def test_key_light_on_a_flat_face_matches_the_ground_truth_shading():
    from renderers.keylight import depth_normals, key_light_factor

    cams = _front_camera()
    o, d = cams.rays()
    depth = ((0.4 - o[..., 2]) / d[..., 2])[..., None]  # the plane z = 0.4 (the cube's front face)
    n = depth_normals(cams, depth, torch.ones_like(depth))
    torch.testing.assert_close(n, torch.tensor([0.0, 0.0, 1.0]).expand_as(n), atol=1e-4, rtol=0)
    light = torch.tensor(shapes.LIGHT_DIR) / torch.tensor(shapes.LIGHT_DIR).norm()
    expect = shapes.AMBIENT + shapes.DIFFUSE * light[2]
    torch.testing.assert_close(key_light_factor(n), torch.full_like(depth, float(expect)))


def test_gaussian_field_query_is_local_and_exact():
    """The block-wise query equals the dense sum (up to the 3.33σ cut-off) on a scene of many small splats."""
    from renderers.gaussians import GaussiansConfig
    from renderers.kernels.splat_torch import covariance

    g = torch.Generator().manual_seed(0)
    scene = GaussiansConfig(num_points=1500, init="coarse_sphere", backend="torch").build(g)
    with torch.no_grad():
        scene.log_scales.data = torch.log(torch.rand(1500, 3, generator=g) * 0.03 + 0.005)
        scene.quats.data = torch.randn(1500, 4, generator=g)
    x = torch.rand(1000, 3, generator=g) * 1.4 - 0.7
    prec = torch.linalg.inv(covariance(scene.quats, scene.scales)).detach().double()
    d = x.double()[:, None] - scene.means.detach().double()[None]
    ref = (scene.opacities.detach().double() * torch.exp(-0.5 * torch.einsum("mni,nij,mnj->mn", d, prec, d))).sum(-1)
    torch.testing.assert_close(scene.query_density(x).double(), ref, atol=5e-3, rtol=0)


# -- what a user downloads, per renderer (one short shapes-world run each) --------------------------------------------
# "a red cube" with the defaults (400 steps and the automatic export), as `python bench/bench_fidelity.py` runs it.
# Bounds are what the defaults reach there (docs/benchmarks.md, "Fidelity"), with a margin: they guard against
# regressions on the closed-form exemplar prior. Issue #17's goals themselves are asserted on the learned prior, the
# default, in tests/test_export.py (the demo's NeRF cube and its mesh chain, the Gaussians torus). On the exemplar
# prior the Gaussians meet the albedo goals on the cube (chromaticity, luminance). Their geometry and face
# spread move with rounding: runs whose only difference is the splatter's rounding or the thread count scored
# accuracy 0.027-0.039 and spread 16.9-24.97 (sessions 20 and 33: 16.9 and 20.2 from two splatters whose images agree
# to 8e-6; 23.4 at one thread and 24.97 at two for session 33's), and seeds 1 and 2 0.043 / 0.041, 30.1 and
# 0.028 / 0.030, 25.6 (docs/benchmarks.md, session 33), so the Gaussians' bounds sit above that spread.
RUNS = {
    "nerf": {"accuracy": 0.04, "completeness": 0.045, "chroma": 0.04, "lum": (0.35, 1.15), "spread": 30.0},
    "gaussians": {"accuracy": 0.048, "completeness": 0.048, "chroma": 0.03, "lum": (0.85, 1.15), "spread": 34.0},
}


@pytest.mark.slow
@pytest.mark.parametrize("renderer", sorted(RUNS))
def test_exported_cube_is_faithful(renderer, tmp_path):
    from engine.cli import main

    bound = RUNS[renderer]
    run = tmp_path / renderer
    assert main(["generate", "a red cube", "--prior", "shapes-exemplar", "--renderer", renderer, "--out", str(run),
                 "--train.no-progress", "--train.video-frames", "0"]) == 0
    s = fid.score_glb(str(run / "export" / "model.glb"), "cube", "red")
    assert s.accuracy <= bound["accuracy"] and s.completeness <= bound["completeness"], s
    assert s.largest_piece >= 0.98, s
    lo, hi = bound["lum"]
    assert s.chromaticity_distance <= bound["chroma"] and lo <= s.luminance_ratio <= hi, s
    assert s.face_spread <= bound["spread"], s


# ------------------------------------------------------------------------------------- unseen-splat pruning
def test_splatter_reports_each_gaussians_largest_blending_weight():
    """max_weight is the largest α·T over the image: rendering one-hot features gives each Gaussian's weight map."""
    from renderers.kernels.splat_torch import splat_torch

    g = torch.Generator().manual_seed(3)
    n = 48
    means = (torch.rand(n, 3, generator=g) * 2 - 1) * 0.3
    quats, scales = torch.randn(n, 4, generator=g), 0.05 + 0.1 * torch.rand(n, 3, generator=g)
    opac = 0.6 + 0.39 * torch.rand(n, generator=g)
    cams = orbit_cameras(torch.tensor([10.0, 140.0]), 20.0, 2.0, 45.0, 40)
    res = splat_torch(means, quats, scales, opac, torch.eye(n).expand(2, n, n), cams.viewmat_opencv(),
                      cams.intrinsics(), 40, 40)
    weight_maps = res.render  # [C,H,W,N]: premultiplied one-hot features are the weights α_i T_i
    assert torch.allclose(res.max_weight, weight_maps.amax((1, 2)), atol=1e-6)
    assert (res.max_weight > 0.01).sum() > n  # most are seen; the test is not vacuous
    assert (res.max_weight < 0.01).any()  # and some are hidden behind others in at least one view


def test_densification_prunes_the_gaussians_no_render_showed():
    """A splat hidden behind an opaque one in every training view is pruned; seen ones stay; 0 disables."""
    from renderers.gaussians import GaussiansConfig

    cams = orbit_cameras(torch.tensor([-5.0, 0.0, 5.0]), 0.0, 2.5, 40.0, 32)  # looking from +Z
    means = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.6, 0.0, 0.0]])  # hidden, occluder, beside
    for prune_unseen, survivors in ((0.01, 2), (0.0, 3)):
        cfg = GaussiansConfig(backend="torch", num_points=3, prune_opacity=0.0, prune_isolated=0.0,
                              densify_grad_threshold=1e9, prune_unseen=prune_unseen)
        scene = cfg.build(torch.Generator().manual_seed(0))
        scene.attach_optimizer(torch.optim.Adam(list(scene.param_groups().values())))
        with torch.no_grad():
            scene.means.copy_(means)
            scene.log_scales.copy_(torch.log(torch.tensor([[0.02] * 3, [0.4] * 3, [0.05] * 3])))
            scene.opacity_logits.copy_(torch.logit(torch.tensor([0.5, 0.999, 0.5])))
        out = scene.render(cams, torch.ones(3, 32, 32, 3))
        out.rgb.sum().backward()
        scene._accumulate_grad_stats(out)
        assert scene.seen_weight[0] < 0.01 < scene.seen_weight[2] and scene.seen_weight[1] > 0.9
        counts = scene.densify_and_prune()
        assert counts["pruned"] == 3 - survivors and scene.num_gaussians == survivors
        assert torch.allclose(scene.means, means[3 - survivors:])
        assert scene.seen_steps == 0 and scene.seen_weight.shape == (survivors,)  # a fresh window


def test_cavity_fill_makes_a_pierced_shell_solid_but_keeps_what_a_viewer_sees():
    """A hollow box shell with pinholes wider than the closing is filled inside (no line of sight reaches the
    middle), while a torus-like hole through the object and an open-topped cup's inside stay empty."""
    from engine.export.mesh import fill_cavities, seen_from_outside

    n = 40
    shell = np.zeros((n, n, n))
    shell[8:32, 8:32, 8:32] = 1.0
    shell[10:30, 10:30, 10:30] = 0.0  # walls 2 voxels thick
    shell[18:24, 18:24, 8:10] = 0.0  # a 6-voxel hole in one wall (wider than the closing shuts)
    shell[8:10, 12:15, 20:23] = 0.0  # and a smaller one elsewhere
    filled, count = fill_cavities(shell, 0.5)
    far_corner = (slice(26, 30), slice(26, 30), slice(26, 30))  # no axis or diagonal line through a hole gets here
    assert (filled[far_corner] > 0.5).all(), "voxels no straight line of sight reaches are filled"
    assert (filled[19:23, 19:23, 10:13] < 0.5).all(), "a viewer looking through the hole sees these: kept empty"
    assert count > 0
    ring = np.zeros((n, n, n))
    ring[5:35, 15:25, 5:35] = 1.0
    ring[15:25, :, 15:25] = 0.0  # a square hole straight through
    assert (fill_cavities(ring, 0.5)[0][17:23, :, 17:23] < 0.5).all()  # (the closing rounds its corners)
    cup = np.zeros((n, n, n))
    cup[5:35, 5:35, 5:35] = 1.0
    cup[10:30, 10:35, 10:30] = 0.0  # open at the top (+y)
    assert (fill_cavities(cup, 0.5)[0][13:27, 13:35, 13:27] < 0.5).all()
    assert seen_from_outside(cup > 0.5)[20, 20, 20] and not seen_from_outside(shell > 0.5)[28, 28, 28]


@pytest.mark.slow
def test_texturing_the_exact_cube_meets_the_albedo_goals(tmp_path):
    """Goal 3: `engine texture` on the exact cube with its defaults bakes the true albedo (measured: (200, 30, 30),
    chromaticity 0.000, luminance 1.00, face spread 4.2; goals 0.06, within 15%, under 10) and roughness."""
    import json

    import trimesh

    from engine.cli import main
    from renderers.reference import primitive_mesh

    v, f = primitive_mesh("cube")
    mesh = str(tmp_path / "cube.obj")
    trimesh.Trimesh(v.numpy(), f.numpy(), process=False).export(mesh)
    run = tmp_path / "run"
    assert main(["texture", mesh, "a red cube", "--out", str(run)]) == 0
    s = fid.score_glb(str(run / "textured.glb"), "cube", "red")
    assert s.chromaticity_distance <= 0.03 and 0.93 <= s.luminance_ratio <= 1.07, s
    assert s.face_spread < 10.0, s
    report = json.loads((run / "report.json").read_text())
    assert abs(report["roughness_mean"] - 0.7) < 0.05 and report["metallic_mean"] < 0.02, report
