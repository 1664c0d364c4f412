"""The built-in shapes world: coloured primitives with canonical, documented geometry, and their ground truth.

Everything here is independent of the engine's renderers, so a result can be checked against it.

Geometry (Y-up, metres, centred at the origin):
- cube: edge 0.8, axis-aligned
- sphere: radius 0.5
- cylinder: radius 0.4, height 0.8, axis Y
- cone: base radius 0.45, height 0.9, axis Y, apex up at y = +0.45, base at y = -0.45
- torus: major radius 0.35, minor radius 0.15, in the XZ plane

Albedo (sRGB 0-255): red (200,30,30), green (30,160,60), blue (40,70,200), yellow (230,200,40),
white (235,235,235), orange (235,120,30).

Shading: pixel = albedo/255 * (0.6 + 0.4 * max(0, n . l)), l = normalize(0.4, 0.8, 0.45) (a soft key light from
above-front-right plus ambient), composited over a white background. Pixels are the mean of 2x2 sub-pixel rays.
Rendering is sphere tracing of exact signed distance functions.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from foundation.cameras import Cameras

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30),
    "green": (30, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (230, 200, 40),
    "white": (235, 235, 235),
    "orange": (235, 120, 30),
}
ALBEDO = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255.0
"""[6,3] the colours' albedos in [0,1], in COLOURS' order (index i is the i-th colour name)."""
SHAPES = ("cube", "sphere", "cylinder", "cone", "torus")
LIGHT_DIR = (0.4, 0.8, 0.45)
AMBIENT, DIFFUSE = 0.6, 0.4
BOUND_RADIUS = 0.75  # every shape lies inside this sphere


def _polygon_sdf_2d(q: Tensor, verts: list[tuple[float, float]]) -> Tensor:
    """Signed distance from points q [...,2] to a convex polygon given counter-clockwise (negative inside)."""
    v = torch.tensor(verts, dtype=q.dtype, device=q.device)
    e = torch.roll(v, -1, 0) - v  # [K,2] edges
    w = q[..., None, :] - v  # [...,K,2]
    h = ((w * e).sum(-1) / (e * e).sum(-1)).clamp(0, 1)
    d = (w - e * h[..., None]).norm(dim=-1).amin(-1)
    # inside iff on the left of every edge (counter-clockwise order)
    cross = e[..., 0] * w[..., 1] - e[..., 1] * w[..., 0]
    inside = (cross >= 0).all(-1)
    return torch.where(inside, -d, d)


def sdf(shape: str, p: Tensor) -> Tensor:
    """Exact signed distance [...] of the canonical ``shape`` at points p [...,3]."""
    match shape:
        case "cube":
            q = p.abs() - 0.4
            return q.clamp_min(0).norm(dim=-1) + q.amax(-1).clamp_max(0)
        case "sphere":
            return p.norm(dim=-1) - 0.5
        case "cylinder":
            r = p[..., [0, 2]].norm(dim=-1)
            d = torch.stack([r - 0.4, p[..., 1].abs() - 0.4], -1)
            return d.clamp_min(0).norm(dim=-1) + d.amax(-1).clamp_max(0)
        case "cone":
            q = torch.stack([p[..., [0, 2]].norm(dim=-1), p[..., 1]], -1)
            return _polygon_sdf_2d(q, [(-0.45, -0.45), (0.45, -0.45), (0.0, 0.45)])
        case "torus":
            q = torch.stack([p[..., [0, 2]].norm(dim=-1) - 0.35, p[..., 1]], -1)
            return q.norm(dim=-1) - 0.15
        case _:
            raise ValueError(f"unknown shape {shape!r}; the shapes world has {', '.join(SHAPES)}")


def inside(shape: str, p: Tensor) -> Tensor:
    """Occupancy (bool) of the canonical shape at points p [...,3]."""
    return sdf(shape, p) <= 0


def _sphere_trace(shape: str, o: Tensor, d: Tensor, iters: int = 96) -> tuple[Tensor, Tensor]:
    """Hit mask and hit points for rays o, d [R,3] against the shape's SDF."""
    # start on the bounding sphere to save iterations
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - BOUND_RADIUS ** 2
    disc = b * b - c
    hit_bound = disc > 0
    t = (-b - disc.clamp_min(0).sqrt()).clamp_min(0)
    t_far = -b + disc.clamp_min(0).sqrt()
    idx = hit_bound.nonzero()[:, 0]  # only the rays still marching are evaluated
    for _ in range(iters):
        if idx.numel() == 0:
            break
        dist = sdf(shape, o[idx] + t[idx, None] * d[idx])
        t[idx] = t[idx] + dist
        idx = idx[(dist > 1e-5) & (t[idx] < t_far[idx])]
    p = o + t[:, None] * d
    hit = hit_bound & (sdf(shape, p).abs() < 1e-3) & (t < t_far + 1e-3)
    return hit, p


def _normals(shape: str, p: Tensor, h: float = 1e-4) -> Tensor:
    offs = torch.eye(3, dtype=p.dtype, device=p.device) * h
    g = torch.stack([sdf(shape, p + offs[i]) - sdf(shape, p - offs[i]) for i in range(3)], -1)
    return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@dataclass
class ShapeRender:
    """Colour-independent renders of a shape: coverage [C,H,W] and coverage-weighted shading [C,H,W]."""

    coverage: Tensor
    shaded: Tensor

    def colourise(self, colour: str, background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Tensor:
        """[C,H,W,3] image in [0,1] for an albedo from COLOURS."""
        if colour not in COLOURS:
            raise ValueError(f"unknown colour {colour!r}; the shapes world has {', '.join(COLOURS)}")
        alb = torch.tensor(COLOURS[colour], dtype=torch.float32) / 255.0
        bg = torch.tensor(background, dtype=torch.float32)
        return self.shaded[..., None] * alb + (1 - self.coverage[..., None]) * bg


def render_shape(shape: str, cams: Cameras, supersample: int = 2, chunk: int = 8) -> ShapeRender:
    """Ground-truth renders of a canonical shape from ``cams`` (CPU, no gradient)."""
    H, W, s = cams.height, cams.width, supersample
    hi = Cameras(cams.c2w.float().cpu(), cams.fovy.float().cpu(), W * s, H * s, cams.azimuth.cpu(),
                 cams.elevation.cpu(), cams.distance.cpu())
    light = torch.tensor(LIGHT_DIR)
    light = light / light.norm()
    covs, shades = [], []
    with torch.no_grad():
        for i in range(0, len(hi), chunk):
            o, d = hi[i:i + chunk].rays()
            shp = o.shape[:-1]
            hit, p = _sphere_trace(shape, o.reshape(-1, 3), d.reshape(-1, 3))
            n = _normals(shape, p)
            shade = (AMBIENT + DIFFUSE * (n @ light).clamp_min(0)) * hit
            cov = hit.float().reshape(shp)
            shade = shade.reshape(shp)
            pool = torch.nn.functional.avg_pool2d
            covs.append(pool(cov[:, None], s)[:, 0])
            shades.append(pool(shade[:, None], s)[:, 0])
    return ShapeRender(torch.cat(covs), torch.cat(shades))


def render_ground_truth(shape: str, colour: str, cams: Cameras) -> tuple[Tensor, Tensor]:
    """rgb [C,H,W,3] on white and alpha [C,H,W,1] of a coloured shape."""
    r = render_shape(shape, cams)
    return r.colourise(colour), r.coverage[..., None]


def parse_prompt(prompt: str) -> tuple[str | None, str | None]:
    """(colour, shape) named in a prompt; either may be None. Raises ValueError naming the vocabulary when the
    prompt names neither, or names two different colours or shapes."""
    words = [w.strip(".,;:!?\"'()").lower() for w in prompt.split()]
    words = [w[:-1] if w.endswith("s") and w[:-1] in SHAPES else w for w in words]  # "cubes" -> "cube"
    colours = sorted({w for w in words if w in COLOURS})
    shapes = sorted({w for w in words if w in SHAPES})
    if len(colours) > 1 or len(shapes) > 1:
        raise ValueError(f"the shapes world serves one colour and one shape per prompt; {prompt!r} names "
                         f"{', '.join(colours + shapes)}")
    if not colours and not shapes:
        raise ValueError(f"the shapes prior knows no word of {prompt!r}. Vocabulary: colours "
                         f"{', '.join(COLOURS)}; shapes {', '.join(SHAPES)} (e.g. \"a red cube\")")
    return (colours[0] if colours else None), (shapes[0] if shapes else None)


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB between images in [0,1]."""
    mse = ((a.float() - b.float()) ** 2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def mask_iou(a: Tensor, b: Tensor, threshold: float = 0.5) -> float:
    """IoU of the masks alpha > threshold."""
    ma, mb = a > threshold, b > threshold
    union = (ma | mb).sum().item()
    return (ma & mb).sum().item() / union if union else 1.0
