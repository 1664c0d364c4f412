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


class OneLineParser(argparse.ArgumentParser):
    """argparse for the other commands (export, texture, app): a refusal is one plain line, '<prog>: error: ...',
    exit code 2 (no usage block above it); --help still prints the full help."""

    def error(self, message: str):
        print(f"{self.prog}: error: {' '.join(message.split())} (see --help)", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


def check_range(name: str, value, lo, hi) -> None:
    """UsageError unless lo <= value <= hi (the plain-argparse commands' bounds; generate uses engine.config)."""
    if not lo <= value <= hi:
        raise UsageError(f"{name} must be in {lo:g}..{hi:g}, got {value:g}")


class _RaisingParser(argparse.ArgumentParser):
    """The generate pre-parser: a refusal raises UsageError (the CLI prints it, the app shows it)."""

    def error(self, message: str):
        raise UsageError(" ".join(message.split()))


def _usage(msg: str) -> None:
    raise UsageError(msg)


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
    p = _RaisingParser(prog="engine generate", add_help=False, allow_abbrev=False)
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
    """argv (after 'generate') -> (GenerateConfig | None, resume_dir | None). Exits 2 on bad input (one line)."""
    try:
        return parse_generate_argv(argv)
    except UsageError as e:
        _fail(str(e))


def parse_generate_argv(argv: list[str], bounds: dict | None = None):
    """build_generate_config that raises UsageError (one line) instead of exiting: the web app's entry point.
    ``bounds`` tightens engine.config.BOUNDS (the app's limits)."""
    from engine.config import PRESETS, GenerateConfig, load_config
    from guidance import GUIDANCES
    from renderers import RENDERERS

    pre = _pre_parser(GUIDANCES, RENDERERS, PRESETS)
    # The prompt is the first argument when it is not an option; taking it here (not as an argparse positional)
    # keeps the values of typed overrides such as `--seed 9` from being read as the prompt.
    prompt = argv[0] if argv and not argv[0].startswith("-") else None
    known, rest = pre.parse_known_args(argv[1:] if prompt is not None else argv)
    known.prompt = prompt
    if known.resume:
        if rest or known.prompt or known.guidance or known.renderer or known.load_config or known.image:
            _usage("--resume continues a run with its saved config; it takes no other options")
        if not os.path.isfile(os.path.join(known.resume, "config.yaml")):
            _usage(f"{known.resume} is not a run folder (no config.yaml)")
        try:  # the saved config gets the same typed and bounded checks as the command line
            load_config(os.path.join(known.resume, "config.yaml"))
        except ValueError as e:
            raise UsageError(str(e)) from None
        return None, known.resume
    if known.load_config:
        try:
            base = load_config(known.load_config)
        except ValueError as e:
            raise UsageError(str(e)) from None
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
            _usage(f"--image (a visual prompt) works with --guidance {' or '.join(with_image)}, "
                  f"not {type(base.guidance).__name__.removesuffix('Config').lower()}")
        rest = ["--guidance.image", known.image, *rest]
    if known.renderer and type(base.renderer) is not RENDERERS[known.renderer]:
        base.renderer = RENDERERS[known.renderer]()
    if not known.load_config and (known.preset or "diffusion") == "diffusion" and (known.prior or "shapes") != "shapes":
        _diffusion_defaults(base, rest)  # issue 13: by prior family, objective and device; overrides still win
    # Issue #17: Gaussians on the shapes prior train under its exemplars' own key light (renderers/keylight.py), so
    # their colour learns the albedo; --renderer.light overrides it. The NeRF keeps "dreamfusion" unless asked: its
    # depth-normal shading lost 6.7 dB on the torus (docs/benchmarks.md, "Fidelity").
    if not known.load_config and base.prior.name == "shapes" and getattr(base.renderer, "light", None) == "none":
        base.renderer.light = "shapes"
    if not known.load_config:  # a prior folder's recommended settings (distillery.json); the user's flags win
        from guidance.priors import apply_prior_defaults
        try:
            applied = apply_prior_defaults(base)
        except ValueError as e:
            _fail(str(e))
        if applied and not known.help:
            print(f"engine: defaults of the prior {base.prior.name} (they win over the preset's): "
                  f"{', '.join(applied)}", file=sys.stderr)
    if known.prompt is not None:
        base.prompt = known.prompt
    if known.steps is not None:
        base.train.steps = known.steps
    if known.help:
        rest = rest + ["--help"]
    desc = (f"Generate a 3D asset from a prompt. Guidance choices: {', '.join(GUIDANCES)}; renderer choices: "
            f"{', '.join(RENDERERS)}; presets: {', '.join(PRESETS)}. Choose them with --guidance/--renderer/"
            f"--preset before the typed overrides below.")
    cfg = parse_dataclass(GenerateConfig, base, rest, prog="engine generate", description=desc)
    check_generate_config(cfg, bounds)
    return cfg, None


def check_generate_config(cfg, bounds: dict | None = None) -> None:
    """Everything about a parsed config that can be refused before a run folder exists: the bounds of every field
    (engine.config.check_config), the prompt, the image prompt (fully decoded), the output folder. UsageError."""
    from engine.config import check_config

    try:
        check_config(cfg, bounds)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not cfg.prompt.strip():
        raise UsageError('the prompt is empty; e.g. engine generate "a red cube"')
    image = getattr(cfg.guidance, "image", "")
    if image:
        from guidance.priors.visual_prompt import load_image
        try:
            load_image(image)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if cfg.out:
        check_out_dir(cfg.out)


def check_out_dir(out: str) -> None:
    """--out must be a new or empty folder somewhere writable: never a file, a read-only place, nor another program's
    folder (engine.train.check_new_run_dir; a run folder is refused there too, with the --resume hint)."""
    from engine.train import RunError, check_new_run_dir

    if os.path.isfile(os.path.join(out, "config.yaml")):
        return  # a run folder: generate refuses it with the --resume hint
    try:
        check_new_run_dir(out)
    except RunError as e:
        raise UsageError(str(e)) from None
    parent = os.path.abspath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {parent} is not writable")


def _diffusion_defaults(base, rest: list[str]) -> None:
    """The diffusion preset's prior- and objective-dependent values (engine/config.py ``tune_diffusion``), printed."""
    import torch

    from engine.config import tune_diffusion
    from guidance.priors import prior_family

    if os.path.isfile(os.path.join(base.prior.name, "exemplars.safetensors")):
        return  # an exemplar prior (a CPU-world denoiser): nothing here applies
    device = base.device
    for i, a in enumerate(rest):  # the typed --device override, read ahead of tyro (which parses it later)
        if a == "--device" and i + 1 < len(rest):
            device = rest[i + 1]
        elif a.startswith("--device="):
            device = a.split("=", 1)[1]
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    print(f"engine: {tune_diffusion(base, prior_family(base.prior.name), cuda)}", file=sys.stderr)


def cmd_generate(argv: list[str]) -> int:
    from engine.train import RunError, Terminated, generate, sigterm_as_interrupt

    cfg, resume = build_generate_config(argv)
    try:
        with sigterm_as_interrupt():  # SIGTERM is handled like Ctrl-C: checkpoint, status interrupted
            run_dir = generate(cfg, resume=resume) if resume else generate(cfg)
    except RunError as e:
        _fail(str(e), e.code)
    except KeyboardInterrupt as e:
        saved = getattr(e, "run_dir", None)  # set by engine.train once a checkpoint was written
        if getattr(e, "note", None):  # the checkpoint could not be written (a full disk)
            print(f"\nengine: {e.note}", file=sys.stderr)
        elif saved:
            print(f"\nengine: interrupted; the checkpoint was saved, continue with --resume {saved}", file=sys.stderr)
        else:
            print("\nengine: interrupted before anything was saved; nothing to resume", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
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
    for name in ("export", "app", "texture", "batch", "material", "train-prior"):
        try:
            mod = __import__(f"engine.cli_{name.replace('-', '_')}", fromlist=["main"])
            commands[name] = mod.main
        except ImportError:
            pass
    commands["doctor"] = lambda a: __import__("engine.doctor", fromlist=["main"]).main(a)  # GPU, versions, kernels
    if argv and argv[0] not in commands and argv[0] not in ("-h", "--help"):
        print(f"engine: error: unknown command {argv[0]!r}; choose from {', '.join(commands)} (see engine --help)",
              file=sys.stderr)
        return USAGE_ERROR
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: engine {{{','.join(commands)}}} ...\n\n"
              "  generate PROMPT   text to 3D (engine generate --help)\n"
              + "".join(f"  {n}\n" for n in commands if n != "generate"), file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else USAGE_ERROR
    return commands[argv[0]](argv[1:]) or 0


if __name__ == "__main__":
    raise SystemExit(main())

