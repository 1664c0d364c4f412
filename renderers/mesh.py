"""Mesh scene: a triangle mesh with PBR materials, rasterised (renderers/kernels/raster*.py) and shaded with
split-sum environment lighting (renderers/pbr.py). Fantasia3D / DreamMat's material half.

Geometry, two modes:
- "deformable": DMTet (renderers/dmtet.py) on a (res+1)³ Kuhn tet grid over [−radius, radius]³ with a per-vertex
  SDF and bounded deformation, initialised from a shapes primitive (``init_shape``). With ``init_from`` (a NeRF or
  Gaussians run folder) the engine loads that run's scene and sets the SDF and the material field from it
  (engine/init_from.py): a scene never reads run folders. Regularisers: normal consistency
  (1 − cos between adjacent face normals), uniform Laplacian, DMTet's SDF sign BCE.
- "fixed": a user's mesh (vertices, faces, optional UVs), materials only (``Mesh.from_arrays``; ``mesh_path``, the
  `engine texture` preset). A mesh read from ``mesh_path`` is centred and scaled to ``mesh_size``
  (foundation/meshio.py); ``export_mesh`` hands the exporter that ``placement``, so the asset keeps the user's own
  placement and units.

Materials (linear albedo k_d, perceptual roughness r, metallic m; conventions.md §3.1):
- "field": a small hash grid + MLP over world position → sigmoid heads: albedo 3, r ∈ [r_min, r_max], m ∈ [0, m_max]
  (Fantasia3D/threestudio layout), bakeable to UV textures through ``query_material``.
- "uv": textures (albedo, roughness, metallic) of ``texture_resolution``² sampled at the mesh's UVs.

Shading: per rendered image one environment (random among ``envs``, random rotation about +Y; DreamMat's
discouragement of baked lighting), Cook–Torrance GGX split-sum + Lambert irradiance (renderers/pbr.py), then the sRGB
OETF, composited over the background and antialiased (silhouette gradients). ``set_lighting`` pins the
environment (the light-aware shapes prior and the ControlNet condition use the same one). With ``light="shapes"`` every
training render is instead the albedo under the shapes world's key light (renderers/keylight.py's factor, per pixel
from the interpolated normals), the light the learned shapes prior's exemplars show. Normals are per corner:
the smooth vertex normal, or the face normal where they differ by more than ``crease_angle`` (hard edges).

Camera: the OpenGL c2w of foundation/cameras.py, perspective with near 0.05 m / far 50 m, and P[1,1] negated so image
row 0 is the top (nvdiffrast's clip y = −1 is row 0).
"""

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foundation import shapes
from foundation.cameras import Cameras
from foundation.meshio import load_mesh
from renderers import dmtet, pbr
from renderers.base import (
    AlbedoField,
    ConditionRenderer,
    MeshSource,
    PBRMaterial,
    Relightable,
    RenderOutput,
)
from renderers.condition import CONTROL_CHANNELS, CONTROL_MATERIALS, condition_maps  # noqa: F401 (API)
from renderers.kernels import raster as K
from renderers.kernels.hashgrid_torch import HashGrid
from renderers.keylight import key_light_factor

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
    """Fixed mode: OBJ/GLB/PLY to load, centred and scaled to ``mesh_size`` (its placement is restored on export)."""
    mesh_size: float = 0.8
    """Fixed mode: longest bounding-box side of the loaded mesh in the scene, in metres (the shapes world's cube)."""
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
    light: str = "env"
    """Training light: "env" (the environments above, split-sum PBR) or "shapes" (the shapes world's fixed key light,
    as ``eval_shading`` "shapes": what the learned shapes prior's exemplars are lit with). Under the key light the
    shading follows the mesh's own normals, so the prior's view of the shading pulls on the geometry (Fantasia3D's
    geometry stage: flat faces shade flat)."""
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
    material_warmup: int = 0
    """Training steps during which roughness and metallic hold their initial values (uniform: a field's heads for
    them start at zero weight) and only the albedo (and the normal perturbation) learns. From a grey start the
    renders are far too bright, and the quickest way down is a rougher, dimmer highlight: roughness runs to its
    upper bound within ten steps and stays (the sigmoid saturates), the albedo then takes on the missing highlight
    as a whitish tint. Once the albedo is about right the roughness gradient is about the highlight's shape
    (issue #17 goal 3, docs/benchmarks.md)."""
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
        if self.light not in ("env", "shapes"):
            raise ValueError(f"mesh.light must be env or shapes, got {self.light!r}")
        if self.normal_perturbation and self.material != "field":
            raise ValueError("mesh.normal_perturbation needs mesh.material field")
        if self.tet_resolution < 4:
            raise ValueError(f"mesh.tet_resolution must be >= 4, got {self.tet_resolution}")
        if self.material_warmup < 0:
            raise ValueError(f"mesh.material_warmup must be >= 0, got {self.material_warmup}")

    def default_weights(self) -> dict[str, float]:
        return {"albedo_smooth": self.lambda_albedo_smooth, "roughness_prior": self.lambda_roughness_prior,
                "metallic_prior": self.lambda_metallic_prior, "normal_consistency": self.lambda_normal_consistency,
                "laplacian": self.lambda_laplacian, "sdf": self.lambda_sdf,
                **({"normal_perturbation": self.lambda_normal_perturbation} if self.normal_perturbation else {})}

    def build(self, gen: torch.Generator, device: torch.device | str = "cpu") -> "Mesh":
        if self.mode == "fixed":
            if not self.mesh_path:
                raise ValueError("mesh.mode fixed needs --renderer.mesh-path (or use engine texture)")
            m = load_mesh(self.mesh_path, self.mesh_size)
            uv = None if m.uv is None else torch.from_numpy(m.uv).float() * torch.tensor([1.0, -1.0]) + torch.tensor(
                [0.0, 1.0])  # OBJ-style (v up) -> the glTF convention the scene samples with: (u, 1 - v)
            mesh = Mesh.from_arrays(self, m.vertices, m.faces, uv, gen, device)
            mesh.placement = (float(m.scale), tuple(float(c) for c in m.centre))
            return mesh
        if self.init_from and not os.path.isfile(os.path.join(self.init_from, "config.yaml")):
            # only a check of the path, so that a typo fails before anything is built: the engine reads the run
            # folder and initialises the new scene from it (engine/init_from.py)
            raise ValueError(f"mesh.init_from: {self.init_from} is not a run folder (no config.yaml)")
        return Mesh(self, gen, device)


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


def nudge_sdf(sdf: Tensor, spacing: float) -> Tensor:
    """Move SDF values off ±0 (to ±spacing/20): a surface through a grid vertex makes DMTet's crossing formula
    (p_a s_b − p_b s_a)/(s_b − s_a) ill-conditioned and its gradients explode."""
    eps = 0.05 * spacing
    return torch.where(sdf.abs() < eps, torch.where(sdf < 0, -eps, eps), sdf)


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


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


class Mesh(nn.Module, MeshSource, PBRMaterial, AlbedoField, Relightable, ConditionRenderer):
    """PBR triangle-mesh scene implementing the Scene protocol (renderers/base.py)."""

    condition_kinds = ("dreammat", "lighting")
    """Per-view conditions this scene can render (engine/train.py ``_wire_condition``): DreamMat's 22 channels, or
    "lighting", the (environment index in ``envs``, rotation index) each training view was lit with [C,2] (the
    light-aware shapes prior, guidance/priors/shapes.py; needs ``env_rotations`` > 0)."""

    relightable = True  # albedo without lighting: evaluations light it like their ground truth (engine/outputs.py)

    def __init__(self, cfg: MeshConfig, gen: torch.Generator, device: torch.device | str = "cpu",
                 fixed: tuple[Tensor, Tensor, Tensor | None] | None = None):
        super().__init__()
        self.cfg = dataclasses.replace(cfg, backend=K.resolve_raster_backend(cfg.backend, device))  # once
        self.gen = gen
        self._lighting: tuple[str, float] | None = None
        # training renders also return the ControlNet condition in extras["control"]; the training loop turns this
        # on when the prior takes a condition (guidance/priors/controlnet.py documents the layout)
        self.render_condition: bool | str = False  # False, or a kind of condition_kinds (True: "dreammat")
        self.placement: tuple[float, tuple[float, float, float]] | None = None
        """(scale, centre): the mesh file's own frame is scene * scale + centre (fixed meshes read from a file)."""
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
        self._material_steps = 0  # steps trained, kept on the host (no device sync per render)
        if cfg.material_warmup:  # in the checkpoint, so a resumed run knows whether its warm-up is over
            self.register_buffer("material_steps", torch.zeros((), dtype=torch.long))
            self.register_load_state_dict_post_hook(
                lambda module, _keys: setattr(module, "_material_steps", int(module.material_steps)))
        self.to(device)

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
        return nudge_sdf(shapes.sdf(self.cfg.init_shape, grid).float(), self.cfg.radius / self.cfg.tet_resolution)

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
                if cfg.material_warmup:  # roughness and metallic start uniform, and stay so while held
                    self.mlp[2].weight[3:5].zero_()

    def _heads(self, raw: Tensor) -> dict[str, Tensor]:
        lo, hi = self.cfg.roughness_range
        if self._material_steps < self.cfg.material_warmup:
            raw = torch.cat([raw[..., :3], raw[..., 3:5].detach(), raw[..., 5:]], -1)  # albedo (and bump) only
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

    def material_at(self, x: Tensor) -> dict[str, Tensor]:
        """The material field's heads at world points x [N,3], differentiable ("field" materials; the engine fits
        them to another scene's colour, engine/init_from.py)."""
        return self._material(x)

    def material_parameters(self) -> list[nn.Parameter]:
        """The parameters of the materials (field or textures)."""
        return list(self.param_groups()["material"]["params"])

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
        smooth, "uv" [V,2] (glTF convention, (0,0) = first texel row) for a fixed mesh with UVs, and "placement"
        (scale, centre) for one read from a file: the exporter writes vertices * scale + centre}."""
        with torch.no_grad():
            v, f = (t.detach() for t in self.geometry())
            out = {"vertices": v, "faces": f, "normals": vertex_normals(v, f)}
            if self.uv.shape[0] == v.shape[0]:
                out["uv"] = self.uv
            if self.placement is not None:
                out["placement"] = self.placement
        return out

    def query_albedo(self, x: Tensor) -> Tensor:
        """Display-referred (sRGB) albedo at world points, like the field scenes' hook."""
        return pbr.linear_to_srgb(self.query_material(x)["albedo"])

    # ---- lighting -----------------------------------------------------------------------------------------------

    def set_lighting(self, env: str | None, rotation: float = 0.0) -> None:
        """Pin the environment (name or file) and its rotation (radians) for the following renders; None unpins."""
        self._lighting = None if env is None else (env, float(rotation))

    def lighting_condition(self, env: str, rotation: float, views: int) -> Tensor:
        """[views,2] (index of ``env`` in ``envs``, index of ``rotation`` among ``env_rotations`` even steps)."""
        k = self.cfg.env_rotations
        if k <= 0 or env not in self.cfg.envs:
            raise ValueError("the lighting condition needs mesh.env-rotations > 0 and a training environment")
        r = round(rotation / (2 * math.pi / k)) % k
        return torch.tensor([[float(self.cfg.envs.index(env)), float(r)]]).expand(views, 2)

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
        shading = self.cfg.eval_shading if not self.training else ("shapes" if self.cfg.light == "shapes" else "pbr")
        if shading == "pbr":
            env = pbr.environment(env_name, self.cfg.env_height).to(v.device)
            lin = pbr.shade(mat["albedo"], mat["roughness"], mat["metallic"], n, view, env, rot)["rgb"]
        elif shading == "shapes":
            lin = pbr.srgb_to_linear(pbr.linear_to_srgb(mat["albedo"]) * key_light_factor(n))
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
        if self.training and self.render_condition == "lighting":
            extras["control"] = self.lighting_condition(env_name, rot, C).to(v.device)
        elif self.training and self.render_condition:
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

    def regularizers(self, out: RenderOutput, step: int, weights: Mapping[str, float] | None = None
                     ) -> dict[str, Tensor]:
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
        self._material_steps = step + 1
        if self.cfg.material_warmup:
            self.material_steps.fill_(step + 1)


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


__all__ = ["MeshConfig", "Mesh", "projection", "vertex_normals", "perturb_normal", "corner_normals", "face_normals",
           "mesh_smoothness", "condition_maps", "CONTROL_MATERIALS", "CONTROL_CHANNELS"]
