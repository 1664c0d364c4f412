"""What names a prior and how it is loaded (``PriorConfig``), the priors shipped inside the package, and the cache
folder: the part of the priors package that every prior module imports (guidance/priors/__init__.py holds the
registry that builds them)."""

import os
from dataclasses import dataclass


@dataclass
class PriorConfig:
    """Which 2D prior guides the run, and how it is loaded."""

    name: str = "shapes-exemplar"
    """"shapes" (the learned shapes prior, a Stable Diffusion folder shipped with the package), "shapes-exemplar" (the
    closed-form exemplar prior of the same world: the exact-math reference, and these dataclass defaults' calibration),
    "materials", a folder with exemplars.safetensors, a diffusers hub id, or a local diffusers folder. The commands'
    default is "shapes" (engine/compose.py)."""
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
    geometry and lighting renders (guidance/priors/controlnet.py, DreamMat); "" means none."""
    controlnet_scale: float = 1.0
    """Scale of the ControlNet's residuals (diffusers' conditioning_scale)."""


SHAPES_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "shapes-sd")
BUILTIN_FOLDERS: dict[str, str] = {"shapes": SHAPES_FOLDER, "shapes-sd": SHAPES_FOLDER}
"""Priors shipped inside the package as diffusers folders, by name: ``shapes`` is the learned latent diffusion model
of the shapes world (engine/train_prior.py, docs/learned-prior.md), in Stable Diffusion's layout; ``shapes-sd`` is
its earlier name, kept so saved configs that use it still load."""

EXEMPLAR_BUILTINS = ("shapes-exemplar", "shapes-light", "materials")
"""Built-in closed-form exemplar priors (guidance/priors/shapes.py, materials.py): exact denoisers over renders of
the shapes and materials worlds, for the exact-math tests and the CPU calibration."""


def resolve_prior_folder(name: str) -> str:
    """The folder a built-in diffusers prior name stands for; any other name unchanged."""
    return BUILTIN_FOLDERS.get(name.strip(), name)


SHAPES_WORLD = ("shapes", "shapes-sd", "shapes-exemplar")
"""Prior names that model the built-in shapes world: their runs are evaluated against its ground truth."""

DEFAULTS_FILE = "distillery.json"
"""A prior folder's recommended run settings, {"defaults": {"train.steps": 600, "guidance.guidance_scale": 7.5}},
optionally the built-in world it models, {"world": "shapes"} (its runs are then evaluated against that world's
ground truth, as the built-in priors' are), optionally the objective for a run that names none,
{"objective": "elbo"} (engine/compose.py rule 2), and optionally settings for one objective's runs only,
{"defaults_by_objective": {"elbo": {"cameras.batch_size": 4}}} (applied after "defaults")."""


def _folder_settings(name: str) -> dict:
    """The prior folder's distillery.json as a dict; {} when there is none or it cannot be read."""
    import json

    path = os.path.join(resolve_prior_folder(name.strip()), DEFAULTS_FILE)
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def prior_world(name: str) -> str | None:
    """"shapes" when the prior named ``name`` models the built-in shapes world (a built-in name, or a folder whose
    distillery.json says so: what `engine train-prior shapes` writes); None otherwise, or when it cannot be read."""
    name = name.strip()
    if name in SHAPES_WORLD:
        return "shapes"
    return "shapes" if _folder_settings(name).get("world") == "shapes" else None


def prior_objective(name: str) -> str | None:
    """The objective (a key of guidance.GUIDANCES) the prior folder named ``name`` recommends for a run that names
    none: its distillery.json's "objective"; None when it names none (the preset's objective, SDS, is used)."""
    objective = _folder_settings(name).get("objective")
    return objective if isinstance(objective, str) and objective else None


def cache_dir(cfg: PriorConfig) -> str:
    """The cache folder in force for ``cfg``."""
    return cfg.cache_dir or os.environ.get("DISTILLERY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                               "distillery")
