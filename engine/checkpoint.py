"""Checkpoints in safetensors: scene, optimiser, guidance and background state, RNG state and the step.

Nested state (an optimiser's state_dict holds dicts keyed by ints, lists, floats and tensors) is flattened: every
tensor goes into the safetensors file under a path-like key, and the structure with tensor placeholders goes into
the file's metadata as JSON, with dict keys tagged by type so int keys come back as ints. Files are written to a
temporary name and renamed, so a checkpoint on disk is always whole.
"""

import glob
import json
import os
import re

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "distillery-ckpt-1"


def _flatten(obj, prefix: str, tensors: dict):
    if isinstance(obj, torch.Tensor):
        key = prefix or "root"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[("i" if isinstance(k, int) else "s") + str(k), _flatten(v, f"{prefix}/{k}", tensors)]
                             for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {prefix}")


def _unflatten(obj, tensors: dict):
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {(int(k[1:]) if k[0] == "i" else k[1:]): _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [_unflatten(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj["tuple"] else items
    return obj


def save_checkpoint(path: str, state: dict) -> None:
    """Write a nested ``state`` dict atomically."""
    tensors: dict = {}
    skeleton = _flatten(state, "", tensors)
    if not tensors:
        tensors["__empty__"] = torch.zeros(0)
    tmp = f"{path}.tmp"
    save_file(tensors, tmp, metadata={"format": FORMAT, "skeleton": json.dumps(skeleton)})
    os.replace(tmp, path)


def load_checkpoint(path: str, device: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by save_checkpoint."""
    try:
        with safe_open(path, framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a Distillery checkpoint")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except ValueError:
        raise
    except Exception as e:  # OSError, SafetensorError (truncated or foreign file)
        raise ValueError(f"cannot read checkpoint {path}: {e}") from None
    return _unflatten(json.loads(meta["skeleton"]), tensors)


def step_path(ckpt_dir: str, step: int) -> str:
    return os.path.join(ckpt_dir, f"step_{step:06d}.safetensors")


def latest_checkpoint(ckpt_dir: str) -> str | None:
    """The newest whole checkpoint in ``ckpt_dir`` (by step), or None."""
    paths = [p for p in glob.glob(os.path.join(ckpt_dir, "step_*.safetensors")) if re.search(r"step_\d+\.", p)]
    return max(paths, key=lambda p: int(re.search(r"step_(\d+)", p).group(1))) if paths else None


def step_checkpoints(ckpt_dir: str) -> list[str]:
    """Every step checkpoint in ``ckpt_dir``, newest (highest step) first."""
    paths = [p for p in glob.glob(os.path.join(ckpt_dir, "step_*.safetensors")) if re.search(r"step_\d+\.", p)]
    return sorted(paths, key=lambda p: int(re.search(r"step_(\d+)", p).group(1)), reverse=True)


def load_latest_checkpoint(ckpt_dir: str, device: str | torch.device = "cpu",
                           warn=None) -> tuple[str, dict] | None:
    """(path, state) of the newest checkpoint that reads back whole, or None when there is none at all.

    A newest file that is truncated or foreign (a disk that filled up, a copy cut short) is skipped for the one
    before it, and ``warn(message)`` is told; ValueError when none of them can be read."""
    errors = []
    for path in step_checkpoints(ckpt_dir):
        try:
            state = load_checkpoint(path, device)
        except ValueError as e:
            errors.append(str(e))
            continue
        if errors and warn is not None:
            warn(f"skipped {len(errors)} unreadable newer checkpoint(s) ({errors[0]}); using {path}")
        return path, state
    if errors:
        raise ValueError(f"no readable checkpoint in {ckpt_dir}: {errors[0]}")
    return None


def prune_checkpoints(ckpt_dir: str, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints."""
    paths = sorted(glob.glob(os.path.join(ckpt_dir, "step_*.safetensors")),
                   key=lambda p: int(re.search(r"step_(\d+)", p).group(1)))
    for p in paths[:-keep] if keep > 0 else []:
        os.remove(p)
