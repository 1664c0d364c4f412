"""Mesh scene: a triangle mesh with PBR materials, rasterised (renderers/kernels/raster*.py) and shaded with
split-sum environment lighting (renderers/pbr.py). Fantasia3D / DreamMat's material half.

Geometry, two modes:
- "deformable": DMTet (renderers/dmtet.py) on a (res+1)³ Kuhn tet grid over [−radius, radius]³ with a per-vertex
  SDF and bounded deformation, initialised from a shapes primitive (``init_shape``) or from a NeRF/Gaussians run
  folder (``init_from``, ``Mesh.init_from_scene``): the run's density is thresholded at the level whose DMTet surface
  renders the run's silhouettes (``sdf_from_density``), on a grid twice as fine as the tet grid, and turned into a
  signed distance by distance transforms; the colour the run renders is distilled into the material field
  (``Mesh.distill_albedo``). Regularisers: normal consistency
  (1 − cos between adjacent face normals), uniform Laplacian, DMTet's SDF sign BCE.
- "fixed": a user's mesh (vertices, faces, optional UVs), materials only (``Mesh.from_arrays``, engine/texture.py).

Materials (linear albedo k_d, perceptual roughness r, metallic m; conventions.md §3.1):
- "field": a small hash grid + MLP over world position → sigmoid heads: albedo 3, r ∈ [r_min, r_max], m ∈ [0, m_max]
  (Fantasia3D/threestudio layout), bakeable to UV textures through ``query_material``.
- "uv": textures (albedo, roughness, metallic) of ``texture_resolution``² sampled at the mesh's UVs.

Shading: per rendered image one environment (random among ``envs``, random rotation about +Y; DreamMat's
discouragement of baked lighting), Cook–Torrance GGX split-sum + Lambert irradiance (renderers/pbr.py), then the sRGB
OETF, composited over the background and antialiased (silhouette gradients). ``set_lighting`` pins the
environment (the light-aware shapes prior and the ControlNet condition use the same one). Normals are per corner:
the smooth vertex normal, or the face normal where they differ by more than ``crease_angle`` (hard edges).

Camera: the OpenGL c2w of foundation/cameras.py, perspective with near 0.05 m / far 50 m, and P[1,1] negated so image
row 0 is the top (nvdiffrast's clip y = −1 is row 0).
"""

import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foundation.abilities import declares
from foundation.cameras import Cameras
from renderers import dmtet, envmaps, pbr
from renderers.base import (
    AlbedoField,
    ConditionRenderer,
    DensityField,
    MeshSource,
    PBRMaterial,
    Relightable,
    RenderOutput,
)
from renderers.kernels import raster as K
from renderers.kernels.hashgrid_torch import HashGrid

NEAR, FAR = 0.05, 50.0


@dataclass
class MeshConfig:
    """A PBR triangle mesh (DMTet or fixed) with neural or UV-texture materials, lit by environment maps."""

    REGULARIZERS: ClassVar[tuple[str, ...]] = ("albedo_smooth", "roughness_prior", "metallic_prior",
                                               "normal_perturbation", "normal_consistency", "laplacian", "sdf")
    """The terms ``Mesh.regularizers`` may return: the keys a run's ``regularizers:`` may weight."""

    mode: str = "deformable"
    """"deformable" (DMTet) or "fixed" (a given mesh; materials only)."""
    init_shape: str = "sphere"
    """Deformable mode: shapes-world primitive used as the initial SDF (cube, sphere, cylinder, cone, torus)."""
    init_from: str = ""
    """Deformable mode: a NeRF or Gaussians run folder whose density (and albedo) initialise the mesh."""
    mesh_path: str = ""
    """Fixed mode: OBJ/GLB/PLY to load (normalised like engine texture does)."""
    tet_resolution: int = 32
    """DMTet grid cells per side."""
    radius: float = 0.8
    """Half-size of the tet grid and of the material field's box, in metres."""
    material: str = "field"
    """"field" (hash grid + MLP over position) or "uv" (textures at the mesh's UVs; fixed meshes with UVs)."""
    texture_resolution: int = 256
    """Side of the UV textures in "uv" material mode."""
    mipmap: bool = True
    """"uv" material mode: trilinear mip-mapping at each pixel's own level of detail (from analytic screen-space uv
    derivatives), so minified textures average instead of aliasing; off: bilinear at level 0."""
    roughness_range: tuple[float, float] = (0.08, 1.0)
    """Range the roughness head maps into."""
    max_metallic: float = 1.0
    """Upper bound of the metallic head."""
    normal_perturbation: bool = False
    """"field" materials: three more heads perturb the shading normal in its tangent plane (Fantasia3D's bump /
    nvdiffrec's normal map; ``perturb_normal``), exported as a tangent-space normal map through ``query_material``."""
    normal_strength: float = 0.5
    """Largest tangent-space slope of the perturbation (per tangent component; 0.5 tilts up to ~35 degrees)."""
    lambda_normal_perturbation: float = 0.1
    """Default weight of "normal_perturbation": mean squared tangent slope (only with normal_perturbation)."""
    init_roughness: float = 0.7
    """Initial roughness."""
    init_metallic: float = 0.02
    """Initial metallic."""
    envs: tuple[str, ...] = ("studio", "sky", "rgb", "sunset")
    """Training environments (procedural names or equirect .hdr/.exr/.png files), one drawn per render."""
    env_rotations: int = 0
    """0: continuous random rotation about +Y during training; k > 0: one of k evenly spaced rotations."""
    eval_env: str = "studio"
    """Environment outside training."""
    env_height: int = 32
    """Rows of the equirect maps after loading (the pre-filtered levels are built from it)."""
    eval_shading: str = "pbr"
    """Shading outside training: "pbr", "albedo" (sRGB albedo, unlit) or "shapes" (the shapes world's own light,
    foundation/shapes.py: sRGB albedo x (0.6 + 0.4 max(0, n.l)); what its ground truth is rendered with, so an
    evaluation against it compares geometry and albedo, not lighting models)."""
    crease_angle: float = 45.0
    """Corners whose smooth normal differs from the face normal by more than this use the face normal (degrees)."""
    antialias: bool = True
    """Analytic antialiasing (silhouette gradients for the geometry)."""
    lr_material: float = 1e-2
    """Adam learning rate of the material field / textures."""
    lr_geometry: float = 5e-3
    """Adam learning rate of the SDF and deformation."""
    init_from_lr_scale: float = 0.1
    """With ``init_from``, the geometry learning rate is multiplied by this: the initial surface already is the run's,
    and the from-scratch rate tears it apart (a blue-torus NeRF's mesh: IoU 0.934 -> 0.85 in 100 shapes-prior SDS
    steps at 5e-3, 0.931 at 5e-4)."""
    albedo_smooth_eps: float = 0.02
    """Std of the position jitter of the albedo-smoothness regulariser, in metres."""
    roughness_prior: float = 0.7
    """Target of the roughness prior."""
    lambda_albedo_smooth: float = 1.0
    """Default weight of "albedo_smooth": mean |k_d(x) − k_d(x + δ)|."""
    lambda_roughness_prior: float = 0.01
    """Default weight of "roughness_prior": mean (r − roughness_prior)²."""
    lambda_metallic_prior: float = 0.01
    """Default weight of "metallic_prior": mean m²."""
    lambda_normal_consistency: float = 0.1
    """Default weight of "normal_consistency" (deformable)."""
    lambda_laplacian: float = 1.0
    """Default weight of "laplacian" (deformable)."""
    lambda_sdf: float = 0.01
    """Default weight of "sdf" (DMTet sign BCE)."""
    backend: str = "auto"
    """Raster backend: auto, torch or cuda (nvdiffrast when importable)."""

    def __post_init__(self) -> None:
        if self.mode not in ("deformable", "fixed"):
            raise ValueError(f"mesh.mode must be deformable or fixed, got {self.mode!r}")
        if self.material not in ("field", "uv"):
            raise ValueError(f"mesh.material must be field or uv, got {self.material!r}")
        if self.eval_shading not in ("pbr", "albedo", "shapes"):
            raise ValueError(f"mesh.eval_shading must be pbr, albedo or shapes, got {self.eval_shading!r}")
        if not self.envs:
            raise ValueError("mesh.envs must name at least one environment")
        if self.normal_perturbation and self.material != "field":
            raise ValueError("mesh.normal_perturbation needs mesh.material field")
        if self.tet_resolution < 4:
            raise ValueError(f"mesh.tet_resolution must be >= 4, got {self.tet_resolution}")

    def default_weights(self) -> dict[str, float]:
        return {"albedo_smooth": self.lambda_albedo_smooth, "roughness_prior": self.lambda_roughness_prior,
                "metallic_prior": self.lambda_metallic_prior, "normal_consistency": self.lambda_normal_consistency,
                "laplacian": self.lambda_laplacian, "sdf": self.lambda_sdf,
                **({"normal_perturbation": self.lambda_normal_perturbation} if self.normal_perturbation else {})}

    def build(self, gen: torch.Generator, device: torch.device | str = "cpu") -> "Mesh":
        if self.mode == "fixed":
            if not self.mesh_path:
                raise ValueError("mesh.mode fixed needs --renderer.mesh-path (or use engine texture)")
            from foundation.meshio import load_mesh  # noqa: PLC0415

            m = load_mesh(self.mesh_path)
            return Mesh.from_arrays(self, m.vertices, m.faces, m.uv, gen, device)
        return Mesh(self, gen, device)


@functools.cache
def environment(name: str, height: int) -> pbr.EnvironmentLight:
    """A pre-filtered environment, built once per (name, height) in a process."""
    return pbr.EnvironmentLight(envmaps.load(name, height), name=os.path.basename(name))


def projection(cams: Cameras) -> Tensor:
    """[C,4,4] clip-from-world with P[1,1] negated (row 0 at the top)."""
    f = 1.0 / torch.tan(0.5 * cams.fovy)
    P = torch.zeros(len(cams), 4, 4, dtype=cams.c2w.dtype, device=cams.device)
    aspect = cams.width / cams.height
    P[:, 0, 0] = f / aspect
    P[:, 1, 1] = -f
    P[:, 2, 2] = (FAR + NEAR) / (NEAR - FAR)
    P[:, 2, 3] = 2 * FAR * NEAR / (NEAR - FAR)
    P[:, 3, 2] = -1
    return P @ torch.linalg.inv(cams.c2w)


def face_normals(v: Tensor, f: Tensor) -> Tensor:
    """Unnormalised face normals [F,3] (length = 2·area)."""
    return torch.linalg.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1)


def corner_normals(v: Tensor, f: Tensor, crease_deg: float) -> Tensor:
    """[F·3,3] unit normals per triangle corner: smooth (area-weighted) unless past the crease angle."""
    fn = face_normals(v, f)
    vn = torch.zeros_like(v).index_add(0, f.reshape(-1), fn.repeat_interleave(3, 0))
    vn = F.normalize(vn, dim=-1)[f.reshape(-1)]
    fu = F.normalize(fn, dim=-1).repeat_interleave(3, 0)
    hard = (vn * fu).sum(-1, keepdim=True) < math.cos(math.radians(crease_deg))
    return torch.where(hard, fu, vn)


def _mlp(d_in: int, width: int, d_out: int, gen: torch.Generator) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, d_out))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            bound = 1.0 / math.sqrt(layer.in_features)
            layer.weight.copy_((torch.rand(layer.weight.shape, generator=gen) * 2 - 1) * bound)
            layer.bias.zero_()
    return net


def _nudge(sdf: Tensor, spacing: float) -> Tensor:
    """Move SDF values off ±0 (to ±spacing/20): a surface through a grid vertex makes DMTet's crossing formula
    (p_a s_b − p_b s_a)/(s_b − s_a) ill-conditioned and its gradients explode."""
    eps = 0.05 * spacing
    return torch.where(sdf.abs() < eps, torch.where(sdf < 0, -eps, eps), sdf)


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


# ---- initialisation from a density (renderers.md §3.2: the DMTet SDF init) ----------------------------------------

INIT_SUPERSAMPLE = 2
"""The source density is sampled this many times finer than the tet grid before the distance transform, so the
initial surface is placed to ~1/4 of a tet cell instead of snapping half-way between tet vertices."""
INIT_LEVEL_ITERS = 12
"""Bisection steps (on log σ) of the iso-level search in ``sdf_from_density``."""
PIXEL_MIN_ALPHA = 0.9
"""Pixels of the source's renders that are colour targets in ``Mesh.distill_albedo``: its soft rim (alpha between
0.5 and 0.9, mostly background) would lighten the surface the rim lies over."""
RAY_TARGET_WEIGHT = 0.05
"""Weight of the per-vertex normal-ray colour targets relative to the per-pixel ones in ``Mesh.distill_albedo``."""


def init_cameras(radius: float, resolution: int = 64) -> Cameras:
    """16 orbit views (azimuth every 45°, elevation 0° and 30°, fovy 40°, distance 3.2·radius: the engine's 2.5 m
    orbit for the default 0.8 m box) on which a mesh's silhouette is matched to its source scene's."""
    from foundation.cameras import orbit_cameras  # noqa: PLC0415

    az = torch.arange(-180.0, 180.0, 45.0).repeat(2)
    el = torch.tensor([0.0, 30.0]).repeat_interleave(8)
    return orbit_cameras(az, el, 3.2 * radius, 40.0, resolution)


@torch.no_grad()
def silhouette(v: Tensor, f: Tensor, cams: Cameras, backend: str = "torch") -> Tensor:
    """Antialiased coverage [C,H,W,1] of a mesh (no shading); the torch backend runs on the CPU."""
    C, H, W = len(cams), cams.height, cams.width
    if f.shape[0] == 0:
        return torch.zeros(C, H, W, 1)
    pos = torch.einsum("cij,vj->cvi", projection(cams).to(v.dtype), F.pad(v, (0, 1), value=1.0))
    rast = K.rasterize(backend, pos, f, (H, W))
    cov = (rast[..., 3:4] > 0).to(v.dtype)
    return K.antialias(backend, cov, rast, pos, f, None).clamp(0, 1)


@torch.no_grad()
def sdf_from_density(density_fn, res: int, radius: float, cams: Cameras, target_alpha: Tensor) -> Tensor:
    """Signed distance [(res+1)³] (metres, negative inside) on the DMTet grid for a density field.

    Args:
        density_fn: world points [N,3] -> density (or opacity) [N], larger inside.
        res, radius: the tet grid (``dmtet.tet_grid(res, radius)``).
        cams, target_alpha: views of the source and its rendered alpha [C,H,W,1] there.

    The iso-level is chosen so that the DMTet surface *renders* like the source: bisection on log σ until the
    mesh's silhouette area over ``cams`` equals the source's alpha area, whatever σ's units and sharpness. (The
    exporter's automatic level, used before, is a proxy for another purpose: on a soft 200-step blue-torus NeRF its
    grid-line optical-depth rule gave silhouettes ~20 % too small, its Otsu rule ~10 % too large.) The occupancy
    {σ > level} is taken on a grid ``INIT_SUPERSAMPLE`` times finer than the tet grid and turned into a signed
    distance there (``dmtet.signed_distance_from_occupancy``), then read at the tet vertices.
    """
    s = INIT_SUPERSAMPLE
    nf, n = res * s + 1, res + 1
    ax = torch.linspace(-radius, radius, nf)
    pts = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    sigma = torch.cat([density_fn(c).float().cpu() for c in pts.split(1 << 17)]).view(nf, nf, nf)
    spacing_f = 2 * radius / (nf - 1)
    grid, tets = dmtet.tet_grid(res, radius)
    target = float(target_alpha.sum())

    def sdf_at(level: float) -> Tensor:
        inside = sigma > level
        if not inside.any():
            return torch.full((n ** 3,), spacing_f)
        sd = dmtet.signed_distance_from_occupancy(inside, spacing_f)[::s, ::s, ::s]
        return _nudge(sd.reshape(-1), 2 * radius / res)

    def area(level: float) -> float:
        v, f = dmtet.marching_tets(grid, sdf_at(level), tets)
        return float(silhouette(v, f, cams).sum())

    top = float(sigma.max())
    if not top > 0:
        raise ValueError("the density is empty (max <= 0): nothing to initialise the mesh from")
    # area(top 1e-4) >= target >= area(top) for any sensible field
    return sdf_at(level_for_area(area, target, top * 1e-4, top, INIT_LEVEL_ITERS))


def level_for_area(area, target: float, lo: float, hi: float, iters: int) -> float:
    """The iso-level in [lo, hi] whose silhouette ``area(level)`` (decreasing in the level) matches ``target``:
    bisection on log(level), ``iters`` halvings; returns the last bracket's geometric middle."""
    a, b = math.log(lo), math.log(hi)
    for _ in range(iters):
        mid = 0.5 * (a + b)
        if area(math.exp(mid)) > target:
            a = mid
        else:
            b = mid
    return float(math.exp(0.5 * (a + b)))


def perturb_normal(n: Tensor, d: Tensor) -> Tensor:
    """Shading normal [P,3] from unit geometric normals n [P,3] and the material's perturbation d [P,3].

    Through a TBN frame: n' = normalize(t_T·T + t_B·B + N) with the tangent-space normal (t_T, t_B, 1),
    t_T = d·T, t_B = d·B. The product does not depend on which orthonormal (T, B) spans the tangent plane, so it is
    evaluated as normalize(n + d − (d·n) n): a UV-less DMTet surface needs no tangent field (which would have a
    singularity somewhere on a closed surface), and the material field stays continuous in world space.
    """
    return F.normalize(n + d - (d * n).sum(-1, keepdim=True) * n, dim=-1)


def vertex_normals(v: Tensor, f: Tensor) -> Tensor:
    """Area-weighted unit vertex normals [V,3] (outward for DMTet's winding)."""
    fn = face_normals(v, f)
    vn = torch.zeros_like(v).index_add(0, f.reshape(-1), fn.repeat_interleave(3, 0))
    return F.normalize(vn, dim=-1)


@torch.no_grad()
def surface_colour(scene, x: Tensor, n: Tensor, spacing: float, kind: str = "density", samples: int = 24) -> Tensor:
    """Display-referred colour [N,3] a ray through each surface point x [N,3] along −n [N,3] renders on ``scene``.

    The ray runs from x + 2·spacing·n to x − 2·spacing·n; the source's ``query_albedo`` is composited with its
    ``query_density`` as the volume renderer does (α = 1 − exp(−σδ); an opacity field gives α = clamp(o, 0, 1)
    spread over the samples). Rays that see nothing keep ``query_albedo(x)``.
    """
    t = torch.linspace(2 * spacing, -2 * spacing, samples)
    delta = 4 * spacing / (samples - 1)
    p = (x[:, None, :] + t[None, :, None] * n[:, None, :]).reshape(-1, 3)
    sig = torch.cat([scene.query_density(c).float() for c in p.split(1 << 17)]).view(-1, samples).clamp_min(0)
    col = torch.cat([scene.query_albedo(c).float() for c in p.split(1 << 17)]).view(-1, samples, 3)
    alpha = 1 - torch.exp(-sig * delta) if kind == "density" else (sig.clamp(0, 1) * delta / spacing).clamp(0, 1)
    trans = torch.cumprod(F.pad(1 - alpha, (1, 0), value=1.0), -1)[:, :-1]
    w = trans * alpha
    acc = w.sum(-1, keepdim=True)
    out = (w[..., None] * col).sum(1) / acc.clamp_min(1e-6)
    own = torch.cat([scene.query_albedo(c).float() for c in x.split(1 << 17)])
    return torch.where(acc > 1e-3, out, own)


class Mesh(nn.Module, MeshSource, PBRMaterial, AlbedoField, Relightable, ConditionRenderer):
    """PBR triangle-mesh scene implementing the Scene protocol (renderers/base.py)."""

    condition_kinds = ("dreammat",)
    """Per-view condition images this scene can render (engine/train.py ``_wire_condition``): DreamMat's 22 channels."""

    relightable = True  # albedo without lighting: evaluations light it like their ground truth (engine/outputs.py)

    def __init__(self, cfg: MeshConfig, gen: torch.Generator, device: torch.device | str = "cpu",
                 fixed: tuple[Tensor, Tensor, Tensor | None] | None = None):
        super().__init__()
        self.cfg = dataclasses.replace(cfg, backend=K.resolve_raster_backend(cfg.backend))
        self.gen = gen
        self._lighting: tuple[str, float] | None = None
        # training renders also return the ControlNet condition in extras["control"]; the training loop turns this
        # on when the prior takes a condition (guidance/priors/controlnet.py documents the layout)
        self.render_condition = False
        if fixed is not None:
            v, f, uv = fixed
            self.register_buffer("vertices", v.float())
            self.register_buffer("faces", f.long())
            self.register_buffer("uv", uv.float() if uv is not None else torch.zeros(0, 2))
            self.topology = K.edge_topology(self.faces, v.shape[0])
        else:
            grid, tets = dmtet.tet_grid(cfg.tet_resolution, cfg.radius)
            self.register_buffer("grid", grid)
            self.register_buffer("tets", tets)
            self.register_buffer("grid_edges", dmtet.grid_edges(tets))
            self.sdf = nn.Parameter(self._initial_sdf(grid))
            self.deform = nn.Parameter(torch.zeros_like(grid))
            self.register_buffer("uv", torch.zeros(0, 2))
        self._build_material(gen)
        self.to(device)
        if fixed is None and cfg.init_from:
            self.init_from_scene(self._load_run_scene(cfg.init_from), cfg.init_from)

    @classmethod
    def from_arrays(cls, cfg: MeshConfig, vertices, faces, uv, gen: torch.Generator,
                    device: torch.device | str = "cpu") -> "Mesh":
        """A fixed-geometry scene on given vertices [V,3], faces [F,3] and optional per-vertex UVs [V,2]."""
        as_t = lambda a, dt: None if a is None else torch.as_tensor(a).to(dt)  # noqa: E731
        cfg = dataclasses.replace(cfg, mode="fixed")
        if cfg.material == "uv" and uv is None:
            raise ValueError("mesh.material uv needs a mesh with UVs")
        return cls(cfg, gen, device, fixed=(as_t(vertices, torch.float32), as_t(faces, torch.long),
                                             as_t(uv, torch.float32)))

    # ---- geometry ------------------------------------------------------------------------------------------------

    def _initial_sdf(self, grid: Tensor) -> Tensor:
        from foundation import shapes  # noqa: PLC0415

        return _nudge(shapes.sdf(self.cfg.init_shape, grid).float(), self.cfg.radius / self.cfg.tet_resolution)

    def _load_run_scene(self, run_dir: str):
        from engine.checkpoint import latest_checkpoint, load_checkpoint  # noqa: PLC0415
        from engine.config import load_config  # noqa: PLC0415

        cfg_path = os.path.join(run_dir, "config.yaml")
        if not os.path.isfile(cfg_path):
            raise ValueError(f"mesh.init_from: {run_dir} is not a run folder (no config.yaml)")
        run_cfg = load_config(cfg_path)
        if isinstance(run_cfg.renderer, MeshConfig):
            raise ValueError("mesh.init_from needs a NeRF or Gaussians run, not a mesh run")
        ckpt = latest_checkpoint(os.path.join(run_dir, "ckpts"))
        if ckpt is None:
            raise ValueError(f"mesh.init_from: {run_dir} has no checkpoint")
        scene = run_cfg.renderer.build(torch.Generator().manual_seed(0), "cpu")
        scene.load_state_dict(load_checkpoint(ckpt)["scene"])
        scene.eval()
        return scene

    def init_from_scene(self, scene, what: str = "the source scene", albedo_steps: int = 300) -> None:
        """Initialise the SDF and the material field from a density scene (a NeRF or Gaussians run's scene, or
        anything with ``query_density``, ``query_albedo`` and ``render``), so that the mesh renders like it.

        Geometry: ``sdf_from_density`` against the scene's alpha on ``init_cameras``. Colour: ``distill_albedo``
        against the scene's rendered colour on the same views.
        """
        if self.cfg.mode != "deformable":
            raise ValueError("init_from_scene needs mesh.mode deformable")
        if not declares(scene, DensityField):
            raise ValueError(f"mesh.init_from: {what} ({type(scene).__name__}) is not a density field (a NeRF or "
                             f"Gaussians scene)")
        cams = init_cameras(self.cfg.radius)
        with torch.no_grad():
            out = scene.render(cams, torch.ones(len(cams), cams.height, cams.width, 3))
        rgb, alpha = out.rgb.detach().float().cpu(), out.alpha.detach().float().cpu()
        if float(alpha.sum()) < 1.0:
            raise ValueError(f"mesh.init_from: {what} renders nothing from the orbit (empty density)")
        sdf = sdf_from_density(scene.query_density, self.cfg.tet_resolution, self.cfg.radius, cams, alpha)
        with torch.no_grad():
            self.sdf.copy_(sdf.to(self.sdf))
            self.deform.zero_()
        self.distill_albedo(scene, cams, rgb, alpha, albedo_steps)

    def distill_albedo(self, scene, cams: Cameras, rgb: Tensor, alpha: Tensor, steps: int = 300) -> None:
        """Fit the material field's albedo so that the mesh's unlit render matches ``scene``'s colour.

        Targets, in display-referred values like the renders: (1) every pixel of ``rgb`` [C,H,W,3] (the scene's
        render of ``cams`` over white, ``alpha`` [C,H,W,1]) where both the scene (alpha > 0.5) and the mesh cover it,
        un-composited from the white background, at the mesh's surface point under that pixel; (2) every surface
        vertex, with the colour a ray along its inward normal renders (``surface_colour``), for the parts the
        views miss. Not ``query_albedo`` at the vertices, which greyed and darkened the mesh: the extracted surface
        sits up to half a cell off the source's, where a soft field's albedo is untrained, and a volume render
        blends the albedo over the field's soft shell.
        """
        with torch.no_grad():
            v, f = (t.detach().cpu() for t in self.geometry())
            if f.shape[0] == 0:
                return
            H, W = cams.height, cams.width
            pos = torch.einsum("cij,vj->cvi", projection(cams).to(v.dtype), F.pad(v, (0, 1), value=1.0))
            rast = K.rasterize("torch", pos, f, (H, W))
            xmap = K.interpolate("torch", v[f.reshape(-1)], rast,
                                 torch.arange(f.shape[0] * 3).view(-1, 3)).reshape(-1, 3)
            a = alpha.reshape(-1, 1)
            keep = ((rast[..., 3] > 0).reshape(-1) & (a[:, 0] > PIXEL_MIN_ALPHA)).nonzero()[:, 0]
            pix = rgb.reshape(-1, 3)[keep]
            kind = scene.field_kind
            spacing = 2 * self.cfg.radius / self.cfg.tet_resolution
            ray = surface_colour(scene, v, vertex_normals(v, f), spacing, kind).clamp(0, 1)
            pts = torch.cat([xmap[keep], v]).to(self.sdf.device)
            target = torch.cat([pix, ray]).to(self.sdf.device)
            # the rays only fill in what no view sees: a small weight keeps them from pulling seen surfaces
            weight = torch.cat([torch.ones(len(pix)), torch.full((len(ray),), RAY_TARGET_WEIGHT)]).to(pts)[:, None]
        params = list(self.encoding.parameters()) + list(self.mlp.parameters())
        opt = torch.optim.Adam(params, lr=1e-2)
        for _ in range(steps):
            jitter = torch.randn(pts.shape, generator=self.gen).to(pts) * 0.005
            srgb = pbr.linear_to_srgb(self._material(pts + jitter)["albedo"])
            loss = (weight * (srgb - target).square()).sum() / weight.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()

    def geometry(self) -> tuple[Tensor, Tensor]:
        """Current (vertices [V,3], faces [F,3])."""
        if self.cfg.mode == "fixed":
            return self.vertices, self.faces
        step = self.cfg.radius / self.cfg.tet_resolution
        verts = self.grid + step * torch.tanh(self.deform)
        return dmtet.marching_tets(verts, self.sdf, self.tets)

    # ---- materials ----------------------------------------------------------------------------------------------

    def _build_material(self, gen: torch.Generator) -> None:
        cfg = self.cfg
        r0 = _logit((cfg.init_roughness - cfg.roughness_range[0]) / (cfg.roughness_range[1] - cfg.roughness_range[0]))
        m0 = _logit(cfg.init_metallic / cfg.max_metallic)
        self._r0, self._m0 = r0, m0
        if cfg.material == "uv":
            T = cfg.texture_resolution
            self.tex_albedo = nn.Parameter(torch.zeros(1, T, T, 3))
            self.tex_rm = nn.Parameter(torch.tensor([r0, m0]).view(1, 1, 1, 2).repeat(1, T, T, 1))
        else:
            self.encoding = HashGrid(4, 8, 64, 2, 16, gen=gen)
            self.mlp = _mlp(self.encoding.out_dim, 32, 8 if cfg.normal_perturbation else 5, gen)
            with torch.no_grad():
                self.mlp[2].weight[5:].zero_()  # the perturbation starts flat: shading uses the geometric normal

    def _heads(self, raw: Tensor) -> dict[str, Tensor]:
        lo, hi = self.cfg.roughness_range
        out = {"albedo": torch.sigmoid(raw[..., 0:3]),
               "roughness": lo + (hi - lo) * torch.sigmoid(raw[..., 3:4]),
               "metallic": self.cfg.max_metallic * torch.sigmoid(raw[..., 4:5])}
        if raw.shape[-1] >= 8:
            out["perturb"] = self.cfg.normal_strength * torch.tanh(raw[..., 5:8])
        return out

    def _material(self, x: Tensor, uv: Tensor | None = None, uv_da: Tensor | None = None) -> dict[str, Tensor]:
        """Material at world points x [N,3] (field) or UVs [N,2] (textures; ``uv_da`` [N,4]: their screen-space
        derivatives, for mip-mapping). Textures hold the heads' pre-activations, filtered before the activation."""
        if self.cfg.material == "uv":
            grid = uv.view(1, 1, -1, 2)
            da = None if uv_da is None else uv_da.view(1, 1, -1, 4)
            a = K.texture(self.cfg.backend, self.tex_albedo, grid, uv_da=da)[0, 0]
            rm = K.texture(self.cfg.backend, self.tex_rm, grid, uv_da=da)[0, 0]
            return self._heads(torch.cat([a, rm], -1))
        u = (x + self.cfg.radius) / (2 * self.cfg.radius)
        raw = self.mlp(self.encoding(u))
        bias = F.pad(torch.tensor([0, 0, 0, self._r0, self._m0], dtype=raw.dtype, device=raw.device),
                     (0, raw.shape[-1] - 5))
        return self._heads(raw + bias)

    def query_material(self, x: Tensor, uv: Tensor | None = None) -> dict[str, Tensor]:
        """Exporter hook: {"albedo" [M,3] linear, "roughness" [M], "metallic" [M]} at world points (or UVs), plus
        "normal" [M,3] (the perturbed world-space shading normal, which the exporter re-expresses in its own
        tangent frame as a tangent-space normal map) with ``normal_perturbation``."""
        with torch.no_grad():
            if self.cfg.material == "uv" and uv is None:  # points only (no UVs given): the nearest vertex's UV
                uv = self.uv[self._nearest_vertex(x)].to(x)
            m = self._material(x, uv)
            out = {"albedo": m["albedo"], "roughness": m["roughness"][:, 0], "metallic": m["metallic"][:, 0]}
            if "perturb" in m:
                out["normal"] = perturb_normal(self._nearest_normal(x), m["perturb"])
        return out

    @property
    def uv_material(self) -> bool:
        """Materials are UV textures addressed by this mesh's own UVs (the exporter then bakes by UV, exactly)."""
        return self.cfg.material == "uv"

    def _nearest_vertex(self, x: Tensor) -> Tensor:
        """Index [M] of the current surface's vertex nearest to each point x [M,3]."""
        from scipy.spatial import cKDTree  # noqa: PLC0415

        v = self.geometry()[0].detach()
        _, i = cKDTree(v.cpu().numpy()).query(x.detach().cpu().numpy())
        return torch.as_tensor(i, device=v.device)

    def _nearest_normal(self, x: Tensor) -> Tensor:
        """Smooth vertex normal [M,3] of the current surface's vertex nearest to each point x [M,3]."""
        v, f = (t.detach() for t in self.geometry())
        if f.shape[0] == 0:
            return F.normalize(x, dim=-1)
        return vertex_normals(v, f)[self._nearest_vertex(x)].to(x)

    def export_mesh(self) -> dict[str, Tensor]:
        """Exporter hook (engine/export): the current surface {"vertices" [V,3], "faces" [F,3], "normals" [V,3]
        smooth, and "uv" [V,2] (glTF convention, (0,0) = first texel row) for a fixed mesh with UVs}."""
        with torch.no_grad():
            v, f = (t.detach() for t in self.geometry())
            out = {"vertices": v, "faces": f, "normals": vertex_normals(v, f)}
            if self.uv.shape[0] == v.shape[0]:
                out["uv"] = self.uv
        return out

    def query_albedo(self, x: Tensor) -> Tensor:
        """Display-referred (sRGB) albedo at world points, like the field scenes' hook."""
        return pbr.linear_to_srgb(self.query_material(x)["albedo"])

    # ---- lighting -----------------------------------------------------------------------------------------------

    def set_lighting(self, env: str | None, rotation: float = 0.0) -> None:
        """Pin the environment (name or file) and its rotation (radians) for the following renders; None unpins."""
        self._lighting = None if env is None else (env, float(rotation))

    def _choose_lighting(self) -> tuple[str, float]:
        if self._lighting is not None:
            return self._lighting
        if not self.training:
            return self.cfg.eval_env, 0.0
        i = int(torch.randint(len(self.cfg.envs), (1,), generator=self.gen))
        k = self.cfg.env_rotations
        if k > 0:
            rot = 2 * math.pi * int(torch.randint(k, (1,), generator=self.gen)) / k
        else:
            rot = 2 * math.pi * float(torch.rand((), generator=self.gen))
        return self.cfg.envs[i], rot

    # ---- rendering ----------------------------------------------------------------------------------------------

    def render(self, cams: Cameras, background: Tensor) -> RenderOutput:
        """Rasterise, shade and composite ``cams`` over ``background`` [C,H,W,3].

        RenderOutput: rgb (sRGB, antialiased), alpha, depth (camera distance), normal (world), albedo (linear,
        premultiplied by coverage), roughness, metallic. extras: env, rotation, linear rgb, and the material
        samples the regularisers use.
        """
        C, H, W = len(cams), cams.height, cams.width
        b = self.cfg.backend
        v, f = self.geometry()
        background = background.expand(C, H, W, 3)
        env_name, rot = self._choose_lighting()
        extras: dict = {"env": env_name, "rotation": rot, "faces": int(f.shape[0])}
        if f.shape[0] == 0:
            z = background.new_zeros(C, H, W, 1)
            return RenderOutput(rgb=background.clone(), alpha=z, extras=extras)
        mvp = projection(cams).to(v.dtype)
        pos = torch.einsum("cij,vj->cvi", mvp, F.pad(v, (0, 1), value=1.0))
        rast = K.rasterize(b, pos, f, (H, W))
        mask = rast[..., 3:4] > 0
        tri_c = torch.arange(f.shape[0] * 3, device=f.device).view(-1, 3)
        attrs = [v[f.reshape(-1)], corner_normals(v, f, self.cfg.crease_angle)]
        if self.cfg.material == "uv":
            attrs.append(self.uv[f.reshape(-1)])
        maps = K.interpolate(b, torch.cat(attrs, -1), rast, tri_c)
        idx = mask.reshape(-1).nonzero()[:, 0]
        flat = maps.reshape(-1, maps.shape[-1])[idx]
        x, n = flat[:, 0:3], F.normalize(flat[:, 3:6], dim=-1)
        uv_da = None
        if self.cfg.material == "uv" and self.cfg.mipmap:
            uv_da = K.uv_derivatives(pos, f, rast, attrs[2], tri_c).reshape(-1, 4)[idx]
        mat = self._material(x, flat[:, 6:8] if self.cfg.material == "uv" else None, uv_da)
        cam_pos = cams.position.to(v.dtype)[idx // (H * W)]
        view = F.normalize(cam_pos - x, dim=-1)
        back = (n * view).sum(-1, keepdim=True) < 0
        n_geo = torch.where(back, -n, n)  # two-sided shading
        if "perturb" in mat:  # perturbed on the outward side, so it matches query_material's exported normal
            n_p = perturb_normal(n, mat["perturb"])
            n = torch.where(back, -n_p, n_p)
        else:
            n = n_geo
        shading = self.cfg.eval_shading if not self.training else "pbr"
        if shading == "pbr":
            env = environment(env_name, self.cfg.env_height).to(v.device)
            lin = pbr.shade(mat["albedo"], mat["roughness"], mat["metallic"], n, view, env, rot)["rgb"]
        elif shading == "shapes":
            from foundation.shapes import LIGHT_DIR  # noqa: PLC0415

            light = F.normalize(torch.tensor(LIGHT_DIR, dtype=n.dtype, device=n.device), dim=0)
            shade = 0.6 + 0.4 * (n * light).sum(-1, keepdim=True).clamp_min(0)
            lin = pbr.srgb_to_linear(pbr.linear_to_srgb(mat["albedo"]) * shade)
        else:
            lin = mat["albedo"]

        def scatter(vals: Tensor) -> Tensor:
            return vals.new_zeros(C * H * W, vals.shape[-1]).index_put((idx,), vals).view(C, H, W, -1)

        m = mask.to(v.dtype)
        rgb = scatter(pbr.linear_to_srgb(lin)) + (1 - m) * background
        alpha = m
        if self.cfg.antialias:
            topo = self.topology if self.cfg.mode == "fixed" else None
            both = K.antialias(b, torch.cat([rgb, alpha], -1), rast, pos, f, topo)
            rgb, alpha = both[..., :3], both[..., 3:4].clamp(0, 1)
        depth = scatter((x - cam_pos).norm(dim=-1, keepdim=True))
        if self.training and self.cfg.material == "field" and self.cfg.lambda_albedo_smooth > 0:
            jitter = torch.randn(x.shape, generator=self.gen).to(x) * self.cfg.albedo_smooth_eps
            extras["albedo_smooth"] = (self._material(x.detach() + jitter)["albedo"] - mat["albedo"]).abs().mean()
        extras.update(linear_rgb=scatter(lin), roughness_mean=mat["roughness"], metallic_mean=mat["metallic"])
        if "perturb" in mat:
            d = mat["perturb"]
            extras["normal_perturbation"] = (d - (d * n_geo).sum(-1, keepdim=True) * n_geo).square().sum(-1).mean()
        if self.training and self.render_condition:
            with torch.no_grad():
                extras["control"] = condition_maps(x, n_geo, view, idx, cams, (C, H, W), env_name, rot,
                                                   self.cfg.env_height)
        return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, normal=scatter(n), albedo=scatter(mat["albedo"]),
                            roughness=scatter(mat["roughness"]), metallic=scatter(mat["metallic"]), extras=extras)

    # ---- Scene protocol hooks -----------------------------------------------------------------------------------

    def param_groups(self) -> dict[str, dict]:
        if self.cfg.material == "uv":
            groups = {"material": {"params": [self.tex_albedo, self.tex_rm], "lr": self.cfg.lr_material}}
        else:
            groups = {"material": {"params": list(self.encoding.parameters()) + list(self.mlp.parameters()),
                                   "lr": self.cfg.lr_material}}
        if self.cfg.mode == "deformable":
            scale = self.cfg.init_from_lr_scale if self.cfg.init_from else 1.0
            groups["geometry"] = {"params": [self.sdf, self.deform], "lr": self.cfg.lr_geometry * scale}
        return groups

    @property
    def regularizer_weights(self) -> dict[str, float]:
        return self.cfg.default_weights()

    def regularizers(self, out: RenderOutput, step: int) -> dict[str, Tensor]:
        zero = out.rgb.new_zeros(())
        regs = {"albedo_smooth": out.extras.get("albedo_smooth", zero)}
        r, m = out.extras.get("roughness_mean"), out.extras.get("metallic_mean")
        regs["roughness_prior"] = (r - self.cfg.roughness_prior).square().mean() if r is not None else zero
        regs["metallic_prior"] = m.square().mean() if m is not None else zero
        if self.cfg.normal_perturbation:
            regs["normal_perturbation"] = out.extras.get("normal_perturbation", zero)
        if self.cfg.mode == "deformable":
            v, f = self.geometry()
            regs["normal_consistency"], regs["laplacian"] = mesh_smoothness(v, f)
            regs["sdf"] = dmtet.sdf_sign_bce(self.sdf, self.grid_edges)
        return regs

    def after_step(self, step: int, out: RenderOutput) -> None:
        pass


CONTROL_MATERIALS = ((0.0, 0.08), (0.0, 0.5), (0.0, 1.0), (1.0, 0.08), (1.0, 0.5), (1.0, 1.0))
"""(metallic, roughness) of the six light renders in the ControlNet condition (DreamMat's {0,1} x {0,0.5,1}; our
GGX's roughness floor is 0.08)."""
CONTROL_CHANNELS = 4 + 3 * len(CONTROL_MATERIALS)


@torch.no_grad()
def condition_maps(x: Tensor, n: Tensor, view: Tensor, idx: Tensor, cams: Cameras, size: tuple[int, int, int],
                   env: str, rotation: float, env_height: int = 32, shade=None) -> Tensor:
    """DreamMat's light- and geometry-aware ControlNet condition [C,H,W,22] of the current geometry, channels-last,
    at the render's resolution, every channel in [0,1] and 0 on the background:

    - 0: inverse camera distance, per image mapped to [0.1, 1] over the foreground (nearest = 1);
    - 1–3: the shading normal in camera space (OpenGL: +X right, +Y up, +Z towards the viewer) as (n + 1)/2;
    - 4–21: six sRGB renders of the geometry with white albedo under the render's own environment ``env`` and
      ``rotation``, for (metallic, roughness) in ``CONTROL_MATERIALS`` order, 3 channels each.

    Args: the covered pixels' world points x [P,3], unit normals n [P,3] (facing the camera), unit view vectors
    [P,3], flat pixel indices idx [P] into C·H·W. ``shade(albedo, roughness, metallic, n, view)`` -> linear RGB [P,3]
    replaces the environment ``env``/``rotation`` lighting when a scene lights its views otherwise (the material
    scene: exposure-scaled, tilted environment plus a sun, per view).
    """
    C, H, W = size
    out = x.new_zeros(C * H * W, CONTROL_CHANNELS)
    cam = idx // (H * W)
    dist = (x - cams.position.to(x)[cam]).norm(dim=-1)
    inv = 1.0 / dist.clamp_min(1e-6)
    lo = torch.full((C,), float("inf"), device=x.device).scatter_reduce(0, cam, inv, "amin")
    hi = torch.zeros(C, device=x.device).scatter_reduce(0, cam, inv, "amax")
    out[idx, 0] = 0.1 + 0.9 * (inv - lo[cam]) / (hi[cam] - lo[cam]).clamp_min(1e-6)
    w2c = torch.linalg.inv(cams.c2w.to(x))[:, :3, :3]
    out[idx, 1:4] = (torch.einsum("pij,pj->pi", w2c[cam], n) + 1) / 2
    if shade is None:
        light = environment(env, env_height).to(x.device)
        shade = lambda a, r, m, nn_, v: pbr.shade(a, r, m, nn_, v, light, rotation)["rgb"]  # noqa: E731
    ones = torch.ones_like(x[:, :1])
    for k, (m, r) in enumerate(CONTROL_MATERIALS):
        lin = shade(ones.expand(-1, 3), ones * r, ones * m, n, view)
        out[idx, 4 + 3 * k:7 + 3 * k] = pbr.linear_to_srgb(lin).clamp(0, 1)
    return out.view(C, H, W, CONTROL_CHANNELS)


def mesh_smoothness(v: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
    """(normal consistency: mean 1 − cos of adjacent face normals, uniform Laplacian: mean ‖v − mean(nbrs)‖²)."""
    if f.shape[0] == 0:
        z = v.new_zeros(())
        return z, z
    nb, _ = K.edge_topology(f, v.shape[0])
    fn = F.normalize(face_normals(v, f), dim=-1)
    has = nb >= 0
    fi = torch.arange(f.shape[0], device=f.device)[:, None].expand_as(nb)[has]
    nc = (1 - (fn[fi] * fn[nb[has]]).sum(-1)).mean() if has.any() else v.new_zeros(())
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e = torch.cat([e, e.flip(1)])
    deg = torch.zeros(v.shape[0], device=v.device).index_add(0, e[:, 0], torch.ones(e.shape[0], device=v.device))
    nsum = torch.zeros_like(v).index_add(0, e[:, 0], v[e[:, 1]])
    lap = v - nsum / deg.clamp_min(1)[:, None]
    return nc, lap.square().sum(-1).mean()


def primitive_mesh(shape: str) -> tuple[Tensor, Tensor]:
    """Triangle mesh (vertices [V,3], faces [F,3]) of a shapes-world primitive at its canonical size and pose
    (foundation/shapes.py: Y-up, centred at the origin)."""
    import numpy as np  # noqa: PLC0415
    import trimesh  # noqa: PLC0415

    to_y = trimesh.transformations.rotation_matrix(-math.pi / 2, [1, 0, 0])  # +Z axis -> +Y
    match shape:
        case "cube":
            m = trimesh.creation.box(extents=(0.8, 0.8, 0.8))
        case "sphere":
            m = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
        case "cylinder":
            m = trimesh.creation.cylinder(radius=0.4, height=0.8, sections=48).apply_transform(to_y)
        case "cone":
            m = trimesh.creation.cone(radius=0.45, height=0.9, sections=48).apply_transform(to_y)
            m.apply_translation([0, -0.45, 0])
        case "torus":
            m = trimesh.creation.torus(major_radius=0.35, minor_radius=0.15, major_sections=48,
                                       minor_sections=16).apply_transform(to_y)
        case _:
            raise ValueError(f"unknown shape {shape!r}")
    return torch.from_numpy(np.asarray(m.vertices, dtype=np.float32)), torch.from_numpy(np.asarray(m.faces))


@torch.no_grad()
def render_constant_dielectric(v: Tensor, f: Tensor, cams: Cameras, env: str, rotation: float, roughness: float,
                               env_height: int = 32, supersample: int = 2) -> dict[str, Tensor]:
    """Colour-independent PBR renders of a mesh with a constant dielectric (metallic 0) material:
    coverage [C,H,W,1], irradiance E [C,H,W,3] and specular S [C,H,W,3], so that the sRGB image of albedo k_d
    over background bg is linear_to_srgb(k_d·E + S)·cov + (1 − cov)·bg (evaluated per sub-pixel, then averaged,
    is approximated here by shading the averaged terms). Used by the light-aware shapes prior and as ground truth.
    """
    s = supersample
    hi = Cameras(cams.c2w, cams.fovy, cams.width * s, cams.height * s, cams.azimuth, cams.elevation, cams.distance)
    C, H, W = len(hi), hi.height, hi.width
    pos = torch.einsum("cij,vj->cvi", projection(hi), F.pad(v, (0, 1), value=1.0))
    rast = K.rasterize("torch", pos, f, (H, W))
    mask = rast[..., 3:4] > 0
    tri_c = torch.arange(f.shape[0] * 3).view(-1, 3)
    maps = K.interpolate("torch", torch.cat([v[f.reshape(-1)], corner_normals(v, f, 45.0)], -1), rast, tri_c)
    idx = mask.reshape(-1).nonzero()[:, 0]
    flat = maps.reshape(-1, 6)[idx]
    x, n = flat[:, :3], F.normalize(flat[:, 3:], dim=-1)
    view = F.normalize(hi.position[idx // (H * W)] - x, dim=-1)
    n = torch.where((n * view).sum(-1, keepdim=True) < 0, -n, n)
    light = environment(env, env_height)
    ones = torch.ones(x.shape[0], 1)
    sh = pbr.shade(ones.expand(-1, 3), ones * roughness, ones * 0, n, view, light, rotation)
    out = {}
    for name, vals in (("E", sh["diffuse"]), ("S", sh["specular"]), ("coverage", ones)):
        img = torch.zeros(C * H * W, vals.shape[-1]).index_put((idx,), vals).view(C, H, W, -1)
        out[name] = F.avg_pool2d(img.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1)
    cov = out["coverage"].clamp_min(1e-6)
    out["E"], out["S"] = out["E"] / cov, out["S"] / cov  # shading of the covered part of each pixel
    return out


def compose_dielectric(r: dict[str, Tensor], albedo_linear: Tensor, background: Tensor | None = None) -> Tensor:
    """sRGB image [C,H,W,3] of ``render_constant_dielectric`` terms for a linear albedo [3]."""
    bg = torch.ones(3) if background is None else background
    lit = pbr.linear_to_srgb(albedo_linear * r["E"] + r["S"])
    return lit * r["coverage"] + (1 - r["coverage"]) * bg


__all__ = ["MeshConfig", "Mesh", "projection", "init_cameras", "silhouette", "sdf_from_density", "vertex_normals",
           "surface_colour", "perturb_normal", "condition_maps", "CONTROL_MATERIALS", "CONTROL_CHANNELS",
           "environment", "corner_normals", "mesh_smoothness", "primitive_mesh", "level_for_area",
           "render_constant_dielectric", "compose_dielectric"]
