"""One way to build a run's ``GenerateConfig`` (issue #14, item 4): named choices plus overrides -> a checked config.

Every front end goes through ``compose``: the ``engine generate`` command line (engine/cli.py maps argv to
``Choices`` and its typed overrides), the web app (apps/gradio_app.py maps its widgets to ``Choices`` and dotted
overrides directly) and ``engine batch`` (the shared options and each row's overrides). The rules that decide a
config beyond the dataclass defaults all live here, applied in this order:

1. the base: a saved config (``load_config``) or a preset (``exemplar`` for the closed-form "shapes-exemplar" prior,
   ``diffusion`` for any other, the default learned "shapes" prior included, unless one is named);
2. the components: ``prior``, ``guidance`` (an image prompt alone selects csm; else, when none is named, the
   objective the prior folder recommends, its distillery.json "objective"), ``renderer``, ``device``;
3. the diffusion preset's values by prior family, objective and device (engine.config.tune_diffusion, issue 13);
4. on a shapes-world prior, Gaussians (learned or exemplar prior) and the NeRF (learned prior) train under the
   world's key light (issue #17);
5. the prior folder's recommended settings (distillery.json: for every run, then by objective, then by objective
   and renderer; guidance.priors.apply_prior_defaults);
6. ``prompt`` and ``steps``;
7. the command line's typed overrides (``parse``: tyro, in engine/cli.py), then the dotted ``overrides``;
8. the checks that come before any run folder exists: every bound (engine.config.check_config, tightened by
   ``bounds``), the prompt, the image prompt (decoded), the output folder.

Rules 3-5 are skipped for a saved config (it already holds its choices). Any refusal is a ``ConfigError``: a
ValueError whose message is one line for the user. The engine's modules (torch, the registries) are imported when
``compose`` runs, not with this module, so that the ``engine`` command starts without them.
"""

import dataclasses
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config import GenerateConfig


class ConfigError(ValueError):
    """A refused choice or override; its message is one plain line for the user."""


class PromptError(ConfigError):
    """A prompt the prior's world cannot show (a ConfigError: the same one line)."""


@dataclass
class Choices:
    """The named choices of a run (the command line's shortcuts, the app's main widgets); None leaves the preset's."""

    prompt: str | None = None
    guidance: str | None = None
    """A key of guidance.GUIDANCES."""
    renderer: str | None = None
    """A key of renderers.RENDERERS."""
    prior: str | None = None
    """"shapes" (the built-in learned prior, the default), "shapes-exemplar", a diffusers hub id or a model folder
    (sets prior.name)."""
    preset: str | None = None
    """A key of engine.config.PRESETS; default "exemplar" for the shapes-exemplar prior, else "diffusion"."""
    steps: int | None = None
    image: str | None = None
    """A visual prompt (csm); alone it selects the csm objective."""
    device: str | None = None
    """auto, cpu, cuda or cuda:N; known before the diffusion preset sizes the run for it."""
    load_config: str | None = None
    """A saved config.yaml as the base instead of a preset."""


def _say(line: str) -> None:
    print(f"engine: {line}", file=sys.stderr)


def compose(choices: Choices, overrides: Mapping[str, Any] | None = None, *,
            parse: "Callable[[GenerateConfig], GenerateConfig] | None" = None, bounds: dict | None = None,
            say: Callable[[str], None] | None = _say) -> "GenerateConfig":
    """The checked GenerateConfig of ``choices`` plus overrides (the module docstring lists the rules in order).

    Args:
        choices: the named choices.
        overrides: dotted field paths (``"train.lr_scale"``, dashes or underscores, ``--`` optional) to values;
            strings are read as the field's type (CSV cells), ``"x.no-flag": True`` sets the boolean ``x.flag`` off.
        parse: the command line's typed overrides, applied to the config built so far (tyro, in engine/cli.py).
        bounds: ranges that tighten engine.config.BOUNDS (the app's limits).
        say: where the preset's announcements go (None: nowhere).

    Raises:
        ConfigError: one line naming the refused choice, field or value.
    """
    cfg = _base(choices)
    notes: list[tuple[str, dict, bool]] = []  # what the presets chose, said once the whole config has passed its checks
    objective = _components(cfg, choices)
    if objective:
        notes.append((f"guidance {objective} (the prior's recommended objective; --guidance sds for SDS)", {}, False))
    if choices.load_config is None:
        _tune(cfg, choices, lambda text, fields=None, listed=False: notes.append((text, fields or {}, listed)))
    if choices.prompt is not None:
        cfg.prompt = choices.prompt
    if choices.steps is not None:
        set_field(cfg, "train.steps", choices.steps)
    preset = {key: _get(cfg, key, None) for key in REFINEMENT}
    if parse is not None:
        cfg = parse(cfg)
    for key, value in (overrides or {}).items():
        set_field(cfg, key, value)
    if choices.load_config is None and _refines_a_run(cfg):
        chosen = {}
        for key, value in REFINEMENT.items():  # the values nobody typed
            if preset[key] is not None and _get(cfg, key, None) == preset[key] != value:
                set_field(cfg, key, value)
                chosen[key] = value
        if chosen:
            notes.append(("a mesh refining the run it starts from: ", chosen, True))
    check_generate_config(cfg, bounds)
    if say is not None and notes:
        say(_announcement(cfg, notes))
    return cfg


REFINEMENT = {"guidance.sds_until": 0.0, "renderer.tet_resolution": 48, "renderer.lr_material": 1e-3}
"""The defaults of a mesh initialised from a run (``--renderer.init-from``), where the user typed none of them (each
only where the run's objective and renderer have the field). Measured on the NeRF runs of seed 0 refined 100 steps
under the learned prior (docs/benchmarks.md, session 44): elbo's SDS warm-up is there to form a shape, and on one
already formed only brightens its colour (the torus's luminance 1.15 after 50 warm-up steps at CFG 2.5, 0.96 with
the likelihood from the first step); the default 32-cell tet grid (5 cm) rounds a cube's edges (completeness 0.0255
m, at 48 cells 0.0238); and the material's rate of a run from scratch (1e-2) lets the faces of a cube whose colour
the transfer already set drift apart (face spread 3.1 after one step, 11.0 after 100; at 1e-3 5.3)."""


def _refines_a_run(cfg: "GenerateConfig") -> bool:
    """A mesh run initialised from another run's scene (``--renderer.init-from``)."""
    return bool(getattr(cfg.renderer, "init_from", ""))


_MISSING = object()


def _get(cfg: Any, path: str, default: Any = _MISSING) -> Any:
    for part in path.split("."):
        if default is not _MISSING and not hasattr(cfg, part):
            return default
        cfg = getattr(cfg, part)
    return cfg


def _plain(value: Any) -> Any:
    """Tuples as lists (a config field holds a tuple where distillery.json has a list), to compare and print."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _announcement(cfg: "GenerateConfig", notes: list[tuple[str, dict, bool]]) -> str:
    """One line of what the presets chose, as the run will use it: a choice the typed overrides replaced is left out
    (a note whose every field was replaced is dropped) and the user's values are named at the end.

    Each note is (text, {dotted field: value it set}, listed); a listed note's text is followed by its fields that
    still hold their value, as ``key=value``."""
    parts, replaced = [], {}
    for text, fields, listed in notes:
        kept = {k: v for k, v in fields.items() if _plain(_get(cfg, k)) == _plain(v)}
        replaced.update({k: _get(cfg, k) for k in fields if k not in kept})
        if fields and not kept:
            continue
        parts.append(text + (", ".join(f"{k}={_plain(v)}" for k, v in kept.items()) if listed else ""))
    if replaced:
        parts.append("yours instead: " + ", ".join(f"{k}={_plain(v)}" for k, v in replaced.items()))
    return "; ".join(parts)


def _base(choices: Choices) -> "GenerateConfig":
    from engine.config import PRESETS, load_config

    if choices.load_config is not None:
        try:
            return load_config(choices.load_config)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    preset = _preset(choices)
    _known("preset", preset, PRESETS)
    return PRESETS[preset]()


DEFAULT_PRIOR = "shapes"
"""The prior of a run that names none: the built-in learned shapes prior (a Stable Diffusion folder, issue #12)."""


def _preset(choices: Choices) -> str:
    """The preset a run builds on: the one named, else "exemplar" for the closed-form shapes prior (whose calibration
    is GenerateConfig's own defaults) and "diffusion" for every other prior."""
    return choices.preset or ("exemplar" if (choices.prior or DEFAULT_PRIOR).strip() == "shapes-exemplar"
                              else "diffusion")


def _known(what: str, name: str, registry: Mapping) -> None:
    if name not in registry:
        raise ConfigError(f"--{what}: {name!r} is not one of {', '.join(sorted(registry))}")


def _components(cfg: "GenerateConfig", choices: Choices) -> str | None:
    """Rule 2: the prior, the objective (csm for an image prompt alone; the prior folder's recommended one when
    none is named and no saved config is loaded), the renderer and the device. Returns the recommended objective
    when it was taken, else None."""
    from guidance import GUIDANCES
    from guidance.priors import prior_objective
    from renderers import RENDERERS

    if choices.prior is not None:
        if not choices.prior.strip():
            raise ConfigError("--prior is empty; give shapes, a hub id or a model folder")
        cfg.prior.name = choices.prior
    guidance = choices.guidance
    if choices.image is not None and guidance is None and not hasattr(cfg.guidance, "image"):
        guidance = "csm"  # the objective with visual prompts
    recommended = None
    if guidance is None and choices.load_config is None:
        recommended = guidance = prior_objective(cfg.prior.name)
        if guidance is not None and guidance not in GUIDANCES:
            raise ConfigError(f"the prior {cfg.prior.name} recommends the objective {guidance!r}, which is not one "
                              f"of {', '.join(sorted(GUIDANCES))}; name one with --guidance")
    if guidance is not None:
        _known("guidance", guidance, GUIDANCES)
        if type(cfg.guidance) is not GUIDANCES[guidance]:
            cfg.guidance = GUIDANCES[guidance]()
    if choices.image is not None:
        if not hasattr(cfg.guidance, "image"):
            with_image = [n for n, c in GUIDANCES.items() if "image" in c.__dataclass_fields__]
            raise ConfigError(f"--image (a visual prompt) works with --guidance {' or '.join(with_image)}, "
                              f"not {type(cfg.guidance).__name__.removesuffix('Config').lower()}")
        set_field(cfg, "guidance.image", choices.image)
    if choices.renderer is not None:
        _known("renderer", choices.renderer, RENDERERS)
        if type(cfg.renderer) is not RENDERERS[choices.renderer]:
            cfg.renderer = RENDERERS[choices.renderer]()
    if choices.device is not None:
        set_field(cfg, "device", choices.device)
    return recommended


def _tune(cfg: "GenerateConfig", choices: Choices, say: Callable[..., None]) -> None:
    """Rules 3-5, for a config built from a preset; ``say(text, fields, listed)`` takes what they chose: a line, the
    dotted fields it set with their values (so that a typed override can take the line back) and whether the fields
    are to be listed after it."""
    from guidance.priors import is_exemplar, prior_world

    if _preset(choices) == "diffusion":
        line = _diffusion_defaults(cfg)
        if line:
            say(line)
    # Issue #17: on a shapes-world prior the renders are lit by the world's own key light (renderers/keylight.py: the
    # light its exemplars and the learned prior's training renders are lit by), so the colour field learns the albedo
    # instead of shaded colour; renderer.light overrides it. Gaussians always; the NeRF on the learned prior (its
    # exported cube's luminance 0.61 -> 0.97 of the truth, face spread 20 -> 6), not on the exemplar prior, where its
    # depth-normal shading lost 6.7 dB on the torus (docs/benchmarks.md, "Fidelity"); the mesh on the learned prior
    # (its environments are what the exemplar and light-aware priors show: a mesh refining a NeRF cone under them
    # exported luminance 2.09, under the key light 1.04; session 44).
    light = getattr(cfg.renderer, "light", None)
    if prior_world(cfg.prior.name) == "shapes" and (
            light == "none" or (light in ("dreamfusion", "env") and not is_exemplar(cfg.prior.name))):
        cfg.renderer.light = "shapes"
        say("renderer.light shapes (renders lit by the shapes world's key light)", {"renderer.light": "shapes"})
    from engine.config import component_names
    from guidance.priors import apply_prior_defaults
    objective, renderer = component_names(cfg)
    try:  # a prior folder's recommended settings (those for the run's objective, then its renderer, last); the
        # user's overrides win
        applied = apply_prior_defaults(cfg, objective=objective, renderer=renderer)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if applied:
        say(f"then the settings of the prior {cfg.prior.name}: ", applied, True)


def _diffusion_defaults(cfg: "GenerateConfig") -> str:
    """The diffusion preset's prior- and objective-dependent values (engine.config.tune_diffusion) for the device
    the run will use; "" for an exemplar prior (a CPU-world denoiser: nothing here applies)."""
    from engine.config import tune_diffusion
    from foundation.backend import no_cuda_device
    from guidance.priors import is_exemplar, prior_family

    if is_exemplar(cfg.prior.name):
        return ""
    # the device engine.train.resolve_device will pick (an explicit cuda without a GPU is refused there)
    cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and no_cuda_device() is None)
    return tune_diffusion(cfg, prior_family(cfg.prior.name), cuda)


# -- dotted overrides -----------------------------------------------------------------------------------------------
def _flag(path: str) -> str:
    return "--" + path.replace("_", "-")


def set_field(cfg: Any, key: str, value: Any) -> None:
    """Set the dotted field ``key`` of the dataclass ``cfg`` to ``value``, typed and checked like the command line:
    the value is read as the field's annotation (a string as a number, a boolean or whitespace-separated items) and
    each enclosing dataclass's own checks (``__post_init__``) run again, as tyro's instantiation runs them.
    ConfigError (naming the flag) otherwise."""
    path = key.strip().lstrip("-").replace("-", "_").split(".")
    if not all(path):
        raise ConfigError(f"{key!r} is not a field name")
    _set(cfg, path, value, "")


def _set(obj: Any, path: list[str], value: Any, where: str) -> None:
    """Set the field at ``path`` of ``obj`` in place, then re-check ``obj`` (innermost first, on the way back up)."""
    head, rest = path[0], path[1:]
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if head not in fields and not rest and head.startswith("no_") and head[3:] in fields and value is True:
        head, value = head[3:], False  # tyro's --x.no-flag
    here = f"{where}{head}"
    if head not in fields:
        raise ConfigError(f"unrecognised option {_flag(f'{where}{path[0]}')} (see engine generate --help for "
                          f"the fields)")
    ftype = typing.get_type_hints(type(obj))[head]
    current = getattr(obj, head)
    if rest and dataclasses.is_dataclass(current):
        _set(current, rest, value, f"{here}.")
        new = current
    elif rest and typing.get_origin(ftype) is dict and len(rest) == 1:
        new = {**current, rest[0]: _read(value, typing.get_args(ftype)[1], _flag(f"{here}.{rest[0]}"))}
    elif rest:
        raise ConfigError(f"unrecognised option {_flag(here + '.' + '.'.join(rest))} (see engine generate --help "
                          f"for the fields)")
    else:
        new = _read(value, ftype, _flag(here))
    setattr(obj, head, new)
    check = getattr(obj, "__post_init__", None)
    try:
        if check is not None:
            check()
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _read(value: Any, ftype: Any, flag: str) -> Any:
    """``value`` as the annotation ``ftype``; strings (CSV cells, the app's text field) are parsed first."""
    from engine.config import _check_value

    if isinstance(value, str) and ftype is not str:
        value = _parse_text(value, ftype)
    try:
        return _check_value(value, ftype, flag)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _parse_text(text: str, ftype: Any) -> Any:
    """A string in the form the annotation wants, where it is unambiguous; otherwise the string itself (which the
    type check then refuses with the field's name)."""
    args = [a for a in typing.get_args(ftype) if a is not type(None)]
    if typing.get_origin(ftype) in (typing.Union, types.UnionType) and len(args) == 1:
        if text.strip().lower() in ("none", ""):
            return None
        return _parse_text(text, args[0])
    if typing.get_origin(ftype) is tuple:
        items = text.replace(",", " ").split()
        inner = [args[0]] * len(items) if len(args) == 2 and args[1] is Ellipsis else args
        return [_parse_text(t, a) for t, a in zip(items, inner)] if len(inner) == len(items) else items
    word = text.strip()
    if ftype is bool and word.lower() in ("true", "false"):
        return word.lower() == "true"
    for kind in (int, float):
        if ftype is kind or (kind is int and ftype is float):
            try:
                return kind(word)
            except ValueError:
                continue
    return text


def flag_overrides(tokens: list[str]) -> dict[str, Any]:
    """``--a.b 1 2 --c.no-d`` -> {"a.b": ["1", "2"], "c.no-d": True}: command-line-style tokens as dotted
    overrides for ``compose`` (a flag without values is True; a number such as -10 is a value, not a flag)."""
    out: dict[str, Any] = {}
    key = None
    for tok in tokens:
        if tok.startswith("--") and not is_number(tok):
            name, eq, val = tok[2:].partition("=")
            key = name
            out[key] = [val] if eq else True
        elif key is None:
            raise ConfigError(f"{tok!r} is not an option (options start with --)")
        else:
            out[key] = [tok] if out[key] is True else [*out[key], tok]
    return {k: v if v is True else (v[0] if len(v) == 1 else " ".join(v)) for k, v in out.items()}


def is_number(tok: str) -> bool:
    """A token that is a number (so `-0.5` is a value, not an option)."""
    try:
        float(tok)
        return True
    except ValueError:
        return False


# -- the checks before any run folder exists ------------------------------------------------------------------------
def check_generate_config(cfg: "GenerateConfig", bounds: dict | None = None) -> None:
    """Everything about a config that can be refused before a run folder exists: the bounds of every field
    (engine.config.check_config), the prompt, the image prompt (fully decoded), the output folder. ConfigError."""
    from engine.config import check_config

    try:
        check_config(cfg, bounds)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not cfg.prompt.strip():
        raise ConfigError('the prompt is empty; e.g. engine generate "a red cube"')
    from guidance.priors import prior_world
    if prior_world(cfg.prior.name) == "shapes":  # a small world: a prompt it cannot show is refused up front
        from foundation.shapes import parse_prompt
        try:
            parse_prompt(cfg.prompt)
        except ValueError as e:
            raise PromptError(str(e)) from None
    image = getattr(cfg.guidance, "image", "")
    if image:
        from guidance.priors.visual_prompt import load_image
        try:
            load_image(image)
        except ValueError as e:
            raise ConfigError(str(e)) from None
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
        raise ConfigError(str(e)) from None
    parent = os.path.abspath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {parent} is not writable")
