"""Typed configuration of a generation run, its presets, and the replayable config.yaml.

``GenerateConfig`` holds one chosen guidance config and one chosen renderer config (the registries in guidance/ and
renderers/ map CLI names to config classes). A preset only sets values; it never adds flags.
"""

import dataclasses
import math
import os
import re
import secrets
import time
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

import yaml

from engine.anchor import AnchorConfig
from foundation.cameras import CameraConfig
from guidance import GUIDANCES
from guidance.priors import PriorConfig
from guidance.prompts import PromptConfig
from renderers import RENDERERS
from renderers.base import BackgroundConfig

GuidanceConfig = Union[tuple(GUIDANCES.values())]  # type: ignore[valid-type]
RendererConfig = Union[tuple(RENDERERS.values())]  # type: ignore[valid-type]


@dataclass
class TrainConfig:
    """The optimisation loop: length, logging, previews, checkpoints and the final video."""

    steps: int = 400
    """Optimisation steps."""
    lr_scale: float = 1.0
    """Multiplies every learning rate of the scene."""
    log_every: int = 10
    """Write a metrics.jsonl row every N steps."""
    preview_every: int = 100
    """Save previews/step_XXXXXX.png every N steps (0 disables)."""
    checkpoint_every: int = 100
    """Save ckpts/step_XXXXXX.safetensors every N steps (0: only at the end and on interrupt)."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep (the newest)."""
    video_frames: int = 48
    """Frames of the 360 degree turntable video (0 disables the video)."""
    video_resolution: int = 128
    """Side of the turntable frames in pixels."""
    eval_views: int = 8
    """Held-out views for the ground-truth evaluation (shapes prior only)."""
    eval_every: int = 0
    """Also evaluate against ground truth every N steps into metrics.jsonl (shapes prior; 0 disables)."""
    progress: bool = True
    """Show a progress bar."""
    export: bool = True
    """Export RUN/export/model.glb (and model_splats.ply for Gaussians) when the run completes."""
    export_texture_size: int = 512
    """Side of the textures baked by the automatic export (engine export RUN --texture-size N redoes it larger)."""

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"train.steps must be >= 0, got {self.steps}")


def _default_guidance():
    return GUIDANCES["sds"](guidance_scale=1.0, cfg_convention="standard")


def _default_renderer():
    return RENDERERS["nerf"]()


@dataclass
class GenerateConfig:
    """One text-to-3D run."""

    prompt: str = ""
    """What to generate, e.g. "a red cube"."""
    negative_prompt: str = ""
    """Negative prompt (the CFG "uncond" condition)."""
    guidance: GuidanceConfig = field(default_factory=_default_guidance)
    """The objective; chosen with --guidance NAME."""
    renderer: RendererConfig = field(default_factory=_default_renderer)
    """The 3D representation; chosen with --renderer NAME."""
    prior: PriorConfig = field(default_factory=PriorConfig)
    """The 2D prior; --prior NAME sets prior.name."""
    cameras: CameraConfig = field(default_factory=CameraConfig)
    """Training camera distribution."""
    prompts: PromptConfig = field(default_factory=PromptConfig)
    """View-dependent prompting."""
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    """Background behind the object."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Loop length, logging, previews, checkpoints, video."""
    anchor: AnchorConfig = field(default_factory=AnchorConfig)
    """Anchor views: reference images the prior commits to, fitted beside the objective (engine/anchor.py)."""
    regularizers: dict[str, float] = field(default_factory=dict)
    """Weights of the scene's regularisers by name (unset names use the scene's defaults); the names are the
    renderer config's ``REGULARIZERS``, and any other is refused (check_config)."""
    particles: int = 1
    """Number of scenes optimised together (VSD particles); the camera batch is a multiple of it."""
    resolution: int = 64
    """Side of the training renders in pixels."""
    seed: int = 0
    """Seed of the run's single generator (cameras, timesteps, noise, initialisation)."""
    device: str = "auto"
    """"auto" (cuda when available), "cpu" or "cuda"."""
    out: str = ""
    """The run folder itself; "" means outputs/<prompt-slug>/<timestamp>/."""

    def __post_init__(self) -> None:
        if self.particles < 1:
            raise ValueError(f"particles must be >= 1, got {self.particles}")
        if self.resolution < 8:
            raise ValueError(f"resolution must be at least 8 pixels, got {self.resolution}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


def component_name(obj: Any, registry: dict[str, type]) -> str:
    """The registry key of a config instance."""
    for name, cls in registry.items():
        if type(obj) is cls:
            return name
    raise ValueError(f"{type(obj).__name__} is not registered (known: {', '.join(registry)})")


def component_names(cfg: "GenerateConfig") -> tuple[str, str]:
    """The registry keys of a run config's objective and renderer."""
    return component_name(cfg.guidance, GUIDANCES), component_name(cfg.renderer, RENDERERS)


def slug(text: str, limit: int = 48) -> str:
    s = re.sub(r"[^a-zA-Z0-9]+", "-", text.strip().lower()).strip("-")
    return s[:limit].rstrip("-") or "run"


def default_run_dir(prompt: str) -> str:
    """outputs/<slug>/<timestamp>-<random>: two runs of one prompt started in the same second get distinct folders
    (the folder is then created with exist_ok=False by the loop, so a clash can never be shared)."""
    return os.path.join("outputs", slug(prompt), f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")


# -- presets --------------------------------------------------------------------------------------------------------
def preset_exemplar() -> GenerateConfig:
    """The closed-form shapes prior ("shapes-exemplar"): exemplar orbit, CFG 1 (calibrated in
    exemplar-calibration.md); these are GenerateConfig's own defaults. The learned "shapes" prior, the commands'
    default, takes the diffusion preset with its folder's recommended settings instead (engine/compose.py)."""
    return GenerateConfig()


def preset_diffusion() -> GenerateConfig:
    """Real use with a Stable-Diffusion-family prior (DreamFusion-SD reference defaults, guidance-spec §2.1); the
    prior is the built-in learned "shapes" one until --prior names another (its folder's distillery.json then sizes
    the run for its 64 px world: engine/compose.py)."""
    return GenerateConfig(
        guidance=GUIDANCES["sds"](guidance_scale=100.0, cfg_convention="threestudio"),
        prior=PriorConfig(name="shapes"),
        cameras=CameraConfig(azimuth=(-180.0, 180.0), elevation=(-10.0, 45.0), distance=(2.0, 2.6),
                             fovy=(40.0, 70.0)),
        background=BackgroundConfig(kind="random"),
        train=TrainConfig(steps=10000, preview_every=500, checkpoint_every=1000),
    )


# -- material preset (issue #16): `engine material` over the materials world ------------------------------------------
def preset_material() -> GenerateConfig:
    """`engine material` on the materials prior: a flat sample (renderers/material.py) seen from grazing (30 degrees)
    to overhead, windows of about 1.2-1.6 tiles; no turntable; the maps are written at train.export-texture-size."""
    return GenerateConfig(
        renderer=RENDERERS["material"](),
        prior=PriorConfig(name="materials"),
        cameras=CameraConfig(elevation=(30.0, 89.0), distance=(1.6, 2.2), eval_elevation=50.0),
        prompts=PromptConfig(view_dependent=False),
        train=TrainConfig(steps=300, video_frames=0, export_texture_size=1024),
    )


# -- texture preset (issue #14): `engine texture MESH PROMPT`, the materials of a given mesh ---------------------------
TEXTURE_TRAIN_ENVS = ("studio", "sky", "rgb")
TEXTURE_HELD_OUT_ENV = "sunset"


def texture_warmup(steps: int) -> int:
    """The texture preset's ``material_warmup`` for a run of ``steps``: roughness and metallic held for the first
    half, while the albedo settles (docs/benchmarks.md, "Goal 3 met (session 23)")."""
    return steps // 2


def preset_texture() -> GenerateConfig:
    """`engine texture` (engine/texture.py): relightable PBR materials for the mesh at --renderer.mesh-path, its
    geometry fixed. Each view is shaded under one of three training environments at one of four rotations, and the
    light-aware shapes prior's exemplars are lit the same way (DreamMat's discouragement of baked lighting); the
    held-out environment is the evaluation one. SDS at CFG 1, standard convention (the shapes prior's calibrated
    setting); two views a step, 150 steps, roughness and metallic held for the first half (``material_warmup``),
    128-texel textures, no turntable. The views are the light-aware prior's own grid (azimuth every 30 degrees,
    elevation -40 to 40 every 20), so the bottom is textured too and every training view has an exemplar taken from
    exactly there (``texture_cameras``)."""
    steps = 150
    return GenerateConfig(
        renderer=RENDERERS["mesh"](mode="fixed", envs=TEXTURE_TRAIN_ENVS, env_rotations=4,
                                   eval_env=TEXTURE_HELD_OUT_ENV, texture_resolution=128, lr_material=1e-2,
                                   material_warmup=texture_warmup(steps)),
        prior=PriorConfig(name="shapes-light"),
        cameras=texture_cameras(light_aware=True, batch_size=2),
        train=TrainConfig(steps=steps, preview_every=0, checkpoint_every=50, video_frames=0, eval_views=0,
                          export_texture_size=128),
    )


def texture_cameras(light_aware: bool, batch_size: int) -> CameraConfig:
    """The texture runs' training views. With the light-aware shapes prior: its exemplar grid (guidance/priors/
    shapes.py ``LIGHT_AZIMUTH_STEP``, ``LIGHT_ELEVATIONS``), views from below included. Between grid views its
    target would be the nearest exemplar, turned up to 15 degrees: on the red cube that left a 17/255 face spread
    and a green cone's chromaticity at 0.062 (0.005 on the grid). With any other prior: the usual orbit, elevation 0-40
    degrees at any angle (a diffusion model has seen few objects from below)."""
    if not light_aware:
        return CameraConfig(elevation=(0.0, 40.0), batch_size=batch_size)
    from guidance.priors.shapes import LIGHT_AZIMUTH_STEP, LIGHT_ELEVATIONS
    el_step = LIGHT_ELEVATIONS[1] - LIGHT_ELEVATIONS[0]
    return CameraConfig(elevation=(min(LIGHT_ELEVATIONS), max(LIGHT_ELEVATIONS)), batch_size=batch_size,
                        azimuth_step=LIGHT_AZIMUTH_STEP, elevation_step=el_step)


PRESETS = {"exemplar": preset_exemplar, "diffusion": preset_diffusion, "material": preset_material,
           "texture": preset_texture}


# -- the diffusion preset, by prior family and objective (issue 13) --------------------------------------------------
SDS_SCALE_BY_FAMILY = {"sd": 100.0, "sdxl": 100.0, "if": 20.0}
"""SDS's CFG scale (threestudio convention) per prior family: dreamfusion-sd.yaml uses 100, dreamfusion-if.yaml 20."""
GPU_RESOLUTION = {"vsd": 512, "ism": 512, "tsm": 512, "csm": 512}
"""Render side on a GPU per objective, from the papers: ProlificDreamer renders its NeRF at 512 (threestudio's
prolificdreamer.yaml grows 64 -> 512), LucidDreamer (ISM), Dreamer XL (TSM) and TV-3DG (CSM) render at 512. The
others keep DreamFusion's 64 (sds, csd) or ScaleDreamer's NeRF setting (asd, 64)."""
BACKGROUND_AUGMENT = {"ism": 0.5, "tsm": 0.5, "csm": 0.5}
"""Share of training renders whose background becomes a random colour (``background.augment``), per objective:
LucidDreamer's recipe (ISM) renders on white with ``bg_aug_ratio`` 0.5 (half of those a random colour, half black;
here all random), and Dreamer XL (TSM) and TV-3DG (CSM) train on its code base. Without it, ISM's inversion target
accepts a half-transparent object on the white background as a lighter one: on the learned shapes prior the NeRF
"blue torus" ended with a mean opacity of 0.55 in its silhouette and read as white (docs/learned-prior.md)."""
GPU_NERF_FIELD = {"levels": 16, "max_resolution": 2048, "mlp_width": 64}
"""threestudio's implicit-volume hash grid (16 levels, N_min 16, per-level scale 1.4473 -> N_max 2048, F = 2,
T = 2^19) with a 64-wide MLP, instead of the CPU-sized field (4 levels, N_max 64, width 32)."""


def tune_diffusion(cfg: GenerateConfig, family: str | None, cuda: bool) -> str:
    """Set the diffusion preset's prior- and objective-dependent values on ``cfg`` (in place, before the user's typed
    overrides) and return one line saying what was chosen.

    ``family`` is "sd", "sdxl" or "if" (from the model's model_index.json; None when it cannot be read yet: SD values),
    ``cuda`` whether the run will use a GPU. On a CPU the render side and the NeRF field stay CPU-sized.
    """
    from renderers.nerf import NeRFConfig

    family = family or "sd"
    name = component_name(cfg.guidance, GUIDANCES)
    said = [f"{family} prior", name]
    if name in ("sds", "elbo") and hasattr(cfg.guidance, "guidance_scale"):  # elbo's is its SDS warm-up's
        cfg.guidance.guidance_scale = SDS_SCALE_BY_FAMILY[family]
        cfg.guidance.cfg_convention = "threestudio"
    if hasattr(cfg.guidance, "guidance_scale"):
        said.append(f"CFG {cfg.guidance.guidance_scale:g}")
    if name == "csd" and family in ("sd", "sdxl"):
        # CSD's reference configs: csd-if.yaml (DeepFloyd, pixels) weighs t uniformly, csd-sd-refine.yaml (SD 2.1)
        # by w(t) = 1 - abar_t (guidance-spec §2.6). On the shipped shapes prior the uniform weight drew a pink-red
        # cube (closest colour orange, 13.3 dB); 1 - abar_t a red one (16.0 dB; docs/benchmarks.md, session 32).
        cfg.guidance.weighting = "sds"
        said.append("w(t) = 1 - abar_t (csd-sd)")
    if name in BACKGROUND_AUGMENT:
        cfg.background.augment = BACKGROUND_AUGMENT[name]
        said.append(f"background augmentation {cfg.background.augment:g}")
    if cuda:
        res = 64 if family == "if" else (512 if family == "sdxl" else GPU_RESOLUTION.get(name, 64))
        cfg.resolution = res
        if isinstance(cfg.renderer, NeRFConfig):
            for k, v in GPU_NERF_FIELD.items():
                setattr(cfg.renderer, k, v)
            said.append(f"NeRF field {GPU_NERF_FIELD['levels']} levels, N_max {GPU_NERF_FIELD['max_resolution']}, "
                        f"width {GPU_NERF_FIELD['mlp_width']}")
    said.append(f"renders {cfg.resolution} px" + ("" if cuda else " (CPU sizes: no GPU)"))
    return "diffusion preset: " + ", ".join(said)


# -- config.yaml ----------------------------------------------------------------------------------------------------
def to_dict(cfg: GenerateConfig) -> dict:
    """A plain dict for config.yaml; the chosen components are recorded by registry name."""
    d = dataclasses.asdict(cfg)
    d["guidance"] = {"name": component_name(cfg.guidance, GUIDANCES), **dataclasses.asdict(cfg.guidance)}
    d["renderer"] = {"name": component_name(cfg.renderer, RENDERERS), **dataclasses.asdict(cfg.renderer)}
    return d


def _check_value(value, ftype, where: str):
    """``value`` checked against the annotation ``ftype`` (the types tyro parses on the command line): bool, int,
    float (an int is accepted), str, ``X | None``, fixed and variadic tuples, ``dict[str, X]`` and nested dataclasses.
    Returns the value in the annotated form (lists become tuples); ValueError names the field otherwise."""
    origin, args = typing.get_origin(ftype), typing.get_args(ftype)
    if dataclasses.is_dataclass(ftype):
        return _build(ftype, value, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _check_value(value, inner[0], where)
        raise ValueError(f"{where}: cannot check a value of type {ftype}")
    if ftype is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {type(value).__name__}")
        return value
    if ftype is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {type(value).__name__}")
        return value
    if ftype is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {type(value).__name__}")
        return float(value)
    if ftype is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            if len(value) > MAX_LIST:
                raise ValueError(f"{where}: at most {MAX_LIST} items, got {len(value)}")
            return tuple(_check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
        if len(value) > MAX_LIST:
            raise ValueError(f"{where}: at most {MAX_LIST} entries, got {len(value)}")
        return {_check_value(k, args[0], f"{where} key"): _check_value(v, args[1], f"{where}.{k}")
                for k, v in value.items()}
    raise ValueError(f"{where}: cannot check a value of type {ftype}")


def _build(cls: type, data: dict, where: str):
    """Instantiate dataclass ``cls`` from a plain dict, recursively and strictly: unknown keys and values of the
    wrong type are errors (ValueError naming the field), missing keys take their defaults."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    kwargs = {name: _check_value(value, hints[name], f"{where}.{name}" if where != "config" else name)
              for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # the config's own __post_init__ checks
        raise ValueError(f"{where}: {e}") from None


def _build_component(data, registry: dict[str, type], where: str):
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping with a name, got {type(data).__name__}")
    data = dict(data)
    name = data.pop("name", None)
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"{where}.name must be one of {', '.join(registry)}, got {name!r}")
    return _build(registry[name], data, where)


def from_dict(d: dict) -> GenerateConfig:
    """GenerateConfig from a config.yaml mapping, type-checked and bounded like the command line (check_config)."""
    if not isinstance(d, dict):
        raise ValueError(f"expected a mapping of settings, got {type(d).__name__ if d is not None else 'nothing'}")
    d = dict(d)
    guidance = _build_component(d.pop("guidance", None), GUIDANCES, "guidance")
    renderer = _build_component(d.pop("renderer", None), RENDERERS, "renderer")
    cfg = _build(GenerateConfig, d, "config")
    cfg.guidance = guidance if guidance is not None else cfg.guidance
    cfg.renderer = renderer if renderer is not None else cfg.renderer
    check_config(cfg)
    return cfg


# -- bounds: the one declarative place every entry point checks (CLI, --load-config, --resume, the app) -----------
MAX_LIST = 64
"""Longest list or mapping a config may hold (a YAML alias bomb is refused by this and the typed checks)."""
INT_BOUND = 10**9
FLOAT_BOUND = 1e9
"""Fields without an entry in BOUNDS: integers in [-INT_BOUND, INT_BOUND], floats finite with |x| <= FLOAT_BOUND."""
BOUNDS: dict[str, tuple[float, float]] = {
    "seed": (0, 2**63 - 1),
    "resolution": (8, 2048),
    "particles": (1, 16),
    "cameras.batch_size": (1, 64),
    "cameras.fovy": (1.0, 179.0),
    "cameras.distance": (1e-3, 1e3),
    "train.steps": (0, 10_000_000),
    "train.log_every": (1, 10_000_000),
    "train.preview_every": (0, 10_000_000),
    "train.checkpoint_every": (0, 10_000_000),
    "train.keep_checkpoints": (0, 1000),  # 0 keeps every checkpoint (prune_checkpoints)
    "train.video_frames": (0, 3600),
    "train.video_resolution": (8, 2048),
    "train.eval_views": (0, 360),
    "train.eval_every": (0, 10_000_000),
    "train.export_texture_size": (8, 16384),
    "train.lr_scale": (0.0, 1e3),
    "prior.resolution": (0, 2048),
    "renderer.samples_per_ray": (1, 4096),
    "renderer.importance_samples": (0, 4096),
    "renderer.log2_hashmap_size": (8, 24),
    "renderer.levels": (1, 32),
    "renderer.max_resolution": (1, 8192),
    "renderer.base_resolution": (1, 8192),
    "renderer.occupancy_resolution": (4, 512),
    "renderer.mlp_width": (1, 1024),
    "renderer.num_points": (1, 10_000_000),
    "renderer.max_gaussians": (1, 10_000_000),
    "renderer.sh_degree": (0, 3),
    "renderer.tet_resolution": (4, 256),
    "renderer.texture_resolution": (8, 8192),
    "renderer.env_height": (4, 2048),
}
"""Inclusive [low, high] per dotted field (component fields as ``guidance.X`` / ``renderer.X``, for every
registered component that has X). Ranges bound tuple fields element-wise."""
CHOICES: dict[str, tuple[str, ...]] = {
    "device": (),  # checked by GenerateConfig itself (auto, cpu, cuda, cuda:N)
    "renderer.backend": ("auto", "torch", "cuda"),
}
"""String fields whose values are a fixed set (an empty tuple: the config class checks them)."""


def _numbers(value):
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (tuple, list)):
        return [x for v in value for x in _numbers(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    return []


def check_regularizers(cfg: GenerateConfig) -> None:
    """Refuse (ValueError, one line) a ``regularizers:`` key that is not one of the renderer's terms (its config's
    ``REGULARIZERS``): a misspelt weight would otherwise be silently ignored by the training loop."""
    names = type(cfg.renderer).REGULARIZERS
    unknown = [k for k in cfg.regularizers if k not in names]
    if unknown:
        renderer = component_name(cfg.renderer, RENDERERS)
        raise ValueError(f"regularizers: {unknown[0]!r} is not a term of the {renderer} renderer "
                         f"(its terms: {', '.join(names)})")


def check_config(cfg, bounds: dict | None = None, prefix: str = "") -> None:
    """Refuse (ValueError, one line naming the field) any numeric field outside its bound, any non-finite float,
    any string field outside its CHOICES and any regulariser weight the renderer has no term for
    (``check_regularizers``). ``bounds`` adds or tightens ranges (the app's stricter limits)."""
    if isinstance(cfg, GenerateConfig):
        check_regularizers(cfg)
    table = {**BOUNDS, **(bounds or {})}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_config(value, bounds, f"{key}.")
            continue
        if isinstance(value, str) and CHOICES.get(key) and value not in CHOICES[key]:
            raise ValueError(f"{key.replace('_', '-')} must be one of {', '.join(CHOICES[key])}, got {value!r}")
        lo, hi = table.get(key, (None, None))
        for x in _numbers(value):
            if isinstance(x, float) and not math.isfinite(x):
                raise ValueError(f"{key.replace('_', '-')} must be a finite number, got {x}")
            if lo is None:
                limit = INT_BOUND if isinstance(x, int) else FLOAT_BOUND
                if abs(x) > limit:
                    raise ValueError(f"{key.replace('_', '-')} is out of range (|value| <= {limit:g}), got {x}")
            elif not lo <= x <= hi:
                raise ValueError(f"{key.replace('_', '-')} must be in {lo:g}..{hi:g}, got {x}")


def save_config(cfg: GenerateConfig, path: str) -> None:
    from engine.outputs import atomic_write
    with atomic_write(path) as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)


MAX_CONFIG_BYTES = 1 << 20


def load_config(path: str) -> GenerateConfig:
    """A config.yaml, parsed safely and checked like the command line; ValueError (one line) when unusable."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ValueError(f"cannot read config {path}: {e.strerror or e}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(f"config {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; it is not a config")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"config {path} is not text (UTF-8 YAML)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"config {path} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    try:
        return from_dict(data)
    except ValueError as e:
        raise ValueError(f"config {path}: {e}") from None
    except RecursionError:
        raise ValueError(f"config {path}: nested too deeply") from None
