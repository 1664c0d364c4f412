"""Reading a user's mesh: OBJ / GLB / PLY through trimesh, confined to the file's own folder, repaired and normalised.

``load_mesh`` (``force="mesh"``, scenes concatenated). Repairs, documented: vertices with NaN/Inf and the faces using
them, degenerate (zero-area or repeated-index) faces and unreferenced vertices are dropped; non-manifold or open
meshes are kept as they are (the rasteriser, the material field and the exporter do not need a manifold). Input with
no triangles left raises ``MeshError`` (a ValueError). Normalisation: centred on its bounding-box centre and scaled
so its longest bounding-box side is ``size`` (0.8 m, the shapes world's cube edge); ``LoadedMesh`` keeps the inverse
transform, so an exporter can give the asset back the user's placement and units.
"""

import os
from dataclasses import dataclass, field

import numpy as np


class MeshError(ValueError):
    """The file cannot be read as a usable mesh; the message is meant for the user."""


@dataclass
class LoadedMesh:
    """A mesh in normalised coordinates plus what undoes the normalisation (world = v·scale + centre)."""

    vertices: np.ndarray  # [V,3] float32, normalised
    faces: np.ndarray  # [F,3] int64
    uv: np.ndarray | None  # [V,2] OBJ-style, or None
    centre: np.ndarray
    scale: float
    repairs: list[str] = field(default_factory=list)


class FolderResolver:
    """A trimesh resolver that serves the files of one folder, by plain name only: an OBJ's ``mtllib ../../x`` or an
    absolute texture path is refused whatever trimesh's own resolver allows in the installed version (issue #18)."""

    def __init__(self, folder: str):
        self.folder = os.path.realpath(folder)

    def _path(self, name: str) -> str:
        name = str(name).strip()
        path = os.path.realpath(os.path.join(self.folder, name))
        if os.path.isabs(name) or os.path.dirname(path) != self.folder or not os.path.isfile(path):
            raise FileNotFoundError(f"{name}: not a file beside the mesh")
        return path

    def get(self, name: str) -> bytes:
        with open(self._path(name), "rb") as f:
            return f.read()

    def __getitem__(self, name: str) -> bytes:
        return self.get(name)

    def __contains__(self, name: str) -> bool:
        try:
            self._path(name)
            return True
        except FileNotFoundError:
            return False

    def keys(self):
        return sorted(os.listdir(self.folder))

    def namespaced(self, namespace: str) -> "FolderResolver":
        return self  # sub-folders are not served

    def write(self, name: str, data) -> None:
        raise PermissionError("reading a mesh writes nothing")


def load_trimesh(path: str, file_type: str | None = None, **kw):
    """trimesh.load of a file with its companion files (OBJ materials, glTF buffers) taken from its own folder
    only (FolderResolver)."""
    import trimesh

    ext = (file_type or os.path.splitext(path)[1].lstrip(".")).lower()
    with open(path, "rb") as f:
        return trimesh.load(f, file_type=ext, resolver=FolderResolver(os.path.dirname(os.path.abspath(path))), **kw)


def load_mesh(path: str, size: float = 0.8) -> LoadedMesh:
    """Load, repair (see the module docstring) and normalise a mesh file."""
    import trimesh

    if not os.path.isfile(path):
        raise MeshError(f"{path}: no such file")
    try:
        m = load_trimesh(path, force="mesh", process=False)
    except Exception as e:  # trimesh raises many types on malformed files
        raise MeshError(f"{path}: cannot read it as a mesh ({type(e).__name__}: {e})") from None
    if not isinstance(m, trimesh.Trimesh) or len(getattr(m, "faces", [])) == 0:
        raise MeshError(f"{path}: holds no triangles (a point cloud or an empty scene cannot be textured)")
    v = np.asarray(m.vertices, dtype=np.float64)
    f = np.asarray(m.faces, dtype=np.int64)
    uv = None
    vis_uv = getattr(m.visual, "uv", None)
    if vis_uv is not None and len(vis_uv) == len(v):
        uv = np.asarray(vis_uv, dtype=np.float32)
    repairs = []
    bad_v = ~np.isfinite(v).all(1)
    keep = ~bad_v[f].any(1) & (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    vv = np.nan_to_num(v)
    area = np.linalg.norm(np.cross(vv[f[:, 1]] - vv[f[:, 0]], vv[f[:, 2]] - vv[f[:, 0]]), axis=1)
    keep &= area > 1e-12 * max(1.0, float(np.abs(vv).max()) ** 2)
    if (~keep).any():
        repairs.append(f"dropped {int((~keep).sum())} degenerate or non-finite faces")
    f = f[keep]
    if len(f) == 0:
        raise MeshError(f"{path}: every face is degenerate or has non-finite vertices")
    used = np.unique(f)
    if len(used) < len(v):
        remap = -np.ones(len(v), dtype=np.int64)
        remap[used] = np.arange(len(used))
        f, v = remap[f], v[used]
        uv = uv[used] if uv is not None else None
        repairs.append(f"dropped {int(len(remap) - len(used))} unreferenced vertices")
    lo, hi = v.min(0), v.max(0)
    if float((hi - lo).max()) <= 0:
        raise MeshError(f"{path}: the mesh has zero size")
    placed, centre, scale = normalise_placement(v, size)
    return LoadedMesh(placed, f, uv, centre, scale, repairs)


def normalise_placement(v: np.ndarray, size: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(vertices [V,3] float32 with the bounding box centred and the longest side ``size``, centre, scale): how the
    engine places a mesh read from a file (the file's frame is placed * scale + centre). The light-aware shapes
    prior places its primitives with it too, so its exemplars match the training renders exactly."""
    lo, hi = v.min(0), v.max(0)
    centre = (lo + hi) / 2
    scale = float((hi - lo).max()) / size
    return ((v - centre) / scale).astype(np.float32), centre, scale
