"""`engine material PROMPT [options]`: a tileable PBR material from text (issue #16).

A material run IS a generate run: the "material" preset (engine/config.py: the flat-sample scene of
renderers/material.py, the materials prior by default) through engine.train.generate, with its run folder,
config.yaml, checkpoints, --resume and status.json; the maps, material.mtlx, material.usda, preview.glb and
preview.png are written into the run folder when the run completes (engine/material_export.py).

Exit codes: 0 done, 2 bad input (one line on stderr: unknown word, --size out of range, unwritable --out, ...).
"""

import argparse
import json
import os
import sys
import tempfile

MAX_SIZE = 8192


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        print(f"engine material: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    from guidance import GUIDANCES

    p = _Parser(prog="engine material", description=__doc__.splitlines()[0])
    p.add_argument("prompt", nargs="?", help='the material, e.g. "a glossy red checker material"')
    p.add_argument("--prior", default="materials",
                   help="materials (the built-in world, default), a diffusers hub id or model folder")
    p.add_argument("--controlnet", default="",
                   help="diffusers SD priors: DreamMat's light-aware ControlNet (hub id or folder, 22 channels), "
                        "conditioned on the plane's renders (as --prior.controlnet of engine generate)")
    p.add_argument("--guidance", default="sds", choices=sorted(GUIDANCES), help="the objective (default sds)")
    p.add_argument("--size", type=int, default=1024, help="side of the written maps in texels (default 1024)")
    p.add_argument("--no-tileable", action="store_true", help="one tile, clamped lookups, no wrap-around")
    p.add_argument("--normal-map", default="opengl", choices=("opengl", "directx"), help="normal.png convention")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (preset: 300 on materials)")
    p.add_argument("--resolution", type=int, default=None, help="training render side (64 materials, 512 diffusers)")
    p.add_argument("--texels", type=int, default=None,
                   help="optimised grid side (default min(size, max(64, resolution))); maps are resampled to --size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="", help="the run folder (default outputs/<prompt>/<timestamp>)")
    p.add_argument("--resume", default="", help="continue a material run folder from its last checkpoint")
    return p


def _fail(msg: str) -> None:
    print(f"engine material: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def check_writable(out: str) -> None:
    """Refuse an --out that cannot become a run folder (a file, or under an unwritable or non-folder parent),
    by creating and removing a probe file in the nearest existing folder."""
    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        _fail(f"--out {out} exists and is not a folder")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        _fail(f"--out {out} cannot be created: {probe} is not a folder")
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".engine-probe-")
        os.close(fd)
        os.remove(name)
    except OSError as e:
        _fail(f"--out {out} is not writable ({probe}: {e.strerror})")


def build_material_config(args: argparse.Namespace):
    """The GenerateConfig of a material run from parsed arguments (the app's tab builds the same)."""
    from engine.config import PRESETS
    from guidance import GUIDANCES

    if not args.prompt or not args.prompt.strip():
        _fail('the prompt is empty; e.g. engine material "a glossy red checker material"')
    if not 16 <= args.size <= MAX_SIZE:
        _fail(f"--size must be between 16 and {MAX_SIZE} texels, got {args.size}")
    import importlib.util
    missing = [pkg for mod, pkg in (("MaterialX", "materialx"), ("pxr", "usd-core"))
               if importlib.util.find_spec(mod) is None]
    if missing:  # the run would end without its material.mtlx / material.usda: refuse before it starts
        _fail(f"engine material writes MaterialX and USD files and needs {' and '.join(missing)}: "
              "pip install 'distillery[materialx]'")
    cfg = PRESETS["material"]()
    cfg.prompt = args.prompt.strip()
    cfg.prior.name = args.prior
    diffusion = args.prior != "materials"
    if args.controlnet and not diffusion:
        _fail("--controlnet needs a diffusers Stable Diffusion --prior (hub id or folder), not the materials world")
    cfg.prior.controlnet = args.controlnet
    if diffusion:  # real priors: DreamFusion-SD's CFG, as the diffusion preset
        cfg.guidance = PRESETS["diffusion"]().guidance
        cfg.train.steps = 2000
    if args.guidance != "sds":
        cfg.guidance = GUIDANCES[args.guidance]()
    cfg.resolution = args.resolution or (512 if diffusion else 64)
    if args.steps is not None:
        if args.steps < 1:
            _fail(f"--steps must be >= 1, got {args.steps}")
        cfg.train.steps = args.steps
    texels = args.texels or min(args.size, max(64, cfg.resolution))
    try:
        cfg.renderer = type(cfg.renderer)(texels=texels, tileable=not args.no_tileable, normal_map=args.normal_map)
    except ValueError as e:
        _fail(str(e))
    cfg.train.export_texture_size = args.size
    cfg.seed, cfg.device, cfg.out = args.seed, args.device, args.out
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from engine.train import RunError, generate

    if args.resume:
        if not os.path.isfile(os.path.join(args.resume, "config.yaml")):
            _fail(f"{args.resume} is not a run folder (no config.yaml)")
        cfg, resume = None, args.resume
    else:
        cfg, resume = build_material_config(args), None
        if args.out:
            check_writable(args.out)
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
