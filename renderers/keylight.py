"""The shapes world's fixed key light, applied to a render's albedo so that training sees what the exemplars show.

The shapes prior's exemplars (foundation/shapes.py) are shaded: pixel = albedo·(k_a + k_d·max(0, n·l)) with k_a = 0.6,
k_d = 0.4 and a fixed directional light l. A scene trained on them with albedo-only renders must bake that shading
into its colour field, and the exported baseColor then carries it (issue #17: darker, and a lighter bottom face).
Rendering every view under the same light makes the true albedo the only colour that explains every view (the
"light model in training" direction of DreamFusion §3.1 / DreamMat, with the prior's own light instead of a random
one).

Shading is per pixel, from normals of the rendered depth map (cheap: no field gradients), and the shading factor is
detached, so the light changes what the colour field must learn but never pulls on the geometry.
"""

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from foundation import shapes
from foundation.cameras import Cameras

LIGHTS = ("none", "shapes")


def depth_normals(cams: Cameras, depth: Float[Tensor, "C H W 1"],
                  hit: Float[Tensor, "C H W 1"]) -> Float[Tensor, "C H W 3"]:
    """World normals [C,H,W,3] of the surface seen in a ray-distance depth map, facing the camera.

    Each axis takes the one-sided difference (forward or backward) whose neighbour is also covered and whose jump is
    smaller, so silhouettes and depth discontinuities (a torus's hole) do not bend the normals; pixels with no usable
    neighbour along an axis face the camera."""
    o, d = cams.rays()
    d = d.to(depth)
    p = o.to(depth) + d * depth
    m = hit.to(torch.bool)

    def diff(axis: int) -> tuple[Tensor, Tensor]:
        fwd = torch.roll(p, -1, axis) - p
        bwd = p - torch.roll(p, 1, axis)
        ok_f = torch.roll(m, -1, axis)
        ok_b = torch.roll(m, 1, axis)
        n = p.shape[axis]
        edge = torch.arange(n, device=p.device)
        shape = [1, 1, 1, 1]
        shape[axis] = n
        ok_f = ok_f & (edge != n - 1).view(shape)
        ok_b = ok_b & (edge != 0).view(shape)
        use_f = ok_f & (~ok_b | (fwd.norm(dim=-1, keepdim=True) <= bwd.norm(dim=-1, keepdim=True)))
        out = torch.where(use_f, fwd, torch.where(ok_b, bwd, torch.zeros_like(fwd)))
        return out, ok_f | ok_b

    dx, okx = diff(2)
    dy, oky = diff(1)
    n = F.normalize(torch.linalg.cross(dx, -dy, dim=-1), dim=-1)
    n = torch.where((n * d).sum(-1, keepdim=True) > 0, -n, n)
    n = torch.where(okx & oky, n, -d)
    return torch.where(m, n, torch.zeros_like(n))


def key_light_factor(normal: Float[Tensor, "C H W 3"]) -> Float[Tensor, "C H W 1"]:
    """k_a + k_d·max(0, n·l) with the shapes world's constants and light direction."""
    light = torch.tensor(shapes.LIGHT_DIR, dtype=normal.dtype, device=normal.device)
    light = light / light.norm()
    return shapes.AMBIENT + shapes.DIFFUSE * (normal * light).sum(-1, keepdim=True).clamp_min(0)


def shade_under_key_light(cams: Cameras, albedo: Float[Tensor, "C H W 3"], alpha: Float[Tensor, "C H W 1"],
                          depth: Float[Tensor, "C H W 1"]) -> tuple[Tensor, Tensor]:
    """(premultiplied shaded colour [C,H,W,3], normals [C,H,W,3]) of a premultiplied ``albedo`` under the key light;
    the shading factor is detached (see the module docstring)."""
    with torch.no_grad():
        n = depth_normals(cams, depth, alpha > 0.5)
        k = key_light_factor(n)
    return albedo * k, n


__all__ = ["LIGHTS", "depth_normals", "key_light_factor", "shade_under_key_light"]
