"""Cameras: OpenGL camera-to-world matrices in a Y-up world measured in metres (glTF's convention).

Conventions (shared/docs/conventions.md §3.3):
- World: +Y up, right-handed, metres; the object's front faces +Z.
- Camera: OpenGL axes (+X right, +Y up, looking down -Z); ``c2w`` maps camera to world.
- Orbit angles: azimuth in degrees measured from +Z towards +X (azimuth 0 looks at the front), elevation in
  degrees above the XZ plane, distance in metres from the look-at point (the origin).
- Converters to other conventions (OpenCV world-to-camera for gsplat) live here and are called only at library
  boundaries.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Cameras:
    """A batch of C pinhole cameras sharing one image size.

    Attributes:
        c2w: [C,4,4] OpenGL camera-to-world.
        fovy: [C] vertical field of view in radians.
        width, height: image size in pixels.
        azimuth, elevation, distance: [C] orbit parameters (degrees, degrees, metres) the cameras were made from.
        condition: optional [C,H,W,K] per-view condition images rendered with these views (the mesh scene's
            ControlNet condition, guidance/priors/controlnet.py). The training loop attaches them with
            ``with_condition``;
            they follow every re-batching (indexing, ``cat``, ``to``), so an objective that repeats the cameras for
            classifier-free guidance hands each prior row its own view's condition.
    """

    c2w: Tensor
    fovy: Tensor
    width: int
    height: int
    azimuth: Tensor
    elevation: Tensor
    distance: Tensor
    condition: Tensor | None = None

    def __post_init__(self) -> None:
        if self.c2w.ndim != 3 or self.c2w.shape[1:] != (4, 4):
            raise ValueError(f"c2w must be [C,4,4], got {tuple(self.c2w.shape)}")
        n = self.c2w.shape[0]
        for name in ("fovy", "azimuth", "elevation", "distance"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must be [{n}], got {tuple(getattr(self, name).shape)}")
        if self.condition is not None and self.condition.shape[0] != n:
            raise ValueError(f"condition must have {n} rows, got {tuple(self.condition.shape)}")

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return Cameras(self.c2w[idx], self.fovy[idx], self.width, self.height, self.azimuth[idx],
                       self.elevation[idx], self.distance[idx],
                       None if self.condition is None else self.condition[idx.to(self.condition.device)
                                                                           if isinstance(idx, Tensor) else idx])

    @staticmethod
    def cat(cams: "list[Cameras]") -> "Cameras":
        """Concatenate camera batches of the same image size (conditions too: all batches have one, or none)."""
        if len({(c.width, c.height) for c in cams}) != 1:
            raise ValueError("cannot concatenate cameras of different image sizes")
        conds = [c.condition for c in cams]
        if any(c is None for c in conds) and not all(c is None for c in conds):
            raise ValueError("cannot concatenate cameras with and without condition images")
        return Cameras(torch.cat([c.c2w for c in cams]), torch.cat([c.fovy for c in cams]), cams[0].width,
                       cams[0].height, torch.cat([c.azimuth for c in cams]), torch.cat([c.elevation for c in cams]),
                       torch.cat([c.distance for c in cams]), None if conds[0] is None else torch.cat(conds))

    def to(self, device) -> "Cameras":
        return Cameras(self.c2w.to(device), self.fovy.to(device), self.width, self.height,
                       self.azimuth.to(device), self.elevation.to(device), self.distance.to(device),
                       None if self.condition is None else self.condition.to(device))

    def with_condition(self, images: Tensor | None) -> "Cameras":
        """These cameras carrying ``images`` [C,...] (detached) as their per-view condition."""
        return Cameras(self.c2w, self.fovy, self.width, self.height, self.azimuth, self.elevation, self.distance,
                       None if images is None else images.detach())

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def position(self) -> Tensor:
        """[C,3] camera centres in world space."""
        return self.c2w[:, :3, 3]

    @property
    def focal(self) -> Tensor:
        """[C] focal length in pixels (square pixels)."""
        return 0.5 * self.height / torch.tan(0.5 * self.fovy)

    def intrinsics(self) -> Tensor:
        """[C,3,3] pixel intrinsics K in the OpenCV sense (x right, y down, principal point at the image centre)."""
        f = self.focal
        K = torch.zeros(len(self), 3, 3, dtype=self.c2w.dtype, device=self.device)
        K[:, 0, 0] = f
        K[:, 1, 1] = f
        K[:, 0, 2] = self.width / 2
        K[:, 1, 2] = self.height / 2
        K[:, 2, 2] = 1
        return K

    def viewmat_opencv(self) -> Tensor:
        """[C,4,4] world-to-camera in OpenCV axes (+X right, +Y down, +Z forward), as gsplat expects."""
        flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=self.c2w.dtype, device=self.device))
        return torch.linalg.inv(self.c2w @ flip)

    def rays(self) -> tuple[Tensor, Tensor]:
        """World-space rays through pixel centres.

        Returns:
            origins [C,H,W,3] and unit directions [C,H,W,3]; row 0 is the top of the image.
        """
        H, W = self.height, self.width
        dev, dt = self.device, self.c2w.dtype
        j, i = torch.meshgrid(torch.arange(H, device=dev, dtype=dt), torch.arange(W, device=dev, dtype=dt),
                              indexing="ij")
        f = self.focal[:, None, None]
        x = (i[None] + 0.5 - W / 2) / f
        y = -(j[None] + 0.5 - H / 2) / f
        d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # OpenGL: looking down -Z
        d = torch.einsum("cij,chwj->chwi", self.c2w[:, :3, :3], d_cam)
        d = d / d.norm(dim=-1, keepdim=True)
        o = self.position[:, None, None, :].expand_as(d)
        return o, d


def look_at(eye: Tensor, target: Tensor | None = None, up: Tensor | None = None) -> Tensor:
    """[C,4,4] OpenGL camera-to-world matrices for cameras at ``eye`` [C,3] looking at ``target`` (Y up)."""
    target = torch.zeros_like(eye) if target is None else target
    up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye) if up is None else up
    back = eye - target
    back = back / back.norm(dim=-1, keepdim=True)
    right = torch.linalg.cross(up, back, dim=-1)
    # At the poles (looking straight down) up is parallel to back: pick +Z as the reference instead.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt = torch.linalg.cross(torch.tensor([0.0, 0.0, -1.0], dtype=eye.dtype, device=eye.device).expand_as(eye),
                             back, dim=-1)
    right = torch.where(degenerate, alt, right)
    right = right / right.norm(dim=-1, keepdim=True)
    true_up = torch.linalg.cross(back, right, dim=-1)
    c2w = torch.eye(4, dtype=eye.dtype, device=eye.device).repeat(eye.shape[0], 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = true_up
    c2w[:, :3, 2] = back
    c2w[:, :3, 3] = eye
    return c2w


def orbit_position(azimuth_deg: Tensor, elevation_deg: Tensor, distance: Tensor) -> Tensor:
    """[C,3] positions on an orbit: azimuth from +Z towards +X, elevation above the XZ plane."""
    az, el = torch.deg2rad(azimuth_deg), torch.deg2rad(elevation_deg)
    return torch.stack([distance * torch.cos(el) * torch.sin(az),
                        distance * torch.sin(el),
                        distance * torch.cos(el) * torch.cos(az)], dim=-1)


def orbit_cameras(azimuth_deg, elevation_deg, distance, fovy_deg, width: int, height: int | None = None) -> Cameras:
    """Cameras on an orbit around the origin, looking at it. Scalars broadcast to the batch."""
    az = torch.as_tensor(azimuth_deg, dtype=torch.float32).reshape(-1)
    n = az.shape[0]
    el = torch.as_tensor(elevation_deg, dtype=torch.float32).reshape(-1).expand(n).clone()
    dist = torch.as_tensor(distance, dtype=torch.float32).reshape(-1).expand(n).clone()
    fov = torch.as_tensor(fovy_deg, dtype=torch.float32).reshape(-1).expand(n).clone()
    c2w = look_at(orbit_position(az, el, dist))
    return Cameras(c2w, torch.deg2rad(fov), width, height or width, az.clone(), el, dist)


@dataclass
class CameraConfig:
    """Random orbit cameras for training and the fixed paths for evaluation."""

    azimuth: tuple[float, float] = (-180.0, 180.0)
    """Azimuth range in degrees (from +Z towards +X)."""
    elevation: tuple[float, float] = (0.0, 40.0)
    """Elevation range in degrees above the horizon."""
    distance: tuple[float, float] = (2.5, 2.5)
    """Distance range in metres from the origin."""
    fovy: tuple[float, float] = (40.0, 40.0)
    """Vertical field-of-view range in degrees."""
    batch_size: int = 1
    """Cameras per training step."""
    eval_elevation: float = 15.0
    """Elevation of the turntable and held-out evaluation views."""
    azimuth_step: float = 0.0
    """Draw training azimuths from the multiples of this many degrees inside the range (0: any angle). Set to an
    exemplar prior's view grid, every training view is one the prior holds exactly (the texture preset)."""
    elevation_step: float = 0.0
    """The same for elevations (0: any angle)."""
    azimuth_widen: int = 0
    """Progressive views: over the first this many steps the azimuth range grows linearly from its centre
    ± ``azimuth_widen_from`` degrees to the full range (0: the full range from the start). A symmetric start (a
    blob) seen from every side at once settles into the average of the prompt over its unseen yaw (the demo cube
    became a cylinder); a narrow first arc lets one orientation form before the orbit closes."""
    azimuth_widen_from: float = 30.0
    """Half-width in degrees of the first azimuth arc of ``azimuth_widen``."""

    def __post_init__(self) -> None:
        for name in ("azimuth", "elevation", "distance", "fovy"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"cameras.{name} range is empty: ({lo}, {hi})")
        if self.batch_size < 1:
            raise ValueError(f"cameras.batch_size must be >= 1, got {self.batch_size}")
        if self.azimuth_widen < 0 or self.azimuth_widen_from < 0:
            raise ValueError(f"cameras.azimuth_widen and azimuth_widen_from must be >= 0, got {self.azimuth_widen} "
                             f"and {self.azimuth_widen_from}")
        for name in ("azimuth", "elevation"):
            step = getattr(self, f"{name}_step")
            if step < 0:
                raise ValueError(f"cameras.{name}_step must be >= 0, got {step}")
            if step > 0 and len(grid_angles(*getattr(self, name), step, wrap=name == "azimuth")) == 0:
                raise ValueError(f"cameras.{name} range {getattr(self, name)} holds no multiple of "
                                 f"cameras.{name}_step {step}")


def _uniform(lo: float, hi: float, n: int, gen: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def grid_angles(lo: float, hi: float, step: float, wrap: bool = False) -> Tensor:
    """The multiples of ``step`` degrees in [lo, hi]; with ``wrap`` (azimuths) a full turn keeps one of -180/180."""
    k0, k1 = math.ceil(lo / step - 1e-6), math.floor(hi / step + 1e-6)
    angles = torch.arange(k0, k1 + 1, dtype=torch.float32) * step
    if wrap and hi - lo >= 360.0 - 1e-6:
        angles = angles[angles < lo + 360.0 - 1e-6]
    return angles


def _draw(lo: float, hi: float, step: float, wrap: bool, n: int, gen: torch.Generator) -> Tensor:
    """``n`` angles uniform in [lo, hi], or uniform over its grid points when ``step`` > 0 (one draw per angle
    either way, so a run's other random numbers do not move)."""
    if step <= 0:
        return _uniform(lo, hi, n, gen)
    grid = grid_angles(lo, hi, step, wrap)
    return grid[(torch.rand(n, generator=gen) * len(grid)).long().clamp(max=len(grid) - 1)]


def azimuth_range(cfg: CameraConfig, step: int | None = None) -> tuple[float, float]:
    """The azimuth range training draws from at ``step``: ``cfg.azimuth``, narrowed about its centre during the
    first ``cfg.azimuth_widen`` steps (see there); None means the full range."""
    lo, hi = cfg.azimuth
    if step is None or cfg.azimuth_widen <= 0 or step >= cfg.azimuth_widen:
        return lo, hi
    centre, full = (lo + hi) / 2, (hi - lo) / 2
    half = min(full, cfg.azimuth_widen_from + (full - cfg.azimuth_widen_from) * step / cfg.azimuth_widen)
    return centre - half, centre + half


def sample_cameras(cfg: CameraConfig, resolution: int, gen: torch.Generator, n: int | None = None,
                   step: int | None = None) -> Cameras:
    """Random orbit cameras; ``gen`` (a CPU generator) is the run's single source of randomness for cameras.
    ``step`` (the training step) narrows the azimuths while ``cfg.azimuth_widen`` says so.

    Elevation is drawn uniformly in angle, as threestudio does.
    """
    n = cfg.batch_size if n is None else n
    az = _draw(*azimuth_range(cfg, step), cfg.azimuth_step, True, n, gen)
    el = _draw(*cfg.elevation, cfg.elevation_step, False, n, gen)
    dist = _uniform(*cfg.distance, n, gen)
    fov = _uniform(*cfg.fovy, n, gen)
    return orbit_cameras(az, el, dist, fov, resolution)


def turntable(n: int, cfg: CameraConfig, resolution: int, azimuth_offset: float = 0.0) -> Cameras:
    """``n`` evenly spaced cameras around the object at the evaluation elevation, mean distance and fov."""
    az = azimuth_offset + torch.arange(n, dtype=torch.float32) * (360.0 / n)
    az = (az + 180.0) % 360.0 - 180.0
    return orbit_cameras(az, cfg.eval_elevation, sum(cfg.distance) / 2, sum(cfg.fovy) / 2, resolution)


@dataclass(frozen=True)
class ViewThresholds:
    """Direction-label thresholds in degrees (guidance-spec §1.6; threestudio defaults 45/45/60)."""

    front: float = 45.0
    back: float = 45.0
    overhead: float = 60.0


VIEW_LABELS = ("front", "side", "back", "overhead")


def view_labels(azimuth_deg: Tensor, elevation_deg: Tensor, th: ViewThresholds = ViewThresholds()) -> list[str]:
    """Direction label per camera: front / side / back / overhead.

    The azimuth is wrapped into [-180, 180). Checks run in the order side (default), front, back, overhead, a
    later match overriding an earlier one (threestudio's rule, guidance-spec §1.6).
    """
    az = (azimuth_deg + 180.0) % 360.0 - 180.0
    out = []
    for a, e in zip(az.tolist(), elevation_deg.tolist()):
        label = "side"
        if abs(a) < th.front:
            label = "front"
        if abs(a) > 180.0 - th.back:
            label = "back"
        if e > th.overhead:
            label = "overhead"
        out.append(label)
    return out


def angular_distance_deg(a: Tensor, b: Tensor) -> Tensor:
    """Angle in degrees between direction vectors a [...,3] and b [...,3]."""
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


__all__ = ["Cameras", "CameraConfig", "ViewThresholds", "VIEW_LABELS", "look_at", "orbit_position", "orbit_cameras",
           "sample_cameras", "grid_angles", "turntable", "view_labels", "angular_distance_deg"]


CAMERA_CODE_FEATURES = 14
"""Entries of ``camera_code`` that carry the camera (the rest of its width is zero)."""


def camera_code(azimuth_deg: Tensor, elevation_deg: Tensor, distance: Tensor, fovy_deg: Tensor, width: int) -> Tensor:
    """A fixed (unlearned) code of orbit cameras [C, width] that a camera-conditioned prior adds to every row of its
    text condition (``prompts.camera_code``; engine/train_prior.py ``camera_code`` trains a UNet to read it).

    The first ``CAMERA_CODE_FEATURES`` entries: sin and cos of 1-4 times the azimuth (the fourth harmonic is what
    tells a cube's faces from its corners), sin and cos of the elevation and the elevation over 45 degrees, the
    distance and the field of view centred on the engine's presets ((d - 2.3) / 0.3, (fov - 50) / 15 degrees), and a
    constant 1 that marks a code as present (zero code: no camera). Added to every token row, the code shifts all of
    a cross-attention's values alike, so each attention layer gets a camera-dependent bias: MVDream (Shi et al.
    2023) and Zero-1-to-3 (Liu et al. 2023) condition their UNets on the camera in the same spirit, through the time
    embedding and the CLIP token respectively. Here no module is added, so the folder stays SD's own layout and
    ``StableDiffusionPipeline`` samples it without a camera (trained with the code dropped)."""
    if width < CAMERA_CODE_FEATURES:
        raise ValueError(f"a camera code needs a text width of at least {CAMERA_CODE_FEATURES}, got {width}")
    az = torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=torch.float32).reshape(-1))
    el = torch.deg2rad(torch.as_tensor(elevation_deg, dtype=torch.float32).reshape(-1))
    n = az.shape[0]
    dist = torch.as_tensor(distance, dtype=torch.float32, device=az.device).reshape(-1).expand(n)
    fov = torch.as_tensor(fovy_deg, dtype=torch.float32, device=az.device).reshape(-1).expand(n)
    feats = [f(k * az) for k in (1, 2, 3, 4) for f in (torch.sin, torch.cos)]
    feats += [torch.sin(el), torch.cos(el), el / math.radians(45.0), (dist - 2.3) / 0.3, (fov - 50.0) / 15.0,
              torch.ones_like(az)]
    code = torch.stack(feats, 1)
    return torch.cat([code, code.new_zeros(n, width - code.shape[1])], 1)


def cameras_code(cams: "Cameras", width: int) -> Tensor:
    """``camera_code`` of a Cameras batch (its fovy is in radians)."""
    return camera_code(cams.azimuth, cams.elevation, cams.distance, torch.rad2deg(cams.fovy), width)
