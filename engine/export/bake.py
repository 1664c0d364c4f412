"""UV unwrap (xatlas), tangent frames, and texture baking in UV space (renderers.md §5.2-5.3).

Baking queries the scene's material at each texel's surface point: the mesh is rasterised in UV space, every
covered texel gets its 3D point by barycentric interpolation, and the scene is asked for the material there.
Texels outside every chart are then filled from their nearest covered texel (a full dilation, not a fixed number
of rings), so neither bilinear filtering nor mip-mapping can pull background into the charts at seams; xatlas packs
the charts with a gutter of ``padding`` texels so neighbouring charts do not share texels.

Texture semantics (conventions.md §3.1):
- base colour: sRGB-encoded. A scene's ``query_material`` returns linear albedo (the PBR shader's kd), converted
  with the sRGB OETF; ``query_albedo`` of NeRF/Gaussian scenes is already display-referred (what the renders
  show) and is written as is.
- ORM: linear; R occlusion (1 unless the scene provides it), G roughness, B metallic.
- normal: tangent space, OpenGL convention (+X along +u, +Y "up" in the image, i.e. towards decreasing glTF v,
  which is +v in OBJ/USD), encoded rgb = 0.5 n + 0.5. The tangent frame is the one written to the GLB's TANGENT
  attribute: T = ∂P/∂u, B = w · (N × T) = ∂P/∂v_up. The DirectX option flips G.

Scene hooks used (duck-typed): ``query_density(x [M,3]) -> [M]`` and ``query_albedo(x [M,3]) -> [M,3]`` (field
scenes), or ``surface_colour(x [M,3], n [M,3]) -> [M,3]`` where a scene declares ``SurfaceColour`` (3D Gaussians: the
colour the splats composite to along the normal, evaluated at the mesh's vertices and interpolated over the texels,
since a ray costs a few hundred splat tests where a point query costs a few); or ``query_material(x [M,3]) ->
{"albedo": [M,3] linear, "roughness": [M], "metallic": [M], optionally "occlusion": [M], "normal": [M,3] world-space
shading normal}`` (PBR scenes).
"""

from dataclasses import dataclass

import numpy as np
import torch

from engine.export.errors import ExportError
from engine.export.mesh import Mesh, vertex_normals
from foundation.abilities import declares
from renderers.base import AlbedoField, PBRMaterial, SurfaceColour


@dataclass
class Textures:
    """Baked maps as uint8 images, rows top-first (row 0 is glTF v = 0)."""

    base_color: np.ndarray  # [N,N,3] sRGB
    occlusion: np.ndarray  # [N,N] linear
    roughness: np.ndarray  # [N,N] linear
    metallic: np.ndarray  # [N,N] linear
    normal: np.ndarray  # [N,N,3] tangent space, OpenGL (or DirectX when flipped)

    @property
    def orm(self) -> np.ndarray:
        """[N,N,3]: R occlusion, G roughness, B metallic (glTF metallicRoughnessTexture + occlusionTexture)."""
        return np.stack([self.occlusion, self.roughness, self.metallic], -1)


@dataclass
class BakeOptions:
    texture_size: int = 1024
    padding: int = 4
    """Gutter between charts, in texels."""
    roughness: float = 0.9
    """Constant roughness for scenes without materials (NeRF, Gaussians)."""
    metallic: float = 0.0
    """Constant metallic for scenes without materials."""
    normal_map: str = "opengl"
    """"opengl" (glTF, Blender, Unity) or "directx" (Unreal, Substance DX preset: G flipped)."""
    field_normals: bool = True
    """For field scenes, bake the density gradient's normal (detail lost to decimation) into the normal map."""
    normal_step: float = 0.01
    """Material queries are made this far (metres, halved) inside the surface along the normal."""
    scene_uv: bool = False
    """The mesh's UVs are the scene's own texture coordinates (a UV-textured fixed mesh): each texel's material is
    looked up at its exact interpolated UV (``query_material(x, uv=...)``) instead of by position."""

    def __post_init__(self) -> None:
        if self.normal_map not in ("opengl", "directx"):
            raise ValueError(f"normal_map must be opengl or directx, got {self.normal_map!r}")
        if not 8 <= self.texture_size <= 16384:
            raise ValueError(f"texture_size must be in 8..16384, got {self.texture_size}")


def unwrap(mesh: Mesh, texture_size: int, padding: int) -> Mesh:
    """xatlas atlas; vertices are split along seams (normals follow). A mesh that has uv keeps them."""
    if mesh.uv is not None:
        return mesh
    from engine.atlas import unwrap_safe  # xatlas out of process: a crash or a hang cannot take us down

    vmap, faces, uv, _ = unwrap_safe(mesh.vertices, mesh.faces, texture_size, padding, preclean_mesh=False)
    normals = None if mesh.normals is None else mesh.normals[vmap]
    return Mesh(mesh.vertices[vmap], faces.astype(np.int64), normals, uv.astype(np.float64))


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int, tol: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Face id [N,N] (-1: empty) and barycentrics [N,N,3] of every texel centre (row i ↔ v = (i+0.5)/N).

    A texel whose centre lies inside a triangle takes that triangle. A texel whose centre lies outside every
    triangle but within ``tol`` texels of one's edges takes that triangle too, with barycentrics clamped onto it, so
    chart borders are sampled from their own chart (bilinear filtering reads them). Triangles are bucketed by the
    power-of-two size of their bounding box and each bucket tests all texels of its boxes at once, so the work is
    within a small factor of the covered area.
    """
    face_id = np.full((size, size), -1, dtype=np.int64)
    bary = np.zeros((size, size, 3), dtype=np.float64)
    exact = np.zeros((size, size), dtype=bool)
    P = uv[faces] * size - 0.5  # [F,3,2] in texel-centre coordinates (x = column, y = row)
    x0 = np.floor(P[..., 0].min(1) - tol).astype(np.int64).clip(0, size - 1)
    y0 = np.floor(P[..., 1].min(1) - tol).astype(np.int64).clip(0, size - 1)
    x1 = np.ceil(P[..., 0].max(1) + tol).astype(np.int64).clip(0, size - 1)
    y1 = np.ceil(P[..., 1].max(1) + tol).astype(np.int64).clip(0, size - 1)
    a, b, c = P[:, 0], P[:, 1], P[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    extent = np.maximum(x1 - x0, y1 - y0) + 1
    bucket = np.ceil(np.log2(np.maximum(extent, 1))).astype(np.int64)
    valid = np.abs(area) > 1e-12
    edges = np.stack([np.linalg.norm(c - b, axis=-1), np.linalg.norm(a - c, axis=-1), np.linalg.norm(b - a, axis=-1)],
                     -1)
    for bk in np.unique(bucket[valid]):
        S = 1 << int(bk)
        dy, dx = np.divmod(np.arange(S * S), S)
        idx_all = np.nonzero(valid & (bucket == bk))[0]
        step = max(1, 1_000_000 // (S * S))
        for s in range(0, idx_all.shape[0], step):
            idx = idx_all[s:s + step]
            X = x0[idx, None] + dx[None]
            Y = y0[idx, None] + dy[None]
            inb = (X <= x1[idx, None]) & (Y <= y1[idx, None])
            w = _barycentric(a[idx], b[idx], c[idx], area[idx], X, Y)
            # distance (texels) of the centre outside each edge: -w_i · |2A| / |opposite edge|
            outside = (-w * np.abs(area[idx])[:, None, None] / np.maximum(edges[idx][:, None, :], 1e-12)).max(-1)
            for accept in (inb & (outside > 0) & (outside <= tol), inb & (outside <= 0)):
                f_i, t_i = np.nonzero(accept)
                rows, cols = Y[f_i, t_i], X[f_i, t_i]
                is_exact = outside[f_i, t_i] <= 0
                free = is_exact | ~exact[rows, cols]
                f_i, t_i, rows, cols = f_i[free], t_i[free], rows[free], cols[free]
                wv = np.clip(w[f_i, t_i], 0, None)
                wv /= np.maximum(wv.sum(-1, keepdims=True), 1e-12)
                face_id[rows, cols] = idx[f_i]
                bary[rows, cols] = wv
                exact[rows, cols] |= is_exact[free]
    return face_id, bary


def _barycentric(a, b, c, area, X, Y) -> np.ndarray:
    """[n,T,3] barycentrics of points (X, Y) [n,T] in triangles a, b, c [n,2] with signed doubled area [n]."""
    def edge(p, q):
        return ((q[:, None, 0] - p[:, None, 0]) * (Y - p[:, None, 1])
                - (q[:, None, 1] - p[:, None, 1]) * (X - p[:, None, 0]))
    return np.stack([edge(b, c), edge(c, a), edge(a, b)], -1) / area[:, None, None]


def tangents(mesh: Mesh) -> np.ndarray:
    """[V,4] unit tangents (xyz ⟂ normal) and handedness w = ±1, for glTF's TANGENT attribute.

    T follows +u and the bitangent B = w (N × T) follows +v_up = -v_glTF (OpenGL/MikkTSpace convention in a
    top-left-origin UV space). Per-face frames are area-weighted onto the vertices, then Gram-Schmidt'ed.
    """
    v, f, n = mesh.vertices, mesh.faces, mesh.normals
    uv = mesh.uv * np.array([1.0, -1.0])  # v_up = -v (an offset does not change derivatives)
    e1, e2 = v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]
    d1, d2 = uv[f[:, 1]] - uv[f[:, 0]], uv[f[:, 2]] - uv[f[:, 0]]
    r = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    r = np.where(np.abs(r) > 1e-20, r, 1e-20)
    t_f = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) / r[:, None]
    b_f = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) / r[:, None]
    area = 0.5 * np.linalg.norm(np.cross(e1, e2), axis=-1, keepdims=True)
    t_f = t_f / np.maximum(np.linalg.norm(t_f, axis=-1, keepdims=True), 1e-20) * area
    b_f = b_f / np.maximum(np.linalg.norm(b_f, axis=-1, keepdims=True), 1e-20) * area
    T, B = np.zeros_like(v), np.zeros_like(v)
    for i in range(3):
        np.add.at(T, f[:, i], t_f)
        np.add.at(B, f[:, i], b_f)
    T = T - n * (T * n).sum(-1, keepdims=True)
    length = np.linalg.norm(T, axis=-1, keepdims=True)
    # fallback for degenerate uv: any unit vector orthogonal to n
    helper = np.where(np.abs(n[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    alt = np.cross(n, helper)
    alt /= np.linalg.norm(alt, axis=-1, keepdims=True)
    T = np.where(length > 1e-12, T / np.maximum(length, 1e-20), alt)
    w = np.where((np.cross(n, T) * B).sum(-1) < 0, -1.0, 1.0)
    return np.concatenate([T, w[:, None]], -1)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, np.power((x + 0.055) / 1.055, 2.4))


@torch.no_grad()
def _query(fn, x: np.ndarray, device, chunk: int = 65536, extra: np.ndarray | None = None):
    """``fn(x)`` (or ``fn(x, extra)``, row-aligned) in chunks, as numpy (a dict of arrays for dict results)."""
    outs = []
    for i in range(0, x.shape[0], chunk):
        args = [torch.as_tensor(a[i:i + chunk], dtype=torch.float32, device=device)
                for a in (x, extra) if a is not None]
        out = fn(*args)
        outs.append({k: v.float().cpu().numpy() for k, v in out.items()} if isinstance(out, dict)
                    else out.float().cpu().numpy())
    if outs and isinstance(outs[0], dict):
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    return np.concatenate(outs) if outs else np.zeros((0,))


def _surface_material(scene, p: np.ndarray, n: np.ndarray, opts: BakeOptions, device, field_normals=None,
                      uv: np.ndarray | None = None, base_color: np.ndarray | None = None) -> dict:
    """Per-point base colour (sRGB), occlusion, roughness, metallic and an optional world shading normal; ``uv``:
    the points' texture coordinates in the scene's own UV space (BakeOptions.scene_uv); ``base_color``: the points'
    colour when the caller has it already (a ``SurfaceColour`` scene's), instead of ``query_albedo``."""
    inward = p - n * (0.5 * opts.normal_step)
    m = len(p)
    if declares(scene, PBRMaterial):
        mat = _query(scene.query_material, inward, device, extra=uv)
        out = {"base_color": linear_to_srgb(mat["albedo"]),
               "roughness": np.asarray(mat.get("roughness", np.full(m, opts.roughness))).reshape(m),
               "metallic": np.asarray(mat.get("metallic", np.full(m, opts.metallic))).reshape(m),
               "occlusion": np.asarray(mat.get("occlusion", np.ones(m))).reshape(m),
               "normal": mat.get("normal")}
    elif declares(scene, AlbedoField):
        colour = _query(scene.query_albedo, inward, device) if base_color is None else base_color
        out = {"base_color": colour, "roughness": np.full(m, opts.roughness),
               "metallic": np.full(m, opts.metallic), "occlusion": np.ones(m), "normal": None}
    else:
        raise ExportError(f"{type(scene).__name__} has no colour to bake: it declares neither PBRMaterial nor "
                          f"AlbedoField")
    if out["normal"] is None and opts.field_normals and field_normals is not None:
        out["normal"] = field_normals(p)
    return out


def _fill(img: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Every uncovered texel takes the value of its nearest covered texel."""
    from scipy.ndimage import distance_transform_edt

    if covered.all() or not covered.any():
        return img
    _, (ri, ci) = distance_transform_edt(~covered, return_indices=True)
    return img[ri, ci]


def _to_u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def bake(scene, mesh: Mesh, opts: BakeOptions, device=None, field_normals=None) -> tuple[Textures, np.ndarray]:
    """Textures of ``scene`` on the unwrapped ``mesh`` (uv and normals set), and the mesh's [V,4] tangents.

    ``field_normals(p [M,3]) -> [M,3]`` (e.g. mesh.GridNormals) supplies detail normals for scenes whose material
    has none."""
    from engine.export.mesh import _scene_device

    device = device or _scene_device(scene)
    if mesh.normals is None:
        mesh.normals = vertex_normals(mesh.vertices, mesh.faces)
    tan = tangents(mesh)
    N = opts.texture_size
    fid, bary = rasterize_uv(mesh.uv, mesh.faces, N, tol=1.0)
    covered = fid >= 0
    rows, cols = np.nonzero(covered)
    tri = mesh.faces[fid[rows, cols]]  # [M,3]
    w = bary[rows, cols][..., None]  # [M,3,1]

    def interp(attr):
        return (attr[tri] * w).sum(1)

    p = interp(mesh.vertices)
    n = interp(mesh.normals)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    t = interp(tan[:, :3])
    t -= n * (t * n).sum(-1, keepdims=True)
    t /= np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-12)
    b = np.cross(n, t) * tan[tri[:, 0], 3:4]
    seen = None
    if declares(scene, SurfaceColour) and not declares(scene, PBRMaterial):
        seen = interp(np.clip(_query(scene.surface_colour, mesh.vertices, device, extra=mesh.normals), 0.0, 1.0))
    mat = _surface_material(scene, p, n, opts, device, field_normals, interp(mesh.uv) if opts.scene_uv else None,
                            base_color=seen)

    ts = np.tile([0.0, 0.0, 1.0], (len(p), 1))
    if mat["normal"] is not None:
        d = np.asarray(mat["normal"], dtype=np.float64).reshape(-1, 3)
        cand = np.stack([(d * t).sum(-1), (d * b).sum(-1), (d * n).sum(-1)], -1)
        good = cand[:, 2] > 0.2  # reject gradients that disagree wildly with the surface (noise, thin parts)
        ts[good] = cand[good] / np.linalg.norm(cand[good], axis=-1, keepdims=True)
    if opts.normal_map == "directx":
        ts[:, 1] = -ts[:, 1]

    def image(values: np.ndarray, channels: int) -> np.ndarray:
        img = np.zeros((N, N, channels))
        img[rows, cols] = values.reshape(-1, channels)
        return _to_u8(_fill(img, covered))

    tex = Textures(base_color=image(mat["base_color"], 3), occlusion=image(mat["occlusion"], 1)[..., 0],
                   roughness=image(mat["roughness"], 1)[..., 0], metallic=image(mat["metallic"], 1)[..., 0],
                   normal=image(0.5 * ts + 0.5, 3))
    return tex, tan
