"""Reference renders of the shapes world (foundation/shapes.py): its primitives as triangle meshes, and
colour-independent PBR renders of a mesh with a constant dielectric material, from which the image of any albedo
follows in closed form. The light-aware shapes prior (guidance/priors/shapes.py) builds its exemplars from them, and
the texture report (engine/texture.py) its held-out relighting reference.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from foundation.cameras import Cameras
from renderers import pbr
from renderers.kernels import raster as K
from renderers.mesh import corner_normals, projection


def primitive_mesh(shape: str) -> tuple[Tensor, Tensor]:
    """Triangle mesh (vertices [V,3], faces [F,3]) of a shapes-world primitive at its canonical size and pose
    (foundation/shapes.py: Y-up, centred at the origin)."""
    import numpy as np
    import trimesh

    to_y = trimesh.transformations.rotation_matrix(-math.pi / 2, [1, 0, 0])  # +Z axis -> +Y
    match shape:
        case "cube":
            m = trimesh.creation.box(extents=(0.8, 0.8, 0.8))
        case "sphere":
            m = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
        case "cylinder":
            m = trimesh.creation.cylinder(radius=0.4, height=0.8, sections=48).apply_transform(to_y)
        case "cone":
            m = trimesh.creation.cone(radius=0.45, height=0.9, sections=48).apply_transform(to_y)
            m.apply_translation([0, -0.45, 0])
        case "torus":
            m = trimesh.creation.torus(major_radius=0.35, minor_radius=0.15, major_sections=48,
                                       minor_sections=16).apply_transform(to_y)
        case _:
            raise ValueError(f"unknown shape {shape!r}")
    return torch.from_numpy(np.asarray(m.vertices, dtype=np.float32)), torch.from_numpy(np.asarray(m.faces))


@torch.no_grad()
def render_constant_dielectric(v: Tensor, f: Tensor, cams: Cameras, env: str, rotation: float, roughness: float,
                               env_height: int = 32, supersample: int = 2) -> dict[str, Tensor]:
    """Colour-independent PBR renders of a mesh with a constant dielectric (metallic 0) material:
    coverage [C,H,W,1], irradiance E [C,H,W,3] and specular S [C,H,W,3], so that the sRGB image of albedo k_d
    over background bg is linear_to_srgb(k_d·E + S)·cov + (1 − cov)·bg (evaluated per sub-pixel, then averaged,
    is approximated here by shading the averaged terms). Used by the light-aware shapes prior and as ground truth.
    """
    s = supersample
    hi = Cameras(cams.c2w, cams.fovy, cams.width * s, cams.height * s, cams.azimuth, cams.elevation, cams.distance)
    C, H, W = len(hi), hi.height, hi.width
    pos = torch.einsum("cij,vj->cvi", projection(hi), F.pad(v, (0, 1), value=1.0))
    rast = K.rasterize("torch", pos, f, (H, W))
    mask = rast[..., 3:4] > 0
    tri_c = torch.arange(f.shape[0] * 3).view(-1, 3)
    maps = K.interpolate("torch", torch.cat([v[f.reshape(-1)], corner_normals(v, f, 45.0)], -1), rast, tri_c)
    idx = mask.reshape(-1).nonzero()[:, 0]
    flat = maps.reshape(-1, 6)[idx]
    x, n = flat[:, :3], F.normalize(flat[:, 3:], dim=-1)
    view = F.normalize(hi.position[idx // (H * W)] - x, dim=-1)
    n = torch.where((n * view).sum(-1, keepdim=True) < 0, -n, n)
    light = pbr.environment(env, env_height)
    ones = torch.ones(x.shape[0], 1)
    sh = pbr.shade(ones.expand(-1, 3), ones * roughness, ones * 0, n, view, light, rotation)
    out = {}
    for name, vals in (("E", sh["diffuse"]), ("S", sh["specular"]), ("coverage", ones)):
        img = torch.zeros(C * H * W, vals.shape[-1]).index_put((idx,), vals).view(C, H, W, -1)
        out[name] = F.avg_pool2d(img.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1)
    cov = out["coverage"].clamp_min(1e-6)
    out["E"], out["S"] = out["E"] / cov, out["S"] / cov  # shading of the covered part of each pixel
    return out


@torch.no_grad()
def render_constant_material(v: Tensor, f: Tensor, cams: Cameras, env: str, rotation: float,
                             albedos_linear: Tensor, roughness: float, metallic: float = 0.0,
                             background: Tensor | None = None) -> Tensor:
    """sRGB images [K,C,H,W,3] of the mesh with each of K constant materials (linear albedos [K,3], one roughness
    and metallic) under ``env`` at ``rotation`` radians, over ``background`` (white by default), rendered by the
    mesh renderer's own path (renderers/mesh.py ``Mesh.render``: one shading sample per pixel, corner normals at
    its crease angle, analytic silhouette antialiasing). A training render of the same material is then the same
    image to float rounding, so an exemplar prior built from these has the true material as an exact fixed point
    (``render_constant_dielectric``'s supersampled, averaged terms differ from it by ~0.3% and at the silhouette,
    enough for SDS with Adam to walk the material along its near-flat roughness/albedo valley)."""
    from renderers.mesh import Mesh, MeshConfig

    cfg = MeshConfig(mode="fixed", material="uv", texture_resolution=1, mipmap=False, roughness_range=(0.0, 1.0),
                     max_metallic=1.0, envs=(env,), eval_env=env)
    mesh = Mesh.from_arrays(cfg, v, f, torch.zeros(len(v), 2), torch.Generator().manual_seed(0)).eval()
    mesh.set_lighting(env, rotation)
    bg = (torch.ones(3) if background is None else background).view(1, 1, 1, 3)
    rm = torch.logit(torch.tensor([roughness, metallic], dtype=torch.float64).clamp(1e-9, 1 - 1e-6)).float()
    out = []
    for alb in albedos_linear:
        mesh.tex_albedo.copy_(torch.logit(alb.clamp(1e-6, 1 - 1e-6)).view(1, 1, 1, 3))
        mesh.tex_rm.copy_(rm.view(1, 1, 1, 2))
        out.append(mesh.render(cams, bg).rgb)
    return torch.stack(out)


def compose_dielectric(r: dict[str, Tensor], albedo_linear: Tensor, background: Tensor | None = None) -> Tensor:
    """sRGB image [C,H,W,3] of ``render_constant_dielectric`` terms for a linear albedo [3]."""
    bg = torch.ones(3) if background is None else background
    lit = pbr.linear_to_srgb(albedo_linear * r["E"] + r["S"])
    return lit * r["coverage"] + (1 - r["coverage"]) * bg


__all__ = ["primitive_mesh", "render_constant_dielectric", "render_constant_material", "compose_dielectric"]
