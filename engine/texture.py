"""`engine texture MESH PROMPT`: relightable PBR materials for a user's mesh, as a preset of `engine generate`.

The command is the "texture" preset (engine/config.py ``preset_texture``) of the one run pipeline: the same loop
(engine/train.py), run folder (config.yaml, ckpts/, metrics.jsonl, status.json), checkpoints, ``--resume`` and
exporter (engine/export) as every other run. What is texture-specific lives here:

1. the command's options (``TextureConfig``) and how they set the preset (``texture_config``): the mesh renderer in
   "fixed" mode on the user's file (renderers/mesh.py; geometry fixed, materials only), its materials UV textures
   when the mesh brings UVs (optimised texel for texel, exported exactly) and a neural field otherwise (baked on an
   xatlas atlas by the exporter); with ``--prior shapes`` the light-aware shapes prior, whose exemplars are lit
   by the same environment and rotation as each training view (guidance/priors/shapes.py);
2. the mesh is read (and repaired, foundation/meshio.py) before anything runs, so bad input is one line and exit 2;
   the scene centres it and scales its longest side to ``size``, and the export puts it back in its own placement
   and units;
3. after the run (``texture_outputs``): ``textured.glb`` (the engine's GLB: tangents, base colour, ORM and a
   tangent-space normal map, glTF convention), the loose ``albedo.png``, ``roughness.png``, ``metallic.png``,
   ``normal.png`` and ``orm.png`` beside it, previews under the first training and the held-out environment, and
   ``report.json`` (``material_report``: albedo per surface orientation, how differently those were lit, and a
   relighting check under the held-out environment for shapes-world prompts).
"""

import dataclasses
import os
import secrets
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.config import TEXTURE_HELD_OUT_ENV as HELD_OUT_ENV
from engine.config import TEXTURE_TRAIN_ENVS as TRAIN_ENVS
from engine.config import GenerateConfig, preset_texture, texture_cameras, texture_warmup
from foundation.meshio import FolderResolver, LoadedMesh, MeshError, load_mesh, load_trimesh  # noqa: F401

# The mesh reader lives on the ground floor (foundation/meshio.py); its error keeps this module's name for callers.
TextureError = MeshError

PREVIEW_SIZE = 128


TEXTURE_BOUNDS: dict[str, tuple[float, float]] = {
    "steps": (0, 1_000_000), "texture_resolution": (8, 8192), "batch": (1, 64), "rotations": (1, 64),
    "size": (1e-3, 1e3), "lr": (0.0, 10.0), "guidance_scale": (0.0, 1000.0)}
"""Ranges of the command's numeric options, beside engine.config.BOUNDS (which bounds ``seed`` and ``resolution``
for every config); TextureConfig checks them itself, so the CLI and the app refuse the same values."""


def check_texture_config(cfg: "TextureConfig", bounds: dict | None = None) -> None:
    """ValueError (one line naming the option) for a numeric option outside its range (engine.config.check_config
    with TEXTURE_BOUNDS, tightened by ``bounds``: the app's limits), an unknown objective or no training
    environment."""
    from engine.config import check_config
    from guidance import GUIDANCES

    check_config(cfg, {**TEXTURE_BOUNDS, **(bounds or {})})
    if cfg.guidance not in GUIDANCES:
        raise ValueError(f"unknown guidance {cfg.guidance!r} (known: {', '.join(GUIDANCES)})")
    if not cfg.envs:
        raise ValueError("envs needs at least one training environment")


@dataclass
class TextureConfig:
    """Relightable PBR materials for a user's mesh (the texture preset of `engine generate`); the fields are the
    options of `engine texture`, and ``texture_config`` turns them into the preset's GenerateConfig."""

    mesh: str
    """OBJ, GLB or PLY file (its UVs are kept when it has them)."""
    prompt: str
    """What the surface should look like, e.g. "a red cube"."""
    prior: str = "shapes"
    """shapes (for texturing: the light-aware shapes prior "shapes-light", whose exemplars are lit as the mesh's
    renders are, so no shading is baked into the albedo; the learned shapes prior of `engine generate` is trained
    on shaded renders and is not light-aware), a diffusers hub id or model folder."""
    guidance: str = "sds"
    """The objective (a key of guidance.GUIDANCES)."""
    guidance_scale: float = 0.0
    """CFG scale; 0: the preset's (1 for the shapes prior, the objective's own otherwise)."""
    steps: int = 150
    """Optimisation steps."""
    resolution: int = 64
    """Training render side in pixels."""
    texture_resolution: int = 128
    """Side of the optimised and written textures in texels."""
    batch: int = 2
    """Views per step."""
    lr: float = 1e-2
    """Learning rate of the materials."""
    seed: int = 0
    """The run's seed."""
    size: float = 0.8
    """Longest bounding-box side after normalisation (metres); the export puts the mesh back in its own units."""
    envs: tuple[str, ...] = TRAIN_ENVS
    """Training environments: procedural names or equirect .hdr/.exr/.png files."""
    held_out_env: str = HELD_OUT_ENV
    """The environment of the relighting check and the second preview."""
    rotations: int = 4
    """Rotations of each training environment about the vertical axis."""
    out: str = ""
    """The run folder ("": outputs/texture/<mesh name>)."""
    device: str = "auto"
    """"auto" (cuda when available), "cpu" or "cuda[:N]", as for `engine generate`."""
    controlnet: str = ""
    """Diffusers SD priors: DreamMat's light-aware ControlNet (hub id or folder; guidance/priors/controlnet.py),
    conditioned on the mesh's geometry and lighting renders under the same environment as the shading; "" means none."""

    def __post_init__(self) -> None:
        self.envs = tuple(self.envs)
        check_texture_config(self)


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


def texture_config(cfg: TextureConfig, has_uv: bool) -> GenerateConfig:
    """The texture preset with the command's options: the GenerateConfig of the run (``has_uv``: the mesh brings
    UVs, so its materials are UV textures)."""
    from guidance.priors import PriorConfig
    from guidance.priors.shapes import LIGHT_AWARE

    g = preset_texture()
    light_aware = cfg.prior == "shapes"
    g.prompt = cfg.prompt
    g.prior = PriorConfig(name=LIGHT_AWARE if light_aware else cfg.prior, controlnet=cfg.controlnet)
    g.guidance = guidance_config(cfg.guidance, cfg.guidance_scale, shapes=light_aware)
    g.renderer = dataclasses.replace(g.renderer, mesh_path=os.path.abspath(cfg.mesh), mesh_size=cfg.size,
                                     material="uv" if has_uv else "field", envs=tuple(cfg.envs),
                                     env_rotations=cfg.rotations, eval_env=cfg.held_out_env,
                                     texture_resolution=cfg.texture_resolution, lr_material=cfg.lr,
                                     material_warmup=texture_warmup(cfg.steps))
    g.cameras = texture_cameras(light_aware, cfg.batch)
    g.train.steps = cfg.steps
    g.train.export = False  # the command writes its own asset (texture_outputs) at the end
    g.train.export_texture_size = cfg.texture_resolution
    # the run's own checks (GenerateConfig.__post_init__: the device name among them); the device itself is
    # resolved once, by the run (engine.train.resolve_device, the one rule of foundation/backend.py)
    return dataclasses.replace(g, resolution=cfg.resolution, seed=cfg.seed, device=cfg.device, out=cfg.out)


def _check_mesh(cfg: TextureConfig) -> LoadedMesh:
    """Read the mesh (TextureError for a bad one) and refuse, before training, one the exporter could not unwrap."""
    from engine import atlas

    mesh = load_mesh(cfg.mesh, cfg.size)
    if mesh.uv is None and len(mesh.faces) > atlas.MAX_UNWRAP_FACES:
        raise TextureError(f"the mesh has {len(mesh.faces):,} faces and no UVs; unwrapping is limited to "
                           f"{atlas.MAX_UNWRAP_FACES:,} (decimate it first, or bring UVs)")
    return mesh


def _out_dir(cfg: TextureConfig) -> str:
    """``--out``, or outputs/texture/<mesh name> (with a time stamp when that already holds something)."""
    if cfg.out:
        if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
            raise TextureError(f"cannot write {cfg.out}: it is a file; give a folder for the textured asset")
        return cfg.out
    base = os.path.join("outputs", "texture", os.path.splitext(os.path.basename(cfg.mesh))[0])
    if os.path.isdir(base) and os.listdir(base):
        base = f"{base}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    return base


def texture_mesh(cfg: TextureConfig, hooks=None) -> dict:
    """The whole command: the preset's generate run into ``--out``, then ``texture_outputs``; returns the report
    (also written to <out>/report.json). ``hooks`` (engine.train.Hooks) hear every step and may stop the run: it
    then ends with a checkpoint and status "interrupted", and the outputs are those of the step it stopped at
    (``report["complete"]`` is False)."""
    from engine.train import generate

    mesh = _check_mesh(cfg)
    gcfg = texture_config(dataclasses.replace(cfg, out=_out_dir(cfg)), has_uv=mesh.uv is not None)
    return texture_outputs(generate(gcfg, hooks=hooks))


def resume_texture(run_dir: str, hooks=None) -> dict:
    """`engine texture --resume RUN`: continue a texture run from its last checkpoint, then write its outputs."""
    from engine import runfolder
    from engine.train import generate

    cfg = runfolder.read_config(run_dir)
    if not (getattr(cfg.renderer, "mode", "") == "fixed" and cfg.renderer.mesh_path):
        raise TextureError(f"{run_dir} is not a texture run (its renderer is not a fixed mesh from a file)")
    generate(cfg, resume=run_dir, hooks=hooks)
    return texture_outputs(run_dir)


def _final_loss(run_dir: str) -> float | None:
    import json

    loss = None
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            for line in f:
                loss = json.loads(line).get("loss", loss)
    except (OSError, ValueError):
        return None
    return loss


def texture_outputs(run_dir: str) -> dict:
    """The texture-specific outputs of a finished texture run (see the module docstring); returns the report."""
    from engine import runfolder
    from engine.export import ExportOptions, bake_scene, write_mesh_format
    from engine.outputs import read_status, save_png, write_json
    from foundation.cameras import orbit_cameras

    run = runfolder.load_run(run_dir, scene=False)
    cfg = run.config
    # baking, the report and the previews run once, on CPU tensors, with the reference rasteriser
    local = dataclasses.replace(cfg, renderer=dataclasses.replace(cfg.renderer, backend="torch"))
    scene = runfolder.build_scene(local, torch.Generator().manual_seed(cfg.seed), "cpu", restore=True)
    scene.load_state_dict(run.state["scene"])
    scene.eval()
    mesh = load_mesh(cfg.renderer.mesh_path, cfg.renderer.mesh_size)
    opts = ExportOptions(texture_size=cfg.train.export_texture_size, padding=2, name="textured")
    with torch.no_grad():
        baked = bake_scene(scene, opts)
    glb = write_mesh_format("glb", os.path.join(run_dir, "textured.glb"), baked, opts, textures_dir=run_dir)
    report = {"glb": glb, "faces": int(mesh.faces.shape[0]), "kept_user_uvs": mesh.uv is not None,
              "repairs": mesh.repairs + (["unwrapped with xatlas (the mesh had no UVs)"] if mesh.uv is None else []),
              "steps": int(run.state["step"]), "complete": read_status(run_dir).get("state") == "complete",
              "final_loss": _final_loss(run_dir), "export": baked.info,
              **material_report(scene, cfg)}
    cams = orbit_cameras([30.0, 120.0, 210.0, 300.0], 20.0, 2.5, 40.0, PREVIEW_SIZE)
    for env in (cfg.renderer.envs[0], cfg.renderer.eval_env):
        scene.set_lighting(env, 0.0)
        with torch.no_grad():
            img = scene.render(cams, torch.ones(4, PREVIEW_SIZE, PREVIEW_SIZE, 3)).rgb
        save_png(os.path.join(run_dir, f"preview_{os.path.splitext(os.path.basename(env))[0]}.png"),
                 torch.cat(list(img), 1))
    scene.set_lighting(None)
    write_json(os.path.join(run_dir, "report.json"), report, default=str)
    return report


@torch.no_grad()
def material_report(scene, cfg: GenerateConfig) -> dict:
    """Albedo statistics per surface orientation group (±X, ±Y, ±Z by dominant normal axis), how differently those
    groups are lit, and a relighting check under the held-out environment (``renderer.eval_env``) against a
    uniform-albedo reference (renderers/reference.py) when the prompt names a shapes-world colour."""
    from foundation import shapes
    from foundation.cameras import orbit_cameras
    from renderers.pbr import environment, linear_to_srgb, srgb_to_linear
    from renderers.reference import compose_dielectric, render_constant_dielectric

    held_out, envs, res = cfg.renderer.eval_env, cfg.renderer.envs, cfg.resolution
    v, f = (t.detach().cpu() for t in scene.geometry())
    tri = v[f]
    centroid = tri.mean(1)
    n = F.normalize(torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1), dim=-1)
    uv = scene.uv[f].mean(1) if scene.uv_material else None
    mat = scene.query_material(centroid, uv)
    alb8 = linear_to_srgb(mat["albedo"]) * 255
    axis = n.abs().argmax(-1)
    sign = torch.gather(n, 1, axis[:, None])[:, 0] > 0
    group = axis * 2 + sign.long()
    names = ["-X", "+X", "-Y", "+Y", "-Z", "+Z"]
    env = environment(envs[0], 32)
    groups = {}
    for gi in group.unique().tolist():
        sel = group == gi
        gn = F.normalize(n[sel].mean(0), dim=0)
        groups[names[gi]] = {"albedo_srgb8": [round(x, 1) for x in alb8[sel].mean(0).tolist()],
                             "irradiance": round(float(env.irradiance_at(gn[None])[0].mean()), 3)}
    # groups facing down (normal.y < −0.5) are never seen from the training orbit (elevation 0-40°): excluded
    seen = [k for k in groups if k != "-Y"] or list(groups)
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
        cams = orbit_cameras([30.0, 150.0, -90.0], 20.0, 2.5, 40.0, res)
        scene.set_lighting(held_out, 0.0)
        ren = scene.render(cams, torch.ones(3, res, res, 3)).rgb.clamp(0, 1)
        scene.set_lighting(None)
        ref_terms = render_constant_dielectric(v, f, cams, held_out, 0.0, 0.7)
        ref = compose_dielectric(ref_terms, srgb_to_linear(target / 255))
        cov = ref_terms["coverage"][..., 0] > 0.99
        report["held_out_env"] = held_out
        report["relit_psnr_db"] = round(shapes.psnr(ren, ref), 2)
        report["relit_mean_abs_error_srgb8_in_mask"] = round(float((ren - ref)[cov].abs().mean() * 255), 2)
    return report


__all__ = ["TextureConfig", "TEXTURE_BOUNDS", "check_texture_config", "TextureError", "LoadedMesh", "load_mesh",
           "texture_config", "texture_mesh", "resume_texture", "texture_outputs", "material_report", "guidance_config",
           "TRAIN_ENVS", "HELD_OUT_ENV", "FolderResolver"]
