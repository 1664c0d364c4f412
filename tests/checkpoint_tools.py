"""What the tests that compare runs read of a checkpoint: every tensor of a nested state, by path."""

import os

import torch

from engine.checkpoint import latest_checkpoint, load_checkpoint


def flat_tensors(obj, prefix: str = "", out: dict | None = None) -> dict:
    """{"/path/to/tensor": tensor} for every tensor inside nested dicts, lists and tuples."""
    out = {} if out is None else out
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            flat_tensors(v, f"{prefix}/{k}", out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            flat_tensors(v, f"{prefix}/{i}", out)
    return out


def newest_state(run_dir: str) -> dict:
    """The run folder's newest checkpoint, loaded."""
    return load_checkpoint(latest_checkpoint(os.path.join(run_dir, "ckpts")))
