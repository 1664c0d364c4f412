"""A tileable PBR material as a Scene: texel grids rendered on a flat sample under random lights (issue #16).

Representation: periodic texel grids of side ``texels`` over one tile (u right, v down, glTF's convention): base
colour (sRGB, through a sigmoid), roughness, metallic (sigmoids), height h (in units of EMBOSS_HEIGHT metres, linear)
and a learned normal detail (two channels added to the height's tangent-space slope). Colour, roughness and
metallic also have one global logit each (added to every texel), so their means converge fast.

Geometry: the tile covers TILE x TILE metres of the plane y = 0 (Y up), repeated: u = x / TILE + o_u,
v = z / TILE + o_v with a random offset (o_u, o_v) per view, so the tile's seams move through the images and get
gradient on both sides. Views come from the loop's orbit cameras (grazing to overhead: the preset's elevation range)
and show about 1.2-2 tiles across, i.e. windows inside a 2x2 tiling. ``tileable=False`` shows one tile centred on
the origin with clamped (not wrapped) texture lookups and no offset.

Normals: tangent frame T = +X (increasing u), B = -Z (decreasing v: OpenGL "green up" in a top-left uv space),
N = +Y. The height field's normal is n_ts = normalize(-dh/dx + d_x, dh/dz + d_y, 1), with dh/dx, dh/dz central
differences in metres per metre (periodic when tileable) and (d_x, d_y) the learned detail.

Shading (renderers.md §3.3, renderers/pbr.py): the split-sum environment light (one of ENVS, random rotation,
radiance scaled by EXPOSURE = 0.6) plus one directional light at a random direction above the plane (azimuth
U[0, 360), elevation U[15, 80] degrees, irradiance U[0, 1.5]) with the same GGX BRDF evaluated analytically:
    L_o = (k_d (1 - m) / pi + D G F / (4 (n.l)(n.v))) E (n.l),   F = F0 + (1 - F0)(1 - v.h)^5,
G the height-correlated Smith term. Light variation is what separates albedo from shading (DreamMat). Renders are
supersampled (``supersample``^2 rays per pixel, box filtered) and tone-mapped with the sRGB OETF.

In eval mode (previews) the view uses fixed lighting (studio, no rotation, sun at azimuth 40, elevation 50) and no
offset, and draws nothing from the scene's generator.

Condition images: the training loop (engine/train.py ``_wire_condition``) sets ``render_condition`` to the
``condition_kind`` of a prior with ``takes_condition``, one of this scene's ``condition_kinds``:

- "material" (the materials prior; also ``True``): each render carries ``extras["control"]`` [C, sH, sW,
  CONDITION_CHANNELS] holding, per supersampled pixel, the unwrapped texture coordinates, the unit view vector, the
  lighting (environment index, rotation, sun direction and irradiance) and the plane coverage, so the prior can
  shade its own materials exactly as this view is shaded (``shade_view``);
- "dreammat" (a light-aware ControlNet prior, guidance/priors/controlnet.py): training renders carry DreamMat's
  22-channel condition [C, H, W, 22] at the render resolution (``dreammat_condition``, through renderers/condition.py
  ``condition_maps``): inverse distance to the plane, the camera-space normal of the *learned* relief (height and
  normal detail, as this view's shading sees them), and six white-albedo renders for CONTROL_MATERIALS under the
  view's own lights (exposure-scaled tilted environment plus the sun); 0 off the plane.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foundation.cameras import Cameras
from foundation.materials import EMBOSS_HEIGHT, TILE, tangent_normals  # noqa: F401  (part of this module's API)
from renderers import pbr
from renderers.base import ConditionRenderer, RenderOutput
from renderers.condition import condition_maps

ENVS = ("studio", "sky", "rgb", "sunset")
ENV_HEIGHT = 32
SUN_ELEVATION = (15.0, 80.0)
SUN_IRRADIANCE = (0.0, 1.5)
EXPOSURE = 0.6
ENV_TILT = 10.0
"""Degrees the environment is tilted about X (see shade_view)."""
"""Scale of the environment radiance: keeps a white diffuse surface below clipping under the brightest maps."""
CONDITION_CHANNELS = 13  # u, v, view xyz, env index, env rotation, sun xyz, sun irradiance, coverage, tileable
EVAL_LIGHT = (0.0, 0.0, 40.0, 50.0, 1.5)  # env index, rotation, sun azimuth, sun elevation, irradiance


@dataclass
class MaterialConfig:
    """A tileable PBR material on a flat sample (renderers/material.py)."""

    REGULARIZERS: ClassVar[tuple[str, ...]] = ("detail", "metallic_binary")
    """The terms ``MaterialScene.regularizers`` returns: the keys a run's ``regularizers:`` may weight."""

    texels: int = 128
    """Side of the optimised texel grids (the exported maps are resampled to train.export-texture-size)."""
    tileable: bool = True
    """Wrap the maps (periodic lookups, random offsets); False: one tile, clamped lookups."""
    supersample: int = 2
    """Rays per pixel along each axis (box-filtered)."""
    detail: bool = True
    """Learn a normal detail on top of the height's normal."""
    normal_map: str = "opengl"
    """Convention of the exported normal.png: "opengl" (green up; glTF, Blender, Unity) or "directx" (green down)."""
    lr: float = 0.05
    """Adam learning rate of the base-colour grid."""
    finish_lr: float = 0.01
    """Adam learning rate of the per-texel roughness and metallic grids (their global logits move at global-lr):
    a finish varies slowly across a surface, and a saturated colour under a rough coat can otherwise trade albedo
    for metallic texel by texel."""
    height_lr: float = 0.005
    """Adam learning rate of the height and normal-detail grids."""
    relief_after: int = 100
    """Steps before the height and the normal detail take part: per-texel normal noise mimics roughness (it
    spreads highlights too), so colour, roughness and metallic settle first on a flat relief."""
    init_roughness: float = 0.5
    init_metallic: float = 0.05
    global_lr: float = 0.1
    """Adam learning rate of the global (1x1) logits of colour, roughness and metallic."""

    def __post_init__(self) -> None:
        if not 4 <= self.texels <= 8192:
            raise ValueError(f"renderer.texels must be in [4, 8192], got {self.texels}")
        if self.supersample < 1:
            raise ValueError(f"renderer.supersample must be >= 1, got {self.supersample}")
        if self.normal_map not in ("opengl", "directx"):
            raise ValueError(f"renderer.normal-map must be opengl or directx, got {self.normal_map!r}")
        for name in ("init_roughness", "init_metallic"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"renderer.{name.replace('_', '-')} must be in (0, 1)")

    @property
    def regularizer_weights(self) -> dict[str, float]:
        return {"detail": 1e-2, "metallic_binary": 1.0}

    def build(self, gen: torch.Generator, device: torch.device | str = "cpu") -> "MaterialScene":
        return MaterialScene(self, gen, device)


# -- shared by the scene and the materials prior --------------------------------------------------------------------
def sample_maps(maps: Tensor, uv: Tensor, tileable: bool) -> Tensor:
    """Bilinear lookups of texel grids ``maps`` [K,ch,S,S] at texture coordinates ``uv`` [H,W,2] (u, v in tiles):
    periodic when ``tileable``, clamped to the tile otherwise. Returns [K,H,W,ch]."""
    K, ch, S, _ = maps.shape
    if tileable:
        uv = uv - torch.floor(uv)
        padded = F.pad(maps, (1, 1, 1, 1), mode="circular")
    else:
        uv = uv.clamp(0.0, 1.0)
        padded = F.pad(maps, (1, 1, 1, 1), mode="replicate")
    g = (uv * S + 1.0) / (S + 2.0) * 2.0 - 1.0  # texel centres of the padded grid, align_corners=False
    grid = g.reshape(1, *uv.shape).expand(K, *uv.shape).to(maps.dtype)
    out = F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.permute(0, 2, 3, 1)


def material_stack(basecolor: Tensor, roughness: Tensor, metallic: Tensor, normal_ts: Tensor) -> Tensor:
    """[K,8,S,S]: linear albedo (3), roughness, metallic, tangent-space normal (3); inputs [K,3|1,S,S]."""
    return torch.cat([pbr.srgb_to_linear(basecolor), roughness, metallic, normal_ts], 1)


def _sun(azimuth_deg: Tensor, elevation_deg: Tensor) -> Tensor:
    az, el = torch.deg2rad(azimuth_deg), torch.deg2rad(elevation_deg)
    return torch.stack([torch.cos(el) * torch.sin(az), torch.sin(el), torch.cos(el) * torch.cos(az)], -1)


def _plane_hits(cams: Cameras, supersample: int, offset: Tensor, tileable: bool) -> tuple[Tensor, ...]:
    """Rays of ``cams`` at ``supersample``^2 per pixel against the plane y = 0: points p [C,sH,sW,3] (0 where
    missed), unit ray directions d, hit mask [C,sH,sW] and texture coordinates uv [C,sH,sW,2]."""
    s = supersample
    hi = Cameras(cams.c2w.float(), cams.fovy.float(), cams.width * s, cams.height * s, cams.azimuth,
                 cams.elevation, cams.distance)
    o, d = hi.rays()
    dy = d[..., 1]
    hit = dy < -1e-4
    t = torch.where(hit, -o[..., 1] / torch.where(hit, dy, -torch.ones_like(dy)), torch.zeros_like(dy))
    p = o + t[..., None] * d
    base = offset if tileable else torch.full_like(offset, 0.5)
    uv = torch.stack([p[..., 0], p[..., 2]], -1) / TILE + base[:, None, None, :]
    return p, d, hit, uv


def plane_geometry(cams: Cameras, supersample: int, light: Tensor, offset: Tensor, tileable: bool) -> Tensor:
    """Condition images [C,sH,sW,13] of the plane y = 0 seen by ``cams``: texture coordinates (2), view vector (3),
    ``light`` [C,6] (env index, rotation, sun direction (3), irradiance), coverage, tileable flag. ``offset`` [C,2]
    is the texture offset in tiles (unused when not tileable: the tile is centred on the origin)."""
    _, d, hit, uv = _plane_hits(cams, supersample, offset, tileable)
    dy = d[..., 1]
    view = -d
    C, H, W = uv.shape[:3]
    lit = light[:, None, None, :].expand(C, H, W, light.shape[-1])
    flag = torch.full_like(dy, float(tileable))[..., None]
    return torch.cat([uv, view, lit, hit[..., None].float(), flag], -1)


def shade_view(stack: Tensor, cond: Tensor, supersample: int, lut: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Linear radiance [K,H,W,3] (pooled) and coverage [H,W] of K materials ``stack`` [K,8,S,S] seen in one view
    whose condition image is ``cond`` [sH,sW,13] (plane_geometry)."""
    tileable = bool(cond[0, 0, 12] > 0.5)
    uv, view = cond[..., 0:2], cond[..., 2:5]
    env_index, rotation = int(cond[0, 0, 5].round()), cond[0, 0, 6]
    sun, irradiance, cover = cond[0, 0, 7:10], cond[0, 0, 10], cond[..., 11]
    m = sample_maps(stack, uv, tileable)  # [K,sH,sW,8]
    albedo, rough, metal = m[..., 0:3].clamp(0, 1), m[..., 3:4].clamp(0.02, 1), m[..., 4:5].clamp(0, 1)
    nt = F.normalize(m[..., 5:8], dim=-1)
    n = torch.stack([nt[..., 0], nt[..., 2], -nt[..., 1]], -1)  # T = +X, B = -Z, N = +Y
    v = view.expand_as(n)
    rgb = view_lighting(albedo, rough, metal, n, v, env_index, rotation, sun, irradiance, lut)
    rgb = rgb * cover[None, ..., None]
    s = supersample
    if s > 1:
        rgb = F.avg_pool2d(rgb.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1)
        cover = F.avg_pool2d(cover[None, None], s)[0, 0]
    return rgb, cover


def view_lighting(albedo: Tensor, rough: Tensor, metal: Tensor, n: Tensor, v: Tensor, env_index: int,
                  rotation: Tensor, sun: Tensor, irradiance: Tensor, lut: Tensor | None = None) -> Tensor:
    """Linear radiance [...,3] of surface points (albedo [...,3], roughness, metallic [...,1], unit normal n and view
    v [...,3] in world space) under one view's lights: EXPOSURE x the split-sum environment ENVS[env_index] at
    ``rotation``, plus the directional light ``sun`` of irradiance ``irradiance`` (module docstring)."""
    env = pbr.environment(ENVS[env_index], ENV_HEIGHT).to(n.device)
    # the environment is looked up in a frame tilted by ENV_TILT about X: equirect lookups are singular at the pole
    # (the irradiance of an exactly-up normal depends on the sign of a zero), where a flat sample's normals sit
    tilt = _tilt_x(ENV_TILT, n)
    rgb = EXPOSURE * pbr.shade(albedo, rough, metal, n @ tilt.T, v @ tilt.T, env, rotation, lut)["rgb"]
    return rgb + direct_light(albedo, rough, metal, n, v, sun, irradiance)


@torch.no_grad()
def dreammat_condition(cams: Cameras, light: Tensor, offset: Tensor, tileable: bool, normal_ts: Tensor,
                       lut: Tensor | None = None) -> Tensor:
    """DreamMat's 22-channel ControlNet condition [C,H,W,22] of the plane seen by ``cams`` (one ray per pixel),
    made by renderers/condition.py ``condition_maps`` (guidance/priors/controlnet.py documents the layout): inverse
    distance, the camera-space normal of the tangent-space normal map ``normal_ts`` [1,3,S,S] (the learned relief)
    and six white-albedo renders under each view's own lights ``light`` [C,6] (``view_lighting``); 0 off the plane."""
    p, d, hit, uv = _plane_hits(cams, 1, offset, tileable)
    C, H, W = hit.shape
    nt = F.normalize(sample_maps(normal_ts.detach(), uv.reshape(C * H, W, 2), tileable)[0], dim=-1)
    n = torch.stack([nt[..., 0], nt[..., 2], -nt[..., 1]], -1).reshape(C, H, W, 3)  # T = +X, B = -Z, N = +Y
    out = []
    for i in range(C):
        env_index, rotation = int(light[i, 0].round()), light[i, 1]
        sun, irradiance = light[i, 2:5], light[i, 5]

        def shade(a, r, m, nn_, v):
            return view_lighting(a, r, m, nn_, v, env_index, rotation, sun, irradiance, lut)

        mask = hit[i].reshape(-1)
        idx = mask.nonzero()[:, 0]
        out.append(condition_maps(p[i].reshape(-1, 3)[mask], n[i].reshape(-1, 3)[mask], -d[i].reshape(-1, 3)[mask],
                                  idx, cams[i], (1, H, W), ENVS[env_index], float(rotation), ENV_HEIGHT, shade=shade))
    return torch.cat(out)


def _tilt_x(deg: float, like: Tensor) -> Tensor:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=like.dtype, device=like.device)


def direct_light(albedo: Tensor, roughness: Tensor, metallic: Tensor, n: Tensor, v: Tensor, sun: Tensor,
                 irradiance: Tensor) -> Tensor:
    """Radiance [...,3] of a directional light (unit direction ``sun`` towards the light, irradiance E at normal
    incidence) reflected by the Lambert + GGX BRDF (Cook-Torrance, height-correlated Smith G, Schlick F)."""
    l = sun.expand_as(n)  # noqa: E741 - the light vector, as in the BRDF literature
    h = F.normalize(l + v, dim=-1)
    nl = (n * l).sum(-1, keepdim=True).clamp_min(0.0)
    nv = (n * v).sum(-1, keepdim=True).clamp(1e-4, 1.0)
    nh = (n * h).sum(-1, keepdim=True).clamp(0.0, 1.0)
    vh = (v * h).sum(-1, keepdim=True).clamp(0.0, 1.0)
    alpha = roughness.clamp_min(pbr.MIN_ROUGHNESS).square()
    D = pbr.ggx_d(nh, alpha)
    G = 1.0 / (1.0 + pbr.smith_lambda(nv, alpha) + pbr.smith_lambda(nl.clamp_min(1e-4), alpha))
    f0 = 0.04 * (1 - metallic) + metallic * albedo
    Fr = f0 + (1 - f0) * (1 - vh) ** 5
    spec = D * G * Fr / (4 * nl.clamp_min(1e-4) * nv)
    return (albedo * (1 - metallic) / math.pi + spec) * irradiance * nl


def draw_lighting(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random lighting [n,6] (env index, rotation, sun xyz, irradiance) and offsets [n,2] from ``gen``."""
    env = torch.randint(0, len(ENVS), (n,), generator=gen).float()
    rot = torch.rand(n, generator=gen) * 2 * math.pi
    az = torch.rand(n, generator=gen) * 360.0
    el = SUN_ELEVATION[0] + torch.rand(n, generator=gen) * (SUN_ELEVATION[1] - SUN_ELEVATION[0])
    e = SUN_IRRADIANCE[0] + torch.rand(n, generator=gen) * (SUN_IRRADIANCE[1] - SUN_IRRADIANCE[0])
    offset = torch.rand(n, 2, generator=gen)
    return torch.cat([env[:, None], rot[:, None], _sun(az, el), e[:, None]], -1), offset


def eval_lighting(n: int) -> tuple[Tensor, Tensor]:
    env, rot, az, el, e = EVAL_LIGHT
    sun = _sun(torch.tensor(az), torch.tensor(el))
    row = torch.cat([torch.tensor([env, rot]), sun, torch.tensor([e])])
    return row.expand(n, 6).clone(), torch.zeros(n, 2)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class MaterialScene(nn.Module, ConditionRenderer):
    """Tileable PBR texel grids on a flat sample (see the module docstring)."""

    condition_kinds = ("material", "dreammat")
    """Per-view condition images this scene renders (module docstring; engine/train.py ``_wire_condition``)."""

    def __init__(self, cfg: MaterialConfig, gen: torch.Generator, device: torch.device | str = "cpu"):
        super().__init__()
        self.cfg = cfg
        S = cfg.texels
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        self._gen = torch.Generator().manual_seed(seed)  # the scene's own stream: lights and offsets
        noise = 0.01 * torch.randn(3, S, S, generator=gen)
        self.color = nn.Parameter(noise[None].to(device))
        self.rough = nn.Parameter(torch.full((1, 1, S, S), _logit(cfg.init_roughness), device=device))
        self.metal = nn.Parameter(torch.full((1, 1, S, S), _logit(cfg.init_metallic), device=device))
        self.height = nn.Parameter(torch.zeros(1, S, S, device=device))
        # coarser height levels (S/2, S/4, S/8; bilinear, periodic): a plateau of relief gets gradient over its whole
        # area through the coarse texels, not only by diffusion from its edges through the fine ones
        self.height_levels = nn.ParameterList([nn.Parameter(torch.zeros(1, S >> k, S >> k, device=device))
                                               for k in (1, 2, 3) if S >> k >= 4])
        self.detail = nn.Parameter(torch.zeros(1, 2, S, S, device=device), requires_grad=cfg.detail)
        # one global logit per map (the 1x1 level of a pyramid): the mean of a map moves at the optimiser's pace
        # instead of waiting for every texel's own, sparse gradient
        self.level0 = nn.Parameter(torch.zeros(1, 5, 1, 1, device=device))
        self.register_buffer("rng_state", self._gen.get_state())
        self.render_condition: bool | str = False  # False, or a kind of condition_kinds (True: "material")
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    # -- maps ------------------------------------------------------------------------------------------------------
    def maps(self) -> dict[str, Tensor]:
        """The current maps at ``texels``: basecolor (sRGB) [1,3,S,S], roughness, metallic [1,1,S,S], height [1,S,S],
        normal (tangent space, OpenGL) [1,3,S,S]."""
        g = self.level0
        relief = int(self.step) >= self.cfg.relief_after
        height = self.full_height() if relief else self.full_height().detach()
        detail = (self.detail if relief else self.detail.detach()) if self.cfg.detail else None
        return {"basecolor": torch.sigmoid(self.color + g[:, 0:3]), "roughness": torch.sigmoid(self.rough + g[:, 3:4]),
                "metallic": torch.sigmoid(self.metal + g[:, 4:5]), "height": height,
                "normal": tangent_normals(height, detail, self.cfg.tileable)}

    def full_height(self) -> Tensor:
        """[1,S,S] the fine height plus the coarse levels resampled to S texels."""
        S = self.cfg.texels
        c = (torch.arange(S, dtype=torch.float32, device=self.height.device) + 0.5) / S
        vv, uu = torch.meshgrid(c, c, indexing="ij")
        uv = torch.stack([uu, vv], -1)
        h = self.height
        for level in self.height_levels:
            h = h + sample_maps(level[:, None], uv, self.cfg.tileable)[..., 0]
        return h

    def stack(self) -> Tensor:
        m = self.maps()
        return material_stack(m["basecolor"], m["roughness"], m["metallic"], m["normal"])

    # -- Scene protocol ----------------------------------------------------------------------------------------------
    def render(self, cams: Cameras, background: Tensor) -> RenderOutput:
        C = len(cams)
        light, offset = draw_lighting(C, self._gen) if self.training else eval_lighting(C)
        cond = plane_geometry(cams, self.cfg.supersample, light.to(cams.device), offset.to(cams.device),
                              self.cfg.tileable)
        stack = self.stack()
        lut = pbr.brdf_lut(device=stack.device)
        rgbs, covers = [], []
        for i in range(C):
            rgb, cover = shade_view(stack, cond[i], self.cfg.supersample, lut)
            rgbs.append(rgb[0])
            covers.append(cover)
        alpha = torch.stack(covers)[..., None]
        rgb = pbr.linear_to_srgb(torch.stack(rgbs)) * alpha + (1 - alpha) * background
        kind = "material" if self.render_condition is True else self.render_condition
        if kind and kind not in self.condition_kinds:
            raise ValueError(f"the material scene renders {' or '.join(self.condition_kinds)} conditions, not {kind!r}")
        extras = {}
        if kind == "material":
            extras["control"] = cond
        elif kind == "dreammat" and self.training:  # as the mesh scene: training views only
            extras["control"] = dreammat_condition(cams, light.to(cams.device), offset.to(cams.device),
                                                   self.cfg.tileable, stack[:, 5:8], lut)
        return RenderOutput(rgb=rgb, alpha=alpha, extras=extras)

    def param_groups(self) -> dict[str, dict]:
        groups = {"color": {"params": [self.color], "lr": self.cfg.lr},
                  "global": {"params": [self.level0], "lr": self.cfg.global_lr},
                  "roughness": {"params": [self.rough], "lr": self.cfg.finish_lr},
                  "metallic": {"params": [self.metal], "lr": self.cfg.finish_lr},
                  "height": {"params": [self.height, *self.height_levels], "lr": self.cfg.height_lr}}
        if self.cfg.detail:
            groups["detail"] = {"params": [self.detail], "lr": self.cfg.height_lr}
        return groups

    @property
    def regularizer_weights(self) -> dict[str, float]:
        return self.cfg.regularizer_weights

    def regularizers(self, out: RenderOutput, step: int, weights: Mapping[str, float] | None = None
                     ) -> dict[str, Tensor]:
        """"detail": mean square of the learned normal detail (the height should explain the relief);
        "metallic_binary": mean m(1 - m) of the metallic map, zero for pure dielectrics and pure metals (real metalness
        maps are nearly binary), which breaks the near-degeneracy of a rough surface's albedo and a small metallic."""
        m = torch.sigmoid(self.metal + self.level0[:, 4:5])
        regs = {"metallic_binary": (m * (1 - m)).mean()}
        if self.cfg.detail:
            regs["detail"] = self.detail.square().mean()
        return regs

    def after_step(self, step: int, out: RenderOutput) -> None:
        self.step.fill_(step + 1)

    # -- checkpoints: the lighting stream is part of the state, so --resume continues it --------------------------
    def state_dict(self, *args, **kwargs):
        self.rng_state = self._gen.get_state()
        return super().state_dict(*args, **kwargs)

    def load_state_dict(self, state, strict: bool = True):
        result = super().load_state_dict(state, strict)
        self._gen.set_state(self.rng_state.detach().cpu().clone().to(torch.uint8))
        return result

    # -- outputs -----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def export_maps(self, size: int) -> dict[str, np.ndarray]:
        """The maps resampled (bilinear, periodic when tileable) to ``size`` texels, as float arrays: basecolor
        (sRGB) [S,S,3], roughness, metallic, height [S,S] and the tangent-space normal [S,S,3] (OpenGL)."""
        m = self.maps()
        c = (torch.arange(size, dtype=torch.float32, device=self.color.device) + 0.5) / size
        vv, uu = torch.meshgrid(c, c, indexing="ij")
        uv = torch.stack([uu, vv], -1)
        stack = torch.cat([m["basecolor"], m["roughness"], m["metallic"], m["height"][:, None], m["normal"]], 1)
        s = sample_maps(stack, uv, self.cfg.tileable)[0].cpu().numpy()
        n = s[..., 6:9] / np.linalg.norm(s[..., 6:9], axis=-1, keepdims=True)
        return {"basecolor": s[..., 0:3], "roughness": s[..., 3], "metallic": s[..., 4], "height": s[..., 5],
                "normal": n}


__all__ = ["MaterialConfig", "MaterialScene", "sample_maps", "tangent_normals", "material_stack", "plane_geometry",
           "shade_view", "view_lighting", "dreammat_condition", "direct_light", "draw_lighting", "eval_lighting",
           "ENVS", "TILE", "CONDITION_CHANNELS"]
