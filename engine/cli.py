"""The `engine` command: generate, export, app.

`engine generate PROMPT [--guidance NAME] [--renderer NAME] [--prior NAME] [--preset NAME] [--steps N] [--seed S]
[--image REF.png] [--resolution R] [--out RUN_DIR] [--resume RUN_DIR] [--load-config YAML] [typed overrides, e.g.
--guidance.guidance-scale 7.5]`

`--image` is the visual prompt of the objectives that take one (csm: TV-3DG's visual-prompt CSM); without
`--guidance` it selects csm.

Two-stage parsing (style.md §4.5): an argparse pre-parser reads the component choices and shortcuts, then tyro
parses the remaining typed overrides against a default config built from those choices, so `--help` shows the
chosen components' fields only. Bad input exits with code 2 and one line on stderr, before any run folder exists.
"""

import argparse
import os
import re
import sys

USAGE_ERROR = 2


class UsageError(ValueError):
    """Refused command-line input; its message is one plain line for the user."""


def _fail(msg: str, code: int = USAGE_ERROR) -> None:
    print(f"engine: error: {msg}", file=sys.stderr)
    raise SystemExit(code)


def _flag_name(argument) -> str:
    """'--guidance.lora-lr' for a tyro argument definition, or '' when it carries none."""
    names = getattr(getattr(argument, "lowered", None), "name_or_flags", None) or ()
    return "/".join(names)


def _event_line(event) -> str:
    """One plain line for a tyro parse-error event (tyro._errors: unknown flag, bad value, refused config...)."""
    kind = type(event).__name__
    flag = _flag_name(getattr(event, "argument", None))
    if kind == "InstantiationFailure":
        msg = str(getattr(event, "message", "")).strip()
        return f"{flag}: {msg}" if flag and flag not in msg else msg
    if kind == "InvalidChoice":
        return f"{flag}: {event.value!r} is not one of {', '.join(event.choices)}"
    if kind == "UnrecognizedArgs":
        return f"unrecognised option(s): {' '.join(event.tokens)} (see --help for the fields)"
    if kind == "BadValue":
        got = getattr(event, "offending_value", None)
        return f"{flag}: bad value {got!r}" if got is not None else f"{flag}: missing value"
    if kind == "MissingArgs":
        names = [getattr(a, "arg", a) for a in getattr(event, "missing_arguments", [])]
        return "missing option(s): " + ", ".join(_flag_name(n) or str(n) for n in names)
    return f"the options were refused ({kind})"


def _collapse(text: str) -> str:
    """Fallback for a tyro without parse-error hooks: its error box as one line, borders and help pointers removed."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = [ln.strip(" │|─-╭╮╰╯┃━┏┓┗┛") for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and "--help" not in ln and "helptext" not in ln.lower()]
    return " ".join(" ".join(lines).split()) or "the options were refused"


def parse_dataclass(cls, default, args: list[str], prog: str, description: str):
    """tyro.cli over `args` with errors as UsageError (one line), never tyro's box-drawn text on stderr.

    tyro >= 1.0 reports every refusal (unknown flag, bad value, a config's own ValueError) through a parse-error
    hook, which we raise from; older tyro prints a box, which is captured and collapsed to one line instead.
    """
    import contextlib
    import io

    import tyro

    class _Refused(Exception):
        pass

    def hook(event):
        raise _Refused(_event_line(event))

    on_error = getattr(getattr(tyro, "_errors", None), "on_parse_error", None)
    buf = io.StringIO()
    hooked = on_error(hook) if on_error is not None else contextlib.nullcontext()
    help_asked = "--help" in args or "-h" in args
    try:
        with hooked, (contextlib.nullcontext() if help_asked else contextlib.redirect_stderr(buf)):
            return tyro.cli(cls, default=default, args=args, prog=prog, description=description,
                            config=(tyro.conf.AvoidSubcommands,))
    except _Refused as e:
        raise UsageError(str(e)) from None
    except ValueError as e:  # a config's own validation, when tyro lets it through
        raise UsageError(str(e)) from None
    except SystemExit as e:
        if help_asked or not e.code:
            raise
        raise UsageError(_collapse(buf.getvalue())) from None


def _pre_parser(guidances, renderers, presets) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engine generate", add_help=False, allow_abbrev=False)
    p.add_argument("--guidance", choices=sorted(guidances))
    p.add_argument("--renderer", choices=sorted(renderers))
    p.add_argument("--preset", choices=sorted(presets))
    p.add_argument("--prior")
    p.add_argument("--steps", type=int)
    p.add_argument("--image")
    p.add_argument("--resume")
    p.add_argument("--load-config")
    p.add_argument("-h", "--help", action="store_true")
    return p


def build_generate_config(argv: list[str]):
    """argv (after 'generate') -> (GenerateConfig | None, resume_dir | None). Exits 2 on bad input."""
    from engine.config import PRESETS, GenerateConfig, load_config
    from guidance import GUIDANCES
    from renderers import RENDERERS

    pre = _pre_parser(GUIDANCES, RENDERERS, PRESETS)
    # The prompt is the first argument when it is not an option; taking it here (not as an argparse positional)
    # keeps the values of typed overrides such as `--seed 9` from being read as the prompt.
    prompt = argv[0] if argv and not argv[0].startswith("-") else None
    try:
        known, rest = pre.parse_known_args(argv[1:] if prompt is not None else argv)
    except SystemExit:
        raise SystemExit(USAGE_ERROR) from None
    known.prompt = prompt
    if known.resume:
        if rest or known.prompt or known.guidance or known.renderer or known.load_config or known.image:
            _fail("--resume continues a run with its saved config; it takes no other options")
        if not os.path.isfile(os.path.join(known.resume, "config.yaml")):
            _fail(f"{known.resume} is not a run folder (no config.yaml)")
        return None, known.resume
    if known.load_config:
        try:
            base = load_config(known.load_config)
        except ValueError as e:
            _fail(str(e))
    else:
        prior_name = known.prior or "shapes"
        preset = known.preset or ("shapes" if prior_name == "shapes" else "diffusion")
        base = PRESETS[preset]()
    if known.prior:
        base.prior.name = known.prior
    if known.image is not None and not known.guidance and not hasattr(base.guidance, "image"):
        known.guidance = "csm"  # the objective with visual prompts
    if known.guidance and type(base.guidance) is not GUIDANCES[known.guidance]:
        base.guidance = GUIDANCES[known.guidance]()
    if known.image is not None:
        if not hasattr(base.guidance, "image"):
            with_image = [n for n, c in GUIDANCES.items() if "image" in c.__dataclass_fields__]
            _fail(f"--image (a visual prompt) works with --guidance {' or '.join(with_image)}, "
                  f"not {type(base.guidance).__name__.removesuffix('Config').lower()}")
        rest = ["--guidance.image", known.image, *rest]
    if known.renderer and type(base.renderer) is not RENDERERS[known.renderer]:
        base.renderer = RENDERERS[known.renderer]()
    if not known.load_config:  # a prior folder's recommended settings (distillery.json); the user's flags win
        from guidance.priors import apply_prior_defaults
        try:
            applied = apply_prior_defaults(base)
        except ValueError as e:
            _fail(str(e))
        if applied and not known.help:
            print(f"engine: defaults of the prior {base.prior.name}: {', '.join(applied)}", file=sys.stderr)
    if known.prompt is not None:
        base.prompt = known.prompt
    if known.steps is not None:
        base.train.steps = known.steps
    if known.help:
        rest = rest + ["--help"]
    desc = (f"Generate a 3D asset from a prompt. Guidance choices: {', '.join(GUIDANCES)}; renderer choices: "
            f"{', '.join(RENDERERS)}; presets: {', '.join(PRESETS)}. Choose them with --guidance/--renderer/"
            f"--preset before the typed overrides below.")
    try:
        cfg = parse_dataclass(GenerateConfig, base, rest, prog="engine generate", description=desc)
    except UsageError as e:
        _fail(str(e))
    if not cfg.prompt.strip():
        _fail('the prompt is empty; e.g. engine generate "a red cube"')
    return cfg, None


def cmd_generate(argv: list[str]) -> int:
    from engine.train import RunError, generate

    cfg, resume = build_generate_config(argv)
    try:
        run_dir = generate(cfg, resume=resume) if resume else generate(cfg)
    except RunError as e:
        _fail(str(e), e.code)
    except KeyboardInterrupt:
        print("\nengine: interrupted; the checkpoint was saved, continue with --resume RUN_DIR", file=sys.stderr)
        return 130
    from engine.outputs import read_status
    status = read_status(run_dir)
    ev = status.get("eval")
    print(f"run folder: {run_dir}")
    if ev:
        print(f"held-out views vs ground truth: PSNR {ev['psnr']:.2f} dB, silhouette IoU {ev['iou']:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"generate": cmd_generate}
    for name in ("export", "app", "texture", "train-prior"):
        try:
            mod = __import__(f"engine.cli_{name.replace('-', '_')}", fromlist=["main"])
            commands[name] = mod.main
        except ImportError:
            pass
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(f"usage: engine {{{','.join(commands)}}} ...\n\n"
              "  generate PROMPT   text to 3D (engine generate --help)\n"
              + "".join(f"  {n}\n" for n in commands if n != "generate"), file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else USAGE_ERROR
    return commands[argv[0]](argv[1:]) or 0


if __name__ == "__main__":
    raise SystemExit(main())

