"""Surface extraction from a scene's density field: grid sampling, an automatic iso-level, marching cubes,
floater removal, decimation to a face budget and smooth vertex normals (renderers.md §5.1).

Coordinates are the engine's world: right-handed, +Y up, metres, the object centred on the orbit target (the
origin), i.e. exactly the frame the renders are made in. ``up_matrix`` converts to another up axis on export.

Automatic iso-level (``threshold="auto"``):
- density fields (NeRF σ, 1/m): Otsu's threshold on the sampled σ values (clipped at their 99th percentile so a few
  very dense voxels cannot drag it up), i.e. the level that best separates the two populations "inside" and
  "empty space" (between-class variance maximal). It does not depend on the field's units or sharpness: a soft
  SDS-trained NeRF (σ ≈ 3-7 inside, < 1 outside) and a near-solid field (σ ≈ 1000 inside) both get a level between
  their modes. A field whose optical depth stays below ln 2 along every grid line (nothing would render at
  alpha 0.5) is reported as empty. (A render-matched rule, the σ where the transmittance from outside first
  falls to 1/2, was tried first: on soft fields it lands ~0.1 m inside the object and cuts it in half.)
- opacity fields (3D Gaussians, whose ``query_density`` is Σ_i o_i exp(−½ dᵀΣ_i⁻¹d), unitless): the level 0.5,
  where the summed splat opacity is one half (DreamGaussian uses 1.0 on a field normalised differently).
- then, for scenes that can render, that level only brackets the final one: ``render_matched_threshold`` bisects
  until the mesh's silhouettes over 16 orbit views have the area of the scene's own rendered alpha, so the asset
  looks as large as the renders (the statistical levels above are ~10 % off on soft fields).
- a density scene is not cut at one level of σ itself but of ``optical_depth_from_outside``: how much of the field
  (above a haze floor) a viewer outside must look through to reach the point, so the surface sits where the renders
  see it however dense each part of the field grew. One σ level dents the asset wherever the field is thinner (a soft
  NeRF cube's side faces peak at σ ≈ 5 where its top reaches 20: one face came out 3 cm inside, docs/benchmarks.md
  session 44); the level of the optical depth is matched to the renders' silhouettes as above.
Enclosed empty pockets, and empty voxels no straight line of sight from outside reaches, are filled before marching
cubes (the asset is solid, with no hidden inner surface); with the automatic level, thin parts of the solid where the
field is faint are cleared (``drop_faint_membranes``: a lid of faint splats across a torus's hole).
The level is clamped strictly inside the sampled range; an empty field raises ``ExportError``.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.export.errors import ExportError
from foundation.cameras import Cameras, orbit_cameras
from renderers.base import DensityField, Scene


@dataclass
class Mesh:
    """A triangle mesh in world coordinates; ``uv`` is per vertex, glTF convention ((0,0) = top-left texel)."""

    vertices: np.ndarray  # [V,3] float64
    faces: np.ndarray  # [F,3] int64, counter-clockwise seen from outside
    normals: np.ndarray | None = None  # [V,3] unit
    uv: np.ndarray | None = None  # [V,2] in [0,1]

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])


def scene_bound(scene: DensityField) -> float:
    """Half-size of the cube the field is sampled in: the ``DensityField``'s ``bound`` (NeRF: its box radius)."""
    bound = float(scene.bound)
    if not bound > 0:
        raise ExportError(f"{type(scene).__name__}.bound must be > 0, got {bound}")
    return bound


def field_kind(scene: DensityField) -> str:
    """"opacity" for splat scenes (unitless summed opacity), "density" for volumetric σ: the declared kind."""
    kind = scene.field_kind
    if kind not in ("density", "opacity"):
        raise ExportError(f"{type(scene).__name__}.field_kind must be density or opacity, got {kind!r}")
    return kind


@torch.no_grad()
def sample_grid(scene, resolution: int, bound: float, chunk: int = 65536) -> np.ndarray:
    """query_density on a resolution³ grid of points spanning [-bound, bound]³, indexed [x,y,z].

    Splat scenes get the whole grid in one call: their query is local (block-wise), and slab-shaped chunks would
    make every block meet far more splats than a cube of the same volume."""
    device = _scene_device(scene)
    if field_kind(scene) == "opacity":
        chunk = resolution ** 3
    axis = torch.linspace(-bound, bound, resolution)
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    out = [scene.query_density(pts[i:i + chunk].to(device)).float().cpu() for i in range(0, pts.shape[0], chunk)]
    grid = torch.cat(out).reshape(resolution, resolution, resolution).numpy().astype(np.float64)
    return np.nan_to_num(grid, nan=0.0, posinf=np.finfo(np.float32).max, neginf=0.0)


def _scene_device(scene) -> torch.device:
    if isinstance(scene, torch.nn.Module):
        for t in scene.parameters():
            return t.device
    return torch.device("cpu")


def auto_threshold(grid: np.ndarray, spacing: float, kind: str = "density") -> float:
    """The iso-level described in the module docstring."""
    lo, hi = float(grid.min()), float(grid.max())
    if not hi > lo or hi <= 0:
        raise ExportError("the density field is empty (no surface to extract); the run may not have converged")
    if kind == "opacity":
        level = 0.5
    else:
        depth = [np.clip(grid, 0, None).sum(axis) * spacing for axis in range(3)]
        if max(float(d.max()) for d in depth) < math.log(2):
            raise ExportError("the density field never becomes opaque (optical depth < ln 2 along every grid line); "
                              "pass an explicit --threshold")
        cap = float(np.quantile(grid[grid > 0], 0.99)) if (grid > 0).any() else hi
        level = otsu(np.clip(grid, 0, cap))
    eps = 1e-6 * (hi - lo)
    return float(min(max(level, lo + eps), hi - eps))


HAZE_FRACTION = 0.5
"""The haze floor of ``optical_depth_from_outside`` on exported density scenes, as a fraction of the field's
statistical level (``auto_threshold``): density at or below it (a faint tint in a torus's hole, the renders' soft
fringe) is empty space. Measured on the 9 NeRF runs of session 44 (cube, torus, cone, seeds 0-2; accuracy summed /
worst, metres): σ's own level 0.131 / 0.028 (the seed-1 cube's thin face cut in); floors 0.2 / 0.3 / 0.5 of the
level 0.117 / 0.118 / 0.117 and worst 0.023 / 0.020 / 0.016 (the seed-2 torus, whose hole holds haze of σ ≈ 1-2 that
the lower floors fill); subtracting the floor from σ instead of cutting at it (0.3): 0.117 / 0.017."""


def optical_depth_from_outside(grid: np.ndarray, spacing: float, haze: float = 0.0) -> np.ndarray:
    """[X,Y,Z] float32: the least optical depth τ(x) = ∫ σ ds between each voxel's centre and the outside of the grid,
    over straight lines along the 26 lattice directions (axes, face and body diagonals), counting density at or below
    ``haze`` as empty.

    τ is what a viewer outside looks through to see x (its transmittance e^−τ), so its level sets follow the surface
    the renders show: they do not move inward where a face's density is merely lower than elsewhere, as σ's own level
    sets do. Per direction d, the sum over the k voxels x, x − d, …, x − (k−1)d doubles k with one shifted add
    (S_2k(x) = S_k(x) + S_k(x − k·d), zero outside the grid), so a 128³ grid takes 7 steps a direction (~1 s in all)."""
    g = np.asarray(grid, dtype=np.float32)
    s = np.where(g > np.float32(haze), g, np.float32(0)) * np.float32(spacing)
    n = max(s.shape)
    best = None
    for d in np.ndindex(3, 3, 3):
        d = np.array(d) - 1
        if not d.any():
            continue
        length = np.float32(np.linalg.norm(d))
        acc, k = s * length, 1
        while k < n:
            acc = acc + _shifted(acc, d * k, fill=0.0)
            k *= 2
        tau = acc - 0.5 * s * length  # up to the voxel's centre
        best = tau if best is None else np.minimum(best, tau)
    return best


def covered_pixels(vertices: np.ndarray, faces: np.ndarray, cams) -> float:
    """How many pixels of ``cams`` the mesh covers, summed over the views (hard coverage: a pixel's centre inside a
    triangle; the antialiasing pass would cost 10x more)."""
    import torch
    import torch.nn.functional as F

    import renderers.kernels as K
    from renderers.mesh import projection

    v = torch.from_numpy(np.asarray(vertices)).float()
    pos = torch.einsum("cij,vj->cvi", projection(cams).float(), F.pad(v, (0, 1), value=1.0))
    rast = K.rasterize("torch", pos, torch.from_numpy(np.asarray(faces)).long(), (cams.height, cams.width))
    return float((rast[..., 3] > 0).sum())


def init_cameras(radius: float, resolution: int = 64) -> Cameras:
    """16 orbit views (azimuth every 45°, elevation 0° and 30°, fovy 40°, distance 3.2·radius: the engine's 2.5 m
    orbit for the default 0.8 m box) on which a mesh's silhouette is matched to its source scene's."""
    az = torch.arange(-180.0, 180.0, 45.0).repeat(2)
    el = torch.tensor([0.0, 30.0]).repeat_interleave(8)
    return orbit_cameras(az, el, 3.2 * radius, 40.0, resolution)


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


def render_matched_threshold(scene, grid: np.ndarray, bound: float, start: float, iters: int = 12,
                             resolution: int = 64) -> float:
    """The iso-level whose mesh *renders* like the scene: bisection (in log level) until the marching-cubes mesh's
    silhouette area over 16 orbit views equals the area of the scene's own rendered alpha there.

    The statistical level (``auto_threshold``) is only a starting bracket: on soft SDS fields its silhouettes are
    ~10 % too large (measured on a 200-step blue-torus NeRF, see engine/init_from.py ``sdf_from_density``, which
    matches silhouettes the same way when a mesh is initialised from a run). Bisection runs on ``grid`` itself, the
    grid the mesh is then extracted from (1-2 s at 128³ on a CPU): a half-resolution grid's surface at the same level
    has larger silhouettes (its coarser cells round the rims outward), so its matched level came out too high and the
    exported mesh 3-4 % smaller than the renders, with its faces' shallow dents cut in (docs/benchmarks.md, session
    40: accuracy summed over 18 shapes-world exports 0.353 -> 0.331 m).
    """
    import torch

    from engine.outputs import render_views

    cams = init_cameras(bound, resolution)
    _, alpha = render_views(scene, cams.to(_scene_device(scene)), torch.ones(3))
    target = float(alpha.sum())
    hi_val = float(grid.max())
    if not hi_val > 0 or target <= 0:
        return start

    def area(level: float) -> float:
        try:
            m = marching_cubes(grid, level, bound)
        except ExportError:
            return 0.0
        return covered_pixels(m.vertices, m.faces, cams)

    return level_for_area(area, target, max(min(start, hi_val) * 1e-3, 1e-12), hi_val, iters)


def otsu(values: np.ndarray, bins: int = 1024) -> float:
    """Otsu's threshold; on a plateau of equally good thresholds (two well-separated modes) the plateau's middle,
    not its first bin."""
    hist, edges = np.histogram(values.ravel(), bins=bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)[:-1].astype(np.float64)
    w1 = hist.sum() - w0
    s0 = np.cumsum(hist * centres)[:-1]
    m0 = s0 / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - s0) / np.maximum(w1, 1)
    var = w0 * w1 * (m0 - m1) ** 2
    best = np.nonzero(var >= var.max() * (1 - 1e-9))[0]
    i, j = int(best[0]), int(best[-1])
    return float(0.5 * (edges[i + 1] + edges[j + 1]))


def marching_cubes(grid: np.ndarray, level: float, bound: float) -> Mesh:
    """Isosurface {field = level} of a grid over [-bound, bound]³, faces oriented outward (field larger inside)."""
    from skimage.measure import marching_cubes as mc

    if not grid.min() < level < grid.max():
        raise ExportError(f"iso-level {level:g} is outside the field's range [{grid.min():g}, {grid.max():g}]")
    spacing = 2 * bound / (grid.shape[0] - 1)
    # pad with the minimum so surfaces touching the box are closed
    padded = np.pad(grid, 1, constant_values=min(float(grid.min()), level - 1e-6 * abs(level) - 1e-12))
    verts, faces, _, _ = mc(padded, level=level, spacing=(spacing,) * 3, allow_degenerate=False)
    verts = verts - spacing - bound
    mesh = Mesh(verts.astype(np.float64), faces.astype(np.int64))
    if signed_volume(mesh) < 0:
        mesh.faces = mesh.faces[:, ::-1].copy()
    return mesh


def fill_cavities(grid: np.ndarray, level: float, close: int = 2) -> tuple[np.ndarray, int]:
    """Raise enclosed empty pockets (not connected to the box boundary) above the level, so the object is solid.

    SDS-trained fields are often hollow shells: marching cubes would emit an invisible inner surface (wasted faces,
    a non-solid asset, wrong volume). Splat clouds also leave inner pockets joined to the outside by channels one or
    two voxels wide, which a plain hole fill keeps; so the occupancy is first closed morphologically (``close``
    dilations then erosions), which shuts such channels, and pockets of the closed volume are filled (only voxels
    empty in the original are raised; concavities wider than ~2·close voxels are untouched). On the Gaussians demo
    cube this took the exported surface from 5.9 m² (3.84 true) to 4.15 m² and its accuracy from 0.068 m to 0.026 m;
    NeRF exports were unchanged to 1 mm (docs/benchmarks.md, "Fidelity"). Empty voxels that no straight line of
    sight from outside reaches (``seen_from_outside``) are filled too: a shell whose pinholes are wider than the
    closing (a splat cloud pruned of the splats no view showed) is solid inside. Returns the grid and the voxels
    filled."""
    from scipy.ndimage import binary_closing, binary_fill_holes

    occ = grid > level
    solid = occ
    if close > 0:
        pad = close + 1  # pad so the closing does not treat the box boundary as occupied
        solid = binary_closing(np.pad(occ, pad), iterations=close)[pad:-pad, pad:-pad, pad:-pad] | occ
    cavity = (binary_fill_holes(solid) | ~seen_from_outside(occ)) & ~occ
    n = int(cavity.sum())
    if n:
        grid = grid.copy()
        grid[cavity] = float(grid.max())
    return grid, n


MEMBRANE_FAINT = 0.5
"""The field is faint, for ``drop_faint_membranes``, below this fraction of its statistical level (``auto_threshold``:
Otsu's σ level, or a summed splat opacity of 0.5)."""
MEMBRANE_WIDTH = 2
"""Voxels of opening (erosion then dilation, 6-connected) in ``drop_faint_membranes``: parts of the solid thinner than
about 2·width + 1 voxels (6 cm at 128³ over the 1.6 m box) are membranes, cleared where the field is also faint."""


def drop_faint_membranes(grid: np.ndarray, level: float, faint: np.ndarray,
                         width: int = MEMBRANE_WIDTH) -> tuple[np.ndarray, int]:
    """Clear the solid's thin *and* faint parts: voxels above ``level`` that a morphological opening of ``width``
    voxels removes and where ``faint`` holds (``extract_mesh`` passes the field below ``MEMBRANE_FAINT`` of its
    statistical level: a Gaussians' summed opacity under 0.25). Returns the grid (those voxels set below the level)
    and their count.

    A lid of faint splats (opacity 0.05-0.3, about 100 of them) across the top of a torus's hole, seen in training
    only against the tube behind it, is solid to one iso-level and filled the hole (the seed-1 Gaussians torus:
    accuracy 0.0203 m with it, 0.0193 without; docs/benchmarks.md, session 44). A thin part that is dense (a blade, a
    thin wall the renders show opaque) is kept."""
    from scipy.ndimage import binary_opening, generate_binary_structure

    occ = grid > level
    if width < 1 or not occ.any():
        return grid, 0
    pad = width + 1
    kept = binary_opening(np.pad(occ, pad), structure=generate_binary_structure(3, 1), iterations=width)
    drop = occ & ~kept[pad:-pad, pad:-pad, pad:-pad] & faint
    n = int(drop.sum())
    if n:
        grid = grid.copy()
        grid[drop] = 0.5 * level
    return grid, n


def seen_from_outside(occ: np.ndarray) -> np.ndarray:
    """[X,Y,Z] bool: empty voxels with a clear straight line of sight to outside the grid along at least one of the
    26 lattice directions (axes, face and body diagonals), i.e. what a viewer outside the object could see.

    Per direction d, "the k voxels x, x−d, …, x−(k−1)d are all empty" (outside the box counts as empty) doubles k
    with one shifted AND: clear_{2k}(x) = clear_k(x) ∧ clear_k(x − k·d), so a 128³ grid takes 7 steps a direction.
    A concavity visible only between two of these directions (a nook narrower than 45°) reads as unseen."""
    free = ~occ
    n = max(occ.shape)
    seen = np.zeros_like(free)
    for d in np.ndindex(3, 3, 3):
        d = np.array(d) - 1
        if not d.any():
            continue
        clear, k = free.copy(), 1
        while k < n:
            clear &= _shifted(clear, d * k)
            k *= 2
        seen |= clear
    return seen


def _shifted(a: np.ndarray, s: np.ndarray, fill=True) -> np.ndarray:
    """out[x] = a[x − s], ``fill`` where x − s falls outside the grid."""
    out = np.full_like(a, fill)
    if any(abs(int(k)) >= a.shape[i] for i, k in enumerate(s)):
        return out
    src = tuple(slice(max(0, -k), a.shape[i] - max(0, k)) for i, k in enumerate(s))
    dst = tuple(slice(max(0, k), a.shape[i] - max(0, -k)) for i, k in enumerate(s))
    out[dst] = a[src]
    return out


def signed_volume(mesh: Mesh) -> float:
    v = mesh.vertices[mesh.faces]
    return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0)


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    v = vertices[faces]
    return 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=-1)


def remove_floaters(mesh: Mesh, min_fraction: float = 0.05) -> Mesh:
    """Keep the connected components whose area is at least ``min_fraction`` of the largest one's."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = mesh.vertices.shape[0]
    f = mesh.faces
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    adj = coo_matrix((np.ones(rows.shape[0]), (rows, cols)), shape=(n, n))
    n_comp, label = connected_components(adj, directed=False)
    if n_comp <= 1:
        return mesh
    area = np.bincount(label[f[:, 0]], weights=face_areas(mesh.vertices, f), minlength=n_comp)
    keep_comp = area >= min_fraction * area.max()
    keep_faces = keep_comp[label[f[:, 0]]]
    return compact(Mesh(mesh.vertices, f[keep_faces]))


def compact(mesh: Mesh) -> Mesh:
    """Drop unreferenced vertices (and their normals/uv)."""
    used = np.unique(mesh.faces)
    remap = np.full(mesh.vertices.shape[0], -1, dtype=np.int64)
    remap[used] = np.arange(used.shape[0])
    return Mesh(mesh.vertices[used], remap[mesh.faces],
                None if mesh.normals is None else mesh.normals[used],
                None if mesh.uv is None else mesh.uv[used])


def clean(mesh: Mesh) -> Mesh:
    """Remove degenerate (repeated-index or zero-area) and duplicate faces, then unreferenced vertices."""
    f = mesh.faces
    ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    ok &= face_areas(mesh.vertices, f) > 1e-14
    f = f[ok]
    _, first = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
    f = f[np.sort(first)]
    return compact(Mesh(mesh.vertices, f, mesh.normals, mesh.uv))


def decimate(mesh: Mesh, max_faces: int) -> Mesh:
    """Reduce to at most ``max_faces`` faces.

    Uses quadric decimation from fast-simplification (MIT) when it is installed, else vertex clustering: vertices
    are merged per cubic cell (at the mean position) with the cell size found by bisection to meet the budget.
    """
    if max_faces <= 0 or mesh.num_faces <= max_faces:
        return mesh
    try:
        import fast_simplification  # optional, MIT
    except ImportError:
        return _cluster_decimate(mesh, max_faces)
    v, f = fast_simplification.simplify(mesh.vertices.astype(np.float32), mesh.faces.astype(np.int32),
                                        target_reduction=1.0 - max_faces / mesh.num_faces)
    return clean(Mesh(v.astype(np.float64), f.astype(np.int64)))


def _cluster(mesh: Mesh, cell: float) -> Mesh:
    key = np.floor((mesh.vertices - mesh.vertices.min(0)) / cell).astype(np.int64)
    _, label = np.unique(key, axis=0, return_inverse=True)
    label = label.reshape(-1)
    n = label.max() + 1
    counts = np.bincount(label, minlength=n)[:, None]
    verts = np.stack([np.bincount(label, weights=mesh.vertices[:, i], minlength=n) for i in range(3)], -1) / counts
    return clean(Mesh(verts, label[mesh.faces]))


def _cluster_decimate(mesh: Mesh, max_faces: int) -> Mesh:
    edge = np.linalg.norm(mesh.vertices[mesh.faces[:, 0]] - mesh.vertices[mesh.faces[:, 1]], axis=-1).mean()
    lo, hi = edge * 0.5, edge * math.sqrt(mesh.num_faces / max_faces) * 4
    best = _cluster(mesh, hi)
    for _ in range(14):
        mid = math.sqrt(lo * hi)
        m = _cluster(mesh, mid)
        if m.num_faces <= max_faces:
            best, hi = m, mid
        else:
            lo = mid
    return best


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Smooth unit normals: angle-free, area-weighted sum of adjacent face normals."""
    v = vertices[faces]
    fn = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])  # length = 2·area
    n = np.zeros_like(vertices)
    for i in range(3):
        np.add.at(n, faces[:, i], fn)
    length = np.linalg.norm(n, axis=-1, keepdims=True)
    fallback = np.tile([0.0, 1.0, 0.0], (n.shape[0], 1))
    return np.where(length > 1e-20, n / np.maximum(length, 1e-20), fallback)


def up_matrix(up: str) -> np.ndarray:
    """[3,3] rotation from our Y-up world to the exported frame ("y": identity; "z": +Y becomes +Z)."""
    match up:
        case "y":
            return np.eye(3)
        case "z":
            return np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # +90° about X
        case _:
            raise ValueError(f"up must be y or z, got {up!r}")


def extract_mesh(scene, resolution: int = 128, threshold: float | str = "auto", max_faces: int = 50000,
                 bound: float | None = None, min_component: float = 0.05) -> tuple[Mesh, dict, "GridNormals"]:
    """Density field → cleaned, decimated mesh with smooth normals, a dict of what was done, and the field's
    normals (for the normal map)."""
    bound = scene_bound(scene) if bound is None else bound
    grid = sample_grid(scene, resolution, bound)
    spacing = 2 * bound / (resolution - 1)
    kind = field_kind(scene)
    surface, info = grid, {}
    if threshold == "auto":
        level = statistical = auto_threshold(grid, spacing, kind)
        if isinstance(scene, Scene):  # a whole scene, not a bare field: match its own renders
            if kind == "density":  # cut the optical depth seen from outside, not σ (module docstring)
                haze = HAZE_FRACTION * level
                surface = optical_depth_from_outside(grid, spacing, haze).astype(np.float64)
                level = math.log(2)
                info = {"surface": "optical depth from outside", "haze": haze}
            level = render_matched_threshold(scene, surface, bound, level)
    else:
        level = float(threshold)
    surface, cavity = fill_cavities(surface, level)
    if threshold == "auto":
        surface, info["membrane_voxels"] = drop_faint_membranes(surface, level, grid < MEMBRANE_FAINT * statistical)
    mesh = marching_cubes(surface, level, bound)
    raw_faces = mesh.num_faces
    mesh = clean(remove_floaters(clean(mesh), min_component))
    mesh = decimate(mesh, max_faces)
    mesh = remove_floaters(mesh, min_component)
    if mesh.num_faces == 0:
        raise ExportError("the extracted surface is empty after cleaning")
    mesh.normals = vertex_normals(mesh.vertices, mesh.faces)
    info = {"field": kind, "threshold": level, **info, "grid": resolution, "bound": bound, "spacing": spacing,
            "filled_cavity_voxels": cavity,
            "marching_cubes_faces": raw_faces, "faces": mesh.num_faces, "vertices": int(mesh.vertices.shape[0])}
    return mesh, info, GridNormals(grid, bound)


class GridNormals:
    """Field normals −∇σ/|∇σ| from the sampled grid (central differences, trilinear interpolation): the detail
    normals baked into the normal map, at no extra scene queries."""

    def __init__(self, grid: np.ndarray, bound: float):
        self.bound = bound
        self.spacing = 2 * bound / (grid.shape[0] - 1)
        self.grad = [g.astype(np.float32) for g in np.gradient(grid, self.spacing)]

    def __call__(self, p: np.ndarray) -> np.ndarray:
        from scipy.ndimage import map_coordinates

        coords = ((p + self.bound) / self.spacing).T
        g = np.stack([map_coordinates(c, coords, order=1, mode="nearest") for c in self.grad], -1).astype(np.float64)
        length = np.linalg.norm(g, axis=-1, keepdims=True)
        return np.where(length > 1e-12, -g / np.maximum(length, 1e-12), 0.0)
