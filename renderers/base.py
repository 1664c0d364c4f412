"""The Scene protocol, RenderOutput and backgrounds shared by every renderer.

Renders are channels-last: rgb [C,H,W,3] in [0,1] (display-referred sRGB-like values, what the prior sees),
alpha [C,H,W,1] in [0,1].
"""

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from foundation.cameras import Cameras


@dataclass
class RenderOutput:
    """What every Scene.render returns. Optional maps are None when a renderer cannot produce them."""

    rgb: Tensor  # [C,H,W,3], composited over the background
    alpha: Tensor  # [C,H,W,1]
    depth: Tensor | None = None  # [C,H,W,1], expected ray distance where alpha > 0
    normal: Tensor | None = None  # [C,H,W,3], world-space unit normals (zero where empty)
    albedo: Tensor | None = None  # [C,H,W,3]
    roughness: Tensor | None = None  # [C,H,W,1]
    metallic: Tensor | None = None  # [C,H,W,1]
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rgb.ndim != 4 or self.rgb.shape[-1] != 3:
            raise ValueError(f"RenderOutput.rgb must be [C,H,W,3], got {tuple(self.rgb.shape)}")
        if self.alpha.shape != self.rgb.shape[:-1] + (1,):
            raise ValueError(f"RenderOutput.alpha must be {tuple(self.rgb.shape[:-1]) + (1,)}, "
                             f"got {tuple(self.alpha.shape)}")


@runtime_checkable
class Scene(Protocol):
    """A 3D representation together with its differentiable renderer (style.md §4.1)."""

    def render(self, cams: Cameras, background: Tensor) -> RenderOutput:
        """Render ``cams``; ``background`` is [C,H,W,3] (or broadcastable) in [0,1]."""
        ...

    def param_groups(self) -> dict[str, dict]:
        """Optimiser groups by name: {name: {"params": [...], "lr": float, ...}}."""
        ...

    def regularizers(self, out: RenderOutput, step: int) -> dict[str, Tensor]:
        """Named scalar regulariser terms for this step (weights are applied by the training loop)."""
        ...

    def after_step(self, step: int, out: RenderOutput) -> None:
        """Structural updates after the optimiser step (densify, prune, occupancy refresh); may be a no-op."""
        ...

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: dict[str, Tensor]) -> Any: ...


@dataclass
class BackgroundConfig:
    """Background behind the object: a solid colour, a random colour per step, or a learned colour."""

    kind: str = "solid"
    """One of "solid", "random", "learned"."""
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Solid (and initial learned) colour in [0,1]."""

    def __post_init__(self) -> None:
        if self.kind not in ("solid", "random", "learned"):
            raise ValueError(f"background.kind must be solid, random or learned, got {self.kind!r}")


class Background(nn.Module):
    """Produces the [C,H,W,3] background for a step; random colours come from the run's generator."""

    def __init__(self, cfg: BackgroundConfig):
        super().__init__()
        self.cfg = cfg
        init = torch.tensor(cfg.color, dtype=torch.float32).clamp(1e-3, 1 - 1e-3)
        self.logit = nn.Parameter(torch.logit(init), requires_grad=cfg.kind == "learned")

    def forward(self, cams: Cameras, gen: torch.Generator | None = None, training: bool = True) -> Tensor:
        C, H, W = len(cams), cams.height, cams.width
        if self.cfg.kind == "random" and training:
            from foundation.device import to_device  # pinned copy: no host sync on a GPU
            col = to_device(torch.rand(C, 1, 1, 3, generator=gen), cams.device)
        else:
            col = torch.sigmoid(self.logit).to(cams.device).view(1, 1, 1, 3).expand(C, 1, 1, 3)
        return col.expand(C, H, W, 3)

    def param_groups(self, lr: float = 1e-3) -> dict[str, dict]:
        return {"background": {"params": [self.logit], "lr": lr}} if self.cfg.kind == "learned" else {}


def composite(rgb: Tensor, alpha: Tensor, background: Tensor) -> Tensor:
    """Premultiplied ``rgb`` [...,3] plus (1 - alpha) times ``background``."""
    return rgb + (1.0 - alpha) * background

