"""A deformable mesh initialised from another run (``MeshConfig.init_from``): the engine reads the source run folder
(engine/runfolder.py) and fits the new mesh to the scene it holds, so that the mesh starts where the NeRF or
Gaussians run ended (renderers.md §3.2, the DMTet SDF init; Fantasia3D's coarse-to-fine hand-over).

Geometry (``sdf_from_density``): the source's density is thresholded at the level whose DMTet surface renders the
source's silhouettes over ``init_cameras`` (bisection, ``level_for_area``; the exporter's marching cubes uses the same
matching, engine/export/mesh.py), on a grid ``INIT_SUPERSAMPLE`` times finer than the tet grid, and turned into a
signed distance by distance transforms. Colour (``distill_albedo``): the colour the source renders is distilled into
the mesh's material field, a short Adam loop of its own.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from engine import runfolder
from engine.export.mesh import (
    HAZE_FRACTION,
    auto_threshold,
    field_kind,
    fill_cavities,
    init_cameras,
    level_for_area,
    optical_depth_from_outside,
)
from foundation.abilities import declares
from foundation.cameras import Cameras
from renderers import dmtet, pbr
from renderers.base import DensityField, scenes_of
from renderers.kernels import raster as K
from renderers.mesh import Mesh, MeshConfig, nudge_sdf, projection, vertex_normals


def load_source(run_dir: str, device: str | torch.device = "cpu"):
    """The scene of a NeRF or Gaussians run folder at its newest checkpoint, in eval mode (ValueError, one line,
    when ``run_dir`` is not such a run)."""
    try:
        cfg = runfolder.read_config(run_dir)
    except runfolder.NotARunFolder as e:
        raise ValueError(f"mesh.init_from: {e}") from None
    if isinstance(cfg.renderer, MeshConfig):
        raise ValueError("mesh.init_from needs a NeRF or Gaussians run, not a mesh run")
    try:
        run = runfolder.load_run(run_dir, device)
    except runfolder.NoCheckpoint:
        raise ValueError(f"mesh.init_from: {run_dir} has no checkpoint") from None
    return scenes_of(run.scene)[0]  # a particles run: the first particle


def initialise(scene, renderer_cfg) -> None:
    """Apply ``init_from`` to a freshly built scene of a new run (every particle of a Particles scene); a no-op for
    other renderers or without ``init_from``."""
    if not isinstance(renderer_cfg, MeshConfig) or not renderer_cfg.init_from or renderer_cfg.mode != "deformable":
        return
    source = load_source(renderer_cfg.init_from)
    for mesh in scenes_of(scene):
        init_from_scene(mesh, source, renderer_cfg.init_from)


INIT_SUPERSAMPLE = 2
"""The source density is sampled this many times finer than the tet grid before the distance transform, so the
initial surface is placed to ~1/4 of a tet cell instead of snapping half-way between tet vertices."""
INIT_LEVEL_ITERS = 12
"""Bisection steps (on log σ) of the iso-level search in ``sdf_from_density``."""
PIXEL_MIN_ALPHA = 0.9
"""Pixels of the source's renders that are colour targets in ``distill_albedo``: its soft rim (alpha between
0.5 and 0.9, mostly background) would lighten the surface the rim lies over."""
RAY_TARGET_WEIGHT = 0.05
"""Weight of the per-vertex normal-ray colour targets relative to the per-pixel ones in ``distill_albedo``."""


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
def sdf_from_density(density_fn, res: int, radius: float, cams: Cameras, target_alpha: Tensor,
                     kind: str = "density") -> Tensor:
    """Signed distance [(res+1)³] (metres, negative inside) on the DMTet grid for a density field.

    Args:
        density_fn: world points [N,3] -> density (or opacity) [N], larger inside.
        res, radius: the tet grid (``dmtet.tet_grid(res, radius)``).
        cams, target_alpha: views of the source and its rendered alpha [C,H,W,1] there.
        kind: the field's kind (``field_kind``): a "density" field is cut, as the exporter cuts it, at a level of
            its optical depth seen from outside (engine/export/mesh.py ``optical_depth_from_outside``), not of σ;
            an "opacity" field at a level of itself. Either way enclosed pockets are filled first (the exporter's
            ``fill_cavities``), so a hollow NeRF shell gives one solid, not an outer and an inner surface (the NeRF
            cube of session 44 started its mesh in two pieces, the inner one 17% of the area).

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
    if kind == "density" and float(sigma.max()) > 0:
        field = sigma.numpy().astype(np.float64)
        haze = HAZE_FRACTION * auto_threshold(field, spacing_f)
        sigma = torch.from_numpy(optical_depth_from_outside(field, spacing_f, haze))

    def sdf_at(level: float) -> Tensor:
        inside = torch.from_numpy(fill_cavities(sigma.numpy(), level)[0]) > level
        if not inside.any():
            return torch.full((n ** 3,), spacing_f)
        sd = dmtet.signed_distance_from_occupancy(inside, spacing_f)[::s, ::s, ::s]
        return nudge_sdf(sd.reshape(-1), 2 * radius / res)

    def area(level: float) -> float:
        v, f = dmtet.marching_tets(grid, sdf_at(level), tets)
        return float(silhouette(v, f, cams).sum())

    top = float(sigma.max())
    if not top > 0:
        raise ValueError("the density is empty (max <= 0): nothing to initialise the mesh from")
    # area(top 1e-4) >= target >= area(top) for any sensible field
    return sdf_at(level_for_area(area, target, top * 1e-4, top, INIT_LEVEL_ITERS))


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


@torch.no_grad()
def unlit_render(scene, cams: Cameras, background: Tensor) -> tuple[Tensor, Tensor]:
    """(colour [C,H,W,3] over ``background``, alpha [C,H,W,1]) of the scene's albedo, without its light model: its
    albedo map where its renderer has one (the NeRF), else its colour rendered with ``light`` "none" (the Gaussians).
    What a scene trained under the shapes world's key light learned as albedo, not the shaded colour its renders
    show (the light darkens every face by up to 40%)."""
    import dataclasses

    out = scene.render(cams, background)
    alpha = out.alpha
    if out.albedo is not None:
        return out.albedo + (1 - alpha) * background.to(alpha), alpha
    cfg = getattr(scene, "cfg", None)
    if cfg is None or getattr(cfg, "light", "none") == "none":
        return out.rgb, alpha
    scene.cfg = dataclasses.replace(cfg, light="none")
    try:
        return scene.render(cams, background).rgb, alpha
    finally:
        scene.cfg = cfg


def init_from_scene(mesh: Mesh, scene, what: str = "the source scene", albedo_steps: int = 300) -> None:
    """Initialise a deformable ``mesh``'s SDF and material field from a density scene (a NeRF or Gaussians run's
    scene: a declared ``DensityField``), so that the mesh renders like it.

    Geometry: ``sdf_from_density`` against the scene's alpha on ``init_cameras``. Colour: ``distill_albedo``
    against the scene's rendered albedo on the same views (``unlit_render``: a scene trained under a light model
    hands over its albedo, not its shading).
    """
    if mesh.cfg.mode != "deformable":
        raise ValueError("init_from_scene needs mesh.mode deformable")
    if not declares(scene, DensityField):
        raise ValueError(f"mesh.init_from: {what} ({type(scene).__name__}) is not a density field (a NeRF or "
                         f"Gaussians scene)")
    cams = init_cameras(mesh.cfg.radius)
    rgb, alpha = unlit_render(scene, cams, torch.ones(len(cams), cams.height, cams.width, 3))
    rgb, alpha = rgb.detach().float().cpu(), alpha.detach().float().cpu()
    if float(alpha.sum()) < 1.0:
        raise ValueError(f"mesh.init_from: {what} renders nothing from the orbit (empty density)")
    sdf = sdf_from_density(scene.query_density, mesh.cfg.tet_resolution, mesh.cfg.radius, cams, alpha,
                           field_kind(scene))
    with torch.no_grad():
        mesh.sdf.copy_(sdf.to(mesh.sdf))
        mesh.deform.zero_()
    distill_albedo(mesh, scene, cams, rgb, alpha, albedo_steps)

def distill_albedo(mesh: Mesh, scene, cams: Cameras, rgb: Tensor, alpha: Tensor, steps: int = 300) -> None:
    """Fit ``mesh``'s material field's albedo so that its unlit render matches ``scene``'s colour.

    Targets, in display-referred values like the renders: (1) every pixel of ``rgb`` [C,H,W,3] (the scene's
    render of ``cams`` over white, ``alpha`` [C,H,W,1]) where both the scene (alpha > 0.5) and the mesh cover it,
    un-composited from the white background, at the mesh's surface point under that pixel; (2) every surface
    vertex, with the colour a ray along its inward normal renders (``surface_colour``), for the parts the
    views miss. Not ``query_albedo`` at the vertices, which greyed and darkened the mesh: the extracted surface
    sits up to half a cell off the source's, where a soft field's albedo is untrained, and a volume render
    blends the albedo over the field's soft shell.
    """
    with torch.no_grad():
        v, f = (t.detach().cpu() for t in mesh.geometry())
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
        spacing = 2 * mesh.cfg.radius / mesh.cfg.tet_resolution
        ray = surface_colour(scene, v, vertex_normals(v, f), spacing, kind).clamp(0, 1)
        pts = torch.cat([xmap[keep], v]).to(mesh.sdf.device)
        target = torch.cat([pix, ray]).to(mesh.sdf.device)
        # the rays only fill in what no view sees: a small weight keeps them from pulling seen surfaces
        weight = torch.cat([torch.ones(len(pix)), torch.full((len(ray),), RAY_TARGET_WEIGHT)]).to(pts)[:, None]
    params = mesh.material_parameters()
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(steps):
        jitter = torch.randn(pts.shape, generator=mesh.gen).to(pts) * 0.005
        srgb = pbr.linear_to_srgb(mesh.material_at(pts + jitter)["albedo"])
        loss = (weight * (srgb - target).square()).sum() / weight.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


__all__ = ["load_source", "initialise", "init_from_scene", "distill_albedo", "init_cameras", "silhouette",
           "sdf_from_density", "level_for_area", "surface_colour", "INIT_SUPERSAMPLE", "INIT_LEVEL_ITERS",
           "PIXEL_MIN_ALPHA", "RAY_TARGET_WEIGHT"]
