"""UV atlases that cannot take the process down: xatlas in a child process with a time limit, and fallbacks.

xatlas 0.0.11 segfaults on some closed meshes (an 82k-face icosphere; a 20k one is fine, and so is either of its
halves, or the sphere less two octants), and its chart growing is strongly superlinear on noisy surfaces (the same
sphere with 1e-3 vertex noise: 5k faces 2 s, 20k faces 14 s, 82k faces over 5 minutes); neither can be caught
in-process, and neither Stop nor SIGINT reaches native code. So (issue #18):

1. the mesh is pre-cleaned: exact duplicate vertices merged, degenerate and repeated faces dropped (``preclean``);
2. xatlas runs in a child process (``python -m engine.atlas``, numpy and xatlas only) with a time limit;
3. meshes above BLOCK_FACES, and any mesh whose whole unwrap crashes or runs out of time, are cut into spatial
   blocks (median splits along the longest axis; 2, 4, 8... blocks, doubling on each failure), each block gets its
   own xatlas atlas in one child, and the block atlases are tiled into the unit square (each scaled uniformly into
   its cell): this avoids the whole-closed-surface crash and keeps the superlinear cost small;
4. last, ``triangle_atlas`` gives every triangle its own cell of a grid: always valid, coarse, but never fails.

``unwrap_safe`` returns (vmap, faces, uv, how): vertex map into the input vertices, new faces, UVs in [0,1]², and a
one-line note of the method used.
"""

import os
import subprocess
import sys
import tempfile

import numpy as np

MAX_UNWRAP_FACES = 1_000_000
"""Meshes above this are refused with a clear error (decimate them first): even the fallbacks get slow."""
BLOCK_FACES = 60_000
"""Meshes are unwrapped in blocks of about this many faces at most."""
DEFAULT_TIMEOUT_S = 120.0


class UnwrapError(ValueError):
    """The mesh cannot be unwrapped; the message is for the user."""


def preclean(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices, faces, vmap): exact duplicate vertices merged, faces with a repeated corner or zero area and
    duplicate faces dropped, unreferenced vertices removed. ``vmap[i]`` is the input index of output vertex i."""
    v = np.asarray(vertices)
    f = np.asarray(faces, dtype=np.int64)
    uniq, first, inverse = np.unique(v, axis=0, return_index=True, return_inverse=True)
    f = inverse.reshape(-1)[f]
    ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    vv = uniq.astype(np.float64)
    area2 = np.linalg.norm(np.cross(vv[f[:, 1]] - vv[f[:, 0]], vv[f[:, 2]] - vv[f[:, 0]]), axis=1)
    ok &= area2 > 1e-14 * max(1.0, float(np.abs(vv).max(initial=0.0)) ** 2)
    f = f[ok]
    if len(f):
        _, keep = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
        f = f[np.sort(keep)]
    used, f_new = np.unique(f, return_inverse=True)
    return uniq[used], f_new.reshape(-1, 3), first[used]


def _xatlas_blocks(vertices: np.ndarray, blocks: list[np.ndarray], resolution: int, padding: int) -> list:
    """xatlas per block of faces (in this process): [(vmap, faces, uv)] with vmap into ``vertices``."""
    import xatlas

    out = []
    for fb in blocks:
        used, inv = np.unique(fb, return_inverse=True)
        atlas = xatlas.Atlas()
        atlas.add_mesh(vertices[used].astype(np.float32), inv.reshape(-1, 3).astype(np.uint32))
        pack = xatlas.PackOptions()
        if resolution:
            pack.resolution = resolution
            pack.padding = padding
            pack.bilinear = True
        atlas.generate(xatlas.ChartOptions(), pack)
        vmap, faces, uv = atlas[0]
        out.append((used[vmap], faces.astype(np.int64), uv.astype(np.float64)))
    return out


def split_blocks(vertices: np.ndarray, faces: np.ndarray, parts: int) -> list[np.ndarray]:
    """Faces cut into ``parts`` (a power of two) spatial blocks by repeated median splits of face centroids along
    each block's longest axis."""
    blocks = [faces]
    while len(blocks) < parts:
        nxt = []
        for fb in blocks:
            c = vertices[fb].mean(1)
            axis = int(np.argmax(c.max(0) - c.min(0)))
            order = np.argsort(c[:, axis], kind="stable")
            half = len(order) // 2
            nxt += [fb[np.sort(order[:half])], fb[np.sort(order[half:])]]
        blocks = [b for b in nxt if len(b)]
    return blocks


def tile(atlases: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block atlases tiled into the unit square: a ceil(sqrt(n))² grid, each atlas scaled uniformly into its cell
    with a small gutter. Returns (vmap, faces, uv)."""
    n = len(atlases)
    side = int(np.ceil(np.sqrt(n)))
    cell, gutter = 1.0 / side, 0.02 / side
    vmaps, faces, uvs, offset = [], [], [], 0
    for i, (vmap, f, uv) in enumerate(atlases):
        r, c = divmod(i, side)
        vmaps.append(vmap)
        faces.append(f + offset)
        uvs.append(uv * (cell - 2 * gutter) + np.array([c * cell + gutter, r * cell + gutter]))
        offset += len(vmap)
    return np.concatenate(vmaps), np.concatenate(faces), np.concatenate(uvs)


def triangle_atlas(faces: np.ndarray, resolution: int = 1024, padding: int = 2) -> tuple:
    """Every triangle in its own cell of a square grid (a right triangle inset by ``padding`` texels, or by a
    quarter of the cell when cells are smaller). Always valid; each face gets only a few texels on big meshes."""
    f = np.asarray(faces, dtype=np.int64)
    n = len(f)
    side = int(np.ceil(np.sqrt(n)))
    cell = 1.0 / side
    inset = min(padding / max(resolution, 1), cell / 4)
    r, c = np.divmod(np.arange(n), side)
    x0, y0 = c * cell + inset, r * cell + inset
    w = cell - 3 * inset
    uv = np.stack([np.stack([x0, y0], 1), np.stack([x0 + w, y0], 1), np.stack([x0, y0 + w], 1)], 1)
    return f.reshape(-1), np.arange(3 * n).reshape(n, 3), uv.reshape(-1, 2)


def _run_child(vertices, faces, parts: int, resolution: int, padding: int, timeout_s: float):
    """One child process unwrapping ``parts`` blocks; (vmap, faces, uv) or None when it crashed or timed out."""
    with tempfile.TemporaryDirectory(prefix="distillery-atlas-") as tmp:
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(src, vertices=vertices, faces=faces, parts=parts, resolution=resolution, padding=padding)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        try:
            proc = subprocess.run([sys.executable, "-m", "engine.atlas", src, dst], env=env, timeout=timeout_s,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except subprocess.TimeoutExpired:
            return None, f"xatlas ran past {timeout_s:g} s"
        if proc.returncode != 0 or not os.path.isfile(dst):
            return None, f"xatlas failed (exit {proc.returncode})"
        with np.load(dst) as d:
            return (d["vmap"], d["faces"], d["uv"]), ""


def unwrap_safe(vertices: np.ndarray, faces: np.ndarray, resolution: int = 0, padding: int = 2,
                timeout_s: float = DEFAULT_TIMEOUT_S, preclean_mesh: bool = True) -> tuple:
    """(vmap, faces, uv, how) for a mesh without UVs, never crashing or hanging this process (module docstring).
    ``resolution`` > 0 packs for that texture size with ``padding`` texels (0: xatlas chooses)."""
    if len(faces) > MAX_UNWRAP_FACES:
        raise UnwrapError(f"the mesh has {len(faces):,} faces; unwrapping is limited to {MAX_UNWRAP_FACES:,} "
                          f"(decimate it first)")
    v = np.asarray(vertices, dtype=np.float32)
    f = np.asarray(faces, dtype=np.int64)
    base = np.arange(len(v))
    if preclean_mesh:
        v, f, base = preclean(v, f)
        if len(f) == 0:
            raise UnwrapError("every face of the mesh is degenerate")
    notes = []
    first = 1
    while len(f) / first > BLOCK_FACES:
        first *= 2
    for parts in (first, 2 * first, 4 * first, 8 * first):
        result, why = _run_child(v, f, parts, resolution, padding, timeout_s)
        if result is not None:
            vmap, nf, uv = result
            how = "xatlas" if parts == 1 else f"xatlas in {parts} blocks" + (f" ({notes[0]} with fewer)"
                                                                               if notes else "")
            return base[vmap], nf, uv, how
        notes.append(why)
        if len(f) < 64:
            break
    vmap, nf, uv = triangle_atlas(f, resolution or 1024, padding)
    return base[vmap], nf, uv, f"one cell per triangle ({notes[0]}; the block fallbacks failed too)"


def _main(src: str, dst: str) -> None:
    with np.load(src) as d:
        v, f = d["vertices"], d["faces"]
        parts, resolution, padding = int(d["parts"]), int(d["resolution"]), int(d["padding"])
    blocks = split_blocks(v, f, parts)
    atlases = _xatlas_blocks(v, blocks, resolution, padding)
    vmap, nf, uv = atlases[0] if len(atlases) == 1 else tile(atlases)
    np.savez(dst + ".tmp.npz", vmap=vmap, faces=nf, uv=uv)
    os.replace(dst + ".tmp.npz", dst)


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
