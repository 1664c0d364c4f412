"""`engine texture MESH PROMPT [options]`: relightable PBR materials for a user's mesh (engine/texture.py).

A preset of `engine generate` (the same loop, run folder and exporter); `engine texture --resume RUN` continues one
from its last checkpoint.

Exit codes: 0 done, 2 bad input (one line on stderr: unreadable/degenerate mesh, unknown prompt words, ...), 1 a run
that failed (status.json says why).
"""

import sys

from engine.cli import OneLineParser, UsageError, check_range

# Bounds of the numeric options (the CLI and the app check the same ones through check_texture_args).
TEXTURE_BOUNDS = {"steps": (0, 1_000_000), "resolution": (8, 2048), "texture_resolution": (8, 8192),
                  "seed": (0, 2**63 - 1), "size": (1e-3, 1e3), "lr": (0.0, 10.0), "guidance_scale": (0.0, 1000.0)}


def check_texture_args(args: dict) -> None:
    """UsageError for any numeric option outside TEXTURE_BOUNDS (or not finite)."""
    for key, (lo, hi) in TEXTURE_BOUNDS.items():
        check_range("--" + key.replace("_", "-"), args[key], lo, hi)


def _parser() -> OneLineParser:
    from engine.texture import HELD_OUT_ENV, TRAIN_ENVS

    p = OneLineParser(prog="engine texture", description=__doc__.splitlines()[0])
    p.add_argument("mesh", nargs="?", help="OBJ, GLB or PLY file")
    p.add_argument("prompt", nargs="?", help='what the surface should look like, e.g. "a red cube"')
    p.add_argument("--resume", default="", metavar="RUN", help="continue a texture run folder from its last checkpoint")
    p.add_argument("--prior", default="shapes", help="shapes (light-aware), a diffusers hub id or model folder")
    p.add_argument("--guidance", default="sds", help="guidance objective name (default sds)")
    p.add_argument("--guidance-scale", type=float, default=0.0, help="CFG scale (0: the preset's)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--resolution", type=int, default=64, help="training render side in pixels")
    p.add_argument("--texture-resolution", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=float, default=0.8, help="longest bbox side after normalisation (metres)")
    p.add_argument("--envs", nargs="+", default=list(TRAIN_ENVS),
                   help="training environments: procedural names or equirect .hdr/.exr/.png files")
    p.add_argument("--held-out-env", default=HELD_OUT_ENV)
    p.add_argument("--out", default="", help="the run folder (default outputs/texture/<mesh name>)")
    p.add_argument("--device", default="auto", help="auto (cuda when available, as generate), cpu or cuda[:N]")
    p.add_argument("--controlnet", default="",
                   help="diffusers SD priors: DreamMat's light-aware ControlNet (hub id or folder, 22 channels)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        if args.resume and (args.mesh or args.prompt):
            parser.error("--resume continues a run with its saved config; it takes no MESH or PROMPT")
        if not args.resume and (args.mesh is None or args.prompt is None):
            parser.error("the following arguments are required: " + ", ".join(
                n for n in ("mesh", "prompt") if getattr(args, n) is None))
        check_texture_args(vars(args))
    except SystemExit as e:
        return int(e.code or 0) and 2
    except UsageError as e:
        print(f"engine texture: error: {e}", file=sys.stderr)
        return 2
    from engine.texture import TextureConfig, TextureError, resume_texture, texture_mesh
    from engine.train import RunError
    from guidance import GUIDANCES
    from guidance.priors.base import PriorError

    if args.guidance not in GUIDANCES:
        print(f"engine texture: error: unknown guidance {args.guidance!r} (known: {', '.join(GUIDANCES)})",
              file=sys.stderr)
        return 2
    cfg = TextureConfig(mesh=args.mesh, prompt=args.prompt, prior=args.prior, guidance=args.guidance,
                        guidance_scale=args.guidance_scale, steps=args.steps, resolution=args.resolution,
                        texture_resolution=args.texture_resolution, lr=args.lr, seed=args.seed, size=args.size,
                        envs=tuple(args.envs), held_out_env=args.held_out_env, out=args.out, device=args.device,
                        controlnet=args.controlnet)
    try:
        report = resume_texture(args.resume) if args.resume else texture_mesh(cfg)
    except RunError as e:
        print(f"engine texture: error: {e}", file=sys.stderr)
        return e.code
    except (TextureError, PriorError, ValueError) as e:
        print(f"engine texture: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # --out a file or read-only, a full disk: what was written before stays whole
        print(f"engine texture: error: cannot write {e.filename or args.out or 'the output'}: {e.strerror or e}",
              file=sys.stderr)
        return 2
    print(f"textured asset: {report['glb']}")
    keys = ("albedo_mean_srgb8", "albedo_variation_srgb8", "relit_psnr_db", "roughness_mean", "metallic_mean")
    print(", ".join(f"{k} {report[k]}" for k in keys if k in report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
