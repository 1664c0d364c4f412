"""`engine material PROMPT [options]`: a tileable PBR material from text (issue #16).

A material run IS a generate run: the "material" preset (engine/config.py: the flat-sample scene of
renderers/material.py, the materials prior by default) through engine.train.generate, with its run folder,
config.yaml, checkpoints, --resume and status.json; the maps, material.mtlx, material.usda, preview.glb and
preview.png are written into the run folder when the run completes (engine/material_export.py).

Exit codes: 0 done, 2 bad input (one line on stderr: unknown word, --size out of range, unwritable --out, ...).
"""

import json
import os
import sys
from dataclasses import dataclass

from engine.cli import UsageError, parse_command

MAX_SIZE = 8192


@dataclass
class MaterialCommand:
    """A tileable PBR material from text; None takes the material preset's value (engine/config.py)."""

    prompt: str = ""
    """The material, e.g. "a glossy red checker material" (the first argument)."""
    prior: str | None = None
    """materials (the built-in world, the preset's), a diffusers hub id or model folder."""
    controlnet: str = ""
    """Diffusers SD priors: DreamMat's light-aware ControlNet (hub id or folder, 22 channels), conditioned on the
    plane's renders (as --prior.controlnet of engine generate)."""
    guidance: str | None = None
    """The objective (a key of guidance.GUIDANCES; the preset's: sds)."""
    size: int | None = None
    """Side of the written maps in texels (the preset's train.export-texture-size)."""
    tileable: bool = True
    """Wrap-around lookups; --no-tileable: one tile, clamped lookups."""
    normal_map: str | None = None
    """normal.png convention: opengl or directx (the material renderer's)."""
    steps: int | None = None
    """Optimisation steps (the preset's on the materials world, 2000 on a diffusers prior)."""
    resolution: int | None = None
    """Training render side (64 on the materials world, 512 on a diffusers prior)."""
    texels: int | None = None
    """Optimised grid side (default min(size, max(64, resolution))); the maps are resampled to --size."""
    seed: int | None = None
    """The run's seed (the preset's)."""
    device: str | None = None
    """auto, cpu or cuda[:N] (the preset's: auto)."""
    out: str = ""
    """The run folder (default outputs/<prompt>/<timestamp>)."""
    resume: str = ""
    """Continue a material run folder from its last checkpoint."""


def parse(argv: list[str]) -> MaterialCommand:
    """argv after 'material' -> MaterialCommand (the prompt is the first argument when it is not an option);
    UsageError (one line) when refused, SystemExit(0) after --help."""
    if argv and not argv[0].startswith("-"):
        argv = ["--prompt", argv[0], *argv[1:]]
    return parse_command(MaterialCommand, argv, "engine material", __doc__.splitlines()[0])


def _fail(msg: str) -> None:
    print(f"engine material: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def build_material_config(cmd: MaterialCommand):
    """The GenerateConfig of a material run (the app's tab builds the same): the material preset through
    engine.compose, with the command's own mapping (a diffusers prior gets the diffusion preset's objective, 2000
    steps and 512 px renders; --size is the written maps' side). UsageError (one line) when refused."""
    import importlib.util

    from engine.compose import Choices, ConfigError, compose
    from engine.config import PRESETS

    if not cmd.prompt.strip():
        raise UsageError('the prompt is empty; e.g. engine material "a glossy red checker material"')
    preset = PRESETS["material"]()
    size = preset.train.export_texture_size if cmd.size is None else cmd.size
    if not 16 <= size <= MAX_SIZE:
        raise UsageError(f"--size must be between 16 and {MAX_SIZE} texels, got {size}")
    missing = [pkg for mod, pkg in (("MaterialX", "materialx"), ("pxr", "usd-core"))
               if importlib.util.find_spec(mod) is None]
    if missing:  # the run would end without its material.mtlx / material.usda: refuse before it starts
        raise UsageError(f"engine material writes MaterialX and USD files and needs {' and '.join(missing)}: "
                         "pip install 'distillery[materialx]'")
    diffusion = cmd.prior is not None and cmd.prior != preset.prior.name
    if cmd.controlnet and not diffusion:
        raise UsageError("--controlnet needs a diffusers Stable Diffusion --prior (hub id or folder), not the "
                         "materials world")
    if cmd.steps is not None and cmd.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {cmd.steps}")
    resolution = cmd.resolution or (512 if diffusion else preset.resolution)
    renderer = {"tileable": cmd.tileable, "texels": cmd.texels or min(size, max(64, resolution))}
    if cmd.normal_map is not None:
        renderer["normal_map"] = cmd.normal_map
    overrides = {"prior.controlnet": cmd.controlnet, "resolution": resolution, "train.export_texture_size": size,
                 "out": cmd.out, **{f"renderer.{k}": v for k, v in renderer.items()}}
    overrides.update({k: v for k, v in (("seed", cmd.seed), ("device", cmd.device)) if v is not None})

    if diffusion and cmd.guidance in (None, "sds"):  # real priors: DreamFusion-SD's CFG, as the diffusion preset
        sds = PRESETS["diffusion"]().guidance
        overrides.update({"guidance.guidance_scale": sds.guidance_scale, "guidance.cfg_convention": sds.cfg_convention})
    steps = cmd.steps if cmd.steps is not None else (2000 if diffusion else None)
    choices = Choices(prompt=cmd.prompt.strip(), preset="material", prior=cmd.prior, guidance=cmd.guidance,
                      steps=steps)
    try:
        return compose(choices, overrides, say=None)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(list(sys.argv[1:] if argv is None else argv))
        if not args.resume:
            cfg = build_material_config(args)
    except UsageError as e:
        _fail(str(e))
    except SystemExit as e:  # --help
        return int(e.code or 0) and 2
    from engine.train import RunError, generate

    if args.resume:
        if not os.path.isfile(os.path.join(args.resume, "config.yaml")):
            _fail(f"{args.resume} is not a run folder (no config.yaml)")
        cfg, resume = None, args.resume
    else:
        resume = None
    try:
        run_dir = generate(cfg, resume=resume) if resume else generate(cfg)
    except RunError as e:
        print(f"engine material: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("\nengine material: interrupted; the checkpoint was saved, continue with --resume RUN_DIR",
              file=sys.stderr)
        return 130
    print(f"run folder: {run_dir}")
    from engine.outputs import read_status
    status = read_status(run_dir)
    if status.get("export_error"):
        print(f"engine material: error: {status['export_error']}", file=sys.stderr)
        return 1
    try:
        with open(os.path.join(run_dir, "material.json")) as f:
            ev = json.load(f).get("eval")
    except (OSError, ValueError):
        ev = None
    if ev:
        from foundation.materials import describe
        print("vs ground truth: " + describe(ev))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
