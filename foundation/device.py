"""Host-to-device copies that do not wait for the device (used by the renderers and the objectives)."""

import torch
from torch import Tensor


def to_device(x: Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> Tensor:
    """Move a host-drawn tensor (noise, timesteps from the run's CPU generator) to ``device`` without a host sync.

    A copy from pageable host memory to a GPU waits for the GPU to drain its queue; from pinned memory it is queued
    like a kernel (non_blocking), and torch's pinned-memory allocator keeps the buffer alive until the copy is done.
    The values are those of the CPU generator, so a run is the same on any device and resumes exactly.
    """
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        x = x.pin_memory().to(device, non_blocking=True)
    return x.to(device, dtype) if dtype is not None else x.to(device)
