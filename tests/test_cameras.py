import math

import pytest
import torch

from foundation.cameras import (
    CameraConfig,
    Cameras,
    look_at,
    orbit_cameras,
    orbit_position,
    sample_cameras,
    turntable,
    view_labels,
)


def test_orbit_convention_y_up_front_is_plus_z():
    cams = orbit_cameras(torch.tensor([0.0, 90.0]), torch.tensor([0.0, 0.0]), 2.0, 40.0, 16)
    # azimuth 0 sits on +Z, azimuth 90 on +X, both looking at the origin along -Z of the camera
    assert torch.allclose(cams.position[0], torch.tensor([0.0, 0.0, 2.0]), atol=1e-6)
    assert torch.allclose(cams.position[1], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6)
    forward = -cams.c2w[:, :3, 2]
    assert torch.allclose(forward, -cams.position / 2.0, atol=1e-6)
    # camera up has a positive world-Y component (Y-up world)
    assert (cams.c2w[:, 1, 1] > 0).all()


def test_elevation_goes_up():
    p = orbit_position(torch.tensor([0.0]), torch.tensor([30.0]), torch.tensor([2.0]))
    assert p[0, 1].item() == pytest.approx(2.0 * math.sin(math.radians(30)), abs=1e-6)


def test_c2w_is_rigid_and_opencv_roundtrip():
    cams = orbit_cameras(torch.tensor([10.0, 130.0, -75.0]), torch.tensor([5.0, 40.0, -10.0]), 2.5, 50.0, 32)
    R = cams.c2w[:, :3, :3]
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-5)
    assert torch.allclose(torch.det(R), torch.ones(3), atol=1e-5)
    # OpenCV world->camera: the origin (look-at point) projects to the principal point with positive depth
    V = cams.viewmat_opencv()
    o = V @ torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert (o[:, 2] > 0).all()
    uv = (cams.intrinsics() @ o[:, :3, None])[..., 0]
    uv = uv[:, :2] / uv[:, 2:]
    assert torch.allclose(uv, torch.full_like(uv, 16.0), atol=1e-4)
    # a world point above the origin appears above the image centre (smaller row index)
    up = V @ torch.tensor([0.0, 0.3, 0.0, 1.0])
    row = (cams.intrinsics() @ up[:, :3, None])[:, 1, 0] / up[:, 2]
    assert (row < 16).all()


def test_rays_hit_origin_at_centre():
    cams = orbit_cameras(torch.tensor([45.0]), 20.0, 2.5, 40.0, 33)
    o, d = cams.rays()
    assert o.shape == (1, 33, 33, 3) and d.shape == (1, 33, 33, 3)
    centre = o[0, 16, 16] + 2.5 * d[0, 16, 16]
    assert centre.norm().item() < 1e-5
    assert torch.allclose(d.norm(dim=-1), torch.ones(1, 33, 33), atol=1e-6)
    # top row rays point higher than the bottom row
    assert d[0, 0, 16, 1] > d[0, -1, 16, 1]


def test_look_at_straight_down_is_finite():
    c2w = look_at(torch.tensor([[0.0, 3.0, 0.0]]))
    assert torch.isfinite(c2w).all()
    assert torch.allclose(c2w[0, :3, 2], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)


def test_sampling_is_seeded_and_in_range():
    cfg = CameraConfig(azimuth=(-30, 30), elevation=(0, 10), distance=(2, 3), fovy=(30, 60), batch_size=5)
    a = sample_cameras(cfg, 16, torch.Generator().manual_seed(3))
    b = sample_cameras(cfg, 16, torch.Generator().manual_seed(3))
    assert torch.equal(a.c2w, b.c2w)
    assert a.azimuth.min() >= -30 and a.azimuth.max() <= 30
    assert a.distance.min() >= 2 and a.distance.max() <= 3
    assert torch.allclose(a.position.norm(dim=-1), a.distance, atol=1e-5)


def test_turntable_and_cat():
    cfg = CameraConfig()
    t = turntable(8, cfg, 16)
    assert len(t) == 8
    assert torch.allclose(t.azimuth[1] - t.azimuth[0], torch.tensor(45.0))
    both = Cameras.cat([t, t[:2]])
    assert len(both) == 10


def test_view_labels_thresholds():
    az = torch.tensor([0.0, 44.0, 46.0, 134.0, 136.0, 180.0, -170.0, 10.0])
    el = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 70.0])
    assert view_labels(az, el) == ["front", "front", "side", "side", "back", "back", "back", "overhead"]


def test_bad_camera_config_raises():
    with pytest.raises(ValueError, match="elevation"):
        CameraConfig(elevation=(10, 0))


def test_background_augmentation_replaces_a_share_of_the_training_backgrounds():
    """``background.augment``: each training render keeps the solid (or learned) colour, or with that chance gets a
    uniform random one (LucidDreamer's bg_aug_ratio); 0 is the plain solid colour; outside training never; the
    "random" kind is unchanged (every training render random)."""
    import pytest

    from foundation.cameras import orbit_cameras
    from renderers.base import Background, BackgroundConfig

    cams = orbit_cameras(torch.zeros(400), torch.zeros(400), 2.5, 40.0, 4)
    solid = Background(BackgroundConfig())(cams, None)  # the solid colour's renders (white, as stored)

    def share_solid(p, kind="solid"):
        bg = Background(BackgroundConfig(kind=kind, augment=p))(cams, torch.Generator().manual_seed(0))
        return (bg == solid).all(-1).all(-1).all(-1).float().mean().item()

    assert share_solid(0.0) == 1.0 and share_solid(1.0) == 0.0
    assert 0.43 < share_solid(0.5) < 0.57 and 0.43 < share_solid(0.5, "learned") < 0.57  # binomial spread, 400 draws
    random = Background(BackgroundConfig(kind="random", augment=0.5))(cams, torch.Generator().manual_seed(0))
    assert torch.equal(random, Background(BackgroundConfig(kind="random"))(cams, torch.Generator().manual_seed(0)))
    held_out = Background(BackgroundConfig(augment=0.5))(cams, None, training=False)
    assert torch.equal(held_out, solid)
    with pytest.raises(ValueError, match="augment"):
        BackgroundConfig(augment=1.5)


def test_grid_cameras_draw_only_grid_angles_and_as_many_random_numbers():
    """``azimuth_step`` / ``elevation_step``: training views from the multiples of the steps inside the ranges (the
    texture preset's views are the light-aware prior's exemplar grid); one draw per angle either way, so the run's
    other random numbers do not move."""
    from foundation.cameras import grid_angles

    assert grid_angles(-180.0, 180.0, 30.0, wrap=True).tolist() == [float(a) for a in range(-180, 180, 30)]
    assert grid_angles(-40.0, 40.0, 20.0).tolist() == [-40.0, -20.0, 0.0, 20.0, 40.0]
    assert grid_angles(5.0, 45.0, 20.0).tolist() == [20.0, 40.0]
    grid = CameraConfig(elevation=(-40.0, 40.0), azimuth_step=30.0, elevation_step=20.0, batch_size=400)
    free = CameraConfig(elevation=(-40.0, 40.0), batch_size=400)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    cams = sample_cameras(grid, 8, g1)
    sample_cameras(free, 8, g2)
    assert torch.equal(g1.get_state(), g2.get_state())
    assert set(cams.azimuth.tolist()) == set(range(-180, 180, 30))  # all 12, and 180 never doubles -180
    assert set(cams.elevation.tolist()) == {-40.0, -20.0, 0.0, 20.0, 40.0}
    with pytest.raises(ValueError, match="elevation_step"):
        CameraConfig(elevation=(5.0, 15.0), elevation_step=20.0)
    with pytest.raises(ValueError, match="azimuth_step"):
        CameraConfig(azimuth_step=-1.0)


def test_azimuth_widen_opens_the_orbit_from_a_narrow_arc():
    """Progressive views (``azimuth_widen``): the training azimuths start within ± ``azimuth_widen_from`` of the
    range's centre and reach the full range at step ``azimuth_widen``, drawing as many random numbers as ever."""
    from foundation.cameras import azimuth_range

    cfg = CameraConfig(azimuth_widen=100, azimuth_widen_from=20.0, batch_size=500)
    assert azimuth_range(cfg, 0) == (-20.0, 20.0)
    assert azimuth_range(cfg, 50) == (-100.0, 100.0)  # halfway: 20 + (180 - 20) / 2
    assert azimuth_range(cfg, 100) == (-180.0, 180.0) == azimuth_range(cfg, None) == azimuth_range(CameraConfig(), 0)
    assert azimuth_range(CameraConfig(azimuth=(0.0, 90.0), azimuth_widen=10, azimuth_widen_from=5.0), 0) == (40.0, 50.0)
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    early = sample_cameras(cfg, 8, g1, step=0)
    sample_cameras(CameraConfig(batch_size=500), 8, g2, step=0)
    assert torch.equal(g1.get_state(), g2.get_state())
    assert early.azimuth.abs().max() <= 20.0 and early.azimuth.abs().max() > 19.0
    late = sample_cameras(cfg, 8, torch.Generator().manual_seed(2), step=100)
    assert late.azimuth.abs().max() > 170.0
    with pytest.raises(ValueError, match="azimuth_widen"):
        CameraConfig(azimuth_widen=-1)


def test_camera_code_tells_a_cube_s_yaw_and_marks_presence():
    """The code a camera-conditioned prior reads (engine/train_prior.py ``camera_code``): zero past its features, a
    presence flag, a fourth azimuth harmonic that repeats with a cube's quarter turn, and every azimuth told apart."""
    from foundation.cameras import CAMERA_CODE_FEATURES, camera_code, cameras_code
    az = torch.tensor([0.0, 20.0, 90.0, 110.0, 45.0])
    el = torch.tensor([10.0, 10.0, 10.0, 10.0, 30.0])
    code = camera_code(az, el, 2.5, 40.0, 64)
    assert code.shape == (5, 64) and torch.all(code[:, CAMERA_CODE_FEATURES:] == 0)
    assert torch.all(code[:, CAMERA_CODE_FEATURES - 1] == 1)
    fourth = code[:, 6:8]  # sin, cos of 4 x azimuth
    assert torch.allclose(fourth[0], fourth[2], atol=1e-5) and torch.allclose(fourth[1], fourth[3], atol=1e-5)
    assert (fourth[0] - fourth[1]).abs().max() > 0.5
    assert fourth[4, 1].item() == pytest.approx(-1.0, abs=1e-5)  # a corner-on view
    assert torch.cdist(code[:4], code[:4]).fill_diagonal_(1.0).min() > 0.3
    assert code[4, 8].item() == pytest.approx(0.5, abs=1e-6)  # sin(30 degrees)
    assert torch.allclose(cameras_code(orbit_cameras(az, el, 2.5, 40.0, 8), 64), code, atol=1e-5)
    with pytest.raises(ValueError, match="width"):
        camera_code(az, el, 2.5, 40.0, 8)
