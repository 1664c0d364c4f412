"""2D priors behind the Prior protocol, chosen by one name: "shapes", an exemplar folder, a hub id or a model folder.

- "shapes": the built-in learned prior of the shapes world (coloured primitives, foundation/shapes.py), a Stable
  Diffusion folder shipped with the package (guidance/priors/weights/shapes-sd, made by `engine train-prior shapes`),
  loaded by exactly the code that loads any diffusers folder (SD 2.1 included). "shapes-sd" is its earlier name.
- "shapes-exemplar": the closed-form exemplar prior of the same world (an exact denoiser over its renders): the
  exact-math reference of the objectives' tests. "shapes-light" is its light-aware variant (the texture preset's).
- "materials": the built-in prior over the tileable materials world (foundation/materials.py,
  guidance/priors/materials.py).
- a folder holding ``exemplars.safetensors``: a user's exemplar prior (guidance/priors/exemplar.py).
- anything else: a diffusers model, by hub id or local folder (guidance/priors/stable_diffusion.py); the pipeline
  class is read from the folder's model_index.json.
"""

import os

import torch

from guidance.priors.base import Cond, Prior, PriorContext, PriorError
from guidance.priors.config import (
    BUILTIN_FOLDERS,
    DEFAULTS_FILE,
    EXEMPLAR_BUILTINS,
    SHAPES_WORLD,
    PriorConfig,
    cache_dir,
    prior_objective,
    prior_world,
    resolve_prior_folder,
)


def apply_prior_defaults(cfg, name: str | None = None, objective: str | None = None,
                         renderer: str | None = None) -> dict:
    """Apply the recommended defaults of the prior folder named by ``cfg.prior.name`` (its distillery.json) to the
    run config ``cfg``, in place; returns {dotted key: value as set} for each applied one (empty when the folder has
    none).

    "defaults" apply to every run; then "defaults_by_objective"[``objective``] (the run's, a key of guidance.GUIDANCES)
    (a setting one objective wants and another does not, e.g. four views a step for elbo, which draws VSD's particle
    into a sphere); then "defaults_by_objective_and_renderer"[``objective``][``renderer``] (a key of
    renderers.RENDERERS: a setting one renderer wants under that objective, e.g. a lower warm-up CFG for the NeRF
    under elbo). Keys are dotted field paths of the run config. A key whose last field the chosen component lacks
    (e.g. a CFG scale for an objective without one) is skipped; an unknown path is the folder's error (ValueError).
    """
    import json

    folder = resolve_prior_folder(name if name is not None else cfg.prior.name)
    path = os.path.join(folder, DEFAULTS_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            doc = json.load(f)
        defaults = dict(doc.get("defaults", {}))
        by_objective = doc.get("defaults_by_objective", {})
        defaults.update(by_objective.get(objective, {}) if objective else {})
        by_pair = doc.get("defaults_by_objective_and_renderer", {})
        defaults.update(by_pair.get(objective, {}).get(renderer, {}) if objective and renderer else {})
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise ValueError(f"cannot read the prior's defaults {path}: {e}") from None
    applied = {}
    for key, value in defaults.items():
        if _set_default(cfg, key, value, path):
            applied[key] = _field(cfg, key)
    return applied


def _field(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _set_default(cfg, key: str, value, path: str) -> bool:
    """Set the dotted ``key`` of ``cfg`` to ``value`` (a list becomes a tuple); False (nothing set) for a guidance /
    renderer field the chosen component lacks, ValueError for an unknown path."""
    import dataclasses

    *parents, leaf = key.split(".")
    obj = cfg
    for part in parents:
        if not dataclasses.is_dataclass(obj) or not hasattr(obj, part):
            raise ValueError(f"{path}: unknown setting {key!r}")
        obj = getattr(obj, part)
    if not dataclasses.is_dataclass(obj):
        raise ValueError(f"{path}: unknown setting {key!r}")
    if leaf not in {f.name for f in dataclasses.fields(obj)}:
        if parents and parents[0] in ("guidance", "renderer"):
            return False  # the chosen objective / renderer has no such field
        raise ValueError(f"{path}: unknown setting {key!r}")
    setattr(obj, leaf, tuple(value) if isinstance(value, list) else value)
    return True


def is_exemplar(name: str) -> bool:
    """True for a closed-form exemplar prior (a built-in one or a folder holding exemplars.safetensors)."""
    name = name.strip()
    return name in EXEMPLAR_BUILTINS or os.path.isfile(os.path.join(name, "exemplars.safetensors"))


def build_prior(cfg: PriorConfig, device: torch.device | str = "cpu", context: PriorContext | None = None) -> Prior:
    """Build the prior named by ``cfg.name``; raises PriorError with a user-facing message when it cannot.

    ``context`` is what the run tells the priors that depend on it (the light-aware shapes prior: the prompt's
    shape and the renders' lighting conditions); the others ignore it."""
    name = cfg.name.strip()
    if not name:
        raise PriorError("no prior given; use --prior shapes, a diffusers hub id or a model folder")
    if cfg.controlnet and is_exemplar(name):
        raise PriorError("prior.controlnet needs a diffusers Stable Diffusion prior, not an exemplar prior")
    if name == "shapes-exemplar":
        from guidance.priors.shapes import ShapesPrior
        return ShapesPrior(cfg, device)
    if name == "shapes-light":  # the texture preset's prior, lit as the run's renders are
        from guidance.priors.shapes import LightAwareShapesPrior
        return LightAwareShapesPrior.for_run(cfg, context or PriorContext(), device)
    if name == "materials":  # the materials world (foundation/materials.py), issue #16
        from guidance.priors.materials import MaterialsPrior
        return MaterialsPrior(cfg, device)
    if os.path.isfile(os.path.join(name, "exemplars.safetensors")):
        from guidance.priors.exemplar import ExemplarPrior
        return ExemplarPrior.from_folder(name, cfg, device)
    if name in BUILTIN_FOLDERS:
        if not os.path.isfile(os.path.join(BUILTIN_FOLDERS[name], "model_index.json")):
            raise PriorError(f"the built-in prior {name!r} is missing from this install ({BUILTIN_FOLDERS[name]}); "
                             f"reinstall the package or train it with `engine train-prior shapes --out DIR`")
        name = BUILTIN_FOLDERS[name]
    from guidance.priors.stable_diffusion import load_diffusers_prior
    prior = load_diffusers_prior(name, cfg, device)
    if cfg.controlnet:
        from guidance.priors.controlnet import ControlNetPrior
        return ControlNetPrior.load(prior, cfg.controlnet, cfg.controlnet_scale)
    return prior


FAMILIES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl", "IFPipeline": "if"}
"""model_index.json ``_class_name`` -> prior family, which the diffusion preset's defaults depend on."""


def prior_family(name: str) -> str | None:
    """"sd", "sdxl" or "if" for a diffusers prior, read from its model_index.json without loading any weights; None
    for exemplar priors and for a model that cannot be found yet (building it then gives the clear error)."""
    name = name.strip()
    if not name or is_exemplar(name):
        return None
    from guidance.priors.stable_diffusion import ModelSource
    try:
        return FAMILIES.get(ModelSource.resolve(resolve_prior_folder(name)).pipeline_class)
    except PriorError:
        return None


__all__ = ["BUILTIN_FOLDERS", "EXEMPLAR_BUILTINS", "SHAPES_WORLD", "Cond", "Prior", "PriorConfig", "PriorContext",
           "PriorError", "apply_prior_defaults", "build_prior", "cache_dir", "is_exemplar", "prior_objective",
           "prior_world", "prior_family", "resolve_prior_folder"]
