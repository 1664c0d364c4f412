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

from foundation.cameras import Cameras
from foundation.device import to_device  # noqa: F401  (objectives import it from here)
from guidance.priors.conversions import _bcast, add_noise, ddim_move, from_eps, to_eps, training_target, x0_hat  # noqa: F401  (the objectives' shared math)


@dataclass
class GuidanceOutput:
    """The objective's scalar loss (its gradient w.r.t. the encoded sample is the update) and its logs.

    Logs are detached 0-d tensors (or plain floats for values known on the host): reading a CUDA tensor is a host-device
    sync, so the training loop reads them all at once, only on the steps it logs (``train.log_every``)."""

    loss: Tensor
    logs: dict[str, Tensor | float] = field(default_factory=dict)


@runtime_checkable
class Guidance(Protocol):
    """One score-distillation objective, built once with its prior and called every step (style.md §4.1)."""

    def __call__(self, rgb: Tensor, prompts, cams: Cameras, step: int) -> GuidanceOutput:
        """rgb [C,H,W,3] in [0,1]; prompts is a guidance.prompts.PromptSet."""
        ...

    def param_groups(self) -> dict[str, dict]:
        """Optimiser groups the objective owns (VSD's particle score); {} for stateless objectives."""
        ...

    def state_dict(self) -> dict[str, Tensor]:
        """What a checkpoint keeps of the objective (VSD's particle score); {} for stateless objectives."""
        ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...


class Objective:
    """What every objective holds: its config, its prior, the run's generator and the run length.

    Stateless objectives own no parameters (``param_groups`` is empty); VSD overrides it for its particle score.
    """

    def __init__(self, cfg, prior, gen: torch.Generator, total_steps: int):
        self.cfg, self.prior, self.gen, self.total_steps = cfg, prior, gen, total_steps

    def param_groups(self) -> dict[str, dict]:
        return {}

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, but the checkpoint holds {sorted(state)[:3]}")

    def draw_t_noise(self, z: Tensor, step: int, t: Tensor | None = None,
                     noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-sample timesteps t [B] from ``cfg.timesteps`` and the step's noise n ~ N(0, I) shaped like ``z``, drawn
        in that order from the run's generator unless injected (tests), both on z's device."""
        if t is None:
            t = sample_timesteps(self.cfg.timesteps, step, self.total_steps, z.shape[0], self.gen,
                                 self.prior.alphas_cumprod.shape[0])
        if noise is None:
            noise = torch.randn(z.shape, generator=self.gen)
        return to_device(t, z.device), to_device(noise, z.device, z.dtype)


WEIGHTINGS = ("sds", "uniform", "fantasia3d", "ism")


def weight(t: Tensor, alphas_cumprod: Tensor, kind: str = "sds") -> Tensor:
    """w(t) per sample [B] (guidance-spec §2.1, §2.3): "sds" 1 - abar_t, "uniform" 1, "fantasia3d"
    sqrt(abar_t)(1 - abar_t), "ism" sqrt((1 - abar_t) / abar_t) (LucidDreamer's sigma_t / alpha_t)."""
    abar = alphas_cumprod[t]
    match kind:
        case "sds":
            return 1 - abar
        case "uniform":
            return torch.ones_like(abar)
        case "fantasia3d":
            return abar.sqrt() * (1 - abar)
        case "ism":
            return ((1 - abar) / abar).sqrt()
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


def check_choices(cfg) -> None:
    """Validate the option fields objectives share (weighting, reduction, cfg_convention) where ``cfg`` has them."""
    for name, choices in (("weighting", WEIGHTINGS), ("reduction", REDUCTIONS), ("cfg_convention", CFG_CONVENTIONS)):
        value = getattr(cfg, name, None)
        if value is not None and value not in choices:
            raise ValueError(f"guidance.{name} must be one of {choices}, got {value!r}")


TIMESTEP_SCHEDULES = ("uniform", "annealed", "two-stage", "sqrt", "dreamtime", "warmup")


@dataclass
class TimestepConfig:
    """How t is drawn each step, as fractions of the T training timesteps (guidance-spec §1.5).

    - "uniform": t ~ UniformInt[min, max] (inclusive), independently per sample.
    - "annealed": min and max move linearly to (min_end, max_end) between steps ``start`` and ``end``.
    - "two-stage": ProlificDreamer's schedule, (min, max) before step ``start`` and (min_end, max_end) from it on.
    - "sqrt": HiFA's deterministic schedule, t = min + (max - min)(1 - sqrt(step / end)) (a fraction of T).
    - "dreamtime": DreamTime's deterministic non-increasing t(i) = argmin_t |sum_{tau >= t} p(tau) - i/N| with
      p proportional to sqrt((1 - abar_t)/abar_t) times a flat-top prior (guidance-spec §1.5, DREAMTIME_PRIOR),
      clamped to [min, max].
    - "warmup": LucidDreamer's warm-up, t ~ UniformInt[min, max_end + int((max - max_end) T wr)) with the upper
      bound *exclusive* and wr = 1 - min(step / end, 1) (guidance-spec §1.5; with min .02, max .98, max_end .5
      the bound moves from 979 to 499 inclusive).
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
    """Step where annealing starts, or where the two-stage drop happens (a step of a ``reference_steps`` run)."""
    end: int | None = None
    """Step where annealing ends (a step of a ``reference_steps`` run; unset: the run's last step)."""
    reference_steps: int = 0
    """The run length that ``start`` and ``end`` are given for, e.g. the paper's (LucidDreamer: a 1500-step warm-up
    of 5000): a run of N steps uses them scaled by N / reference_steps, so the schedule has the paper's shape at any
    run length. 0: they are this run's own steps."""

    def __post_init__(self) -> None:
        if self.schedule not in TIMESTEP_SCHEDULES:
            raise ValueError(f"unknown timestep schedule {self.schedule!r}; choose one of {TIMESTEP_SCHEDULES}")
        for name in ("min", "max", "min_end", "max_end"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"timesteps.{name} must be a fraction in [0,1], got {v}")
        if self.min > self.max:
            raise ValueError(f"timesteps.min ({self.min}) exceeds timesteps.max ({self.max})")
        if self.reference_steps < 0 or self.start < 0 or (self.end is not None and self.end < 0):
            raise ValueError("timesteps.start, end and reference_steps must be >= 0")

    def steps_for(self, total_steps: int) -> tuple[int, int]:
        """(start, end) in the steps of a run of ``total_steps``: scaled from ``reference_steps`` when it is set."""
        end = total_steps if self.end is None else self.end
        if self.reference_steps <= 0:
            return self.start, end
        scale = total_steps / self.reference_steps
        return round(self.start * scale), (total_steps if self.end is None else max(1, round(self.end * scale)))

    def range_at(self, step: int, total_steps: int) -> tuple[float, float]:
        """The (min, max) fractions in force at ``step``."""
        lo_end = self.min if self.min_end is None else self.min_end
        hi_end = ((0.5 if self.schedule in ("two-stage", "warmup") else self.max) if self.max_end is None
                  else self.max_end)
        start, end = self.steps_for(total_steps)
        match self.schedule:
            case "uniform":
                return self.min, self.max
            case "two-stage":
                return (self.min, self.max) if step < start else (lo_end, hi_end)
            case "annealed":
                r = min(max((step - start) / max(end - start, 1), 0.0), 1.0)
                return self.min + r * (lo_end - self.min), self.max + r * (hi_end - self.max)
            case "sqrt":
                p = self.min + (self.max - self.min) * (1 - math.sqrt(min(step / max(end, 1), 1.0)))
                return p, p
            case "dreamtime":
                p = dreamtime_timestep(step, end) / 1000.0
                p = min(max(p, self.min), self.max)
                return p, p
            case "warmup":
                wr = 1.0 - min(step / max(end, 1), 1.0)
                return self.min, hi_end + (self.max - hi_end) * wr
            case _:
                raise ValueError(self.schedule)


def sample_timesteps(cfg: TimestepConfig, step: int, total_steps: int, n: int, gen: torch.Generator,
                     num_train_timesteps: int = 1000) -> Tensor:
    """Integer timesteps [n] (CPU, int64), drawn with the run's generator."""
    if cfg.schedule == "warmup":  # exclusive upper bound in integer arithmetic (LucidDreamer's randint)
        T = num_train_timesteps
        end = cfg.steps_for(total_steps)[1]
        wr = 1.0 - min(step / max(end, 1), 1.0)
        hi_end = 0.5 if cfg.max_end is None else cfg.max_end
        lo_i = int(T * cfg.min)
        hi_x = round(T * hi_end) + int((round(T * cfg.max) - round(T * hi_end)) * wr)
        return torch.randint(lo_i, max(hi_x, lo_i + 1), (n,), generator=gen)
    lo, hi = cfg.range_at(step, total_steps)
    if cfg.schedule == "dreamtime":  # deterministic integer t, no rounding through fractions
        t = min(max(dreamtime_timestep(step, cfg.steps_for(total_steps)[1], num_train_timesteps),
                    int(num_train_timesteps * cfg.min)), int(num_train_timesteps * cfg.max))
        return torch.full((n,), t, dtype=torch.int64)
    lo_i, hi_i = int(num_train_timesteps * lo), int(num_train_timesteps * hi)
    hi_i = min(max(hi_i, lo_i), num_train_timesteps - 1)
    return torch.randint(lo_i, hi_i + 1, (n,), generator=gen)


DREAMTIME_PRIOR = (800.0, 500.0, 300.0, 100.0)
"""DreamTime's flat-top time prior (m1, m2, s1, s2): 1 on [m2, m1], Gaussian tails of widths s1 above, s2 below."""


def dreamtime_weights(alphas_cumprod: Tensor | None = None, prior=DREAMTIME_PRIOR) -> Tensor:
    """p(t) [T] of DreamTime (arXiv 2306.12422, Eq. 7-8 as re-implemented, guidance-spec §1.5), summing to 1.

    W(t) = W_d(t) W_p(t), W_d = sqrt((1 - abar_t)/abar_t) and W_p the flat-top prior; p = W / sum W.
    """
    from guidance.priors.base import scaled_linear_alphas_cumprod
    ac = (scaled_linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod).double().cpu()
    m1, m2, s1, s2 = prior
    t = torch.arange(ac.shape[0], dtype=torch.float64)
    w_p = torch.where(t > m1, torch.exp(-(t - m1) ** 2 / (2 * s1 ** 2)),
                      torch.where(t < m2, torch.exp(-(t - m2) ** 2 / (2 * s2 ** 2)), torch.ones_like(t)))
    w = ((1 - ac) / ac).sqrt() * w_p
    return w / w.sum()


_DREAMTIME_CUM: dict[int, Tensor] = {}


def dreamtime_timestep(step: int, total_steps: int, num_train_timesteps: int = 1000) -> int:
    """DreamTime's t(i) = argmin_t |sum_{tau=t..T-1} p(tau) - i/N| (non-increasing in the step i)."""
    if num_train_timesteps not in _DREAMTIME_CUM:
        from guidance.priors.base import scaled_linear_alphas_cumprod
        p = dreamtime_weights(scaled_linear_alphas_cumprod(num_train_timesteps))
        _DREAMTIME_CUM[num_train_timesteps] = p.flip(0).cumsum(0).flip(0)  # [t] = sum_{tau >= t} p(tau)
    tail = _DREAMTIME_CUM[num_train_timesteps]
    frac = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return int((tail - frac).abs().argmin())


def ddim_invert(prior, x0: Tensor, noise: Tensor, ind_from: int, ind_to: int, delta: int, steps: int, cond,
                cams=None, eps_fn=None) -> Tensor:
    """LucidDreamer's coarse deterministic noising (guidance-spec §2.3 step a), in DDIM *index* space.

    x = add_noise(x0, noise, tau(ind_from)) with tau(i) = i + prior.steps_offset, then at most ``steps`` DDIM
    inversion moves of ``delta`` indices each, e = eps(x, tau(cur), cond), until ``ind_to`` is reached. ``eps_fn``
    replaces ``prior.predict_eps`` (e.g. with the reverse-CFG rule). No gradient.
    """
    ac, off = prior.alphas_cumprod, int(prior.steps_offset)
    eps_fn = eps_fn or (lambda x, t: prior.predict_eps(x, t, cond, cams))
    B = x0.shape[0]
    tau = lambda i: torch.full((B,), int(i) + off, dtype=torch.int64, device=x0.device)  # noqa: E731
    x = add_noise(x0, noise, tau(ind_from), ac)
    cur = ind_from
    for _ in range(steps):
        if cur >= ind_to:
            break
        nxt = min(cur + delta, ind_to)
        e = eps_fn(x, tau(cur))
        x = ddim_move(x, e, ac[tau(cur)], ac[tau(nxt)])
        cur = nxt
    return x


@dataclass
class LinearRamp:
    """A scalar that moves linearly from ``start_value`` to ``end_value`` between two steps, clamped outside.

    threestudio's C([start_step, v0, v1, end_step]) as a typed object (guidance-spec §1.5); a constant when the
    two values are equal.
    """

    start_value: float = 0.0
    """Value up to ``start_step``."""
    end_value: float = 0.0
    """Value from ``end_step`` on."""
    start_step: int = 0
    """Step where the ramp starts."""
    end_step: int = 0
    """Step where the ramp ends (<= start_step gives a jump at start_step)."""

    def at(self, step: int) -> float:
        if self.end_step <= self.start_step:
            return self.start_value if step < self.start_step else self.end_value
        r = min(max((step - self.start_step) / (self.end_step - self.start_step), 0.0), 1.0)
        return self.start_value + r * (self.end_value - self.start_value)


def const(v: float) -> LinearRamp:
    """A constant LinearRamp."""
    return LinearRamp(v, v)


def clip_grad_per_pixel(grad: Tensor, max_value: float) -> Tensor:
    """Dreamer XL's pixel-wise clipping of an image gradient [...,3,H,W] or [...,H,W,3] along the channel axis.

    k = min(1, c / max_c |G_c|) per pixel and G <- k G, which caps the largest channel at c and keeps the direction.
    """
    ch_dim = -1 if grad.shape[-1] == 3 else -3
    peak = grad.abs().amax(dim=ch_dim, keepdim=True)
    return grad * (max_value / peak.clamp_min(1e-12)).clamp(max=1.0)


def attach_pixel_clip(rgb: Tensor, max_value: float) -> None:
    """Register Dreamer XL's pixel-wise clipping as a backward hook on a rendered image batch [B,H,W,3].

    The hook sees the *total* gradient reaching ``rgb`` (the objective's, plus any regulariser that reads the same
    tensor) and returns it clipped per pixel; a no-op when max_value <= 0 or rgb carries no graph.
    """
    if max_value > 0 and rgb.requires_grad:
        rgb.register_hook(lambda g: clip_grad_per_pixel(g, max_value))
