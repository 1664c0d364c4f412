"""DreamMat's light- and geometry-aware ControlNet condition (Zhang et al., "DreamMat", SIGGRAPH 2024): per view, the
inverse distance, the camera-space normal and six white-albedo renders under the view's own lighting, 22 channels
(guidance/priors/controlnet.py documents the layout the ControlNet prior takes). Rendered by the mesh scene
(renderers/mesh.py) and the material scene (renderers/material.py) from their own surface points.
"""

import torch
from torch import Tensor

from foundation.cameras import Cameras
from renderers import pbr

CONTROL_MATERIALS = ((0.0, 0.08), (0.0, 0.5), (0.0, 1.0), (1.0, 0.08), (1.0, 0.5), (1.0, 1.0))
"""(metallic, roughness) of the six light renders in the ControlNet condition (DreamMat's {0,1} x {0,0.5,1}; our
GGX's roughness floor is 0.08)."""
CONTROL_CHANNELS = 4 + 3 * len(CONTROL_MATERIALS)


@torch.no_grad()
def condition_maps(x: Tensor, n: Tensor, view: Tensor, idx: Tensor, cams: Cameras, size: tuple[int, int, int],
                   env: str, rotation: float, env_height: int = 32, shade=None) -> Tensor:
    """DreamMat's light- and geometry-aware ControlNet condition [C,H,W,22] of the current geometry, channels-last,
    at the render's resolution, every channel in [0,1] and 0 on the background:

    - 0: inverse camera distance, per image mapped to [0.1, 1] over the foreground (nearest = 1);
    - 1–3: the shading normal in camera space (OpenGL: +X right, +Y up, +Z towards the viewer) as (n + 1)/2;
    - 4–21: six sRGB renders of the geometry with white albedo under the render's own environment ``env`` and
      ``rotation``, for (metallic, roughness) in ``CONTROL_MATERIALS`` order, 3 channels each.

    Args: the covered pixels' world points x [P,3], unit normals n [P,3] (facing the camera), unit view vectors
    [P,3], flat pixel indices idx [P] into C·H·W. ``shade(albedo, roughness, metallic, n, view)`` -> linear RGB [P,3]
    replaces the environment ``env``/``rotation`` lighting when a scene lights its views otherwise (the material
    scene: exposure-scaled, tilted environment plus a sun, per view).
    """
    C, H, W = size
    out = x.new_zeros(C * H * W, CONTROL_CHANNELS)
    cam = idx // (H * W)
    dist = (x - cams.position.to(x)[cam]).norm(dim=-1)
    inv = 1.0 / dist.clamp_min(1e-6)
    lo = torch.full((C,), float("inf"), device=x.device).scatter_reduce(0, cam, inv, "amin")
    hi = torch.zeros(C, device=x.device).scatter_reduce(0, cam, inv, "amax")
    out[idx, 0] = 0.1 + 0.9 * (inv - lo[cam]) / (hi[cam] - lo[cam]).clamp_min(1e-6)
    w2c = torch.linalg.inv(cams.c2w.to(x))[:, :3, :3]
    out[idx, 1:4] = (torch.einsum("pij,pj->pi", w2c[cam], n) + 1) / 2
    if shade is None:
        light = pbr.environment(env, env_height).to(x.device)
        shade = lambda a, r, m, nn_, v: pbr.shade(a, r, m, nn_, v, light, rotation)["rgb"]  # noqa: E731
    ones = torch.ones_like(x[:, :1])
    for k, (m, r) in enumerate(CONTROL_MATERIALS):
        lin = shade(ones.expand(-1, 3), ones * r, ones * m, n, view)
        out[idx, 4 + 3 * k:7 + 3 * k] = pbr.linear_to_srgb(lin).clamp(0, 1)
    return out.view(C, H, W, CONTROL_CHANNELS)


__all__ = ["condition_maps", "CONTROL_MATERIALS", "CONTROL_CHANNELS"]
