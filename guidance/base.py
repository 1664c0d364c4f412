"""Shared score-distillation math, written once: noising, weighting w(t), timestep schedules, CFG, DDIM moves and
the detached-target surrogate loss; plus the Guidance protocol every objective implements.

Notation (guidance-spec §1): abar_t = alphas_cumprod[t], alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t);
x_t = alpha_t x + sigma_t eps. eps_y / eps_u are predictions under the prompt / negative prompt.
"""

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from engine.cameras import Cameras


@dataclass
class GuidanceOutput:
    """The objective's scalar loss (its gradient w.r.t. the encoded sample is the update) and float logs."""

    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Guidance(Protocol):
    """One score-distillation objective, built once with its prior and called every step (style.md §4.1)."""

    def __call__(self, rgb: Tensor, prompts, cams: Cameras, step: int) -> GuidanceOutput:
        """rgb [C,H,W,3] in [0,1]; prompts is a guidance.prompts.PromptSet."""
        ...

    def param_groups(self) -> dict[str, dict]:
        """Optimiser groups the objective owns (VSD's particle score); {} for stateless objectives."""
        ...


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def add_noise(x: Tensor, eps: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps, per-sample integer t [B]."""
    abar = _bcast(alphas_cumprod[t], x)
    return abar.sqrt() * x + (1 - abar).sqrt() * eps


def x0_hat(x_t: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
    """Predicted clean sample (x_t - sqrt(1 - abar) eps) / sqrt(abar); abar [B]."""
    a = _bcast(abar, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def ddim_move(x: Tensor, eps: Tensor, abar_from: Tensor, abar_to: Tensor) -> Tensor:
    """Deterministic DDIM (eta = 0) move between noise levels, in either direction (guidance-spec §1.1).

    DDIM(x, e, a -> b) = sqrt(abar_b) x0hat(x, e, a) + sqrt(1 - abar_b) e. Moving to more noise is inversion.
    """
    b = _bcast(abar_to, x)
    return b.sqrt() * x0_hat(x, eps, abar_from) + (1 - b).sqrt() * eps


WEIGHTINGS = ("sds", "uniform", "fantasia3d")


def weight(t: Tensor, alphas_cumprod: Tensor, kind: str = "sds") -> Tensor:
    """w(t) per sample [B] (guidance-spec §2.1): "sds" 1 - abar_t, "uniform" 1, "fantasia3d" sqrt(abar_t)(1 - abar_t)."""
    abar = alphas_cumprod[t]
    match kind:
        case "sds":
            return 1 - abar
        case "uniform":
            return torch.ones_like(abar)
        case "fantasia3d":
            return abar.sqrt() * (1 - abar)
        case _:
            raise ValueError(f"unknown weighting {kind!r}; choose one of {WEIGHTINGS}")


CFG_CONVENTIONS = ("standard", "threestudio")


def classifier_free_guidance(eps_u: Tensor, eps_y: Tensor, scale: float, convention: str = "standard") -> Tensor:
    """Combine unconditional and conditional predictions (guidance-spec §1.3).

    "standard": eps_u + s (eps_y - eps_u).  "threestudio": eps_y + s (eps_y - eps_u), i.e. standard with s + 1.
    """
    match convention:
        case "standard":
            return eps_u + scale * (eps_y - eps_u)
        case "threestudio":
            return eps_y + scale * (eps_y - eps_u)
        case _:
            raise ValueError(f"unknown CFG convention {convention!r}; choose one of {CFG_CONVENTIONS}")


REDUCTIONS = ("mean", "sum")


def surrogate_loss(x: Tensor, grad: Tensor, reduction: str = "mean") -> Tensor:
    """A scalar whose gradient w.r.t. ``x`` [B,...] is ``grad`` / B ("mean") or ``grad`` ("sum").

    "mean" is threestudio's MSE reparameterisation 0.5 ||x - sg(x - g)||^2 / B; "sum" matches LucidDreamer's
    SpecifyGradient (guidance-spec §1.4). The value itself has no objective meaning.
    """
    grad = torch.nan_to_num(grad.detach())
    match reduction:
        case "mean":
            target = (x - grad).detach()
            return 0.5 * ((x - target) ** 2).sum() / x.shape[0]
        case "sum":
            return (x * grad).sum()
        case _:
            raise ValueError(f"unknown loss reduction {reduction!r}; choose one of {REDUCTIONS}")


TIMESTEP_SCHEDULES = ("uniform", "annealed", "two-stage", "sqrt")


@dataclass
class TimestepConfig:
    """How t is drawn each step, as fractions of the T training timesteps (guidance-spec §1.5).

    - "uniform": t ~ UniformInt[min, max] (inclusive), independently per sample.
    - "annealed": min and max move linearly to (min_end, max_end) between steps ``start`` and ``end``.
    - "two-stage": ProlificDreamer's schedule, (min, max) before step ``start`` and (min_end, max_end) from it on.
    - "sqrt": HiFA's deterministic schedule, t = min + (max - min)(1 - sqrt(step / end)) (a fraction of T).
    """

    schedule: str = "uniform"
    """One of uniform, annealed, two-stage, sqrt."""
    min: float = 0.02
    """Lower end of the t range as a fraction of T."""
    max: float = 0.98
    """Upper end of the t range as a fraction of T."""
    min_end: float | None = None
    """Lower end after annealing / the drop (defaults to min)."""
    max_end: float | None = None
    """Upper end after annealing / the drop (defaults to 0.5 for two-stage, else max)."""
    start: int = 0
    """Step where annealing starts, or where the two-stage drop happens."""
    end: int | None = None
    """Step where annealing ends (defaults to the run's last step)."""

    def __post_init__(self) -> None:
        if self.schedule not in TIMESTEP_SCHEDULES:
            raise ValueError(f"unknown timestep schedule {self.schedule!r}; choose one of {TIMESTEP_SCHEDULES}")
        for name in ("min", "max", "min_end", "max_end"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"timesteps.{name} must be a fraction in [0,1], got {v}")
        if self.min > self.max:
            raise ValueError(f"timesteps.min ({self.min}) exceeds timesteps.max ({self.max})")

    def range_at(self, step: int, total_steps: int) -> tuple[float, float]:
        """The (min, max) fractions in force at ``step``."""
        lo_end = self.min if self.min_end is None else self.min_end
        hi_end = (0.5 if self.schedule == "two-stage" else self.max) if self.max_end is None else self.max_end
        end = total_steps if self.end is None else self.end
        match self.schedule:
            case "uniform":
                return self.min, self.max
            case "two-stage":
                return (self.min, self.max) if step < self.start else (lo_end, hi_end)
            case "annealed":
                r = min(max((step - self.start) / max(end - self.start, 1), 0.0), 1.0)
                return self.min + r * (lo_end - self.min), self.max + r * (hi_end - self.max)
            case "sqrt":
                p = self.min + (self.max - self.min) * (1 - math.sqrt(min(step / max(end, 1), 1.0)))
                return p, p
            case _:
                raise ValueError(self.schedule)


def sample_timesteps(cfg: TimestepConfig, step: int, total_steps: int, n: int, gen: torch.Generator,
                     num_train_timesteps: int = 1000) -> Tensor:
    """Integer timesteps [n] (CPU, int64), drawn with the run's generator."""
    lo, hi = cfg.range_at(step, total_steps)
    lo_i, hi_i = int(num_train_timesteps * lo), int(num_train_timesteps * hi)
    hi_i = min(max(hi_i, lo_i), num_train_timesteps - 1)
    return torch.randint(lo_i, hi_i + 1, (n,), generator=gen)


def clip_grad_per_pixel(grad: Tensor, max_value: float) -> Tensor:
    """Dreamer XL's pixel-wise clipping of an image gradient [...,3,H,W] or [...,H,W,3] along the channel axis.

    k = min(1, c / max_c |G_c|) per pixel and G <- k G, which caps the largest channel at c and keeps the direction.
    """
    ch_dim = -1 if grad.shape[-1] == 3 else -3
    peak = grad.abs().amax(dim=ch_dim, keepdim=True)
    return grad * (max_value / peak.clamp_min(1e-12)).clamp(max=1.0)
