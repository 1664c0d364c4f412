"""3D Gaussian splatting scene (Kerbl et al. 2023, arXiv 2308.04079) for score distillation.

Parameters (N Gaussians, all ``nn.Parameter`` so the loop's optimiser sees them):
    means [N,3] (world, metres, Y up), log_scales [N,3], quats [N,4] (w,x,y,z, normalised when used),
    opacity_logits [N], sh_dc [N,3] and sh_rest [N,(d+1)²−1,3] (INRIA SH colour: rgb = SH(dir) + 0.5).

Rendering goes through one splat op with two backends (renderers/kernels): a pure-torch rasterizer that runs on CPU
and ``gsplat.rasterization`` on CUDA. Besides RGB the op composites each Gaussian's distance to the camera (→ depth)
and its shortest-axis normal facing the camera (→ normal), so objectives stay renderer-agnostic.

Densification (renderers.md §1.5–1.6) follows 3DGS's adaptive density control with SDS-sized thresholds: the running
mean of ‖∂L/∂μ₂‖ in NDC units selects Gaussians to clone (small) or split (large), then low-opacity, huge or
non-finite Gaussians are pruned, all under a hard cap. It changes the number of rows of every parameter, so:

* each resized parameter becomes a new ``nn.Parameter`` (autograd caches a leaf's shape, so ``p.data`` cannot simply
  be swapped), and it replaces the old one in the attached optimiser's param_groups;
* the optimiser's per-element state (Adam's exp_avg / exp_avg_sq) is sliced and zero-extended alongside. For that
  the scene needs the optimiser: the training loop calls ``scene.attach_optimizer(opt)`` once after building it from
  ``scene.param_groups()``. Without an attached optimiser densification is skipped (with one warning).
"""

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from foundation.cameras import Cameras
from renderers.base import (
    DensityField,
    GaussianSplats,
    OwnOptimizer,
    RenderOutput,
    SurfaceColour,
    composite,
    draw_by_weight,
)
from renderers.kernels import resolve_backend, splat
from renderers.kernels.splat_torch import SH_C0, covariance, eval_sh, quat_to_rotmat
from renderers.keylight import LIGHTS, shade_under_key_light

BACKENDS = ("auto", "torch", "cuda")
INITS = ("random", "coarse_sphere", "file")
NORMAL_MODES = ("axis", "depth")
_PARAM_ATTRS = {"means": "means", "scales": "log_scales", "quats": "quats", "opacities": "opacity_logits",
                "sh_dc": "sh_dc", "sh_rest": "sh_rest"}


def _binary_entropy(p: Tensor) -> Tensor:
    """Mean −p·ln p − (1−p)·ln(1−p) (0 at p = 0 or 1, ln 2 at 1/2)."""
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log()).mean()


@dataclass
class GaussiansConfig:
    """3D Gaussian splatting: initialisation, colour, learning rates, densification, regularisers and backend."""

    REGULARIZERS: ClassVar[tuple[str, ...]] = ("scale", "anisotropy", "opacity", "opacity_entropy", "albedo_smooth")
    """The terms ``Gaussians.regularizers`` returns: the keys a run's ``regularizers:`` may weight."""

    num_points: int = 2000
    """Gaussians at initialisation (ignored for init="file", which uses every point of the file)."""
    init: str = "random"
    """"random" (uniform in a ball), "coarse_sphere" (a shell: a solid-looking sphere, suits the shapes world) or
    "file" (a point cloud, see init_path)."""
    init_path: str = ""
    """Point cloud for init="file": .ply (x,y,z and optional red,green,blue or f_dc_*) or .npy [N,3] / [N,6]."""
    init_radius: float = 0.6
    """Radius in metres of the initial ball or shell."""
    init_scale: float = 0.05
    """Initial isotropic scale in metres; <= 0 uses √(mean squared distance to the 3 nearest neighbours)."""
    init_opacity: float = 0.12
    """Initial opacity in (0,1) (coarse_sphere uses max(init_opacity, 0.5) so the shell reads as a surface)."""
    init_color: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Initial RGB in [0,1] when the init gives no colours."""
    sh_degree: int = 0
    """Maximum spherical-harmonics degree of the colour (0-3)."""
    sh_degree_interval: int = 0
    """Grow the active SH degree by one every N steps, starting at 0 (0: use sh_degree from the start)."""
    lr_means: float = 2e-3
    """Adam learning rate of the means (metres)."""
    lr_means_final: float = 0.0
    """The means' learning rate after ``lr_means_decay_steps``, reached by exponential decay from ``lr_means`` (the
    position schedule of 3D Gaussian splatting, Kerbl et al. 2023, https://arxiv.org/abs/2308.04079, §7.1); 0 keeps
    ``lr_means`` for the whole run."""
    lr_means_decay_steps: int = 400
    """Steps over which the means' learning rate decays to ``lr_means_final``."""
    lr_scales: float = 5e-3
    """Adam learning rate of the log-scales."""
    lr_quats: float = 1e-3
    """Adam learning rate of the quaternions."""
    lr_opacities: float = 2e-2
    """Adam learning rate of the opacity logits."""
    lr_sh_dc: float = 2e-2
    """Adam learning rate of the SH DC colour coefficients."""
    lr_sh_rest: float = 1e-3
    """Adam learning rate of the higher SH bands (3DGS uses DC / 20)."""
    densify: bool = True
    """Clone, split and prune Gaussians during training (needs attach_optimizer)."""
    densify_start: int = 100
    """First step at which to densify."""
    densify_stop: int = 3000
    """No densification from this step on."""
    densify_every: int = 100
    """Densify and prune every N steps."""
    densify_grad_threshold: float = 0.01
    """Mean ‖∂L/∂μ₂‖ in NDC units above which a Gaussian is cloned or split (SDS: ~0.01; photometric: 2e-4)."""
    clone_scale_threshold: float = 0.02
    """Gaussians with max scale (metres) at or below this are cloned, larger ones are split."""
    split_factor: float = 1.6
    """Scale divisor of the two children of a split."""
    prune_opacity: float = 0.01
    """Prune Gaussians whose opacity falls below this. The shipped shapes prior sets 0.05 for elbo: fainter splats
    formed a skirt under the cubes that the export's bake mixed into the bottom face, and sat in the tori's holes
    (docs/benchmarks.md, session 42)."""
    prune_scale: float = 0.5
    """Prune Gaussians whose largest scale exceeds this many metres."""
    opacity_reset_every: int = 0
    """Reset opacities to at most 0.01 every N steps while densifying (0: never; SDS pipelines mostly skip it)."""
    max_gaussians: int = 6_000
    """Hard cap on the number of Gaussians. A CPU budget (issue #17): the torch splatter's step cost grows with N
    (118 ms at 2k, 483 ms at 12k on the demo; the uncapped demo reached 12.4k); raise it for GPU runs and high
    resolutions (gsplat's default strategy has no cap)."""
    prune_unseen: float = 0.02
    """At each densification, prune Gaussians whose largest blending weight α·T over every pixel of every training
    render since the previous one stayed below this: splats no view has shown (hidden inside or under the object,
    the faint skirt below it), which no loss can have shaped (0: never). 0.02 on the learned shapes prior, three
    seeds, cube / torus / cone: accuracy and completeness equal or 1-2 mm better on every run, and the exported
    colour truer (the cone's chromaticity 0.035-0.062 -> 0.041-0.048); 0.05 and more erode the torus
    (docs/benchmarks.md, session 37). Needs a backend that reports the weights (the torch one; gsplat's skips it)."""
    prune_isolated: float = 0.1
    """At each densification, prune Gaussians whose 4th-nearest other Gaussian is farther than this many metres
    (and than 5x the median such distance): lone floaters that would become loose fragments of the exported mesh
    (0 disables)."""
    scale_reg: float = 0.0
    """Weight of the regulariser mean(scale) (L1 on activated scales, as gsplat's MCMC preset)."""
    anisotropy_reg: float = 0.0
    """Weight of mean(relu(max scale / min scale - anisotropy_max)) against needle-like splats."""
    anisotropy_max: float = 10.0
    """Largest scale ratio free of the anisotropy penalty."""
    opacity_reg: float = 0.0
    """Weight of mean(opacity) (encourages fewer, more transparent splats)."""
    opacity_entropy_reg: float = 0.0
    """Weight of the mean binary entropy of the opacities, −o·ln o − (1−o)·ln(1−o): pushes each splat to opaque or
    gone (SuGaR's opacity term). Off by default: from the usual low initial opacity most splats go faint, not solid
    (the demo cube at 10: median opacity 0.13 -> 0.01, mean alpha in the silhouette 0.96 -> 0.89), which tightens the
    exported geometry (accuracy 0.066 -> 0.062, completeness 0.058 -> 0.048) and the renders (+0.5 dB) but darkens
    the albedo that shows through (luminance 0.93 -> 0.67; docs/benchmarks.md, session 34)."""
    albedo_smooth_reg: float = 0.0
    """Weight of "albedo_smooth": E|a(x) − a(x + δ)|₁, a the splats' density-weighted DC colour (``query_albedo``,
    its weights held fixed so only colours move), x a jittered centre of a splat drawn by how much the render showed
    it, δ ~ N(0, albedo_smooth_eps²): the NeRF's term (renderers/nerf.py) on splats."""
    albedo_smooth_eps: float = 0.01
    """Std of the jitter of "albedo_smooth", in metres: about half a splat's size on the shapes world. At 0.02 the
    cubes' faces came out more even (spread 9-12.5/255 against 15-21) but the cones 14-16% bright and the tori's holes
    narrower (0.020-0.023 m against 0.015-0.021; docs/benchmarks.md, session 41); with ``prune_opacity`` 0.05 the
    tori keep their holes at 0.02 (0.019-0.021 m), which the shipped shapes prior sets for elbo (session 42)."""
    albedo_smooth_samples: int = 1024
    """Point pairs drawn per training step for "albedo_smooth" (1024 add about 15% to a 64-pixel, two-view step on
    a CPU)."""
    light: str = "none"
    """"none" (the splats' colour is what renders) or "shapes" (every render lit per pixel, from depth normals, by
    the shapes world's fixed key light: the light of its exemplars, so the colour learns the true albedo)."""
    normals: str = "axis"
    """Normal map source: "axis" (the shortest axis of each Gaussian, composited) or "depth" (from depth)."""
    antialiased: bool = False
    """Mip-Splatting style opacity compensation for the 0.3 px² low-pass (gsplat's rasterize_mode="antialiased")."""
    tile_size: int = 16
    """Tile side in pixels."""
    checkpoint_tiles: bool = False
    """Torch backend: recompute each tile in the backward pass (less memory, ~1.3x slower)."""
    backend: str = "auto"
    """"auto" (gsplat when CUDA is available, else torch with one warning), "torch" or "cuda"."""

    def __post_init__(self) -> None:
        checks = {"init": (self.init, INITS), "normals": (self.normals, NORMAL_MODES), "light": (self.light, LIGHTS),
                  "backend": (self.backend, BACKENDS)}
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"gaussians.{name} must be one of {', '.join(allowed)}, got {value!r}")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"gaussians.sh_degree must be in 0..3, got {self.sh_degree}")
        if not 0.0 < self.init_opacity < 1.0:
            raise ValueError(f"gaussians.init_opacity must be in (0,1), got {self.init_opacity}")
        if self.init == "file" and not self.init_path:
            raise ValueError("gaussians.init='file' needs gaussians.init_path")
        decays = self.lr_means_final > 0
        if self.lr_means_final < 0 or (decays and (self.lr_means <= 0 or self.lr_means_decay_steps < 1)):
            raise ValueError(f"gaussians.lr_means_final must be >= 0, with lr_means > 0 and lr_means_decay_steps >= 1 "
                             f"to decay from (got {self.lr_means_final}, {self.lr_means}, {self.lr_means_decay_steps})")
        if self.init != "file" and not 1 <= self.num_points <= self.max_gaussians:
            raise ValueError(f"gaussians.num_points must be in [1, max_gaussians={self.max_gaussians}], "
                             f"got {self.num_points}")
        if self.albedo_smooth_eps <= 0 or self.albedo_smooth_samples < 1:
            raise ValueError(f"gaussians.albedo_smooth_eps must be > 0 and albedo_smooth_samples >= 1, got "
                             f"{self.albedo_smooth_eps} and {self.albedo_smooth_samples}")

    def build(self, gen: torch.Generator, device: torch.device | str = "cpu") -> "Gaussians":
        """Initialise a scene on ``device``; ``gen`` (CPU generator) is the run's single source of randomness."""
        return Gaussians(self, gen, torch.device(device))


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, stacklevel=3)


def resolve_splat_backend(name: str, device: torch.device | str | None = None) -> str:
    """renderers.kernels.resolve_backend on gsplat's own probe (never nerfacc's): "auto" falls back to torch
    (warning once) when gsplat's rasterizer cannot build and run, an explicit "cuda" then raises."""
    return resolve_backend(name, device, library="gsplat")


class _InwardClamp(torch.autograd.Function):
    """clamp(x, 0, 1) whose gradient still flows where a descent step would move x back into [0,1].

    A plain clamp zeroes the gradient of an out-of-range colour forever; this keeps it recoverable.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        ok = ((x >= 0) & (x <= 1)) | ((x < 0) & (g < 0)) | ((x > 1) & (g > 0))
        return torch.where(ok, g, torch.zeros_like(g))


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """SH DC coefficient whose colour (0.5 + C0·f_dc) is ``rgb``."""
    return (rgb - 0.5) / SH_C0


def _knn_scale(points: Tensor, k: int = 3, chunk: int = 2048) -> Tensor:
    """[N] √(mean squared distance to the k nearest other points), chunked to bound memory."""
    if points.shape[0] <= 1:
        return torch.full((points.shape[0],), 0.05, dtype=points.dtype, device=points.device)
    k = min(k, points.shape[0] - 1)
    out = []
    for i in range(0, points.shape[0], chunk):
        d2 = torch.cdist(points[i:i + chunk], points).square()
        out.append(d2.topk(k + 1, largest=False).values[:, 1:].mean(-1).sqrt())
    return torch.cat(out).clamp_min(1e-4)


def _knn_distance(points: Tensor, k: int, chunk: int = 2048) -> Tensor:
    """[N] distance from each point to its k-th nearest other point, chunked to bound memory."""
    k = min(k, points.shape[0] - 1)
    out = [torch.cdist(points[i:i + chunk], points).topk(k + 1, largest=False).values[:, k]
           for i in range(0, points.shape[0], chunk)]
    return torch.cat(out)


def load_point_cloud(path: str | Path) -> tuple[Tensor, Tensor | None]:
    """Points [N,3] and optional colours [N,3] in [0,1] from a .npy ([N,3] or [N,6]) or .ply file."""
    path = Path(path)
    match path.suffix.lower():
        case ".npy":
            arr = torch.as_tensor(np.load(path), dtype=torch.float32)
            if arr.ndim != 2 or arr.shape[1] not in (3, 6):
                raise ValueError(f"{path}: expected an [N,3] or [N,6] array, got {tuple(arr.shape)}")
            cols = arr[:, 3:6] if arr.shape[1] == 6 else None
            if cols is not None and cols.max() > 1.0:
                cols = cols / 255.0
            return arr[:, :3], cols
        case ".ply":
            from renderers.ply import read_ply_vertices

            v = read_ply_vertices(path)
            xyz = torch.as_tensor(np.stack([v["x"], v["y"], v["z"]], -1), dtype=torch.float32)
            if all(f"f_dc_{i}" in v for i in range(3)):
                dc = torch.as_tensor(np.stack([v[f"f_dc_{i}"] for i in range(3)], -1), dtype=torch.float32)
                return xyz, (0.5 + SH_C0 * dc).clamp(0, 1)
            if all(c in v for c in ("red", "green", "blue")):
                rgb = np.stack([v["red"], v["green"], v["blue"]], -1).astype(np.float32)
                scale = 255.0 if v["red"].dtype == np.uint8 or rgb.max() > 1.0 else 1.0
                return xyz, torch.as_tensor(rgb / scale)
            return xyz, None
        case _:
            raise ValueError(f"unsupported point cloud {path}: use .ply or .npy")


def _initial_points(cfg: GaussiansConfig, gen: torch.Generator) -> tuple[Tensor, Tensor | None]:
    match cfg.init:
        case "random":
            d = F.normalize(torch.randn(cfg.num_points, 3, generator=gen), dim=-1)
            r = cfg.init_radius * torch.rand(cfg.num_points, 1, generator=gen) ** (1.0 / 3.0)
            return d * r, None
        case "coarse_sphere":
            d = F.normalize(torch.randn(cfg.num_points, 3, generator=gen), dim=-1)
            r = cfg.init_radius * (0.9 + 0.1 * torch.rand(cfg.num_points, 1, generator=gen))
            return d * r, None
        case "file":
            pts, cols = load_point_cloud(cfg.init_path)
            if pts.shape[0] > cfg.max_gaussians:
                keep = torch.randperm(pts.shape[0], generator=gen)[:cfg.max_gaussians]
                pts, cols = pts[keep], (None if cols is None else cols[keep])
            return pts, cols
        case _:
            raise ValueError(f"unknown init {cfg.init!r}")


class Gaussians(nn.Module, DensityField, GaussianSplats, OwnOptimizer, SurfaceColour):
    """A set of 3D Gaussians with SH colour, rendered by splatting (the Scene protocol of renderers/base.py).

    Abilities: a ``DensityField`` of kind "opacity" (the summed splat opacity) in the default [-1, 1]^3 box,
    ``GaussianSplats`` (PLY export), ``OwnOptimizer`` (densification edits the optimiser's state) and
    ``SurfaceColour`` (the export bakes the colour the splats composite to, not a point query)."""

    field_kind = "opacity"

    def __init__(self, cfg: GaussiansConfig, gen: torch.Generator, device: torch.device = torch.device("cpu")):
        super().__init__()
        self.cfg = cfg
        self.backend = resolve_splat_backend(cfg.backend, device)  # once per scene
        pts, cols = _initial_points(cfg, gen)
        n = pts.shape[0]
        scale = torch.full((n,), cfg.init_scale) if cfg.init_scale > 0 else _knn_scale(pts)
        opacity = max(cfg.init_opacity, 0.5) if cfg.init == "coarse_sphere" else cfg.init_opacity
        rgb = torch.tensor(cfg.init_color, dtype=torch.float32).expand(n, 3) if cols is None else cols
        n_rest = (cfg.sh_degree + 1) ** 2 - 1
        self.means = nn.Parameter(pts.float().to(device))
        self.log_scales = nn.Parameter(torch.log(scale)[:, None].expand(n, 3).contiguous().to(device))
        self.quats = nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(n, 4).contiguous().to(device))
        self.opacity_logits = nn.Parameter(torch.full((n,), math.log(opacity / (1 - opacity)), device=device))
        self.sh_dc = nn.Parameter(rgb_to_sh0(rgb.float()).contiguous().to(device))
        self.sh_rest = nn.Parameter(torch.zeros(n, n_rest, 3, device=device))
        # Densification statistics and bookkeeping; buffers so they travel with state_dict and .to().
        self.register_buffer("grad2d_sum", torch.zeros(n, device=device))
        self.register_buffer("grad2d_count", torch.zeros(n, device=device))
        # The largest α·T each Gaussian reached in a training render since the last densification, and how many
        # steps reported it (not saved: a resumed run starts a fresh window, as it does for the rest of the stats).
        self.register_buffer("seen_weight", torch.zeros(n, device=device), persistent=False)
        self.seen_steps = 0
        start_deg = 0 if cfg.sh_degree_interval > 0 else cfg.sh_degree
        self.register_buffer("active_sh_degree", torch.tensor(start_deg, dtype=torch.long))
        self._rng = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=gen)))
        self.register_buffer("rng_state", self._rng.get_state())
        self._optimizer: torch.optim.Optimizer | None = None

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    @property
    def scales(self) -> Tensor:
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity_logits)

    def _param_dict(self) -> dict[str, nn.Parameter]:
        return {name: getattr(self, attr) for name, attr in _PARAM_ATTRS.items()}

    # ------------------------------------------------------------------------------------------------ protocol
    def param_groups(self) -> dict[str, dict]:
        """Optimiser groups by name; each group carries its "name" so schedules can find it."""
        c = self.cfg
        lrs = {"means": c.lr_means, "scales": c.lr_scales, "quats": c.lr_quats, "opacities": c.lr_opacities,
               "sh_dc": c.lr_sh_dc, "sh_rest": c.lr_sh_rest}
        groups = {k: {"params": [p], "lr": lrs[k], "name": k} for k, p in self._param_dict().items()}
        if c.sh_degree == 0:
            del groups["sh_rest"]
        return groups

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Give the scene the loop's optimiser, whose per-parameter state densification must resize."""
        self._optimizer = optimizer

    def colors(self, cam_pos: Float[Tensor, "C 3"]) -> Float[Tensor, "C N 3"]:
        """View-dependent RGB per camera: SH(μ − camera) + 0.5, clamped to [0,1] with recoverable gradients."""
        deg = int(self.active_sh_degree)
        coeffs = torch.cat([self.sh_dc[:, None, :], self.sh_rest], dim=1)[:, :(deg + 1) ** 2]
        if deg == 0:
            return _InwardClamp.apply(SH_C0 * coeffs[:, 0] + 0.5)[None].expand(cam_pos.shape[0], -1, -1)
        dirs = self.means[None] - cam_pos[:, None]
        rgb = eval_sh(deg, dirs, coeffs[None].expand(cam_pos.shape[0], -1, -1, -1))
        return _InwardClamp.apply(rgb + 0.5)

    def axis_normals(self) -> Float[Tensor, "N 3"]:
        """World-space unit normal of each Gaussian: its shortest axis (sign arbitrary)."""
        R = quat_to_rotmat(self.quats)
        idx = self.log_scales.argmin(-1)
        return torch.gather(R, 2, idx[:, None, None].expand(-1, 3, 1)).squeeze(-1)

    def render(self, cams: Cameras, background: Tensor) -> RenderOutput:
        """Render ``cams``; ``background`` is [C,H,W,3] or broadcastable to it."""
        C, H, W = len(cams), cams.height, cams.width
        cam_pos = cams.position.to(self.means)
        rel = self.means[None] - cam_pos[:, None]  # [C,N,3]
        feats = [self.colors(cam_pos), rel.norm(dim=-1, keepdim=True)]
        if self.cfg.normals == "axis":
            n = self.axis_normals()[None].expand(C, -1, -1)
            facing = torch.where((n * rel).sum(-1, keepdim=True) > 0, -1.0, 1.0)  # point towards the camera
            feats.append(n * facing)
        backend = "torch" if self.num_gaussians == 0 else self.backend
        res = splat(backend, self.means, self.quats, self.scales, self.opacities, torch.cat(feats, -1),
                    cams.viewmat_opencv().to(self.means), cams.intrinsics().to(self.means), W, H,
                    tile_size=self.cfg.tile_size, antialiased=self.cfg.antialiased,
                    checkpoint=self.cfg.checkpoint_tiles)
        if res.means2d.requires_grad:
            res.means2d.retain_grad()
        alpha = res.alpha
        hit = alpha > 1e-4
        depth = torch.where(hit, res.render[..., 3:4] / alpha.clamp_min(1e-4), torch.zeros_like(alpha))
        if self.cfg.normals == "axis":
            normal = torch.where(hit, F.normalize(res.render[..., 4:7], dim=-1), torch.zeros_like(res.render[..., 4:7]))
        else:
            normal = normals_from_depth(cams, depth, hit)
        colour = res.render[..., :3]
        if self.cfg.light == "shapes":
            colour, _ = shade_under_key_light(cams, colour, alpha, depth)
        rgb = composite(colour, alpha, background.to(alpha).expand(C, H, W, 3))
        extras = {"means2d": res.means2d, "radii": res.radii, "num_gaussians": self.num_gaussians,
                  "image_size": (W, H), "max_weight": res.max_weight}
        return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, normal=normal, extras=extras)

    @property
    def regularizer_weights(self) -> dict[str, float]:
        """Default weights of the terms of :meth:`regularizers` (the loop overrides them by name)."""
        c = self.cfg
        return {"scale": c.scale_reg, "anisotropy": c.anisotropy_reg, "opacity": c.opacity_reg,
                "opacity_entropy": c.opacity_entropy_reg, "albedo_smooth": c.albedo_smooth_reg}

    def regularizers(self, out: RenderOutput, step: int, weights: Mapping[str, float] | None = None
                     ) -> dict[str, Tensor]:
        """Unweighted terms: mean scale (metres), mean excess anisotropy, mean opacity, mean opacity entropy and the
        colour's smoothness (weights: above; "albedo_smooth" is left out when ``weights`` gives it weight 0)."""
        if self.num_gaussians == 0:
            zero = self.means.sum() * 0.0
            return {"scale": zero, "anisotropy": zero, "opacity": zero, "opacity_entropy": zero, "albedo_smooth": zero}
        ratio = torch.exp(self.log_scales.amax(-1) - self.log_scales.amin(-1))
        regs = {"scale": self.scales.mean(),
                "anisotropy": F.relu(ratio - self.cfg.anisotropy_max).mean(),
                "opacity": self.opacities.mean(),
                "opacity_entropy": _binary_entropy(self.opacities)}
        if weights is None or weights.get("albedo_smooth", 1.0) != 0:
            regs["albedo_smooth"] = self._albedo_smoothness(out)
        return regs

    def _albedo_smoothness(self, out: RenderOutput) -> Tensor:
        """E|a(x) − a(x + δ)|₁ at x = μ_i + δ₀, splats i drawn with probability ∝ their largest blending weight in
        ``out`` (by their opacity where the backend reports no weights: gsplat's); 0 outside training."""
        zero = self.sh_dc.sum() * 0.0
        if not self.training or self.num_gaussians == 0:
            return zero
        top = out.extras.get("max_weight")
        shown = (top.detach().reshape(-1, self.num_gaussians).amax(0)
                 if top is not None and top.shape[-1] == self.num_gaussians else self.opacities.detach())
        if float(shown.clamp_min(0).sum()) <= 0:
            return zero
        k, eps = self.cfg.albedo_smooth_samples, self.cfg.albedo_smooth_eps
        pick = draw_by_weight(shown, k, self._rng).to(self.means.device)
        x = self.means.detach()[pick] + torch.randn(k, 3, generator=self._rng).to(self.means) * eps
        x = torch.cat([x, x + torch.randn(k, 3, generator=self._rng).to(self.means) * eps])
        colour, found = self._colour_at(x, block=0.3)  # larger cells than the export's: fewer, faster here
        both = found[:k] & found[k:]
        if not bool(both.any()):
            return zero
        return (colour[:k] - colour[k:]).abs().sum(-1)[both].mean()

    def _colour_at(self, x: Tensor, block: float = 0.15) -> tuple[Tensor, Tensor]:
        """``query_albedo`` at x [M,3] with its weights held fixed and the DC colours differentiable: (colour [M,3],
        whether any splat reaches each point [M])."""
        colour = self._dc_colour()
        idx_all, val_all = [], []
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for idx, near, w in self._local_weights(x, block):
            total = w.sum(-1, keepdim=True)
            ok = total[:, 0] > 1e-8
            found[idx] = ok
            idx_all.append(idx)
            val_all.append((w / total.clamp_min(1e-8)).to(colour.dtype) @ colour[near])
        if not idx_all:
            return x.new_zeros(x.shape[0], 3), found
        return x.new_zeros(x.shape[0], 3).index_put((torch.cat(idx_all),), torch.cat(val_all)), found

    # ------------------------------------------------------------------------------------------- densification
    @torch.no_grad()
    def after_step(self, step: int, out: RenderOutput) -> None:
        """Accumulate screen-space gradient statistics; densify, prune and reset opacity on schedule; grow SH."""
        c = self.cfg
        if c.lr_means_final > 0 and self._optimizer is not None:
            self._decay_means_lr(step + 1)
        if c.sh_degree_interval > 0 and step > 0 and step % c.sh_degree_interval == 0:
            self.active_sh_degree.fill_(min(c.sh_degree, int(self.active_sh_degree) + 1))
        if not c.densify or step >= c.densify_stop:
            return
        self._accumulate_grad_stats(out)
        if step >= c.densify_start and step % c.densify_every == 0 and step > 0:
            if self._optimizer is None:
                _warn_once("gaussians: densification skipped, no optimiser attached (call scene.attach_optimizer)")
                return
            self.densify_and_prune()
            if c.opacity_reset_every > 0 and step % c.opacity_reset_every == 0:
                self.reset_opacity()

    def _decay_means_lr(self, step: int) -> None:
        """Set the means' group to lr0 (final / lr_means)^min(step / decay_steps, 1), lr0 its rate at the first call
        (the loop's lr_scale included; kept in the group, so a resumed optimiser goes on from it)."""
        c = self.cfg
        u = min(step, c.lr_means_decay_steps) / max(c.lr_means_decay_steps, 1)
        for group in self._optimizer.param_groups:
            if group.get("name") == "means":
                group.setdefault("lr_means_start", group["lr"])
                group["lr"] = group["lr_means_start"] * (c.lr_means_final / c.lr_means) ** u

    def _accumulate_grad_stats(self, out: RenderOutput) -> None:
        m2d = out.extras.get("means2d")
        if m2d is None or m2d.grad is None or m2d.shape[1] != self.num_gaussians:
            return
        W, H = out.extras["image_size"]
        g = m2d.grad * torch.tensor([W / 2.0, H / 2.0], device=m2d.device)  # pixels → NDC units
        vis = (out.extras["radii"] > 0).any(-1)  # [C,N]
        self.grad2d_sum += (g.norm(dim=-1) * vis).sum(0)
        self.grad2d_count += vis.sum(0)
        top = out.extras.get("max_weight")
        if top is not None and top.shape[1] == self.num_gaussians:
            if self.seen_weight.shape[0] != self.num_gaussians:  # e.g. after loading a checkpoint of another size
                self.seen_weight, self.seen_steps = top.new_zeros(self.num_gaussians), 0
            self.seen_weight = torch.maximum(self.seen_weight, top.amax(0).to(self.seen_weight))
            self.seen_steps += 1

    def densify_and_prune(self) -> dict[str, int]:
        """One refinement: clone/split high-gradient Gaussians under the cap, then prune. Returns the counts."""
        c, n = self.cfg, self.num_gaussians
        avg = self.grad2d_sum / self.grad2d_count.clamp_min(1)
        cand = (avg >= c.densify_grad_threshold) & (self.grad2d_count > 0)
        budget = max(0, c.max_gaussians - n)
        if int(cand.sum()) > budget:  # keep the strongest within the cap (clone and split each add one)
            top = torch.topk(torch.where(cand, avg, -1.0), budget).indices if budget > 0 else avg.new_zeros(0).long()
            cand = torch.zeros_like(cand)
            cand[top] = True
        big = self.scales.amax(-1) > c.clone_scale_threshold
        clone, split = cand & ~big, cand & big
        unseen = self.unseen()
        extra = self._clone_rows(clone)
        children = self._split_rows(split)
        extra = {k: torch.cat([extra[k], children[k]]) for k in extra}
        keep = (~split).nonzero().squeeze(1)
        self._rebuild(keep, extra)
        n_extra = self.num_gaussians - keep.shape[0]  # clones and children of shown (high-gradient) Gaussians
        n_pruned = self.prune(torch.cat([unseen[keep], unseen.new_zeros(n_extra)]))
        return {"cloned": int(clone.sum()), "split": int(split.sum()), "pruned": n_pruned}

    def _rows(self, mask: Tensor) -> dict[str, Tensor]:
        return {k: p.data[mask] for k, p in self._param_dict().items()}

    def _clone_rows(self, mask: Tensor) -> dict[str, Tensor]:
        return self._rows(mask)

    def _split_rows(self, mask: Tensor) -> dict[str, Tensor]:
        """Two children per selected Gaussian, sampled from N(μ, Σ), with scales divided by split_factor."""
        rows = self._rows(mask)
        s = torch.exp(rows["scales"])
        eps = torch.randn((2,) + s.shape, generator=self._rng).to(s)
        R = quat_to_rotmat(rows["quats"])
        offsets = torch.einsum("nij,knj->kni", R, s[None] * eps)
        out = {k: torch.cat([v, v]) for k, v in rows.items()}
        out["means"] = torch.cat([rows["means"] + offsets[0], rows["means"] + offsets[1]])
        out["scales"] = torch.cat([rows["scales"], rows["scales"]]) - math.log(self.cfg.split_factor)
        return out

    def unseen(self) -> Tensor:
        """[N] bool: Gaussians that coloured no pixel of the renders since the last densification by more than
        ``prune_unseen`` (all False when disabled or when the backend reported no weights)."""
        if self.cfg.prune_unseen <= 0 or self.seen_steps == 0 or self.seen_weight.shape[0] != self.num_gaussians:
            return torch.zeros(self.num_gaussians, dtype=torch.bool, device=self.means.device)
        return self.seen_weight < self.cfg.prune_unseen

    def prune(self, also: Tensor | None = None) -> int:
        """Drop transparent, oversized and non-finite Gaussians, and those in the mask ``also``; returns how many
        were removed."""
        c = self.cfg
        finite = torch.stack([torch.isfinite(p.data.reshape(self.num_gaussians, -1)).all(-1)
                              for p in self._param_dict().values()]).all(0)
        bad = (self.opacities < c.prune_opacity) | (self.scales.amax(-1) > c.prune_scale) | ~finite
        if also is not None:
            bad |= also
        if c.prune_isolated > 0 and self.num_gaussians > 8:
            gap = _knn_distance(self.means.data, 4)
            bad |= gap > max(c.prune_isolated, 5.0 * float(gap.median()))
        if bad.any():
            self._rebuild((~bad).nonzero().squeeze(1), None)
        return int(bad.sum())

    def reset_opacity(self, value: float = 0.01) -> None:
        """Clamp opacities to at most ``value`` and clear their optimiser moments (3DGS opacity reset)."""
        self.opacity_logits.data.clamp_(max=math.log(value / (1 - value)))
        state = self._optimizer.state.get(self.opacity_logits, {}) if self._optimizer is not None else {}
        for k, v in state.items():
            if torch.is_tensor(v) and v.shape == self.opacity_logits.shape:
                v.zero_()

    def _rebuild(self, keep: Tensor, extra: dict[str, Tensor] | None) -> None:
        """Rows ``keep`` of every parameter followed by ``extra`` rows; optimiser state is sliced and zero-padded."""
        for name, p in self._param_dict().items():
            new = p.data[keep] if extra is None else torch.cat([p.data[keep], extra[name].to(p.data)])
            n_new = new.shape[0] - keep.shape[0]

            def resize(v: Tensor, p=p, n_new=n_new) -> Tensor:
                if torch.is_tensor(v) and v.shape == p.shape:
                    return torch.cat([v[keep], v.new_zeros((n_new,) + v.shape[1:])])
                return v

            self._swap_param(name, new, resize)
        self.grad2d_sum = torch.zeros(self.num_gaussians, device=self.means.device)
        self.grad2d_count = torch.zeros(self.num_gaussians, device=self.means.device)
        self.seen_weight = torch.zeros(self.num_gaussians, device=self.means.device)
        self.seen_steps = 0

    def _swap_param(self, name: str, data: Tensor, resize_state) -> None:
        """Replace parameter ``name`` by a new Parameter holding ``data``, in the module and the attached optimiser.

        A new object (rather than ``p.data = ...``) is needed because autograd caches a leaf's shape in its
        gradient accumulator, which the previous step's graph may still hold.
        """
        attr = _PARAM_ATTRS[name]
        old = getattr(self, attr)
        new = nn.Parameter(data, requires_grad=old.requires_grad)
        setattr(self, attr, new)
        opt = self._optimizer
        if opt is None:
            return
        for group in opt.param_groups:
            group["params"] = [new if q is old else q for q in group["params"]]
        if old in opt.state:
            opt.state[new] = {k: resize_state(v) for k, v in opt.state.pop(old).items()}

    # ------------------------------------------------------------------------------------------ checkpointing
    def state_dict(self, *args, **kwargs):
        self.rng_state = self._rng.get_state()
        return super().state_dict(*args, **kwargs)

    def load_state_dict(self, state: dict[str, Tensor], strict: bool = True, assign: bool = False):
        """Load a checkpoint with any number of Gaussians: parameters and buffers are resized first."""
        attrs = {attr: name for name, attr in _PARAM_ATTRS.items()}
        for key, t in list(self.named_parameters()) + list(self.named_buffers()):
            if key in state and state[key].shape != t.shape:
                empty = torch.empty(state[key].shape, dtype=t.dtype, device=t.device)
                if key in attrs:  # the optimiser state no longer matches; the caller loads it next
                    self._swap_param(attrs[key], empty, lambda v: v)
                else:
                    setattr(self, key, empty)
        result = super().load_state_dict(state, strict=strict, assign=assign)
        self._rng.set_state(self.rng_state.cpu())
        return result

    # ---------------------------------------------------------------------------------------- field queries
    def _splat_terms(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Float64 precision matrices P [N,3,3], means [N,3], opacities [N] and DC colours [N,3] of the splats."""
        P = torch.linalg.inv(covariance(self.quats, self.scales).double()
                             + 1e-12 * torch.eye(3, dtype=torch.float64, device=self.means.device))
        return P, self.means.double(), self.opacities.double(), self._dc_colour().double()

    def _dc_colour(self) -> Tensor:
        """The splats' view-independent colour [N,3] in [0,1]: the SH DC term (INRIA: SH_C0·dc + 0.5), clamped."""
        return (0.5 + SH_C0 * self.sh_dc).clamp(0, 1)

    def _local_cells(self, x: Tensor, margin: float, block: float):
        """The block-local pairing of both queries below: points x [M,3] are binned into cubic cells of side
        ``block``, and each cell meets only the Gaussians whose box μ ± (3.33σ + ``margin``) overlaps it (beyond 3.33σ
        a Gaussian adds < o/255). Yields (point indices, Gaussian indices) per cell that meets any."""
        mu = self.means.double()
        reach = 3.33 * self.scales.amax(-1).double() + margin
        xd = x.double()
        origin = xd.amin(0)
        dims = (torch.floor((xd.amax(0) - origin) / block).long() + 1).clamp_min(1)
        pt_cell = torch.floor((xd - origin) / block).long().minimum(dims - 1)
        pt_key = _cell_key(pt_cell, dims)
        g_key, g_idx = _splat_cells(mu, reach, origin, block, dims)  # (cell, Gaussian) pairs sorted by cell
        order = torch.argsort(pt_key)
        cells, counts = torch.unique_consecutive(pt_key[order], return_counts=True)
        starts = torch.searchsorted(g_key, cells)
        ends = torch.searchsorted(g_key, cells, right=True)
        for idx, s0, s1 in zip(torch.split(order, counts.tolist()), starts.tolist(), ends.tolist()):
            if s1 > s0:
                yield idx, g_idx[s0:s1]

    @torch.no_grad()
    def _query(self, x: Tensor, with_albedo: bool, block: float = 0.15) -> tuple[Tensor, Tensor | None]:
        """Density (and albedo) at points x [M,3], evaluated locally block by block (``_local_weights``)."""
        M, dev = x.shape[0], x.device
        dens = torch.zeros(M, dtype=torch.float64, device=dev)
        alb = torch.zeros(M, 3, dtype=torch.float64, device=dev) if with_albedo else None
        if self.num_gaussians == 0 or M == 0:
            return dens.to(x.dtype), (None if alb is None else alb.to(x.dtype))
        colour = self._splat_terms()[3]
        for idx, near, w in self._local_weights(x, block):
            dens[idx] = w.sum(-1)
            if alb is not None:
                alb[idx] = (w @ colour[near]) / w.sum(-1, keepdim=True).clamp_min(1e-8)
        return dens.to(x.dtype), (None if alb is None else alb.to(x.dtype))

    @torch.no_grad()
    def _local_weights(self, x: Tensor, block: float):
        """Per cell of ``_local_cells``: (point indices, Gaussian indices, float64 weights o·exp(−½ (x−μ)ᵀP(x−μ))
        [points, Gaussians]).

        Within a cell the Mahalanobis form is three matmuls in float64 coordinates relative to the cell's centre (no
        cancellation for small splats):
        (x−μ)ᵀP(x−μ) = [x², y², z², 2xy, 2xz, 2yz]·[P₀₀, P₁₁, P₂₂, P₀₁, P₀₂, P₁₂] − 2 xᵀ(Pμ) + μᵀPμ.
        """
        P, mu, o, _ = self._splat_terms()
        coef = torch.stack([P[:, 0, 0], P[:, 1, 1], P[:, 2, 2], P[:, 0, 1], P[:, 0, 2], P[:, 1, 2]], 0)  # [6,N]
        xd = x.double()
        for idx, near in self._local_cells(x, 0.0, block):
            xs = xd[idx]
            c = 0.5 * (xs.amin(0) + xs.amax(0))
            xl, ml = xs - c, mu[near] - c
            Pm = torch.einsum("sij,sj->si", P[near], ml)  # [S,3]
            mono = torch.stack([xl[:, 0] ** 2, xl[:, 1] ** 2, xl[:, 2] ** 2, 2 * xl[:, 0] * xl[:, 1],
                                2 * xl[:, 0] * xl[:, 2], 2 * xl[:, 1] * xl[:, 2]], -1)
            q = mono @ coef[:, near] - 2 * xl @ Pm.T + (ml * Pm).sum(-1)
            yield idx, near, o[near] * torch.exp(-0.5 * q.clamp_min(0))

    @torch.no_grad()
    def surface_colour(self, x: Float[Tensor, "M 3"], n: Float[Tensor, "M 3"], outside: float = 0.05,
                       inside: float = 0.3, block: float = 0.15, pairs: int = 1 << 22) -> Float[Tensor, "M 3"]:
        """The view-independent (DC) colour [M,3] a view along −n sees at surface points x [M,3] with outward
        normals n [M,3]: the splats whose centres lie on the ray from x + ``outside``·n to x − ``inside``·n, in the
        order of their centres' depth, composited front to back as the splatter does (3DGS, Kerbl et al. 2023,
        Eq. 3), normalised by their total weight.

        Each splat's α on the ray is o·exp(−½ q*), q* the smallest Mahalanobis distance along the ray,
        q* = mᵀPm − (mᵀPd)² / dᵀPd (m from the ray's start to the centre, d the ray's direction): for a ray along
        the view direction, the projected 2D Gaussian's value at the pixel (exact under an orthographic view, EWA's
        affine approximation otherwise). It is what the export bakes
        (engine/export/bake.py): ``query_albedo``'s density-weighted mean mixes in the faint splats around and
        inside the surface that the renders see through or never reach (issue #17: the exported green cone and blue
        torus were 31-35 % brighter than their renders). Rays that meet nothing keep ``query_albedo``. Rays go in
        batches of at most ``pairs`` (ray, splat) tests, so memory stays bounded (about 100 MB a [R,S,3] tensor)
        however dense the scene."""
        M = x.shape[0]
        out = torch.zeros(M, 3, dtype=torch.float64, device=x.device)
        acc = torch.zeros(M, dtype=torch.float64, device=x.device)
        if self.num_gaussians == 0 or M == 0:
            return self.query_albedo(x)
        P, mu, o, colour = self._splat_terms()
        nd = F.normalize(n.double(), dim=-1)
        xd = x.double()
        for idx_cell, near in self._local_cells(x, max(outside, inside), block):
            Pn, mun, on, cn = P[near], mu[near], o[near], colour[near]
            for idx in idx_cell.split(max(1, pairs // near.shape[0])):
                d = -nd[idx]
                m = mun[None] - (xd[idx] + outside * nd[idx])[:, None]  # [R,S,3] splat centres from the ray start
                Pd = torch.einsum("sij,rj->rsi", Pn, d)
                dPd = (d[:, None] * Pd).sum(-1).clamp_min(1e-12)
                mPd = (m * Pd).sum(-1)
                q = (torch.einsum("rsi,sij,rsj->rs", m, Pn, m) - mPd * mPd / dPd).clamp_min(0)
                t = (m * d[:, None]).sum(-1)  # the centre's depth along the ray: the splatter's sort key
                a = (on[None] * torch.exp(-0.5 * q)).clamp(max=0.99)
                a = torch.where((t >= 0) & (t <= outside + inside) & (a >= 1 / 255), a, torch.zeros_like(a))
                _, order = torch.sort(torch.where(a > 0, t, torch.full_like(t, math.inf)), dim=1)
                a = torch.gather(a, 1, order)
                w = torch.cumprod(F.pad(1 - a, (1, 0), value=1.0), 1)[:, :-1] * a
                out[idx] = (w[..., None] * cn[order]).sum(1)
                acc[idx] = w.sum(1)
        shown = out / acc[:, None].clamp_min(1e-8)
        unseen = (acc <= 1e-3).nonzero()[:, 0]
        if unseen.numel():
            shown[unseen] = self.query_albedo(x[unseen]).double()
        return shown.to(x.dtype)

    def query_density(self, x: Float[Tensor, "M 3"]) -> Float[Tensor, "M"]:
        """Σ_i o_i exp(−½ (x−μ_i)ᵀ Σ_i⁻¹ (x−μ_i)) at world points (the field DreamGaussian meshes at level 1)."""
        return self._query(x, with_albedo=False)[0]

    def query_albedo(self, x: Float[Tensor, "M 3"]) -> Float[Tensor, "M 3"]:
        """Density-weighted mean of the Gaussians' view-independent (DC) colour at world points."""
        return self._query(x, with_albedo=True)[1]

    def export_tensors(self) -> dict[str, Tensor]:
        """Raw (pre-activation) tensors in the INRIA PLY sense, for renderers.ply.save_ply."""
        return {"means": self.means.detach(), "log_scales": self.log_scales.detach(),
                "quats": self.quats.detach(), "opacity_logits": self.opacity_logits.detach(),
                "sh_dc": self.sh_dc.detach(), "sh_rest": self.sh_rest.detach()}


def _cell_key(cell: Tensor, dims: Tensor) -> Tensor:
    """Linear index of integer cells [...,3] in a lattice of ``dims`` cells per axis."""
    return (cell[..., 0] * dims[1] + cell[..., 1]) * dims[2] + cell[..., 2]


def _splat_cells(mu: Tensor, reach: Tensor, origin: Tensor, block: float, dims: Tensor) -> tuple[Tensor, Tensor]:
    """Every (lattice cell, Gaussian) pair whose cell overlaps the Gaussian's box μ ± reach, as (cell keys, Gaussian
    indices) sorted by cell; Gaussians entirely outside the lattice are left out."""
    lo = torch.floor((mu - reach[:, None] - origin) / block).long()
    hi = torch.floor((mu + reach[:, None] - origin) / block).long()
    inside = ((hi >= 0) & (lo < dims)).all(-1)
    lo, hi = lo[inside].clamp_min(0), torch.minimum(hi[inside], dims - 1)
    gid = inside.nonzero().squeeze(1)
    span = hi - lo + 1  # [G,3]
    total = span.prod(-1)
    rep = torch.repeat_interleave(torch.arange(gid.shape[0], device=mu.device), total)
    k = torch.arange(rep.shape[0], device=mu.device) - torch.repeat_interleave(torch.cumsum(total, 0) - total, total)
    sx, sy = span[rep, 0], span[rep, 1]
    cell = lo[rep] + torch.stack([k % sx, (k // sx) % sy, k // (sx * sy)], -1)
    key = _cell_key(cell, dims)
    order = torch.argsort(key, stable=True)
    return key[order], gid[rep[order]]


def normals_from_depth(cams: Cameras, depth: Tensor, mask: Tensor) -> Tensor:
    """[C,H,W,3] world normals from a ray-distance depth map by central differences, facing the camera."""
    o, d = cams.rays()
    p = o.to(depth) + d.to(depth) * depth
    dx = torch.zeros_like(p)
    dy = torch.zeros_like(p)
    dx[:, :, 1:-1] = p[:, :, 2:] - p[:, :, :-2]
    dy[:, 1:-1] = p[:, :-2] - p[:, 2:]  # row 0 is the top of the image
    n = F.normalize(torch.linalg.cross(dx, dy, dim=-1), dim=-1)
    n = torch.where((n * d.to(depth)).sum(-1, keepdim=True) > 0, -n, n)
    return torch.where(mask, n, torch.zeros_like(n))


__all__ = ["GaussiansConfig", "Gaussians", "resolve_splat_backend", "rgb_to_sh0", "load_point_cloud",
           "normals_from_depth"]
