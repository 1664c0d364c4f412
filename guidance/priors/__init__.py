"""2D priors behind the Prior protocol, chosen by one name: "shapes", an exemplar folder, a hub id or a model folder.

- "shapes": the built-in exemplar prior over renders of coloured primitives (engine/shapes.py).
- "materials": the built-in prior over the tileable materials world (engine/materials.py, guidance/priors/materials.py).
- "shapes-sd": the built-in learned prior of the same world, a Stable Diffusion folder shipped with the package
  (guidance/priors/weights/shapes-sd), loaded by the same code as any diffusers folder.
- a folder holding ``exemplars.safetensors``: a user's exemplar prior (guidance/priors/exemplar.py).
- anything else: a diffusers model, by hub id or local folder (guidance/priors/stable_diffusion.py); the pipeline
  class is read from the folder's model_index.json.
"""

import os
from dataclasses import dataclass

import torch

from guidance.priors.base import Cond, Prior, PriorError


@dataclass
class PriorConfig:
    """Which 2D prior guides the run, and how it is loaded."""

    name: str = "shapes"
    """"shapes", "shapes-sd" (the learned shapes prior), a folder with exemplars.safetensors, a diffusers hub id, or a
    local diffusers folder."""
    kappa: float = 150.0
    """Exemplar priors: camera-kernel sharpness, log k = kappa * cos(angle between view directions)."""
    data_sigma: float = 0.0
    """Exemplar priors: each exemplar is a Gaussian of this std (pixel units in [-1,1]); > 0 makes the denoiser give
    back its input below that noise level, as a trained network does (guidance/priors/exemplar.py). 0: exact
    nearest-exemplar denoiser."""
    resolution: int = 0
    """Side of the image the prior sees; 0 means the prior's native size (64 for shapes, the UNet's for diffusers)."""
    dtype: str = "auto"
    """"auto" (fp16 on CUDA, fp32 on CPU), "float16", "bfloat16" or "float32"."""
    vae_sample: bool = True
    """Latent priors: encode with a posterior sample (threestudio) rather than the posterior mean."""
    cache_dir: str = ""
    """Where priors cache renders and text embeddings; "" means $DISTILLERY_CACHE or ~/.cache/distillery."""
    ip_adapter: str = ""
    """Optional IP-Adapter (hub id or folder) for visual prompts."""
    ip_adapter_scale: float = 1.0
    """IP-Adapter attention scale."""
    text_encoder_offload: str = "auto"
    """Diffusers priors, after embedding prompts: "keep" the text encoders on the device, move them to "cpu", or
    "free" them (reloaded from disk only for a new prompt); "auto" frees DeepFloyd IF's T5 after each call, and every
    encoder once the run's prompts are all embedded (the training loop calls ``release_text_encoders``)."""
    vae: str = ""
    """Latent priors: a diffusers AutoencoderKL (hub id or folder) to use instead of the model's own VAE, e.g.
    "madebyollin/sdxl-vae-fp16-fix", SDXL's VAE retrained not to overflow in fp16 (it then runs in the prior's dtype
    instead of fp32, about half the VAE memory at 1024²)."""
    vae_dtype: str = "auto"
    """Latent priors: the VAE's dtype, "auto" (fp32 for SDXL's own VAE, which overflows in fp16; the prior's dtype
    otherwise), "float16", "bfloat16" (no overflow: bf16 has fp32's range) or "float32"."""
    fp16_variant: bool = True
    """Diffusers priors in fp16 / bf16: load the repository's fp16 weight files (variant="fp16") where it has them,
    half the download and disk (DeepFloyd IF's T5 alone is about 19 GB in fp32)."""
    attention_slicing: bool = False
    """Diffusers priors: sliced attention in the UNet (less memory, slower); otherwise torch SDPA."""
    embed_cache: bool = True
    """Diffusers priors: cache text embeddings on disk under the cache folder, per (model, prompt)."""
    controlnet: str = ""
    """Diffusers SD priors: a light-aware ControlNet (hub id or diffusers folder) conditioned on the mesh scene's
    geometry and lighting renders (guidance/controlnet.py, DreamMat); "" means none."""
    controlnet_scale: float = 1.0
    """Scale of the ControlNet's residuals (diffusers' conditioning_scale)."""


BUILTIN_FOLDERS: dict[str, str] = {
    "shapes-sd": os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "shapes-sd"),
}
"""Priors shipped inside the package as diffusers folders, by name: ``shapes-sd`` is the learned latent diffusion
model of the shapes world (engine/train_prior.py, docs/learned-prior.md), in Stable Diffusion's layout."""


def resolve_prior_folder(name: str) -> str:
    """The folder a built-in diffusers prior name stands for; any other name unchanged."""
    return BUILTIN_FOLDERS.get(name.strip(), name)


SHAPES_WORLD = ("shapes", "shapes-sd")
"""Prior names that model the built-in shapes world: their runs are evaluated against its ground truth."""

DEFAULTS_FILE = "distillery.json"
"""A prior folder's recommended run settings: {"defaults": {"train.steps": 600, "guidance.guidance_scale": 7.5}}."""


def apply_prior_defaults(cfg, name: str | None = None) -> list[str]:
    """Apply the recommended defaults of the prior folder named by ``cfg.prior.name`` (its distillery.json) to the
    run config ``cfg``, in place; returns "key=value" for each applied one (empty when the folder has none).

    Keys are dotted field paths of the run config. A key whose last field the chosen component lacks (e.g. a CFG
    scale for an objective without one) is skipped; an unknown path is the folder's error (ValueError).
    """
    import dataclasses
    import json

    folder = resolve_prior_folder(name if name is not None else cfg.prior.name)
    path = os.path.join(folder, DEFAULTS_FILE)
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as f:
            defaults = json.load(f).get("defaults", {})
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"cannot read the prior's defaults {path}: {e}") from None
    applied = []
    for key, value in defaults.items():
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
                continue  # the chosen objective / renderer has no such field
            raise ValueError(f"{path}: unknown setting {key!r}")
        setattr(obj, leaf, tuple(value) if isinstance(value, list) else value)
        applied.append(f"{key}={value}")
    return applied


def cache_dir(cfg: PriorConfig) -> str:
    """The cache folder in force for ``cfg``."""
    return cfg.cache_dir or os.environ.get("DISTILLERY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                               "distillery")


def build_prior(cfg: PriorConfig, device: torch.device | str = "cpu") -> Prior:
    """Build the prior named by ``cfg.name``; raises PriorError with a user-facing message when it cannot."""
    name = cfg.name.strip()
    if not name:
        raise PriorError("no prior given; use --prior shapes, a diffusers hub id or a model folder")
    exemplar = name in ("shapes", "materials") or os.path.isfile(os.path.join(name, "exemplars.safetensors"))
    if cfg.controlnet and exemplar:
        raise PriorError("prior.controlnet needs a diffusers Stable Diffusion prior, not an exemplar prior")
    if name == "shapes":
        from guidance.priors.shapes import ShapesPrior
        return ShapesPrior(cfg, device)
    if name == "materials":  # the materials world (engine/materials.py), issue #16
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
        from guidance.controlnet import ControlNetPrior
        return ControlNetPrior.load(prior, cfg.controlnet, cfg.controlnet_scale)
    return prior


FAMILIES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl", "IFPipeline": "if"}
"""model_index.json ``_class_name`` -> prior family, which the diffusion preset's defaults depend on."""


def prior_family(name: str) -> str | None:
    """"sd", "sdxl" or "if" for a diffusers prior, read from its model_index.json without loading any weights; None
    for exemplar priors and for a model that cannot be found yet (building it then gives the clear error)."""
    name = name.strip()
    if not name or name == "shapes" or os.path.isfile(os.path.join(name, "exemplars.safetensors")):
        return None
    from guidance.priors.stable_diffusion import ModelSource
    try:
        return FAMILIES.get(ModelSource.resolve(resolve_prior_folder(name)).pipeline_class)
    except PriorError:
        return None


__all__ = ["BUILTIN_FOLDERS", "SHAPES_WORLD", "Cond", "Prior", "PriorConfig", "PriorError", "apply_prior_defaults",
           "build_prior", "cache_dir", "prior_family", "resolve_prior_folder"]
