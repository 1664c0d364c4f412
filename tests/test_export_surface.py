"""Where the exported surface of a density scene lies (engine/export/mesh.py, ``optical_depth_from_outside``):
at the depth the renders see, not at one level of σ, which dents the asset wherever the field grew thinner."""

import numpy as np
import torch

from engine.export.fidelity import signed_error_by_region
from engine.export.mesh import (
    extract_mesh,
    marching_cubes,
    optical_depth_from_outside,
    render_matched_threshold,
    sample_grid,
)
from foundation import shapes
from renderers.nerf import NeRF, NeRFConfig

torch.set_num_threads(min(2, torch.get_num_threads()))


def _brute_force_depth(grid: np.ndarray, spacing: float, haze: float) -> np.ndarray:
    """The least optical depth to outside the grid over the 26 lattice directions, one voxel at a time."""
    s = np.where(grid > haze, grid, 0.0) * spacing
    n = np.array(grid.shape)
    out = np.full(grid.shape, np.inf)
    for x in np.ndindex(*grid.shape):
        for d in np.ndindex(3, 3, 3):
            d = np.array(d) - 1
            if not d.any():
                continue
            total, p = 0.0, np.array(x)
            while (p >= 0).all() and (p < n).all():
                total += s[tuple(p)]
                p = p - d
            out[x] = min(out[x], (total - 0.5 * s[x]) * np.linalg.norm(d))
    return out


def test_optical_depth_from_outside_matches_a_ray_by_ray_sum():
    rng = np.random.default_rng(3)
    grid = rng.gamma(0.5, 2.0, size=(9, 7, 8))
    got = optical_depth_from_outside(grid, 0.1, haze=0.4)
    assert got.shape == grid.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, _brute_force_depth(grid, 0.1, 0.4), rtol=1e-5, atol=1e-6)


def test_optical_depth_is_the_distance_into_a_uniform_box_times_its_density():
    grid = np.zeros((20, 20, 20))
    grid[5:15, 5:15, 5:15] = 3.0
    tau = optical_depth_from_outside(grid, 0.05, haze=1.0)
    assert tau[0, 0, 0] == 0 and tau[5, 10, 10] == np.float32(0.5 * 3.0 * 0.05)  # half the boundary voxel
    assert np.isclose(tau[10, 10, 10], 3.0 * 0.05 * 4.5)  # 4 voxels and a half to the nearest face
    assert not optical_depth_from_outside(grid, 0.05, haze=3.0).any()  # all of it at the haze floor: empty


class _ThinFacedCube(NeRF):
    """A NeRF whose field is analytic: a soft cube (0.8 m) with σ 20 /m inside, but only 8 /m in its +x third, the
    way a SDS-trained field's faces grow to different densities (session 44's seed-1 cube: one side face peaks at
    σ ≈ 5 where its top reaches 20). Its renders show the whole cube; one σ level cuts the thin part in."""

    def _field(self, x):
        soft = torch.sigmoid(-shapes.sdf("cube", x) / 0.01)
        peak = 20.0 - 12.0 * torch.sigmoid((x[:, 0] - 0.15) / 0.02)
        sigma = (peak * soft).clamp_min(1e-6)
        return torch.log(sigma), torch.zeros(len(x), 3, dtype=x.dtype)


def test_a_thinner_face_is_exported_where_the_renders_show_it():
    cfg = NeRFConfig(density_activation="exp", light="shapes", samples_per_ray=64, occupancy_resolution=0)
    scene = _ThinFacedCube(cfg, torch.Generator().manual_seed(0)).eval()
    mesh, info, _ = extract_mesh(scene, resolution=64, max_faces=8000)
    assert info["surface"] == "optical depth from outside"
    err = {k: v[0] for k, v in signed_error_by_region(mesh.vertices, mesh.faces, "cube", n=20000).items()}
    others = np.mean([err[k] for k in ("-x", "+y", "-y", "+z", "-z")])
    assert abs(err["+x"]) < 0.02 and abs(err["+x"] - others) < 0.015, err

    # what one level of σ itself, matched to the same silhouettes, does to the thin part: a dent twice as deep
    grid = sample_grid(scene, 64, scene.bound)
    level = render_matched_threshold(scene, grid, scene.bound, float(np.quantile(grid, 0.9)))
    plain = marching_cubes(grid, level, scene.bound)
    dent = signed_error_by_region(plain.vertices, plain.faces, "cube", n=20000)["+x"][0]
    assert dent < -0.025 and dent < err["+x"] - 0.01, (dent, err)


def test_faint_membranes_are_dropped_and_dense_thin_parts_kept():
    """``drop_faint_membranes``: a thin sheet of a faint field (a lid of faint splats) leaves the solid; a sheet as
    thin but dense (a blade the renders show opaque) and the thick body stay whole."""
    from engine.export.mesh import drop_faint_membranes

    grid = np.zeros((48, 48, 48))
    grid[8:28, 8:28, 8:28] = 2.0  # the body
    grid[28:44, 12:24, 17:19] = 0.3  # a faint sheet two voxels thick, standing out of it
    grid[12:24, 28:44, 17:19] = 2.0  # a dense one
    level, faint = 0.2, grid < 0.5
    out, n = drop_faint_membranes(grid, level, faint)
    assert n == 15 * 12 * 2 and not (out[29:44, 12:24, 17:19] > level).any()  # all but the layer on the body
    assert (out[8:28, 8:28, 8:28] > level).all() and (out[12:24, 28:44, 17:19] > level).all()
    assert drop_faint_membranes(grid, level, np.zeros_like(faint))[1] == 0  # nothing faint: nothing dropped
