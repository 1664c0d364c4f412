"""3DGS PLY read/write in the INRIA layout (shared/docs/conventions.md §3.2), with numpy only (no GPL plyfile).

Layout: binary_little_endian, one ``vertex`` element of float32 properties in this order:
``x y z nx ny nz f_dc_0..2 f_rest_0..(3·((d+1)²−1)−1) opacity scale_0..2 rot_0..3``; normals are zeros, opacity is
a logit, scales are logs, rot is (w,x,y,z) unnormalised, and f_rest is channel-major (all R, then G, then B).

Our world is Y-up (glTF). ``up`` rotates the splats on export for viewers that assume another up axis:
``"y"`` leaves them as they are; ``"z"`` turns +Y into +Z (Blender-style Z-up; front +Z becomes −Y);
``"-y"`` rotates 180° about Z, the rotation SuperSplat undoes on load for INRIA/COLMAP Y-down worlds, so the asset
opens upright there. Rotations move means, quaternions and the higher SH bands (rotated per band).
"""

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from foundation.abilities import declares
from renderers.base import GaussianSplats
from renderers.kernels.splat_torch import eval_sh

UP_AXES = ("y", "z", "-y")
_LOGIT_MIN_OPACITY = math.log((1 / 255) / (1 - 1 / 255))
_PLY_TYPES = {"char": "i1", "uchar": "u1", "short": "<i2", "ushort": "<u2", "int": "<i4", "uint": "<u4",
              "float": "<f4", "double": "<f8", "int8": "i1", "uint8": "u1", "int16": "<i2", "uint16": "<u2",
              "int32": "<i4", "uint32": "<u4", "float32": "<f4", "float64": "<f8"}


def up_rotation(up: str) -> Tensor:
    """[3,3] rotation from our Y-up world to the exported frame."""
    match up:
        case "y":
            return torch.eye(3)
        case "z":
            return torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # +90° about X
        case "-y":
            return torch.tensor([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])  # 180° about Z
        case _:
            raise ValueError(f"up must be one of {', '.join(UP_AXES)}, got {up!r}")


def _rotmat_to_quat(R: Tensor) -> Tensor:
    """(w,x,y,z) of a proper rotation matrix (robust branch on the largest component)."""
    m = R.double()
    tr = m.trace()
    cands = torch.stack([1 + tr, 1 + 2 * m[0, 0] - tr, 1 + 2 * m[1, 1] - tr, 1 + 2 * m[2, 2] - tr])
    i = int(cands.argmax())
    s = math.sqrt(float(cands[i])) * 2
    if i == 0:
        q = [s / 4, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif i == 1:
        q = [(m[2, 1] - m[1, 2]) / s, s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif i == 2:
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s]
    else:
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4]
    return torch.tensor([float(v) for v in q])


def _quat_mul(a: Tensor, b: Tensor) -> Tensor:
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


def sh_rotation(R: Tensor, degree: int) -> Tensor:
    """[(d+1)²,(d+1)²] matrix D with Y(R⁻¹ v) = D Y(v) per band, solved by least squares on sampled directions.

    Each band is rotation-invariant, so the fit is exact up to float error; coefficients rotate as c' = Dᵀ c.
    """
    K = (degree + 1) ** 2
    v = torch.nn.functional.normalize(torch.randn(256, 3, generator=torch.Generator().manual_seed(0),
                                                  dtype=torch.float64), dim=-1)
    eye = torch.eye(K, dtype=torch.float64)

    def basis(d: Tensor) -> Tensor:  # [M,K]: Y_k(d) via eval_sh on one-hot coefficients
        return torch.stack([eval_sh(degree, d, eye[k][None, :, None].expand(d.shape[0], K, 3))[:, 0]
                            for k in range(K)], -1)

    Yv, Yr = basis(v), basis(v @ R.double())  # v @ R == (Rᵀ v) row-wise == R⁻¹ v
    D = torch.linalg.lstsq(Yv, Yr).solution.T  # Yr ≈ Yv Dᵀ
    return D


def transform(t: dict[str, Tensor], R: Tensor) -> dict[str, Tensor]:
    """Rotate raw splat tensors (means, quats, SH) by the proper rotation ``R`` [3,3]."""
    R = R.to(t["means"])
    out = dict(t)
    out["means"] = t["means"] @ R.T
    out["quats"] = _quat_mul(_rotmat_to_quat(R).to(t["quats"]).expand_as(t["quats"]), t["quats"])
    K = 1 + t["sh_rest"].shape[1]
    degree = int(round(math.sqrt(K))) - 1
    if degree > 0:
        D = sh_rotation(R.cpu(), degree).to(t["sh_rest"])  # colour'(v) = colour(R⁻¹ v) = Σ c_k (D Y(v))_k
        coeffs = torch.cat([t["sh_dc"][:, None], t["sh_rest"]], 1)  # [N,K,3]
        out["sh_rest"] = torch.einsum("kj,nkc->njc", D, coeffs)[:, 1:]
    return out


def _as_tensors(src) -> dict[str, Tensor]:
    t = src.export_tensors() if declares(src, GaussianSplats) else src
    need = ("means", "log_scales", "quats", "opacity_logits", "sh_dc")
    missing = [k for k in need if k not in t]
    if missing:
        raise ValueError(f"save_ply needs tensors {need} (+ optional sh_rest); missing {missing}")
    out = {k: t[k].detach().float().cpu() for k in need}
    n = out["means"].shape[0]
    out["sh_rest"] = t["sh_rest"].detach().float().cpu() if "sh_rest" in t else torch.zeros(n, 0, 3)
    return out


def save_ply(path: str | Path, gaussians_or_tensors, up: str = "y", pad_to_degree3: bool = True) -> int:
    """Write an INRIA-layout 3DGS PLY; returns the number of splats written.

    Args:
        gaussians_or_tensors: a Gaussians scene, or a dict with means [N,3], log_scales [N,3], quats [N,4] (wxyz),
            opacity_logits [N], sh_dc [N,3] and optionally sh_rest [N,K-1,3].
        up: "y" (ours, glTF), "z" or "-y" (see the module docstring).
        pad_to_degree3: zero-pad f_rest to 45 values (the INRIA SIBR viewer expects degree 3).
    Non-finite splats and splats with opacity below 1/255 are dropped.
    """
    t = transform(_as_tensors(gaussians_or_tensors), up_rotation(up)) if up != "y" else _as_tensors(
        gaussians_or_tensors)
    n = t["means"].shape[0]
    rest = t["sh_rest"]
    if pad_to_degree3 and rest.shape[1] < 15:
        rest = torch.cat([rest, rest.new_zeros(n, 15 - rest.shape[1], 3)], 1)
    f_rest = rest.permute(0, 2, 1).reshape(n, -1)  # channel-major
    cols = torch.cat([t["means"], torch.zeros(n, 3), t["sh_dc"], f_rest, t["opacity_logits"][:, None],
                      t["log_scales"], t["quats"]], 1)
    keep = torch.isfinite(cols).all(-1) & (t["opacity_logits"] >= _LOGIT_MIN_OPACITY)
    cols = cols[keep]
    names = (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)]
             + [f"f_rest_{i}" for i in range(f_rest.shape[1])] + ["opacity"]
             + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {cols.shape[0]}\n"
    header += "".join(f"property float {name}\n" for name in names) + "end_header\n"
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(cols.numpy().astype("<f4").tobytes())
    return int(cols.shape[0])


def read_ply_vertices(path: str | Path) -> dict[str, np.ndarray]:
    """The ``vertex`` element of a binary little-endian or ASCII PLY as {property: array} (scalar properties)."""
    with open(path, "rb") as fh:
        if fh.readline().strip() != b"ply":
            raise ValueError(f"{path}: not a PLY file")
        fmt, elements, current = None, [], None
        while True:
            line = fh.readline()
            if not line:
                raise ValueError(f"{path}: header has no end_header")
            words = line.decode("ascii").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "end_header":
                break
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                current = (words[1], int(words[2]), [])
                elements.append(current)
            elif words[0] == "property":
                if words[1] == "list":
                    raise ValueError(f"{path}: list properties are not supported")
                current[2].append((words[2], _PLY_TYPES[words[1]]))
        body = fh.read()
    if fmt not in ("binary_little_endian", "ascii"):
        raise ValueError(f"{path}: unsupported PLY format {fmt!r}")
    offset = 0
    for name, count, props in elements:
        dtype = np.dtype(props)
        if fmt == "ascii":
            if name != elements[0][0]:
                raise ValueError(f"{path}: ASCII PLY must have the vertex element first")
            rows = np.loadtxt(body.decode("ascii").splitlines()[:count], ndmin=2)
            return {p: rows[:, i].astype(np.dtype(t)) for i, (p, t) in enumerate(props)}
        if name == "vertex":
            arr = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
            return {p: np.array(arr[p]) for p, _ in props}
        offset += dtype.itemsize * count
    raise ValueError(f"{path}: no vertex element")


def load_ply(path: str | Path, up: str = "y") -> dict[str, Tensor]:
    """Read an INRIA-layout 3DGS PLY into raw tensors (the inverse of save_ply with the same ``up``).

    Returns means, log_scales, quats, opacity_logits, sh_dc [N,3] and sh_rest [N,K-1,3]; trailing all-zero
    padding bands of f_rest are kept (the degree is inferred from the f_rest count).
    """
    v = read_ply_vertices(path)

    def stack(names: list[str]) -> Tensor:
        return torch.as_tensor(np.stack([v[k] for k in names], -1).astype(np.float32))

    n_rest = sum(1 for k in v if k.startswith("f_rest_"))
    if n_rest % 3:
        raise ValueError(f"{path}: {n_rest} f_rest properties is not a multiple of 3")
    n = len(v["x"])
    rest = stack([f"f_rest_{i}" for i in range(n_rest)]) if n_rest else torch.zeros(n, 0)
    t = {"means": stack(["x", "y", "z"]), "log_scales": stack([f"scale_{i}" for i in range(3)]),
         "quats": stack([f"rot_{i}" for i in range(4)]), "opacity_logits": stack(["opacity"])[:, 0],
         "sh_dc": stack([f"f_dc_{i}" for i in range(3)]),
         "sh_rest": rest.reshape(n, 3, n_rest // 3).permute(0, 2, 1).contiguous()}
    return transform(t, up_rotation(up).T) if up != "y" else t


__all__ = ["UP_AXES", "up_rotation", "sh_rotation", "transform", "save_ply", "read_ply_vertices", "load_ply"]
