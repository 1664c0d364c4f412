"""PBR shading: Cook–Torrance GGX with the split-sum approximation plus Lambertian diffuse from an irradiance map
(renderers.md §3.3; Karis, "Real Shading in Unreal Engine 4", 2013). Everything is computed in torch at start-up:
no shipped tables, no CUDA.

Material (glTF metallic-roughness, conventions.md §3.1): albedo k_d (linear RGB), perceptual roughness r
(α = r²), metallic m. F0 = 0.04(1 − m) + m·k_d; the diffuse colour is k_d(1 − m).

    shaded(n, v) = k_d(1 − m)·E(n) + (F0·A(n·v, r) + B(n·v, r)) · L̃(R, r),   R = 2(n·v)n − v

- E(n) = (1/π) Σ_l L(l) max(n·l, 0) ΔΩ_l — the irradiance map (so a white Lambertian surface under a uniform
  environment of radiance 1 shades to exactly 1: the white furnace).
- L̃(R, r) = Σ_l L(l) D(r; R·h) max(R·l, 0) ΔΩ_l / Σ_l D(r; R·h) max(R·l, 0) ΔΩ_l with h = normalize(R + l) —
  the pre-filtered environment (N = V = R assumption), one equirect level per roughness: level 0 is the source map
  (r ≤ 0.08, mirror-like), levels 1..L−2 have r_i = 0.08 + 0.42·i/(L−2), the last r = 1; a lookup blends the two
  nearest levels (nvdiffrec's level mapping, renderers.md §3.3).
- (A, B): the BRDF lookup table over (n·v, r), averaged over Hammersley samples of h ~ GGX:
  l = 2(v·h)h − v, G_vis = G·(v·h)/((n·h)(n·v)), F_c = (1 − v·h)⁵, A += (1 − F_c)·G_vis, B += F_c·G_vis, with the
  height-correlated Smith G = 1/(1 + Λ(v) + Λ(l)), Λ = ½(√(1 + α² tan²θ) − 1).
- D(h) = α²/(π((n·h)²(α² − 1) + 1)²).

Environment maps are equirect (renderers/envmaps.py for the direction ↔ uv mapping); a rotation about +Y (radians)
turns the environment without recomputing anything. Shading is linear; ``linear_to_srgb`` is applied before the
guidance sees the image and on export.
"""

import functools
import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from renderers import envmaps
from renderers.envmaps import directions, texel_solid_angle

MIN_ROUGHNESS = 0.08


def linear_to_srgb(x: Tensor) -> Tensor:
    """The sRGB OETF on values clamped to [0, 1] (gradient-safe at 0)."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


def srgb_to_linear(x: Tensor) -> Tensor:
    """The inverse sRGB OETF."""
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def ggx_d(n_dot_h: Tensor, alpha: Tensor) -> Tensor:
    """GGX normal distribution D(h) for α = r²."""
    a2 = alpha * alpha
    return a2 / (math.pi * ((n_dot_h * n_dot_h) * (a2 - 1) + 1).square().clamp_min(1e-12))


def smith_lambda(cos: Tensor, alpha: Tensor) -> Tensor:
    """Λ(θ) = ½(√(1 + α² tan²θ) − 1) of the height-correlated Smith masking function."""
    c2 = cos.clamp(1e-6, 1.0).square()
    return 0.5 * (torch.sqrt(1 + alpha * alpha * (1 - c2) / c2) - 1)


def _hammersley(n: int, dtype=torch.float64) -> tuple[Tensor, Tensor]:
    i = torch.arange(n, dtype=torch.int64)
    bits = i.clone()
    rev = torch.zeros_like(i)
    for _ in range(32):  # radical inverse in base 2
        rev = (rev << 1) | (bits & 1)
        bits = bits >> 1
    return (i.to(dtype) + 0.5) / n, rev.to(dtype) / 2.0**32


@functools.cache
def _brdf_lut_cpu(size: int, samples: int) -> Tensor:
    nv = (torch.arange(size, dtype=torch.float64) + 0.5) / size  # columns
    r = (torch.arange(size, dtype=torch.float64) + 0.5) / size  # rows
    return torch.stack(brdf_integrals(nv[None, :].expand(size, size), r[:, None].expand(size, size), samples),
                       -1).float()


def brdf_integrals(n_dot_v: Tensor, roughness: Tensor, samples: int = 1024) -> tuple[Tensor, Tensor]:
    """Split-sum scale A and bias B for matching arrays of n·v and r (importance-sampled, float64)."""
    nv = n_dot_v.double().clamp(1e-4, 1.0)[..., None]
    alpha = roughness.double().clamp_min(1e-3).square()[..., None]
    xi1, xi2 = _hammersley(samples)
    phi = 2 * math.pi * xi1
    cos_h = torch.sqrt((1 - xi2) / (1 + (alpha * alpha - 1) * xi2))
    sin_h = torch.sqrt((1 - cos_h * cos_h).clamp_min(0))
    hx, hz = sin_h * torch.cos(phi), cos_h  # the y component drops out: v lies in the xz plane
    vx, vz = torch.sqrt(1 - nv * nv), nv
    v_dot_h = vx * hx + vz * hz
    lz = 2 * v_dot_h * hz - vz  # n·l
    valid = (lz > 0) & (v_dot_h > 0)
    g = 1.0 / (1 + smith_lambda(nv, alpha) + smith_lambda(lz, alpha))
    g_vis = torch.where(valid, g * v_dot_h / (hz * nv), torch.zeros_like(g))
    fc = (1 - v_dot_h.clamp(0, 1)) ** 5
    return ((1 - fc) * g_vis).mean(-1), (fc * g_vis).mean(-1)


_LUT_ON_DEVICE: dict[tuple[int, int, str], Tensor] = {}


def brdf_lut(size: int = 32, samples: int = 1024, device="cpu") -> Tensor:
    """[size, size, 2] (A, B); columns n·v, rows roughness, both at texel centres (computed once per size, and
    uploaded once per device: ``shade`` asks for it every call, which must not be a host-to-device copy each time).
    Treat the returned tensor as read-only: it is shared."""
    key = (size, samples, str(torch.device(device)))
    lut = _LUT_ON_DEVICE.get(key)
    if lut is None:
        lut = _LUT_ON_DEVICE[key] = _brdf_lut_cpu(size, samples).to(device)
    return lut


def lookup_brdf(lut: Tensor, n_dot_v: Tensor, roughness: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear (A, B) [...] from the LUT for n·v and r [...]."""
    grid = torch.stack([n_dot_v * 2 - 1, roughness * 2 - 1], -1).reshape(1, 1, -1, 2)
    ab = F.grid_sample(lut.permute(2, 0, 1)[None].to(grid.dtype), grid, mode="bilinear", padding_mode="border",
                       align_corners=False)
    ab = ab[0, :, 0].t().reshape(*n_dot_v.shape, 2)
    return ab[..., 0], ab[..., 1]


def dir_to_uv(d: Tensor) -> Tensor:
    """Equirect texture coordinates [...,2] in [0,1] of unit directions [...,3] (renderers/envmaps.py)."""
    u = torch.atan2(d[..., 0], -d[..., 2]) / (2 * math.pi) + 0.5
    v = torch.acos(d[..., 1].clamp(-1 + 1e-6, 1 - 1e-6)) / math.pi
    return torch.stack([u, v], -1)


def rotate_y(d: Tensor, angle: Tensor | float) -> Tensor:
    """Rotate directions [...,3] by ``angle`` radians about +Y (scalar or broadcastable [...])."""
    a = torch.as_tensor(angle, dtype=d.dtype, device=d.device)
    c, s = torch.cos(a), torch.sin(a)
    return torch.stack([c * d[..., 0] + s * d[..., 2], d[..., 1], -s * d[..., 0] + c * d[..., 2]], -1)


def _prefilter(src: Tensor, out_h: int, roughness: float, chunk: int = 512) -> Tensor:
    """Pre-filter ``src`` [hs,2hs,3] with the GGX lobe of ``roughness`` (N = V = R) onto [out_h, 2 out_h, 3]."""
    hs = src.shape[0]
    ls = directions(hs).reshape(-1, 3)
    dw = texel_solid_angle(hs).reshape(-1)
    L = src.float().reshape(-1, 3)
    R = directions(out_h).reshape(-1, 3)
    alpha = torch.tensor(roughness**2)
    out = []
    for Rc in R.split(chunk):
        rl = Rc @ ls.T  # [o, s]
        h_norm = torch.sqrt((2 + 2 * rl).clamp_min(1e-12))
        rh = (1 + rl) / h_norm  # R·normalize(R + l)
        w = ggx_d(rh, alpha) * rl.clamp_min(0) * dw  # float32: the weights are normalised below
        out.append((w @ L) / w.sum(-1, keepdim=True).clamp_min(1e-30))
    return torch.cat(out).reshape(out_h, 2 * out_h, 3).float()


def _irradiance(src: Tensor, out_h: int) -> Tensor:
    hs = src.shape[0]
    ls = directions(hs, torch.float64).reshape(-1, 3)
    dw = texel_solid_angle(hs, torch.float64).reshape(-1)
    n = directions(out_h, torch.float64).reshape(-1, 3)
    w = (n @ ls.T).clamp_min(0) * dw / math.pi
    return (w @ src.double().reshape(-1, 3)).reshape(out_h, 2 * out_h, 3).float()


def _downsample(env: Tensor, h: int) -> Tensor:
    if env.shape[0] == h:
        return env
    x = env.permute(2, 0, 1)[None]
    return F.interpolate(x, size=(h, 2 * h), mode="area")[0].permute(1, 2, 0)


def _pad_wrap(img: Tensor) -> Tensor:
    """[h,w,3] → [1,3,h,w+2] with one wrapped column each side (u is periodic)."""
    return torch.cat([img[:, -1:], img, img[:, :1]], 1).permute(2, 0, 1)[None].contiguous()


class EnvironmentLight:
    """An equirect environment with its pre-filtered specular levels and irradiance map (no gradients).

    Args:
        radiance: [h, 2h, 3] linear radiance (renderers/envmaps.py).
        levels: number L of specular levels (≥ 3).
        irradiance_height: rows of the irradiance map.
    """

    def __init__(self, radiance: Tensor, levels: int = 6, irradiance_height: int = 16, name: str = ""):
        if radiance.ndim != 3 or radiance.shape[1] != 2 * radiance.shape[0] or radiance.shape[2] != 3:
            raise ValueError(f"an environment map must be [h, 2h, 3], got {tuple(radiance.shape)}")
        if levels < 3:
            raise ValueError(f"need at least 3 specular levels, got {levels}")
        self.name = name
        radiance = radiance.detach().float().cpu()
        h = radiance.shape[0]
        self.roughness = ([MIN_ROUGHNESS] + [MIN_ROUGHNESS + 0.42 * i / (levels - 2) for i in range(1, levels - 1)]
                          + [1.0])
        self.specular = [radiance]
        for i in range(1, levels):
            out_h = max(4, h >> i)
            src = _downsample(radiance, min(h, max(8, 2 * out_h), 32))
            self.specular.append(_prefilter(src, out_h, self.roughness[i]))
        self.irradiance = _irradiance(_downsample(radiance, min(h, 32)), irradiance_height)
        self._padded = [_pad_wrap(s) for s in self.specular]
        self._irr_padded = _pad_wrap(self.irradiance)

    def to(self, device) -> "EnvironmentLight":
        self._padded = [p.to(device) for p in self._padded]
        self._irr_padded = self._irr_padded.to(device)
        return self

    @staticmethod
    def _sample(padded: Tensor, d: Tensor) -> Tensor:
        uv = dir_to_uv(d)
        w = padded.shape[-1] - 2
        u = (uv[..., 0] * w + 1) / (w + 2)
        grid = torch.stack([u * 2 - 1, uv[..., 1] * 2 - 1], -1).reshape(1, 1, -1, 2)
        out = F.grid_sample(padded.to(grid.dtype), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out[0, :, 0].t().reshape(*d.shape[:-1], 3)

    def level(self, roughness: Tensor) -> Tensor:
        """Fractional specular level for perceptual roughness (nvdiffrec's mapping)."""
        L = len(self.roughness)
        lo = (roughness.clamp(MIN_ROUGHNESS, 0.5) - MIN_ROUGHNESS) / 0.42 * (L - 2)
        hi = (roughness.clamp(0.5, 1.0) - 0.5) / 0.5 + (L - 2)
        return torch.where(roughness < 0.5, lo, hi)

    def specular_radiance(self, R: Tensor, roughness: Tensor, rotation: float | Tensor = 0.0) -> Tensor:
        """L̃(R, r) [...,3] for reflection directions R [...,3] and roughness [...] (levels blended linearly)."""
        d = rotate_y(R, -torch.as_tensor(rotation, dtype=R.dtype))
        lvl = self.level(roughness)
        out = torch.zeros(*R.shape[:-1], 3, dtype=R.dtype, device=R.device)
        for i, pad in enumerate(self._padded):
            w = (1 - (lvl - i).abs()).clamp_min(0)
            if bool((w > 0).any()):
                out = out + w[..., None] * self._sample(pad, d)
        return out

    def irradiance_at(self, n: Tensor, rotation: float | Tensor = 0.0) -> Tensor:
        """E(n) [...,3]: cosine-weighted radiance / π at unit normals [...,3]."""
        return self._sample(self._irr_padded, rotate_y(n, -torch.as_tensor(rotation, dtype=n.dtype)))

    def radiance(self, d: Tensor, rotation: float | Tensor = 0.0) -> Tensor:
        """Unfiltered L(d) [...,3] (for backgrounds)."""
        return self._sample(self._padded[0], rotate_y(d, -torch.as_tensor(rotation, dtype=d.dtype)))


@functools.cache
def environment(name: str, height: int) -> EnvironmentLight:
    """A pre-filtered environment (procedural name or equirect file, renderers/envmaps.py), built once per
    (name, height) in a process."""
    return EnvironmentLight(envmaps.load(name, height), name=os.path.basename(name))


def shade(albedo: Tensor, roughness: Tensor, metallic: Tensor, normal: Tensor, view: Tensor,
          env: EnvironmentLight, rotation: float | Tensor = 0.0, lut: Tensor | None = None) -> dict[str, Tensor]:
    """Split-sum image-based lighting of a surface point.

    Args:
        albedo: [...,3] linear k_d; roughness, metallic: [...,1]; normal: [...,3] unit; view: [...,3] unit vector
            from the surface towards the camera.
    Returns:
        {"rgb": linear radiance [...,3], "diffuse": [...,3], "specular": [...,3]}.
    """
    lut = brdf_lut(device=albedo.device) if lut is None else lut
    n_dot_v = (normal * view).sum(-1, keepdim=True)
    R = 2 * n_dot_v * normal - view
    nv = n_dot_v.clamp(1e-4, 1.0)
    f0 = 0.04 * (1 - metallic) + metallic * albedo
    A, B = lookup_brdf(lut, nv[..., 0], roughness[..., 0])
    spec = (f0 * A[..., None] + B[..., None]) * env.specular_radiance(R, roughness[..., 0], rotation)
    diff = albedo * (1 - metallic) * env.irradiance_at(normal, rotation)
    return {"rgb": diff + spec, "diffuse": diff, "specular": spec}


__all__ = ["EnvironmentLight", "environment", "shade", "brdf_lut", "brdf_integrals", "lookup_brdf", "linear_to_srgb",
           "srgb_to_linear", "ggx_d", "smith_lambda", "dir_to_uv", "rotate_y", "MIN_ROUGHNESS"]
