"""Typed configuration of a generation run, its presets, and the replayable config.yaml.

``GenerateConfig`` holds one chosen guidance config and one chosen renderer config (the registries in guidance/ and
renderers/ map CLI names to config classes). A preset only sets values; it never adds flags.
"""

import dataclasses
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Union

import yaml

from engine.cameras import CameraConfig
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
    regularizers: dict[str, float] = field(default_factory=dict)
    """Weights of the scene's regularisers by name (unset names use the scene's defaults)."""
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


def slug(text: str, limit: int = 48) -> str:
    s = re.sub(r"[^a-zA-Z0-9]+", "-", text.strip().lower()).strip("-")
    return s[:limit].rstrip("-") or "run"


def default_run_dir(prompt: str) -> str:
    return os.path.join("outputs", slug(prompt), time.strftime("%Y%m%d-%H%M%S"))


# -- presets --------------------------------------------------------------------------------------------------------
def preset_shapes() -> GenerateConfig:
    """CPU demo on the built-in shapes prior: exemplar orbit, CFG 1 (calibrated in exemplar-calibration.md)."""
    return GenerateConfig()


def preset_diffusion() -> GenerateConfig:
    """Real use with a Stable-Diffusion-family prior (DreamFusion-SD reference defaults, guidance-spec §2.1)."""
    return GenerateConfig(
        guidance=GUIDANCES["sds"](guidance_scale=100.0, cfg_convention="threestudio"),
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


PRESETS = {"shapes": preset_shapes, "diffusion": preset_diffusion, "material": preset_material}


# -- config.yaml ----------------------------------------------------------------------------------------------------
def to_dict(cfg: GenerateConfig) -> dict:
    """A plain dict for config.yaml; the chosen components are recorded by registry name."""
    d = dataclasses.asdict(cfg)
    d["guidance"] = {"name": component_name(cfg.guidance, GUIDANCES), **dataclasses.asdict(cfg.guidance)}
    d["renderer"] = {"name": component_name(cfg.renderer, RENDERERS), **dataclasses.asdict(cfg.renderer)}
    return d


def _build(cls: type, data: dict, where: str):
    """Instantiate dataclass ``cls`` from a plain dict, recursively and strictly (unknown keys are errors)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in data.items():
        ftype = fields[name].type
        if dataclasses.is_dataclass(ftype) and isinstance(value, dict):
            value = _build(ftype, value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _build_component(data: dict, registry: dict[str, type], where: str):
    data = dict(data)
    name = data.pop("name", None)
    if name not in registry:
        raise ValueError(f"{where}.name must be one of {', '.join(registry)}, got {name!r}")
    return _build(registry[name], data, where)


def from_dict(d: dict) -> GenerateConfig:
    d = dict(d)
    guidance = _build_component(d.pop("guidance"), GUIDANCES, "guidance")
    renderer = _build_component(d.pop("renderer"), RENDERERS, "renderer")
    cfg = _build(GenerateConfig, d, "config")
    cfg.guidance, cfg.renderer = guidance, renderer
    return cfg


def save_config(cfg: GenerateConfig, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)


def load_config(path: str) -> GenerateConfig:
    try:
        with open(path) as f:
            return from_dict(yaml.safe_load(f))
    except OSError as e:
        raise ValueError(f"cannot read config {path}: {e.strerror}") from None
