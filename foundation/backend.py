"""The one rule for choosing between a CUDA path and its fallback (issue #14, item 5; style.md §4.3).

Every choice of "the GPU if it can be used" goes through ``resolve``: the kernel backends of the scenes
(renderers/kernels: volume rendering, splatting, mesh rasterisation) and the run's device (engine/train.py).

- ``"auto"`` takes CUDA when it can be used, and otherwise the fallback with one warning (once per what and reason
  in a process, so a run does not repeat it every scene or step).
- An explicit ``"cuda"`` that cannot be met is an error: ``CudaUnavailable`` (a RuntimeError) with one line saying
  what was asked, why it cannot be had, and what to ask instead. It is never quietly replaced.
- The fallback itself (``"torch"``, ``"cpu"``) is always met.

Callers resolve once, when a scene or a run is built, and store the resolved name (the scene's config, the run's
``torch.device``); nothing downstream resolves again.
"""

import functools
import warnings
from collections.abc import Callable


class CudaUnavailable(RuntimeError):
    """An explicit CUDA request that this machine cannot meet; the message is one line."""


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=4)


def resolve(requested: str, why_not: Callable[[], str | None], *, what: str, fallback: str = "torch",
            hint: str = "") -> bool:
    """True for the CUDA path, False for ``fallback``, by the one rule (module docstring).

    Args:
        requested: "auto", "cuda" (or "cuda:N") or ``fallback``.
        why_not: None when CUDA can be used, else the reason it cannot (called only when it matters).
        what: what is being resolved, for the messages ("backend", "device", "mesh raster backend").
        fallback: the name of the non-CUDA choice ("torch" for kernels, "cpu" for devices).
        hint: how to ask for the fallback, for the error ("--device cpu"); default ``what`` = ``fallback``.

    Raises:
        CudaUnavailable: ``requested`` is cuda and ``why_not()`` gives a reason.
        ValueError: ``requested`` is none of the above.
    """
    if requested == fallback:
        return False
    if requested == "cuda" or requested.startswith("cuda:"):
        reason = why_not()
        if reason is not None:
            raise CudaUnavailable(f"{what} '{requested}' was requested but CUDA cannot be used: {reason}. "
                                  f"Use {hint or f'{what} {fallback!r}'} (or 'auto') on this machine.")
        return True
    if requested == "auto":
        reason = why_not()
        if reason is None:
            return True
        _warn_once(f"{what} 'auto' falls back to the {fallback} {what.split()[-1]} ({reason})")
        return False
    raise ValueError(f"unknown {what} {requested!r}; expected auto, {fallback} or cuda")


def no_cuda_device() -> str | None:
    """None when torch sees a CUDA GPU, else why not (the device check every resolver shares)."""
    import torch

    return None if torch.cuda.is_available() else "torch sees no CUDA GPU"
