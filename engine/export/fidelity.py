"""Fidelity of an exported asset against the shapes world's analytic ground truth (issue #17).

Everything here reads only the exported file (GLB) and ``foundation.shapes``' exact signed distance functions and
albedos, never the engine's own renders, so it measures what a user downloads:

- accuracy: mean |sdf| of points sampled uniformly (by area) on the exported surface, i.e. the mean distance of the
  asset's surface to the true surface (metres). A perfect mesh scores 0.
- completeness: mean distance of points sampled uniformly on the true surface to the nearest of ``n`` points sampled
  on the exported surface (a one-sided Chamfer term on point samples, as in the DTU/Tanks-and-Temples protocol).
  Because the asset is represented by ``n`` samples, a perfect mesh scores the sampling floor ≈ 0.5·√(A/n)
  (A the surface area): 0.013 m for the cube with the default n = 5000.
- largest piece: share of the exported surface area carried by the largest connected piece, pieces counted by
  geometry (vertices welded by position first, so UV seams do not split a piece).
- albedo: the area-weighted mean baseColor (texture x factor) over the surface, compared with the true albedo in
  linear RGB: chromaticity distance ‖c/Σc − c*/Σc*‖₂ and luminance ratio Y/Y* (Rec. 709 luminance).
- face spread (cube only): the six faces' mean baseColors (sRGB 0-255); the largest per-channel max-min difference.

The true surface is sampled from a fine marching-cubes mesh of the exact SDF whose points are projected onto the
zero set (p ← p − sdf(p)·∇sdf(p), twice), so it works for every shape of the world.
"""

import functools
from dataclasses import asdict, dataclass

import numpy as np
import torch

from foundation import shapes

DEFAULT_SAMPLES = 5000


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB in [0,1] → linear (IEC 61966-2-1)."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def luminance(linear_rgb: np.ndarray) -> np.ndarray:
    """Rec. 709 relative luminance of linear RGB [...,3]."""
    return np.asarray(linear_rgb) @ np.array([0.2126, 0.7152, 0.0722])


def chromaticity(linear_rgb: np.ndarray) -> np.ndarray:
    """rgb / (r+g+b) of linear RGB [...,3]."""
    c = np.asarray(linear_rgb, dtype=np.float64)
    return c / np.maximum(c.sum(-1, keepdims=True), 1e-12)


def albedo_error(linear_rgb: np.ndarray, colour: str) -> tuple[float, float]:
    """(luminance ratio, chromaticity distance) of a linear RGB colour [3] against a world colour (shapes.COLOURS,
    sRGB): goal 2's two measures."""
    true_lin = srgb_to_linear(np.asarray(shapes.COLOURS[colour], dtype=np.float64) / 255.0)
    return (float(luminance(linear_rgb) / luminance(true_lin)),
            float(np.linalg.norm(chromaticity(linear_rgb) - chromaticity(true_lin))))


@dataclass
class SurfaceSamples:
    """Points sampled uniformly by area on a triangle mesh: position [n,3], face index [n], barycentrics [n,3]."""

    points: np.ndarray
    face: np.ndarray
    bary: np.ndarray


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    v = vertices[faces]
    return 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=-1)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator) -> SurfaceSamples:
    """``n`` points uniform in area on the mesh (face ∝ area, then uniform barycentrics)."""
    area = face_areas(vertices, faces)
    if not area.sum() > 0:
        raise ValueError("the mesh has no surface area")
    face = rng.choice(faces.shape[0], size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    bary = np.stack([1 - u - v, u, v], -1)
    pts = np.einsum("nk,nkd->nd", bary, vertices[faces[face]])
    return SurfaceSamples(pts, face, bary)


def _sdf(shape: str, p: np.ndarray) -> np.ndarray:
    return shapes.sdf(shape, torch.from_numpy(p).double()).numpy()


@functools.lru_cache(maxsize=16)
def true_surface_samples(shape: str, n: int, seed: int = 0, resolution: int = 128) -> np.ndarray:
    """[n,3] points uniform (to the marching-cubes mesh's accuracy) on the analytic surface of ``shape`` (cached;
    do not modify the returned array)."""
    rng = np.random.default_rng(seed)
    from skimage.measure import marching_cubes

    b = shapes.BOUND_RADIUS
    axis = np.linspace(-b, b, resolution)
    X, Y, Z = np.meshgrid(axis, axis, axis, indexing="ij")
    grid = _sdf(shape, np.stack([X, Y, Z], -1).reshape(-1, 3)).reshape(X.shape)
    h = axis[1] - axis[0]
    verts, faces, _, _ = marching_cubes(grid, level=0.0, spacing=(h, h, h))
    p = sample_surface(verts - b, faces.astype(np.int64), n, rng).points
    for _ in range(2):  # project onto the zero set along the SDF's gradient
        e = 1e-5
        g = np.stack([_sdf(shape, p + e * d) - _sdf(shape, p - e * d) for d in np.eye(3)], -1) / (2 * e)
        g /= np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-12)
        p = p - _sdf(shape, p)[:, None] * g
    return p


def weld(vertices: np.ndarray, faces: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Faces re-indexed onto vertices merged by position (within ``tol``), so UV seams do not split pieces."""
    key = np.round(vertices / tol).astype(np.int64)
    _, label = np.unique(key, axis=0, return_inverse=True)
    return label.reshape(-1)[faces]


def largest_piece_share(vertices: np.ndarray, faces: np.ndarray) -> tuple[float, int]:
    """(area share of the largest connected piece, number of pieces), pieces counted on welded geometry."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    f = weld(vertices, faces)
    n = int(f.max()) + 1
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    n_comp, label = connected_components(coo_matrix((np.ones(rows.shape[0]), (rows, cols)), shape=(n, n)),
                                         directed=False)
    area = np.bincount(label[f[:, 0]], weights=face_areas(vertices, faces), minlength=n_comp)
    used = np.unique(label[f[:, 0]])
    return float(area.max() / area.sum()), int(used.shape[0])


def _nearest_distance(query: np.ndarray, points: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    return cKDTree(points).query(query)[0]


@dataclass
class LoadedAsset:
    """Geometry and baseColor of a GLB: vertices [V,3], faces [F,3], uv [V,2] (trimesh: bottom-left origin) or None,
    the baseColor texture [H,W,3] uint8 sRGB or None, and the baseColorFactor (linear RGBA)."""

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray | None
    texture: np.ndarray | None
    factor: np.ndarray


def load_glb(path: str) -> LoadedAsset:
    """Read a GLB's single mesh (all primitives concatenated) and its baseColor with trimesh."""
    import trimesh

    scene = trimesh.load(str(path), force="scene", process=False)
    meshes = list(scene.dump()) if hasattr(scene, "dump") else [scene]
    if not meshes:
        raise ValueError(f"{path} holds no mesh")
    m = meshes[0] if len(meshes) == 1 else trimesh.util.concatenate(meshes)
    uv, tex, factor = None, None, np.ones(4)
    visual = getattr(m, "visual", None)
    material = getattr(visual, "material", None)
    if material is not None:
        if getattr(material, "baseColorFactor", None) is not None:
            factor = np.asarray(material.baseColorFactor, dtype=np.float64)
            factor = factor / 255.0 if factor.max() > 1.0 else factor
        if getattr(material, "baseColorTexture", None) is not None and getattr(visual, "uv", None) is not None:
            tex = np.asarray(material.baseColorTexture.convert("RGB"))
            uv = np.asarray(visual.uv, dtype=np.float64)
    return LoadedAsset(np.asarray(m.vertices, dtype=np.float64), np.asarray(m.faces, dtype=np.int64), uv, tex,
                       factor)


def base_colour_at(asset: LoadedAsset, s: SurfaceSamples) -> np.ndarray:
    """Linear RGB [n,3] of the baseColor (texture, bilinear, times factor) at surface samples."""
    lin = np.tile(asset.factor[:3], (s.points.shape[0], 1))
    if asset.texture is None:
        return lin
    uv = np.einsum("nk,nkd->nd", s.bary, asset.uv[asset.faces[s.face]])
    H, W = asset.texture.shape[:2]
    x = np.clip(uv[:, 0] * W - 0.5, 0, W - 1)
    y = np.clip((1 - uv[:, 1]) * H - 0.5, 0, H - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    t = srgb_to_linear(asset.texture.astype(np.float64) / 255.0)
    c = (t[y0, x0] * (1 - fx) * (1 - fy) + t[y0, x1] * fx * (1 - fy) + t[y1, x0] * (1 - fx) * fy
         + t[y1, x1] * fx * fy)
    return c * lin


def linear_to_srgb255(c: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(c, dtype=np.float64), 0, 1)
    return 255 * np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


@dataclass
class Fidelity:
    """Scores of one exported asset (see the module docstring)."""

    accuracy: float
    completeness: float
    largest_piece: float
    pieces: int
    base_colour: tuple[float, float, float]  # sRGB 0-255 of the mean linear baseColor
    true_colour: tuple[float, float, float]
    chromaticity_distance: float
    luminance_ratio: float
    face_spread: float | None  # cube only: sRGB 0-255
    corner_ratio: float | None = None  # cube only: see corner_ratio(); sqrt(2) for the truth, 1 for a cylinder
    yaw: float | None = None  # cube only: the turn about y (degrees) that best aligns the asset, see best_yaw()
    yaw_accuracy: float | None = None  # cube only: accuracy and completeness of the asset turned by ``yaw``
    yaw_completeness: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def cube_face_spread(points: np.ndarray, colour_linear: np.ndarray) -> float:
    """Largest per-channel difference (sRGB 0-255) between the six cube faces' mean colours; a sample belongs to the
    face whose axis has its largest |coordinate|."""
    axis = np.abs(points).argmax(-1)
    side = np.sign(points[np.arange(points.shape[0]), axis])
    means = []
    for a in range(3):
        for sgn in (-1, 1):
            sel = (axis == a) & (side == sgn)
            if sel.any():
                means.append(linear_to_srgb255(colour_linear[sel].mean(0)))
    means = np.stack(means)
    return float((means.max(0) - means.min(0)).max())


def score_asset(asset: LoadedAsset, shape: str, colour: str, n: int = DEFAULT_SAMPLES, seed: int = 0) -> Fidelity:
    """All the scores of ``asset`` against the canonical ``shape`` with albedo ``colour`` (sRGB from shapes.COLOURS)."""
    rng = np.random.default_rng(seed)
    s = sample_surface(asset.vertices, asset.faces, n, rng)
    accuracy = float(np.abs(_sdf(shape, s.points)).mean())
    truth = true_surface_samples(shape, n, seed)
    completeness = float(_nearest_distance(truth, s.points).mean())
    share, pieces = largest_piece_share(asset.vertices, asset.faces)
    col = base_colour_at(asset, s)
    mean_lin = col.mean(0)
    lum, chroma = albedo_error(mean_lin, colour)
    spread = cube_face_spread(s.points, col) if shape == "cube" else None
    corners = corner_ratio(asset.vertices, asset.faces) if shape == "cube" else None
    yaw = best_yaw(s.points, shape, truth) if shape == "cube" else (None, None, None)
    return Fidelity(accuracy, completeness, share, pieces, tuple(float(x) for x in linear_to_srgb255(mean_lin)),
                    tuple(float(x) for x in shapes.COLOURS[colour]), chroma, lum, spread, corners, *yaw)


def yaw_matrix(degrees: float) -> np.ndarray:
    """[3,3] rotation about the y axis (up) by ``degrees``, taking +x towards -z (right-handed, y up)."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def best_yaw(points: np.ndarray, shape: str, truth: np.ndarray, step: float = 1.0,
             period: float = 90.0) -> tuple[float, float, float]:
    """(yaw in degrees, accuracy, completeness) of the surface samples ``points`` turned about the y axis by the yaw in
    [0, ``period``) (``step`` apart) that minimises their accuracy; completeness against ``truth`` at that yaw.

    The prompt "a cube" does not say which way the cube faces, and the shapes world's priors cannot tell (its cube is
    seen from every azimuth, and a cube turned 45 degrees is as likely, docs/benchmarks.md session 35): a cube that
    formed at another yaw is a right answer that the axis-aligned scores count 5 cm off. The cube's scores at its best
    yaw are reported beside, never instead of, the axis-aligned ones (period 90: the cube's symmetry)."""
    yaws = np.arange(0.0, period, step)
    acc = [float(np.abs(_sdf(shape, points @ yaw_matrix(y).T)).mean()) for y in yaws]
    k = int(np.argmin(acc))
    comp = float(_nearest_distance(truth, points @ yaw_matrix(yaws[k]).T).mean())
    return float(yaws[k]), acc[k], comp


def score_glb(path: str, shape: str, colour: str, n: int = DEFAULT_SAMPLES, seed: int = 0) -> Fidelity:
    """:func:`score_asset` of a GLB file."""
    return score_asset(load_glb(path), shape, colour, n, seed)


__all__ = ["Fidelity", "LoadedAsset", "score_asset", "score_glb", "load_glb", "sample_surface",
           "true_surface_samples", "largest_piece_share", "cube_face_spread", "chromaticity", "luminance",
           "srgb_to_linear", "section_radii", "corner_ratio", "best_yaw", "yaw_matrix"]


def signed_error_by_region(vertices: np.ndarray, faces: np.ndarray, shape: str, n: int = DEFAULT_SAMPLES,
                           seed: int = 0) -> dict[str, tuple[float, float]]:
    """Where a surface is off: {region: (mean signed sdf, share of the samples)} for ``n`` area-uniform samples of
    the mesh, signed sdf > 0 outside the true shape (a bulge), < 0 inside. Regions: for the cube, the face the
    sample's largest coordinate points to (``+x`` … ``-z``); for other shapes, by the true surface's normal ∇sdf
    at the sample: ``up`` (n_y > 0.5), ``down`` (n_y < −0.5), else ``side out`` / ``side in`` (facing away from /
    towards the y axis, e.g. the torus's outer and inner ring). A diagnostic of the benchmark (it reads the ground
    truth), never used by training or export."""
    p = sample_surface(vertices, faces, n, np.random.default_rng(seed)).points
    d = _sdf(shape, p)
    if shape == "cube":
        axis = np.abs(p).argmax(1)
        sign = np.sign(p[np.arange(p.shape[0]), axis])
        names = np.array([f"{'+' if s > 0 else '-'}{'xyz'[a]}" for a, s in zip(axis, sign, strict=True)])
    else:
        e = 1e-4
        n = np.stack([_sdf(shape, p + e * u) - _sdf(shape, p - e * u) for u in np.eye(3)], -1)
        n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
        radial = n[:, 0] * p[:, 0] + n[:, 2] * p[:, 2]
        names = np.where(n[:, 1] > 0.5, "up", np.where(n[:, 1] < -0.5, "down",
                                                       np.where(radial >= 0, "side out", "side in")))
    return {r: (float(d[names == r].mean()), float((names == r).mean())) for r in sorted(set(names.tolist()))}


def section_radii(vertices: np.ndarray, faces: np.ndarray, height: float, sectors: int = 64) -> np.ndarray:
    """[sectors] distances from the y axis to the mesh's cross-section by the plane y = ``height``, along ``sectors``
    equally spaced horizontal directions (azimuth 2 pi k / sectors from +x towards +z; the farthest crossing; NaN
    where the ray meets none). Tells a cube from its rotational average: the shapes world's cube (half-size 0.4)
    gives 0.40 towards a face and 0.566 towards an edge, a max/min of sqrt(2); a surface of revolution (a cylinder,
    the union of the cube over every yaw) gives a constant. A diagnostic of the benchmark, like
    :func:`signed_error_by_region`."""
    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]  # [F,3,3]
    above = tri[..., 1] > height
    tri, above = tri[above.any(1) & ~above.all(1)], above[above.any(1) & ~above.all(1)]
    ends = []
    for i, j in ((0, 1), (1, 2), (2, 0)):  # a cut triangle has exactly two edges across the plane: its segment
        a, b = tri[:, i], tri[:, j]
        t = np.clip((height - a[:, 1]) / np.where(b[:, 1] == a[:, 1], 1.0, b[:, 1] - a[:, 1]), 0.0, 1.0)
        ends.append((above[:, i] != above[:, j], (a + t[:, None] * (b - a))[:, [0, 2]]))
    cross = np.stack([c for c, _ in ends], 1)  # [F,3]
    pts = np.stack([p for _, p in ends], 1)  # [F,3,2]
    first = cross.argmax(1)
    second = 2 - cross[:, ::-1].argmax(1)
    rows = np.arange(pts.shape[0])
    p0, p1 = pts[rows, first], pts[rows, second]  # [S,2] segment ends
    ang = 2 * np.pi * np.arange(sectors) / sectors
    out = np.full(sectors, np.nan)
    e = p1 - p0
    for k, phi in enumerate(ang):
        d = np.array([np.cos(phi), np.sin(phi)])
        den = d[0] * e[:, 1] - d[1] * e[:, 0]  # solve r d = p0 + u e for (r, u)
        ok = np.abs(den) > 1e-12
        r = (p0[:, 0] * e[:, 1] - p0[:, 1] * e[:, 0]) / np.where(ok, den, 1.0)
        u = (p0[:, 0] * d[1] - p0[:, 1] * d[0]) / np.where(ok, den, 1.0)
        hit = ok & (r > 0) & (u >= -1e-9) & (u <= 1 + 1e-9)
        if hit.any():
            out[k] = r[hit].max()
    return out


def corner_ratio(vertices: np.ndarray, faces: np.ndarray, height: float = 0.0, sectors: int = 64) -> float:
    """Largest over smallest :func:`section_radii` at ``height``: sqrt(2) for the true cube, 1 for a surface of
    revolution (sampled along ``sectors`` directions, so a yawed cube's corners are met to within half a sector: at 64,
at least 1.33); NaN when a direction meets no section (none closed there)."""
    r = section_radii(vertices, faces, height, sectors)
    return float(np.max(r) / np.min(r)) if np.isfinite(r).all() and np.min(r) > 0 else float("nan")
