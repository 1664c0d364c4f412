"""A run folder back into (config, scene, state): the one reader behind ``--resume``, ``engine export`` and a mesh's
``init_from`` (issue #14).

A run folder (engine/train.py) holds ``config.yaml`` (the whole ``GenerateConfig``) and ``ckpts/step_*.safetensors``
(engine/checkpoint.py: scene, optimiser, guidance, background and RNG state, and the step). Reading one back:

1. ``read_config``: config.yaml, parsed and checked like the command line;
2. ``read_state``: the newest checkpoint that reads back whole (a truncated or foreign newest file is skipped for
   the one before it, and ``warn`` is told), or a given checkpoint file;
3. ``build_scene``: the run's scene from its config (a ``Particles`` wrapper when it trained several), *without*
   any initialisation from another run: its parameters are the checkpoint's anyway.

``load_run`` does all three and loads the state into the scene. Every failure is a ``RunFolderError`` (a
ValueError) with one line; callers that have their own wording (export, init_from, resume) catch its two kinds,
``NotARunFolder`` and ``NoCheckpoint``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable

import torch

from engine.checkpoint import load_checkpoint, load_latest_checkpoint
from engine.config import GenerateConfig, load_config
from renderers.mesh import MeshConfig


class RunFolderError(ValueError):
    """A run folder that cannot be read back."""


class NotARunFolder(RunFolderError):
    """The folder has no config.yaml."""


class NoCheckpoint(RunFolderError):
    """The folder has no step checkpoint at all."""


@dataclass
class Run:
    """What a run folder holds: its config, the checkpoint read and its state, and (``load_run``) the scene."""

    run_dir: str
    config: GenerateConfig
    checkpoint: str
    state: dict
    scene: object | None = None


def config_path(run_dir: str) -> str:
    return os.path.join(run_dir, "config.yaml")


def is_run_folder(run_dir: str) -> bool:
    return os.path.isfile(config_path(run_dir))


def read_config(run_dir: str) -> GenerateConfig:
    """The run's GenerateConfig; NotARunFolder without config.yaml, RunFolderError when it does not parse."""
    if not is_run_folder(run_dir):
        raise NotARunFolder(f"{run_dir} is not a run folder (no config.yaml)")
    try:
        return load_config(config_path(run_dir))
    except ValueError as e:
        raise RunFolderError(str(e)) from None


def read_state(run_dir: str, device: str | torch.device = "cpu", checkpoint: str | None = None,
               warn: Callable[[str], None] | None = None) -> tuple[str, dict]:
    """(path, state) of ``checkpoint``, or else of the newest whole checkpoint under RUN/ckpts (engine/checkpoint.py
    ``load_latest_checkpoint``: ``warn`` hears about skipped unreadable newer ones). NoCheckpoint when there is none;
    RunFolderError when none of them reads back."""
    try:
        if checkpoint is not None:
            return checkpoint, load_checkpoint(checkpoint, device)
        found = load_latest_checkpoint(os.path.join(run_dir, "ckpts"), device, warn=warn)
    except RunFolderError:
        raise
    except ValueError as e:
        raise RunFolderError(str(e)) from None
    if found is None:
        raise NoCheckpoint(f"{run_dir} has no checkpoint (ckpts/step_*.safetensors)")
    return found


def build_scene(cfg: GenerateConfig, gen: torch.Generator, device: str | torch.device = "cpu",
                restore: bool = False):
    """The scene a config describes, freshly initialised: ``cfg.renderer.build``, or a ``Particles`` wrapper over
    ``cfg.particles`` independently initialised ones. A mesh's ``init_from`` is not applied here (the engine does
    that for a new run, engine/init_from.py).

    ``restore``: the scene is about to receive a checkpoint's state (resume, export), so a mesh's ``init_from`` source
    run is not looked at (it may be gone since). Its only other use, the geometry learning-rate scale, comes back
    with the optimiser's state.
    """
    renderer = cfg.renderer
    if restore and isinstance(renderer, MeshConfig) and renderer.init_from:
        renderer = dataclasses.replace(renderer, init_from="")
    if cfg.particles == 1:
        return renderer.build(gen, device)
    from renderers.particles import Particles

    return Particles([renderer.build(gen, device) for _ in range(cfg.particles)])


def load_run(run_dir: str, device: str | torch.device = "cpu", checkpoint: str | None = None,
             warn: Callable[[str], None] | None = None, scene: bool = True) -> Run:
    """Config, state and (with ``scene``) the scene of a run folder, the scene's parameters loaded from the
    checkpoint and put in eval mode. ``checkpoint`` picks a file instead of the newest readable one."""
    cfg = read_config(run_dir)
    path, state = read_state(run_dir, device, checkpoint, warn)
    run = Run(run_dir, cfg, path, state)
    if scene:
        run.scene = build_scene(cfg, torch.Generator().manual_seed(cfg.seed), device, restore=True)
        run.scene.load_state_dict(state["scene"])
        if isinstance(run.scene, torch.nn.Module):
            run.scene.eval()
    return run


__all__ = ["Run", "RunFolderError", "NotARunFolder", "NoCheckpoint", "read_config", "read_state", "build_scene",
           "load_run", "is_run_folder", "config_path"]
