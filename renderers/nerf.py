"""NeRF scene: a multiresolution hash-grid field with density and albedo heads, rendered by volume rendering.

References and notation:
- Field (Instant-NGP, arXiv 2201.05989): features h(x) = hash-grid encoding of x mapped from the bbox
  [−r, r]³ to [0,1]³; one small MLP (one hidden layer) maps h to the density pre-activation and the albedo
  logits. threestudio uses two MLPs; sharing the hidden layer halves the MLP cost on a CPU.
- Density (Magic3D, arXiv 2211.10440; threestudio's ``blob_magic3d``): σ(x) = softplus(MLP_σ(h(x)) + b(x)) (or exp,
  ``density_activation``) with
  the blob b(x) = λ_blob·(1 − ‖x‖/s_blob), which starts the optimisation from a soft ball instead of empty space.
- Albedo a(x) = sigmoid(MLP_a(h(x))).
- Normals n = −∇σ/‖∇σ‖ (DreamFusion, arXiv 2209.14988, §3.1), taken by forward finite differences of the density
  pre-activation (same direction, as softplus is monotone): 3 extra field evaluations per sample, so they are
  taken only at samples whose weight exceeds ``normal_weight_threshold`` and only on steps that use them.
  Measured on the 2-core CPU (1 thread, 20 k points): field forward+backward 16 ms, with finite-difference
  normals 71 ms, with analytic normals (autograd with create_graph, double backward through grid_sample) 63 ms.
  The two cost about the same; finite differences need no double backward from the encoding (which a fused
  CUDA hash grid may lack) and ``normal_eps`` smooths them. A 64×64 training step with normals costs about 3×
  an albedo-only one (see bench/bench_nerf.py).
- Shading (DreamFusion §3.1): a point light at ℓ; with l̂ = (ℓ − x)/‖ℓ − x‖ and k_a = 0.1, k_d = 0.9,
  albedo → a, textureless → k_a + k_d·max(0, n·l̂), lambertian → a·(k_a + k_d·max(0, n·l̂)). Training uses albedo
  for the first ``ambient_only_steps`` steps, then draws a mode per render from ``shading_probs``.
  ``light="shapes"`` (engine/compose.py sets it for the learned shapes prior) replaces all of this: every render,
  in training and outside it, is the albedo lit per pixel by the shapes world's own key light
  (renderers/keylight.py), the light its exemplars are rendered with, so the colour field learns the true albedo
  (issue #17).
- Volume rendering (renderers/kernels): w_i = T_i·(1 − exp(−σ_i δ_i)); rgb = Σ w_i c_i + (1 − A)·bg, A = Σ w_i.
- Regularisers (threestudio): orientation Σ_i sg(w_i)·max(0, n_i·d)² / #rays with A > 0 (Ref-NeRF, arXiv 2112.03907),
  sparsity mean √(A² + 0.01), opacity entropy −mean[A log A + (1 − A) log(1 − A)] ("opaque"), and Mip-NeRF 360's
  distortion loss (arXiv 2111.12077, eq. 15; renderers/kernels/volume_torch.py ``distortion``), which turns a
  soft cloud into a surface.
- A gradient that sees through (``see_through``, off by default): inside an opaque, uniformly coloured solid the
  exact gradient of a pixel on the density is ∝ T·(c − C_behind) ≈ 0, so a hole the initial blob fills (a torus's)
  cannot open, whatever the prior asks. For the first ``see_through_steps`` the backward pass gives each ray's optical
  depth the gradient it would have at transmittance f (``NeRF._see_through``); the forward render is exact.

All randomness (stratified jitter, light placement, shading choice, occupancy refresh) comes from the generator
passed to ``NeRFConfig.build``, so one seed gives one run.
"""

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from foundation.cameras import Cameras
from renderers import kernels
from renderers.base import DensityField, OptionalNormals, RenderOutput, composite, draw_by_weight
from renderers.kernels import volume_torch
from renderers.kernels.hashgrid_torch import HashGrid
from renderers.kernels.volume_torch import OccupancyGrid, RaySamples
from renderers.keylight import shade_under_key_light

SHADINGS = ("albedo", "textureless", "lambertian")
AMBIENT, DIFFUSE = 0.1, 0.9
"""k_a and k_d of DreamFusion's diffuse shading."""


class _SeeThrough(torch.autograd.Function):
    """Zeros [R,3] in the forward pass; in the backward pass the optical depth τ [R,1] receives
    g = Σ_c ∂L/∂out_c·coef_c, both ways while τ ≤ ``depth``, only where it thins the ray (g > 0) beyond. The
    floor's gradient never vanishes, so without that bound its "more opaque" half would push opaque rays' density up
    without end; and thinning alone everywhere would let the prior's noise, rectified, eat cavities into every
    solid."""

    @staticmethod
    def forward(ctx, tau: Tensor, coef: Tensor, depth: float) -> Tensor:
        ctx.save_for_backward(tau, coef)
        ctx.depth = depth
        return coef.new_zeros(coef.shape)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        tau, coef = ctx.saved_tensors
        g = (grad_out * coef).sum(-1, keepdim=True)
        return torch.where(tau > ctx.depth, g.clamp_min(0), g), None, None


@dataclass
class NeRFConfig:
    """A hash-grid NeRF. Defaults are tuned for a 2-core CPU at 64×64 (see bench/bench_nerf.py)."""

    REGULARIZERS: ClassVar[tuple[str, ...]] = ("orient", "sparsity", "opaque", "distortion", "albedo_smooth")
    """The terms ``NeRF.regularizers`` returns: the keys a run's ``regularizers:`` may weight (engine/config.py)."""

    radius: float = 0.8
    """Half-size of the bounding box [−radius, radius]³ holding the field (the shapes world fits in |x| ≤ 0.75)."""
    levels: int = 4
    """Number of hash-grid levels L."""
    base_resolution: int = 16
    """Resolution N_min of the coarsest level."""
    max_resolution: int = 64
    """Resolution N_max of the finest level (64 cells over 1.6 m ≈ one pixel footprint at 64×64, 2.5 m away)."""
    features_per_level: int = 2
    """Features F stored per vertex and level."""
    log2_hashmap_size: int = 19
    """log2 of the table size T; levels with (N_l + 1)³ ≤ T are stored densely (faster on a CPU)."""
    mlp_width: int = 32
    """Hidden width of the MLP (one hidden layer) giving the density pre-activation and the albedo logits."""
    density_activation: str = "softplus"
    """σ = activation(pre-activation): "softplus" (threestudio's default) or "exp" (Instant-NGP's trunc_exp). With
    softplus the density grows only as fast as Adam moves the pre-activation (about linearly), so 400 CPU steps end
    in a soft cloud (σ ≈ 5 /m inside the demo cube); exp lets it reach a surface's σ in a few steps."""
    blob_strength: float = 5.0
    """λ of the Magic3D density blob λ·(1 − ‖x‖/s) added before the softplus."""
    blob_radius: float = 0.5
    """s of the density blob: the pre-activation bias is zero at this radius."""
    init_albedo: str = "grey"
    """Initial colour: "grey" (albedo logits near 0, as the MLP initialises them) or "random" (a saturated colour drawn
    from the run's generator per scene: hue U(0, 1), saturation U(0.5, 1), value U(0.6, 0.95), set as the albedo
    head's bias), so seeds and VSD particles start from different colours. (Uniform RGB draws are mostly greyish,
    which every shapes-world colour prompt pulls to its white exemplars.)"""
    samples_per_ray: int = 32
    """Stratified samples per ray between the bbox entry and exit (torch backend)."""
    importance_samples: int = 0
    """Extra hierarchical samples per ray drawn from the coarse weights (torch backend; 0 disables)."""
    occupancy_resolution: int = 32
    """Cells per side of the occupancy grid used to skip empty space (0 disables; the cuda backend needs it)."""
    occupancy_every: int = 16
    """Refresh the occupancy grid every this many training steps."""
    occupancy_threshold: float = 0.01
    """A cell is occupied when its α over one stratified interval exceeds min(this, mean α)."""
    normal_weight_threshold: float = 1e-3
    """Normals are computed only at samples whose weight exceeds this; others shade as ambient only."""
    normal_eps: float = 0.01
    """Finite-difference step, in metres, for density-gradient normals."""
    orient_always: bool = False
    """Also compute normals on albedo-shaded training steps, so that "orient" is never 0 (slower)."""
    lr_grid: float = 1e-2
    """Adam learning rate of the hash-grid features."""
    lr_mlp: float = 1e-3
    """Adam learning rate of the MLPs."""
    shading_probs: tuple[float, float, float] = (0.25, 0.375, 0.375)
    """Probabilities of the albedo, textureless and lambertian shading modes after ``ambient_only_steps``."""
    ambient_only_steps: int = 1000
    """Training steps rendered with albedo shading only, before random shading starts."""
    eval_shading: str = "albedo"
    """Shading mode outside training: albedo, textureless or lambertian (light at the camera)."""
    light: str = "dreamfusion"
    """"dreamfusion" (the shading modes above) or "shapes" (every render lit by the shapes world's fixed key light,
    per pixel from depth normals; the prior's exemplars are lit the same way, so the colour field learns albedo;
    the default of runs on the learned shapes prior, engine/compose.py)."""
    light_distance: tuple[float, float] = (1.5, 3.0)
    """Range of the training point light's distance from the origin, in metres."""
    light_perturb: float = 1.0
    """Std of the Gaussian jitter added to the camera position to place the training light."""
    lambda_orient: float = 10.0
    """Default weight of the "orient" regulariser (0 on steps without normals, see ``orient_always``)."""
    lambda_sparsity: float = 0.0
    """Default weight of the "sparsity" regulariser."""
    lambda_opaque: float = 0.0
    """Default weight of the "opaque" (opacity entropy) regulariser."""
    lambda_distortion: float = 0.0
    """Default weight of the "distortion" regulariser (Mip-NeRF 360's, in metres, mean over the rendered rays): it
    gathers each ray's weight into one short interval, so the field becomes a surface rather than a soft cloud."""
    lambda_albedo_smooth: float = 0.0
    """Default weight of the "albedo_smooth" regulariser: E|a(x + δ) − a(x)|₁ over points x drawn by the rendering
    weights (on the surface the renders show), δ ~ N(0, albedo_smooth_eps²) (Fantasia3D's k_d smoothness, Chen et al.
    2023 §3.2, on a volume). It keeps the prior from painting what geometry should show (a lighter patch where a
    hole should open) and speckles out of a uniform material."""
    albedo_smooth_eps: float = 0.02
    """Std of the position jitter of "albedo_smooth", in metres."""
    albedo_smooth_samples: int = 4096
    """Points drawn per training step for "albedo_smooth" (two field evaluations each)."""
    see_through: float = 0.0
    """Transmittance floor f of the renders' gradient (0: off, the exact gradient). A ray through an opaque, uniformly
    coloured solid has ∂rgb/∂σ_i = δ_i·T_i·(c_i − C_behind,i) ≈ 0 everywhere inside it (its colour behind every layer is
    its own), so a region the prior wants empty but that starts filled (the hole of a torus inside the initial density
    blob) can only be eaten away from its last layer. With f > 0 the backward pass treats each ray's optical depth
    τ = Σ σ_i δ_i as if its transmittance were max(e^(−τ), f): ∂rgb/∂τ = −max(e^(−τ), f)·(bg − c_fg), spread over the
    ray's samples as ∂τ/∂σ_i = δ_i, so a pixel that should show the background thins its whole column (by the same
    factor everywhere under exp density). The forward render is unchanged."""
    see_through_depth: float = 7.0
    """Optical depth beyond which ``see_through``'s gradient only thins (T = e^−7 ≈ 0.001): below it the floor acts both
    ways, so the prior's noise averages out and only a consistent "show the background here" opens a ray."""
    see_through_steps: int = 150
    """The training steps, from the first, on which ``see_through`` applies (the start decides the topology; later the
    exact gradient shapes the surface)."""
    cuda_step_size: float = 5e-3
    """Marching step in metres for the cuda backend's occupancy-grid sampler."""
    backend: str = "auto"
    """Volume-rendering backend: auto, torch or cuda (resolved once in ``build``)."""

    def __post_init__(self) -> None:
        if self.radius <= 0:
            raise ValueError(f"nerf.radius must be > 0, got {self.radius}")
        if self.samples_per_ray < 1 or self.importance_samples < 0:
            raise ValueError(f"nerf.samples_per_ray must be >= 1 and importance_samples >= 0, got "
                             f"{self.samples_per_ray} and {self.importance_samples}")
        probs = self.shading_probs
        if len(probs) != 3 or min(probs) < 0 or abs(sum(probs) - 1) > 1e-6:
            raise ValueError(f"nerf.shading_probs must be 3 non-negative numbers summing to 1, got {probs}")
        if not 0.0 <= self.see_through < 1.0:
            raise ValueError(f"nerf.see_through must be in [0, 1), got {self.see_through}")
        if self.see_through_depth < 0 or self.see_through_steps < 0:
            raise ValueError(f"nerf.see_through_depth and see_through_steps must be >= 0, got "
                             f"{self.see_through_depth} and {self.see_through_steps}")
        if self.density_activation not in ("softplus", "exp"):
            raise ValueError(f"nerf.density_activation must be softplus or exp, got {self.density_activation!r}")
        if self.init_albedo not in ("grey", "random"):
            raise ValueError(f"nerf.init_albedo must be grey or random, got {self.init_albedo!r}")
        if self.eval_shading not in SHADINGS:
            raise ValueError(f"nerf.eval_shading must be one of {SHADINGS}, got {self.eval_shading!r}")
        if self.light not in ("dreamfusion", "shapes"):
            raise ValueError(f"nerf.light must be dreamfusion or shapes, got {self.light!r}")
        if self.occupancy_every < 1:
            raise ValueError(f"nerf.occupancy_every must be >= 1, got {self.occupancy_every}")
        if self.albedo_smooth_eps <= 0 or self.albedo_smooth_samples < 1:
            raise ValueError(f"nerf.albedo_smooth_eps must be > 0 and albedo_smooth_samples >= 1, got "
                             f"{self.albedo_smooth_eps} and {self.albedo_smooth_samples}")

    def default_weights(self) -> dict[str, float]:
        """Regulariser weights by the names ``NeRF.regularizers`` returns (the loop may override them)."""
        return {"orient": self.lambda_orient, "sparsity": self.lambda_sparsity, "opaque": self.lambda_opaque,
                "distortion": self.lambda_distortion, "albedo_smooth": self.lambda_albedo_smooth}

    def build(self, gen: torch.Generator, device: torch.device | str = "cpu") -> "NeRF":
        """A NeRF on ``device`` whose initialisation and training randomness come from ``gen`` (a CPU generator)."""
        return NeRF(self, gen, device)


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """RGB [3] of one HSV colour (h in [0, 1))."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + 6.0 * h) % 6.0
    return (v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)).clamp(1e-3, 1 - 1e-3)


def _mlp(d_in: int, width: int, d_out: int, gen: torch.Generator) -> nn.Sequential:
    """Linear-ReLU-Linear, initialised from ``gen`` with torch's default U(±1/√fan_in) bounds."""
    net = nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, d_out))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            bound = 1.0 / math.sqrt(layer.in_features)
            layer.weight.copy_((torch.rand(layer.weight.shape, generator=gen) * 2 - 1) * bound)
            layer.bias.copy_((torch.rand(layer.bias.shape, generator=gen) * 2 - 1) * bound)
    return net


class _TruncExp(torch.autograd.Function):
    """exp(x) whose backward uses exp(min(x, 15)) (Instant-NGP's and threestudio's trunc_exp): a dense start cannot
    blow the gradient up."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


class NeRF(nn.Module, DensityField, OptionalNormals):
    """Hash-grid radiance field implementing the Scene protocol (renderers/base.py); a ``DensityField`` (sigma)."""

    field_kind = "density"

    def __init__(self, cfg: NeRFConfig, gen: torch.Generator, device: torch.device | str = "cpu"):
        super().__init__()
        self.cfg = dataclasses.replace(cfg, backend=kernels.resolve_backend(cfg.backend, device, "nerfacc"))
        if self.cfg.backend == "cuda" and cfg.occupancy_resolution < 1:
            raise ValueError("the cuda backend samples through the occupancy grid: set occupancy_resolution > 0")
        self.gen = gen
        self.step = 0
        self.grid = HashGrid(cfg.levels, cfg.base_resolution, cfg.max_resolution, cfg.features_per_level,
                             cfg.log2_hashmap_size, gen=gen)
        self.mlp = _mlp(self.grid.out_dim, cfg.mlp_width, 4, gen)  # [density pre-activation, albedo logits]
        if cfg.init_albedo == "random":
            colour = _hsv_to_rgb(*(torch.tensor([0.0, 0.5, 0.6]) + torch.tensor([1.0, 0.5, 0.35])
                                   * torch.rand(3, generator=gen)))
            with torch.no_grad():
                self.mlp[2].bias[1:4] = torch.logit(colour)
        self.occupancy = (OccupancyGrid(cfg.radius, cfg.occupancy_resolution, cfg.occupancy_threshold)
                          if cfg.occupancy_resolution > 0 else None)
        self.to(device)
        self.refresh_occupancy()

    @property
    def device(self) -> torch.device:
        return self.mlp[0].weight.device

    @property
    def bound(self) -> float:
        """Half-size of the field's box (``DensityField``): cfg.radius."""
        return float(self.cfg.radius)

    # ---- field -------------------------------------------------------------------------------------------------

    def _encode(self, x: Tensor) -> Tensor:
        return self.grid((x + self.cfg.radius) / (2 * self.cfg.radius))

    def _blob(self, x: Tensor) -> Tensor:
        return self.cfg.blob_strength * (1.0 - x.norm(dim=-1) / self.cfg.blob_radius)

    def _field(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Density pre-activation [N] (blob included) and albedo logits [N,3]."""
        out = self.mlp(self._encode(x))
        return out[:, 0] + self._blob(x), out[:, 1:]

    def _sigma(self, raw: Tensor) -> Tensor:
        """σ from the density pre-activation: softplus, or exp with its backward clamped at exp(15) (trunc_exp)."""
        if self.cfg.density_activation == "exp":
            return _TruncExp.apply(raw)
        return F.softplus(raw)

    def _density_nograd(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self._sigma(self._field(x)[0])

    def query_density(self, x: Float[Tensor, "N 3"], chunk: int = 1 << 18) -> Float[Tensor, "N"]:
        """σ at world points (0 outside the bbox), in chunks; for mesh extraction."""
        if x.ndim != 2 or x.shape[-1] != 3:
            raise ValueError(f"query_density expects points [N,3], got {tuple(x.shape)}")
        out = [self._sigma(self._field(c)[0]) * self._inside(c) for c in x.split(chunk)]
        return torch.cat(out) if out else x.new_zeros(0)

    def query_albedo(self, x: Float[Tensor, "N 3"], chunk: int = 1 << 18) -> Float[Tensor, "N 3"]:
        """Albedo in [0,1] at world points (points outside the bbox read its boundary), in chunks."""
        if x.ndim != 2 or x.shape[-1] != 3:
            raise ValueError(f"query_albedo expects points [N,3], got {tuple(x.shape)}")
        out = [torch.sigmoid(self._field(c)[1]) for c in x.split(chunk)]
        return torch.cat(out) if out else x.new_zeros(0, 3)

    def _inside(self, x: Tensor) -> Tensor:
        return (x.abs() <= self.cfg.radius).all(-1).to(x.dtype)

    def _normals(self, x: Tensor, raw: Tensor) -> Tensor:
        """n = −∇σ/‖∇σ‖ by forward differences of the pre-activation (3 field evaluations per point)."""
        eps = self.cfg.normal_eps
        offsets = torch.eye(3, dtype=x.dtype, device=x.device) * eps
        raw_k, _ = self._field((x[None] + offsets[:, None]).reshape(-1, 3))
        grad = (raw_k.view(3, -1).t() - raw[:, None]) / eps
        return -F.normalize(grad, dim=-1)

    # ---- rendering ---------------------------------------------------------------------------------------------

    def set_step(self, step: int) -> None:
        """Set the training step (albedo-only shading before ``ambient_only_steps``); ``after_step`` advances it."""
        self.step = step

    def _shading_mode(self) -> str:
        if self.cfg.light == "shapes":
            return "albedo"  # lit afterwards, per pixel, by the key light (render)
        if not self.training:
            return self.cfg.eval_shading
        if self.step < self.cfg.ambient_only_steps:
            return "albedo"
        r = torch.rand((), generator=self.gen).item()
        p_albedo, p_textureless, _ = self.cfg.shading_probs
        return "albedo" if r < p_albedo else "textureless" if r < p_albedo + p_textureless else "lambertian"

    def _light_positions(self, cams: Cameras) -> Tensor:
        """[C,3] point-light positions: jittered around each camera in training, at the camera otherwise."""
        cam = cams.position
        if not self.training:
            return cam
        noise = torch.randn(len(cams), 3, generator=self.gen).to(cam)
        lo, hi = self.cfg.light_distance
        dist = (lo + (hi - lo) * torch.rand(len(cams), 1, generator=self.gen)).to(cam)
        return F.normalize(cam + self.cfg.light_perturb * noise, dim=-1) * dist

    def render(self, cams: Cameras, background: Tensor) -> RenderOutput:
        """Volume-render ``cams`` over ``background`` ([C,H,W,3] or broadcastable).

        Returns rgb, alpha, depth (distance along the unit ray, Σ w t / A), albedo (premultiplied by alpha), and
        normal (unit, world space, zero where empty) when normals were computed. ``extras`` holds the shading mode,
        the number of evaluated samples and, with normals, the "orient" term.
        """
        C, H, W = len(cams), cams.height, cams.width
        o, d = (v.reshape(-1, 3) for v in cams.rays())
        mode = self._shading_mode()
        with_normals = mode != "albedo" or (not self.training and self.cfg.light != "shapes" and self.eval_normals) \
            or self.cfg.orient_always
        samples = kernels.sample_rays(
            self.cfg.backend, o, d, radius=self.cfg.radius, n_samples=self.cfg.samples_per_ray,
            n_importance=self.cfg.importance_samples, occupancy=self.occupancy, density_fn=self._density_nograd,
            gen=self.gen if self.training else None, cuda_step_size=self.cfg.cuda_step_size)
        x = samples.positions(o, d)
        raw, albedo_logits = self._field(x)
        sigma = self._sigma(raw)
        w = kernels.render_weights(self.cfg.backend, samples, sigma)
        albedo = torch.sigmoid(albedo_logits)

        normals = None
        if with_normals:
            vis = (w.detach() > self.cfg.normal_weight_threshold).nonzero()[:, 0]
            normals = x.new_zeros(len(samples), 3).index_put((vis,), self._normals(x[vis], raw[vis]))
        colour = albedo
        if mode != "albedo":
            light = self._light_positions(cams)[samples.ray_indices // (H * W)]
            n_dot_l = (normals * F.normalize(light - x, dim=-1)).sum(-1, keepdim=True)
            lambert = AMBIENT + DIFFUSE * n_dot_l.clamp_min(0)
            colour = lambert.expand(-1, 3) if mode == "textureless" else albedo * lambert

        # One accumulation for every map: [colour 3 | albedo 3 | t 1 | normal 3].
        values = [colour, albedo, samples.t[:, None]] + ([] if normals is None else [normals])
        maps = kernels.accumulate_along_rays(self.cfg.backend, samples, w, torch.cat(values, -1)).view(C, H, W, -1)
        alpha = kernels.accumulate_along_rays(self.cfg.backend, samples, w).view(C, H, W, 1)
        extras: dict = {"shading": mode, "n_samples": len(samples)}
        if self.training:  # the distortion and albedo_smooth terms' inputs, evaluated only when weighted
            extras["ray_weights"] = (samples, w)
            extras["sample_points"] = x.detach()
        normal_map = None
        if normals is not None:
            normal_map = F.normalize(maps[..., 7:10], dim=-1)
            n_dot_d = (normals * d[samples.ray_indices]).sum(-1).clamp_min(0)
            extras["orient"] = (w.detach() * n_dot_d**2).sum() / (alpha.detach() > 0).sum().clamp_min(1)
        depth = maps[..., 6:7] / alpha.clamp_min(1e-6)
        colour_map = maps[..., 0:3]
        if self.cfg.light == "shapes":
            colour_map, depth_normal = shade_under_key_light(cams, maps[..., 3:6], alpha, depth)
            normal_map = depth_normal if normal_map is None else normal_map
        rgb = composite(colour_map, alpha, background)
        if self.training and self.cfg.see_through > 0 and self.step < self.cfg.see_through_steps:
            rgb = rgb + self._see_through(samples, sigma, colour_map, alpha, background).view(C, H, W, 3)
        return RenderOutput(rgb=rgb, alpha=alpha, depth=depth,
                            normal=normal_map, albedo=maps[..., 3:6], extras=extras)

    def _see_through(self, samples: RaySamples, sigma: Tensor, colour_map: Tensor, alpha: Tensor,
                     background: Tensor) -> Tensor:
        """A term [R,3] that is 0 in the forward pass and, added to the composite, gives each ray's optical depth the
        gradient (f − T)₊·(c_fg − bg)·∂L/∂rgb (``see_through``; only where it thins the ray beyond
        ``see_through_depth``)."""
        # σ clamped at 1e6 /m (far past opaque): an overflowing exp density keeps a finite τ
        tau = kernels.accumulate_along_rays(self.cfg.backend, samples,
                                            sigma.clamp(max=1e6) * (samples.t_ends - samples.t_starts))
        a = alpha.detach().reshape(-1, 1)
        fg = colour_map.detach().reshape(-1, 3) / a.clamp_min(1e-6)
        bg = background.detach().expand_as(colour_map).reshape(-1, 3)
        coef = (self.cfg.see_through - (1.0 - a)).clamp_min(0) * (fg - bg)
        return _SeeThrough.apply(tau, coef, self.cfg.see_through_depth)

    # ---- Scene protocol hooks -----------------------------------------------------------------------------------

    def param_groups(self) -> dict[str, dict]:
        """{"grid": hash-grid features, "mlp": the density/albedo MLP}, each with its learning rate."""
        return {"grid": {"params": list(self.grid.parameters()), "lr": self.cfg.lr_grid},
                "mlp": {"params": list(self.mlp.parameters()), "lr": self.cfg.lr_mlp}}

    @property
    def regularizer_weights(self) -> dict[str, float]:
        """Default weights of the terms of :meth:`regularizers` (the training loop overrides them by name)."""
        return self.cfg.default_weights()

    def regularizers(self, out: RenderOutput, step: int, weights: Mapping[str, float] | None = None
                     ) -> dict[str, Tensor]:
        """Unweighted "orient" (0 when no normals were rendered), "sparsity", "opaque", "distortion" and
        "albedo_smooth" (both 0 outside training) terms. "distortion" (O(samples)) and "albedo_smooth" (two field
        evaluations of ``albedo_smooth_samples`` points) are left out when ``weights`` gives them weight 0."""
        a = out.alpha
        orient = out.extras.get("orient", a.new_zeros(()))
        sparsity = torch.sqrt(a**2 + 0.01).mean()
        ac = a.clamp(1e-5, 1 - 1e-5)
        opaque = -(ac * torch.log(ac) + (1 - ac) * torch.log(1 - ac)).mean()
        regs = {"orient": orient, "sparsity": sparsity, "opaque": opaque}
        if weights is None or weights.get("distortion", 1.0) != 0:
            ray_weights = out.extras.get("ray_weights")
            regs["distortion"] = (a.new_zeros(()) if ray_weights is None
                                  else volume_torch.distortion(*ray_weights).mean())
        if weights is None or weights.get("albedo_smooth", 1.0) != 0:
            regs["albedo_smooth"] = self._albedo_smoothness(out)
        return regs

    def _albedo_smoothness(self, out: RenderOutput) -> Tensor:
        """E|a(x + δ) − a(x)|₁ over x drawn from the render's samples with probability ∝ their weight (an unbiased
        estimate of Σ w |Δa| / Σ w), δ ~ N(0, eps²); both albedos carry gradients."""
        ray_weights, x = out.extras.get("ray_weights"), out.extras.get("sample_points")
        if ray_weights is None or x is None or len(x) == 0:
            return out.alpha.new_zeros(())
        w = ray_weights[1].detach().clamp_min(0)
        if float(w.sum()) <= 0:
            return out.alpha.new_zeros(())
        p = x[draw_by_weight(w, self.cfg.albedo_smooth_samples, self.gen).to(x.device)]
        jitter = torch.randn(p.shape, generator=self.gen).to(p) * self.cfg.albedo_smooth_eps
        a = torch.sigmoid(self._field(torch.cat([p, p + jitter]))[1])
        return (a[: len(p)] - a[len(p):]).abs().sum(-1).mean()

    def after_step(self, step: int, out: RenderOutput) -> None:
        """Advance the step counter and refresh the occupancy grid every ``occupancy_every`` steps."""
        self.step = step + 1
        if (step + 1) % self.cfg.occupancy_every == 0:
            self.refresh_occupancy()

    def get_extra_state(self) -> dict:
        """The step counter travels with the state dict, so a resumed run keeps its shading schedule."""
        return {"step": self.step}

    def set_extra_state(self, state: dict) -> None:
        self.step = int(state["step"])

    @torch.no_grad()
    def refresh_occupancy(self) -> None:
        """Re-evaluate the density at one jittered point per occupancy cell (no-op without a grid)."""
        if self.occupancy is None:
            return
        u = torch.rand(self.occupancy.resolution**3, 3, generator=self.gen).to(self.device)
        step = 2 * self.cfg.radius / self.cfg.samples_per_ray
        self.occupancy.update(self._density_nograd, step, u)


__all__ = ["NeRFConfig", "NeRF", "SHADINGS"]
