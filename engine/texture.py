"""`engine texture MESH PROMPT`: optimise relightable PBR materials for a user's mesh (geometry fixed).

Steps:
1. ``load_mesh``: OBJ / GLB / PLY through trimesh (``force="mesh"``, scenes concatenated). Repairs, documented:
   vertices with NaN/Inf and the faces using them, degenerate (zero-area or repeated-index) faces and unreferenced
   vertices are dropped; non-manifold or open meshes are kept as they are (the rasteriser, the material field and
   the exporter do not need a manifold). Input with no triangles left raises ``TextureError`` (a ValueError).
2. Normalisation: centred on its bounding-box centre and scaled so its longest bounding-box side is ``size``
   (0.8 m, the shapes world's cube edge); the inverse transform is applied again on export, so the asset keeps the
   user's placement and units.
3. UVs: the user's UVs are kept when present (materials are then optimised directly as UV textures); only a mesh
   without UVs is unwrapped with xatlas (materials are then a neural field baked into textures at the end).
4. Optimisation: SDS against the chosen prior, rendered with the PBR mesh renderer under a random training
   environment and rotation per step. With ``--prior shapes`` the light-aware shapes prior is used and every step's
   condition names the environment in use (guidance/priors/shapes.py ``LightAwareShapesPrior``).
5. Output folder: ``textured.glb`` (glTF PBR: sRGB base colour, ORM with G roughness / B metallic, written with
   trimesh's PBRMaterial), loose ``albedo.png`` / ``roughness.png`` / ``metallic.png`` / ``orm.png``, previews under
   a training and a held-out environment, and ``report.json`` with the material statistics.

UV convention inside: trimesh's ``visual.uv`` (OBJ style, v up); textures are sampled at (u, 1 − v) so that image
row 0 is the top, which is how trimesh writes them into the GLB.
"""

import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from foundation.meshio import FolderResolver, LoadedMesh, MeshError, load_mesh, load_trimesh  # noqa: F401

TRAIN_ENVS = ("studio", "sky", "rgb")
HELD_OUT_ENV = "sunset"


# The mesh reader lives on the ground floor (foundation/meshio.py); its error keeps this module's name for callers.
TextureError = MeshError


def unwrap(mesh: LoadedMesh) -> LoadedMesh:
    """xatlas UVs for a mesh without any (vertices are split along the seams), computed out of process with a time
    limit and fallbacks (engine/atlas.py), so a mesh that crashes or hangs xatlas cannot take the process down."""
    from engine.atlas import UnwrapError, unwrap_safe

    try:
        vmap, faces, uv, how = unwrap_safe(mesh.vertices, mesh.faces)
    except UnwrapError as e:
        raise TextureError(str(e)) from None
    return LoadedMesh(mesh.vertices[vmap], faces.astype(np.int64), uv.astype(np.float32), mesh.centre, mesh.scale,
                      mesh.repairs + [f"unwrapped with {how} (the mesh had no UVs)"])


@dataclass
class TextureConfig:
    """One `engine texture` run."""

    mesh: str
    prompt: str
    prior: str = "shapes"
    guidance: str = "sds"
    guidance_scale: float = 0.0
    """0: the preset's (1 for the shapes prior, 100 threestudio-style for diffusers)."""
    steps: int = 150
    resolution: int = 64
    texture_resolution: int = 128
    batch: int = 2
    lr: float = 3e-2
    seed: int = 0
    size: float = 0.8
    envs: tuple[str, ...] = TRAIN_ENVS
    held_out_env: str = HELD_OUT_ENV
    rotations: int = 4
    out: str = ""
    device: str = "auto"
    """"auto" (cuda when available), "cpu" or "cuda[:N]", as for `engine generate`."""
    controlnet: str = ""
    """Diffusers SD priors: DreamMat's light-aware ControlNet (hub id or folder; guidance/priors/controlnet.py),
    conditioned on the mesh's geometry and lighting renders under the same environment as the shading; "" means none."""


def _uv_sample_coords(uv: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([uv[:, 0], 1 - uv[:, 1]], 1)).float()


def build_scene(mesh: LoadedMesh, cfg: TextureConfig, gen: torch.Generator):
    from renderers.mesh import Mesh, MeshConfig

    mcfg = MeshConfig(mode="fixed", material="uv" if mesh.uv is not None else "field", envs=tuple(cfg.envs),
                      env_rotations=cfg.rotations, texture_resolution=cfg.texture_resolution, lr_material=cfg.lr,
                      eval_env=cfg.envs[0], backend="auto")
    uv = _uv_sample_coords(mesh.uv) if mesh.uv is not None else None
    return Mesh.from_arrays(mcfg, mesh.vertices, mesh.faces, uv, gen, cfg.device)


def _build_prior_and_guidance(cfg: TextureConfig, gen: torch.Generator, shape: str | None):
    from guidance.priors import PriorConfig, build_prior

    pcfg = PriorConfig(name=cfg.prior, controlnet=cfg.controlnet)
    gcfg = guidance_config(cfg.guidance, cfg.guidance_scale, shapes=cfg.prior == "shapes")
    if cfg.prior == "shapes":
        from guidance.priors.shapes import LightAwareShapesPrior
        prior = LightAwareShapesPrior(pcfg, cfg.envs, cfg.rotations, (shape,) if shape else None, cfg.device)
    else:
        prior = build_prior(pcfg, cfg.device)
    return prior, gcfg.build(prior, gen, cfg.steps)


def guidance_config(name: str, scale: float, shapes: bool):
    """The objective ``name``'s config for texturing: its own defaults, plus the CFG scale and convention where it has
    those fields (CSD has neither; only SDS has a convention). On the shapes prior the scale defaults to 1 in the
    standard convention (its calibrated setting, exemplar-calibration.md); elsewhere 0 keeps the objective's own."""
    from guidance import GUIDANCES

    if name not in GUIDANCES:
        raise TextureError(f"unknown guidance {name!r} (known: {', '.join(GUIDANCES)})")
    cls = GUIDANCES[name]
    fields = cls.__dataclass_fields__
    kwargs: dict = {}
    if "guidance_scale" in fields:
        if scale or shapes:
            kwargs["guidance_scale"] = scale or 1.0
    elif scale:
        raise TextureError(f"--guidance-scale does not apply to {name} (it has no CFG scale)")
    if shapes and "cfg_convention" in fields:
        kwargs["cfg_convention"] = "standard"
    return cls(**kwargs)


def optimise(scene, cfg: TextureConfig, gen: torch.Generator, log=None) -> list[float]:
    """The SDS loop over materials; returns the loss per step."""
    from foundation import shapes
    from foundation.cameras import CameraConfig, sample_cameras
    from guidance.priors.shapes import lighting_word
    from guidance.prompts import PromptSet

    shape = None
    if cfg.prior == "shapes":
        try:
            _, shape = shapes.parse_prompt(cfg.prompt)
        except ValueError as e:
            raise TextureError(str(e)) from None
    prior, guidance = _build_prior_and_guidance(cfg, gen, shape)
    scene.render_condition = bool(getattr(prior, "takes_condition", False))  # the ControlNet's condition images
    light_aware = cfg.prior == "shapes"
    prompt_sets: dict[str, PromptSet] = {}
    opt = torch.optim.Adam([{**g, "name": k} for k, g in scene.param_groups().items()], betas=(0.9, 0.99))
    weights = scene.regularizer_weights
    cam_cfg = CameraConfig(elevation=(0.0, 40.0), batch_size=cfg.batch)
    losses = []
    scene.train()
    for step in range(cfg.steps):
        cams = sample_cameras(cam_cfg, cfg.resolution, gen).to(cfg.device)
        env = cfg.envs[int(torch.randint(len(cfg.envs), (1,), generator=gen))]
        k = int(torch.randint(cfg.rotations, (1,), generator=gen))
        scene.set_lighting(env, 2 * math.pi * k / cfg.rotations)
        text = f"{cfg.prompt} {lighting_word(env, k)}" if light_aware else cfg.prompt
        if text not in prompt_sets:
            prompt_sets[text] = PromptSet(prior, text)
        out = scene.render(cams, torch.ones(len(cams), cfg.resolution, cfg.resolution, 3, device=cfg.device))
        if "control" in out.extras:  # per-view condition images ride with their cameras, as in engine/train.py
            cams = cams.with_condition(out.extras["control"])
        g = guidance(out.rgb, prompt_sets[text], cams, step)
        regs = scene.regularizers(out, step)
        loss = g.loss + sum(weights.get(n, 1.0) * v for n, v in regs.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log:
            log(step, float(loss))
    scene.set_lighting(None)
    scene.render_condition = False
    scene.eval()
    return losses


@torch.no_grad()
def bake_textures(scene, mesh: LoadedMesh, size: int) -> dict[str, np.ndarray]:
    """Material textures [size,size,·] (linear) by rasterising the mesh in UV space and querying the scene."""
    from renderers.kernels import raster as K

    uv = _uv_sample_coords(mesh.uv)
    if scene.cfg.material == "uv":
        grid = (torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="xy"), -1) + 0.5) / size
        m = scene._material(None, grid.reshape(-1, 2).float())
        return {k: v.reshape(size, size, -1).numpy() for k, v in m.items()}
    pos = torch.cat([uv * 2 - 1, torch.zeros(len(uv), 1), torch.ones(len(uv), 1)], 1)
    f = torch.from_numpy(mesh.faces)
    rast = K.rasterize("torch", pos, f, (size, size))
    x = K.interpolate("torch", torch.from_numpy(mesh.vertices), rast, f)[0]
    covered = rast[0, ..., 3] > 0
    m = scene.query_material(x[covered])
    out = {}
    for k, v in m.items():
        v = v.reshape(v.shape[0], -1)
        img = torch.zeros(size, size, v.shape[1])
        img[covered] = v
        out[k] = _dilate(img, covered).numpy()
    return out


def _dilate(img: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """Fill uncovered texels from their nearest covered texel (so filtering never pulls in background)."""
    from scipy.ndimage import distance_transform_edt

    _, (iy, ix) = distance_transform_edt(~covered.numpy(), return_indices=True)
    return img[torch.from_numpy(iy), torch.from_numpy(ix)]


def write_asset(out_dir: str, mesh: LoadedMesh, tex: dict[str, np.ndarray]) -> str:
    """textured.glb (original transform restored) and loose PNG textures; returns the GLB path."""
    import trimesh
    from PIL import Image

    from engine.outputs import atomic_path
    from renderers.pbr import linear_to_srgb

    to8 = lambda a: (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)  # noqa: E731
    albedo = to8(linear_to_srgb(torch.from_numpy(tex["albedo"])).numpy())
    rough, metal = tex["roughness"][..., 0], tex["metallic"][..., 0]
    orm = np.stack([np.ones_like(rough), rough, metal], -1)
    imgs = {"albedo": albedo, "roughness": to8(rough), "metallic": to8(metal), "orm": to8(orm)}
    for name, a in imgs.items():
        with atomic_path(os.path.join(out_dir, f"{name}.png")) as tmp:
            Image.fromarray(a).save(tmp)
    mat = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(albedo),
                                              metallicRoughnessTexture=Image.fromarray(imgs["orm"]),
                                              baseColorFactor=[255, 255, 255, 255], metallicFactor=1.0,
                                              roughnessFactor=1.0)
    verts = mesh.vertices.astype(np.float64) * mesh.scale + mesh.centre
    tm = trimesh.Trimesh(verts, mesh.faces, visual=trimesh.visual.TextureVisuals(uv=mesh.uv, material=mat),
                         process=False)
    path = os.path.join(out_dir, "textured.glb")
    with atomic_path(path) as tmp:
        tm.export(tmp)
    return path


@torch.no_grad()
def material_report(scene, mesh: LoadedMesh, cfg: TextureConfig) -> dict:
    """Albedo statistics per surface orientation group (±X, ±Y, ±Z by dominant normal axis), how differently those
    groups are lit, and a relighting check under a held-out environment against a uniform-albedo reference."""
    from foundation import shapes
    from foundation.cameras import orbit_cameras
    from renderers.pbr import environment, linear_to_srgb, srgb_to_linear
    from renderers.reference import compose_dielectric, render_constant_dielectric

    v = torch.from_numpy(mesh.vertices)
    f = torch.from_numpy(mesh.faces)
    tri = v[f]
    centroid = tri.mean(1)
    n = F.normalize(torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1), dim=-1)
    uv = _uv_sample_coords(mesh.uv)[f].mean(1) if mesh.uv is not None else None
    mat = scene.query_material(centroid, uv)
    alb8 = linear_to_srgb(mat["albedo"]) * 255
    axis = n.abs().argmax(-1)
    sign = torch.gather(n, 1, axis[:, None])[:, 0] > 0
    group = axis * 2 + sign.long()
    names = ["-X", "+X", "-Y", "+Y", "-Z", "+Z"]
    env = environment(cfg.envs[0], 32)
    groups = {}
    for gi in group.unique().tolist():
        sel = group == gi
        gn = F.normalize(n[sel].mean(0), dim=0)
        groups[names[gi]] = {"albedo_srgb8": [round(x, 1) for x in alb8[sel].mean(0).tolist()],
                             "irradiance": round(float(env.irradiance_at(gn[None])[0].mean()), 3)}
    # groups facing down (normal.y < −0.5) are never seen from the training orbit (elevation 0-40°): excluded
    seen = [k for k in groups if k != "-Y"]
    means = torch.tensor([groups[k]["albedo_srgb8"] for k in seen])
    irr = [groups[k]["irradiance"] for k in seen]
    report = {"groups": groups, "albedo_variation_srgb8": round(float((means.max(0).values - means.min(0).values)
                                                                     .max()), 2),
              "groups_compared": seen,
              "irradiance_ratio_across_groups": round(max(irr) / max(min(irr), 1e-6), 2),
              "albedo_mean_srgb8": [round(x, 1) for x in alb8.mean(0).tolist()],
              "roughness_mean": round(float(mat["roughness"].mean()), 3),
              "metallic_mean": round(float(mat["metallic"].mean()), 3)}
    colour = None
    try:
        colour, _ = shapes.parse_prompt(cfg.prompt)
    except ValueError:
        pass
    if colour:
        target = torch.tensor(shapes.COLOURS[colour], dtype=torch.float32)
        report["target_srgb8"] = target.tolist()
        report["albedo_error_srgb8"] = round(float((alb8.mean(0) - target).abs().max()), 2)
        cams = orbit_cameras([30.0, 150.0, -90.0], 20.0, 2.5, 40.0, cfg.resolution)
        scene.set_lighting(cfg.held_out_env, 0.0)
        ren = scene.render(cams, torch.ones(3, cfg.resolution, cfg.resolution, 3)).rgb.clamp(0, 1)
        scene.set_lighting(None)
        ref_terms = render_constant_dielectric(v, f, cams, cfg.held_out_env, 0.0, 0.7)
        ref = compose_dielectric(ref_terms, srgb_to_linear(target / 255))
        cov = ref_terms["coverage"][..., 0] > 0.99
        report["held_out_env"] = cfg.held_out_env
        report["relit_psnr_db"] = round(shapes.psnr(ren, ref), 2)
        report["relit_mean_abs_error_srgb8_in_mask"] = round(float((ren - ref)[cov].abs().mean() * 255), 2)
    return report


def _resolve_device(name: str) -> str:
    """"auto" -> cuda when torch sees a GPU, else cpu (as `engine generate`); a CUDA request without one is refused."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TextureError(f"device {name} was asked for, but torch sees no CUDA GPU (use --device cpu)")
    if name != "cpu" and not name.startswith("cuda"):
        raise TextureError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return name


def texture_mesh(cfg: TextureConfig, log=None) -> dict:
    """The whole command: returns the report (also written to <out>/report.json)."""
    from engine.outputs import save_png, write_json
    from foundation.cameras import orbit_cameras

    cfg = dataclasses.replace(cfg, device=_resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    mesh = load_mesh(cfg.mesh, cfg.size)
    if mesh.uv is None:
        mesh = unwrap(mesh)
        had_uv = False
    else:
        had_uv = True
    out = cfg.out or os.path.join("outputs", "texture", os.path.splitext(os.path.basename(cfg.mesh))[0])
    os.makedirs(out, exist_ok=True)
    # a field when the user brought no UVs (xatlas UVs are only for baking); UV textures when they did
    scene = build_scene(mesh if had_uv else LoadedMesh(mesh.vertices, mesh.faces, None, mesh.centre, mesh.scale),
                        cfg, gen)
    losses = optimise(scene, cfg, gen, log)
    if cfg.device != "cpu":  # baking, the report and the previews work on CPU tensors (small, once)
        scene = scene.cpu()
        scene.cfg = dataclasses.replace(scene.cfg, backend="torch")  # nvdiffrast only takes CUDA tensors
    tex = bake_textures(scene, mesh, cfg.texture_resolution)
    glb = write_asset(out, mesh, tex)
    report = {"glb": glb, "faces": int(mesh.faces.shape[0]), "kept_user_uvs": had_uv, "repairs": mesh.repairs,
              "steps": cfg.steps, "final_loss": losses[-1] if losses else None,
              **material_report(scene, mesh, cfg)}
    cams = orbit_cameras([30.0, 120.0, 210.0, 300.0], 20.0, 2.5, 40.0, 128)
    for env in (cfg.envs[0], cfg.held_out_env):
        scene.set_lighting(env, 0.0)
        with torch.no_grad():
            img = scene.render(cams, torch.ones(4, 128, 128, 3)).rgb
        save_png(os.path.join(out, f"preview_{env}.png"), torch.cat(list(img), 1))
    scene.set_lighting(None)
    write_json(os.path.join(out, "report.json"), report)
    return report


__all__ = ["TextureConfig", "TextureError", "LoadedMesh", "load_mesh", "unwrap", "texture_mesh", "bake_textures",
           "write_asset", "material_report", "optimise", "build_scene"]
