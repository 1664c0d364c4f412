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

from engine.compose import Choices, ConfigError, check_generate_config, check_out_dir  # noqa: F401 (re-exported)

USAGE_ERROR = 2


class UsageError(ConfigError):
    """Refused command-line input; its message is one plain line for the user."""


def check_range(name: str, value, lo, hi) -> None:
    """UsageError unless lo <= value <= hi (engine export's option ranges; generate and texture use
    engine.config.check_config)."""
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
        msg = " ".join(str(getattr(event, "message", "")).split())  # one line, whatever the config wrote
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


def _hiding(cls, hidden: tuple[str, ...]):
    """A subclass of the dataclass ``cls`` whose ``hidden`` fields are not options (tyro.conf.Suppress): values the
    command takes otherwise (a positional argument, the pass-through options), kept from the default instance."""
    import dataclasses
    import typing
    from typing import Annotated

    import tyro

    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [(f.name, Annotated[hints[f.name], tyro.conf.Suppress] if f.name in hidden else hints[f.name], f)
              for f in dataclasses.fields(cls)]
    return dataclasses.make_dataclass(cls.__name__, fields, bases=(cls,))


def parse_dataclass(cls, default, args: list[str], prog: str, description: str, command: bool = False,
                    hidden: tuple[str, ...] = ()):
    """tyro.cli over `args` with errors as UsageError (one line), never tyro's box-drawn text on stderr.

    tyro >= 1.0 reports every refusal (unknown flag, bad value, a config's own ValueError) through a parse-error
    hook, which we raise from; older tyro prints a box, which is captured and collapsed to one line instead.
    ``command``: the layout of the other commands (parse_command): required fields are positional arguments and
    nested configs' fields are flags without their prefix. ``hidden``: fields that are not options (their values
    come from ``default``).
    """
    if hidden:
        import dataclasses

        shown = _hiding(cls, hidden)
        got = parse_dataclass(shown, shown(**{f.name: getattr(default, f.name) for f in dataclasses.fields(cls)}),
                              args, prog, description, command)
        return cls(**{f.name: getattr(got, f.name) for f in dataclasses.fields(cls)})
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
            layout = (tyro.conf.OmitArgPrefixes, tyro.conf.PositionalRequiredArgs,
                      tyro.conf.PositionalMetavarFromFieldName) if command else ()
            return tyro.cli(cls, default=default, args=args, prog=prog, description=description,
                            config=(tyro.conf.AvoidSubcommands, *layout))
    except _Refused as e:
        raise UsageError(str(e)) from None
    except ValueError as e:  # a config's own validation, when tyro lets it through
        raise UsageError(str(e)) from None
    except SystemExit as e:
        if help_asked or not e.code:
            raise
        raise UsageError(_collapse(buf.getvalue())) from None


def parse_command(cls, args: list[str], prog: str, description: str, aliases: dict[str, str] | None = None):
    """A command's options parsed from its dataclass ``cls``, so that the defaults live once, in the dataclass:
    fields without a default are positional arguments, every other field (nested configs' too, unprefixed) is a
    typed flag with its docstring as help. ``aliases`` maps a short flag to a field's own (``--faces`` ->
    ``--max-faces``). Refusals are UsageError (one line); --help prints and exits 0."""
    aliases = aliases or {}

    def canonical(tok: str) -> str:
        flag, eq, value = tok.partition("=")
        return aliases[flag] + eq + value if flag in aliases else tok

    try:
        return parse_dataclass(cls, None, [canonical(a) for a in args], prog, description, command=True)
    except UsageError as e:
        raise UsageError(_as_flags(str(e), cls, {v: k for k, v in aliases.items() if k in args})) from None


def _as_flags(message: str, cls, renamed: dict[str, str]) -> str:
    """A config's own refusal ("texture_size must be ...") names the flag the user typed ("--texture-size ...")."""
    import dataclasses
    import typing

    head = message.split(" ", 1)[0]
    for f in dataclasses.fields(cls):
        t = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(t):
            message = _as_flags(message, t, renamed)
        elif head in (f.name, f.name.replace("_", "-")):  # a config's own check, or check_config's spelling
            message = "--" + f.name.replace("_", "-") + message[len(head):]
    for long, short in renamed.items():
        message = message.replace(long, short)
    return message


def _pre_parser(guidances, renderers, presets) -> argparse.ArgumentParser:
    p = _RaisingParser(prog="engine generate", add_help=False, allow_abbrev=False)
    p.add_argument("--guidance", choices=sorted(guidances))
    p.add_argument("--renderer", choices=sorted(renderers))
    p.add_argument("--preset", choices=sorted(presets))
    p.add_argument("--prior")
    p.add_argument("--steps", type=int)
    p.add_argument("--image")
    p.add_argument("--device")
    p.add_argument("--resume")
    p.add_argument("--load-config")
    p.add_argument("-h", "--help", action="store_true")
    return p


def build_generate_config(argv: list[str]):
    """argv (after 'generate') -> (GenerateConfig | None, resume_dir | None). Exits 2 on bad input (one line)."""
    try:
        return parse_generate_argv(argv)
    except ConfigError as e:
        _fail(str(e))


def split_generate_argv(argv: list[str]):
    """argv (after 'generate') -> (Choices, the typed overrides' tokens, --help asked, --resume folder or None).

    The prompt is the first argument when it is not an option; taking it here (not as an argparse positional) keeps
    the values of typed overrides such as `--seed 9` from being read as the prompt."""
    from engine.config import PRESETS
    from guidance import GUIDANCES
    from renderers import RENDERERS

    pre = _pre_parser(GUIDANCES, RENDERERS, PRESETS)
    prompt = argv[0] if argv and not argv[0].startswith("-") else None
    known, rest = pre.parse_known_args(argv[1:] if prompt is not None else argv)
    choices = Choices(prompt=prompt, guidance=known.guidance, renderer=known.renderer, prior=known.prior,
                      preset=known.preset, steps=known.steps, image=known.image, device=known.device,
                      load_config=known.load_config)
    return choices, rest, known.help, known.resume


def typed_overrides(rest: list[str], help_asked: bool = False):
    """The command line's typed overrides (`--guidance.lora-lr 1e-4`) as compose's ``parse`` step: tyro over
    ``rest`` with the config built so far as its default, so --help shows the chosen components' fields only."""
    from engine.config import PRESETS, GenerateConfig
    from guidance import GUIDANCES
    from renderers import RENDERERS

    desc = (f"Generate a 3D asset from a prompt. Guidance choices: {', '.join(GUIDANCES)}; renderer choices: "
            f"{', '.join(RENDERERS)}; presets: {', '.join(PRESETS)}. Choose them with --guidance/--renderer/"
            f"--preset/--prior/--device before the typed overrides below.")
    args = rest + ["--help"] if help_asked else rest
    if not args:
        return None
    return lambda base: parse_dataclass(GenerateConfig, base, args, prog="engine generate", description=desc)


def parse_generate_argv(argv: list[str], bounds: dict | None = None):
    """build_generate_config that raises ConfigError (one line) instead of exiting: argv mapped to engine.compose.
    ``bounds`` tightens engine.config.BOUNDS."""
    from engine.config import load_config

    choices, rest, help_asked, resume = split_generate_argv(argv)
    if resume:
        if rest or choices.prompt or choices.guidance or choices.renderer or choices.load_config or choices.image:
            _usage("--resume continues a run with its saved config; it takes no other options")
        if not os.path.isfile(os.path.join(resume, "config.yaml")):
            _usage(f"{resume} is not a run folder (no config.yaml)")
        try:  # the saved config gets the same typed and bounded checks as the command line
            load_config(os.path.join(resume, "config.yaml"))
        except ValueError as e:
            raise UsageError(str(e)) from None
        return None, resume
    from engine.compose import compose
    say = None if help_asked else (lambda line: print(f"engine: {line}", file=sys.stderr))
    return compose(choices, parse=typed_overrides(rest, help_asked), bounds=bounds, say=say), None


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
    import importlib
    import importlib.util

    commands = {"generate": cmd_generate}
    for name in ("export", "app", "texture", "batch", "material", "train-prior"):
        module = f"engine.cli_{name.replace('-', '_')}"
        if importlib.util.find_spec(module) is not None:  # imported when run: a command may load torch at import
            commands[name] = lambda a, m=module: importlib.import_module(m).main(a)
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

