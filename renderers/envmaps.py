"""Environment maps: procedural ones shipped with the engine (no HDRI can be downloaded) and user files.

An environment map is an equirectangular (lat-long) image of *linear* radiance, [h, 2h, 3] float32, in the engine's
world (Y up). Direction d maps to texture coordinates (renderers/pbr.py uses the same mapping):

    u = atan2(d.x, −d.z) / 2π + ½,   v = acos(d.y) / π        (row 0 = straight up, column centre = −Z)

Procedural maps (``procedural(name)``; every one has a non-black ambient so no side of an object is unlit):
- "studio": grey gradient dome, a large warm key light (front-right, above), a cool fill (left) and a rim (back).
- "sky": blue sky gradient with a bright sun (elevation 50°) over a brown-grey ground.
- "rgb": three saturated coloured area lights (red, green, blue) 120° apart on a dim grey dome.
- "sunset": orange low sun, purple-blue sky, dark ground.
- "white": uniform radiance 1 (the white-furnace environment, for tests).
User files: Radiance .hdr (RGBE, flat or RLE scanlines; reader below), .exr (needs the optional OpenEXR package),
and 8-bit .png/.jpg (treated as sRGB and linearised).
"""

import math
import os

import numpy as np
import torch
from torch import Tensor

PROCEDURAL = ("studio", "sky", "rgb", "sunset", "white")


def directions(h: int, dtype=torch.float32, device="cpu") -> Tensor:
    """[h, 2h, 3] unit world directions at the texel centres of an equirect map."""
    w = 2 * h
    v = (torch.arange(h, dtype=dtype, device=device) + 0.5) / h
    u = (torch.arange(w, dtype=dtype, device=device) + 0.5) / w
    theta = v * math.pi  # from +Y
    phi = (u - 0.5) * 2 * math.pi  # 0 at −Z, increasing towards +X
    st, ct = torch.sin(theta)[:, None], torch.cos(theta)[:, None]
    return torch.stack([st * torch.sin(phi)[None], ct.expand(h, w), -st * torch.cos(phi)[None]], -1)


def texel_solid_angle(h: int, dtype=torch.float32, device="cpu") -> Tensor:
    """[h, 2h] solid angle of each equirect texel (sums to 4π)."""
    edges = torch.arange(h + 1, dtype=torch.float64) / h * math.pi
    band = (torch.cos(edges[:-1]) - torch.cos(edges[1:])) * (2 * math.pi / (2 * h))
    return band[:, None].expand(h, 2 * h).to(dtype=dtype, device=device).contiguous()


def _lobe(d: Tensor, azimuth_deg: float, elevation_deg: float, size_deg: float) -> Tensor:
    """A smooth light blob [h,w] centred at (azimuth from −Z towards +X, elevation), angular radius ~size."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    c = torch.tensor([math.cos(el) * math.sin(az), math.sin(el), -math.cos(el) * math.cos(az)], dtype=d.dtype)
    cos = (d * c).sum(-1)
    k = 1.0 / (1.0 - math.cos(math.radians(size_deg)))
    return torch.exp((cos - 1.0) * k)


def procedural(name: str, height: int = 64) -> Tensor:
    """A procedural environment [height, 2·height, 3] of linear radiance (see the module docstring)."""
    d = directions(height)
    y = d[..., 1:2]
    up = y.clamp_min(0)
    col = lambda *rgb: torch.tensor(rgb, dtype=torch.float32)  # noqa: E731
    match name:
        case "white":
            return torch.ones(height, 2 * height, 3)
        case "studio":
            env = 0.25 + 0.25 * up * col(1, 1, 1) + 0.05 * (1 - y.abs()) * col(1, 1, 1)
            env = env + 4.0 * _lobe(d, 40, 35, 25)[..., None] * col(1.0, 0.95, 0.85)
            env = env + 1.5 * _lobe(d, -70, 10, 30)[..., None] * col(0.8, 0.9, 1.0)
            env = env + 2.0 * _lobe(d, 170, 20, 15)[..., None] * col(1, 1, 1)
            return env
        case "sky":
            sky = (col(0.35, 0.55, 0.95) * (1 - up) + col(0.12, 0.3, 0.8) * up) * (y > 0)
            ground = col(0.25, 0.22, 0.18) * (y <= 0)
            return sky + ground + 30.0 * _lobe(d, 120, 50, 4)[..., None] * col(1.0, 0.95, 0.85) + 0.05
        case "rgb":
            env = 0.12 + 0.08 * up * col(1, 1, 1)
            for az, c in ((0, col(1.0, 0.15, 0.1)), (120, col(0.1, 1.0, 0.2)), (-120, col(0.15, 0.3, 1.0))):
                env = env + 4.0 * _lobe(d, az, 25, 30)[..., None] * c
            return env
        case "sunset":
            sky = (col(0.9, 0.45, 0.25) * (1 - up) ** 3 + col(0.25, 0.2, 0.5)) * (y > 0)
            ground = col(0.08, 0.06, 0.07) * (y <= 0)
            return sky + ground + 20.0 * _lobe(d, -60, 5, 6)[..., None] * col(1.0, 0.55, 0.2) + 0.04
        case _:
            raise ValueError(f"unknown procedural environment {name!r}; choose one of {', '.join(PROCEDURAL)} "
                             "or give an equirectangular .hdr/.exr/.png file")


# -- files --------------------------------------------------------------------------------------------------------
def read_hdr(path: str) -> np.ndarray:
    """Read a Radiance RGBE .hdr file → [h, w, 3] float32 linear radiance (flat or new-style RLE scanlines)."""
    with open(path, "rb") as f:
        data = f.read()
    if not (data.startswith(b"#?RADIANCE") or data.startswith(b"#?RGBE")):
        raise ValueError(f"{path} is not a Radiance .hdr file (missing the #?RADIANCE header)")
    pos = data.index(b"\n\n") + 2
    end = data.index(b"\n", pos)
    dims = data[pos:end].split()
    if len(dims) != 4 or dims[0] != b"-Y" or dims[2] != b"+X":
        raise ValueError(f"{path}: only the standard '-Y h +X w' orientation is supported, got {dims!r}")
    h, w = int(dims[1]), int(dims[3])
    buf = np.frombuffer(data, dtype=np.uint8, offset=end + 1)
    out = np.zeros((h, w, 4), dtype=np.uint8)
    i = 0
    for row in range(h):
        if 8 <= w < 32768 and buf[i] == 2 and buf[i + 1] == 2 and (buf[i + 2] << 8 | buf[i + 3]) == w:
            i += 4
            for ch in range(4):
                x = 0
                while x < w:
                    n = int(buf[i])
                    i += 1
                    if n > 128:
                        n -= 128
                        out[row, x:x + n, ch] = buf[i]
                        i += 1
                    else:
                        out[row, x:x + n, ch] = buf[i:i + n]
                        i += n
                    x += n
        else:
            out[row] = buf[i:i + 4 * w].reshape(w, 4)
            i += 4 * w
    e = out[..., 3].astype(np.int32)
    scale = np.where(e > 0, np.ldexp(1.0, e - 136), 0.0).astype(np.float32)
    return out[..., :3].astype(np.float32) * scale[..., None]


def write_hdr(path: str, img: np.ndarray) -> None:
    """Write [h, w, 3] linear radiance as a flat (uncompressed) Radiance .hdr."""
    img = np.asarray(img, dtype=np.float32).clip(0)
    m = img.max(-1)
    mant, exp = np.frexp(m)
    scale = np.where(m > 1e-32, mant * 256.0 / np.maximum(m, 1e-32), 0.0)
    rgbe = np.zeros(img.shape[:2] + (4,), dtype=np.uint8)
    rgbe[..., :3] = np.clip(img * scale[..., None], 0, 255).astype(np.uint8)
    rgbe[..., 3] = np.where(m > 1e-32, exp + 128, 0).astype(np.uint8)
    with open(path, "wb") as f:
        f.write(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n")
        f.write(f"-Y {img.shape[0]} +X {img.shape[1]}\n".encode())
        f.write(rgbe.tobytes())


def srgb_to_linear(x: Tensor) -> Tensor:
    """The inverse sRGB OETF."""
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def load(path_or_name: str, height: int = 64) -> Tensor:
    """A procedural name or an equirect file → [h, 2h, 3] linear radiance resampled to ``height`` rows."""
    if path_or_name in PROCEDURAL:
        return procedural(path_or_name, height)
    if not os.path.isfile(path_or_name):
        raise ValueError(f"environment {path_or_name!r} is neither a procedural map ({', '.join(PROCEDURAL)}) "
                         "nor an existing file")
    ext = os.path.splitext(path_or_name)[1].lower()
    if ext == ".hdr":
        img = torch.from_numpy(read_hdr(path_or_name))
    elif ext == ".exr":
        try:
            import OpenEXR  # noqa: PLC0415
        except ImportError:
            raise ValueError(f"reading {path_or_name} needs the OpenEXR package (pip install OpenEXR); or "
                             "convert it to .hdr") from None
        with OpenEXR.File(path_or_name) as f:
            img = torch.from_numpy(np.asarray(f.channels()["RGB"].pixels, dtype=np.float32)[..., :3].copy())
    elif ext in (".png", ".jpg", ".jpeg"):
        from PIL import Image  # noqa: PLC0415

        img = srgb_to_linear(torch.from_numpy(np.asarray(Image.open(path_or_name).convert("RGB"))).float() / 255)
    else:
        raise ValueError(f"unsupported environment file type {ext!r}; use .hdr, .exr or .png")
    if not torch.isfinite(img).all():
        raise ValueError(f"{path_or_name} contains NaN or infinite radiance")
    x = img.permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(x, size=(height, 2 * height), mode="area" if x.shape[-2] > height
                                        else "bilinear")
    return x[0].permute(1, 2, 0).clamp_min(0).contiguous()


__all__ = ["PROCEDURAL", "procedural", "load", "read_hdr", "write_hdr", "directions", "texel_solid_angle",
           "srgb_to_linear"]
