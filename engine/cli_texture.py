"""`engine texture MESH PROMPT [options]`: relightable PBR materials for a user's mesh (engine/texture.py).

A preset of `engine generate` (the same loop, run folder and exporter); `engine texture --resume RUN` continues one
from its last checkpoint. The options are the fields of engine.texture.TextureConfig (defaults and ranges live
there only).

Exit codes: 0 done, 2 bad input (one line on stderr: unreadable/degenerate mesh, unknown prompt words, ...), 1 a run
that failed (status.json says why), 130/143 interrupted (Ctrl-C/SIGTERM; the checkpoint is kept).
"""

import sys

from engine.cli import UsageError, parse_command

DESCRIPTION = ("Relightable PBR materials for a user's mesh (the texture preset of engine generate). "
               "engine texture --resume RUN continues a texture run from its last checkpoint.")
RESUME_ONLY = "--resume continues a run with its saved config; it takes no MESH, PROMPT or other options"


def _take_resume(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the --resume folder or None, the other arguments)."""
    for i, tok in enumerate(argv):
        if tok == "--resume":
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                raise UsageError("--resume needs a run folder")
            return argv[i + 1], argv[:i] + argv[i + 2:]
        if tok.startswith("--resume="):
            return tok.split("=", 1)[1], argv[:i] + argv[i + 1:]
    return None, argv


def parse(argv: list[str]):
    """argv after 'texture' -> (TextureConfig, None), or (None, RUN) for ``--resume RUN``; UsageError (one line)
    when refused, SystemExit(0) after --help."""
    from engine.texture import TextureConfig

    resume, rest = _take_resume(argv)
    if resume is not None:
        if rest:
            raise UsageError(RESUME_ONLY)
        return None, resume
    return parse_command(TextureConfig, argv, "engine texture", DESCRIPTION), None


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, resume = parse(list(sys.argv[1:] if argv is None else argv))
    except UsageError as e:
        print(f"engine texture: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0) and 2
    from engine.texture import TextureError, resume_texture, texture_mesh
    from engine.train import RunError, Terminated, sigterm_as_interrupt
    from guidance.priors.base import PriorError

    try:
        with sigterm_as_interrupt():  # SIGTERM is handled like Ctrl-C: checkpoint, status interrupted
            report = resume_texture(resume) if resume else texture_mesh(cfg)
    except RunError as e:
        print(f"engine texture: error: {e}", file=sys.stderr)
        return e.code
    except (TextureError, PriorError, ValueError) as e:
        print(f"engine texture: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # --out a file or read-only, a full disk: what was written before stays whole
        out = resume or cfg.out
        print(f"engine texture: error: cannot write {e.filename or out or 'the output'}: {e.strerror or e}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        saved = getattr(e, "run_dir", None)  # set by engine.train once a checkpoint was written
        if getattr(e, "note", None):
            print(f"\nengine texture: {e.note}", file=sys.stderr)
        elif saved:
            print(f"\nengine texture: interrupted; the checkpoint was saved, continue with "
                  f"engine texture --resume {saved}", file=sys.stderr)
        else:
            print("\nengine texture: interrupted before anything was saved; nothing to resume", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    print(f"textured asset: {report['glb']}")
    keys = ("albedo_mean_srgb8", "albedo_variation_srgb8", "relit_psnr_db", "roughness_mean", "metallic_mean")
    print(", ".join(f"{k} {report[k]}" for k in keys if k in report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
