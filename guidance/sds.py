"""SDS: Score Distillation Sampling (DreamFusion, Poole et al. 2022, https://arxiv.org/abs/2209.14988, Eq. 3).

Notation (guidance-spec §2.1): z = encoded render, n ~ N(0, I), x_t = alpha_t z + sigma_t n,
eps_hat = CFG(eps_u, eps_y) at (x_t, t), and the update on z is

    g = w(t) (eps_hat - n),

applied through the detached-target surrogate (guidance/base.py). w(t) = 1 - abar_t by default. The two CFG
conventions (threestudio's s and the standard s, guidance-spec §1.3) are selectable; with guidance_scale 1 in the
standard convention the unconditional branch is skipped, since eps_hat = eps_y exactly. With Perp-Neg (§1.7,
``perp_neg.enabled``) eps_hat is the Perp-Neg combination, in the standard convention at the equivalent scale
(threestudio's s is the standard s + 1).
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor

from foundation.cameras import Cameras
from guidance.base import (
    GuidanceOutput,
    Objective,
    TimestepConfig,
    add_noise,
    check_choices,
    surrogate_loss,
    weight,
)
from guidance.perp_neg import PerpNegConfig, guided_eps
from guidance.priors.base import Prior
from guidance.prompts import PromptSet


@dataclass
class SDSConfig:
    """Score Distillation Sampling."""

    guidance_scale: float = 100.0
    """CFG scale s, read in the convention below (threestudio's 100 equals 101 in the standard one)."""
    cfg_convention: str = "threestudio"
    """"threestudio": eps_y + s (eps_y - eps_u); "standard": eps_u + s (eps_y - eps_u)."""
    weighting: str = "sds"
    """w(t): "sds" = 1 - abar_t, "uniform" = 1, "fantasia3d" = sqrt(abar_t) (1 - abar_t)."""
    timesteps: TimestepConfig = None  # type: ignore[assignment]
    """How t is drawn each step."""
    grad_clip: float = 0.0
    """Clamp each element of g to [-grad_clip, grad_clip]; 0 disables."""
    reduction: str = "mean"
    """Loss scaling over the batch: "mean" (threestudio, dL/dz = g/B) or "sum" (SpecifyGradient, dL/dz = g)."""
    perp_neg: PerpNegConfig = field(default_factory=PerpNegConfig)
    """Perp-Neg (guidance-spec §1.7): view-dependent negative prompts projected off the positive direction."""

    def __post_init__(self) -> None:
        if self.timesteps is None:
            self.timesteps = TimestepConfig()
        check_choices(self)

    def build(self, prior: Prior, gen: torch.Generator, total_steps: int) -> "SDS":
        return SDS(self, prior, gen, total_steps)


class SDS(Objective):
    """Stateless SDS objective bound to its prior."""

    def __call__(self, rgb: Tensor, prompts: PromptSet, cams: Cameras, step: int, *, t: Tensor | None = None,
                 noise: Tensor | None = None) -> GuidanceOutput:
        """rgb [B,H,W,3] in [0,1]; ``t`` [B] and ``noise`` (sample-shaped) may be injected for tests."""
        z = self.prior.encode(rgb)
        t, noise = self.draw_t_noise(z, step, t, noise)
        return self.from_sample(z, prompts, cams, t, noise)

    def from_sample(self, z: Tensor, prompts: PromptSet, cams: Cameras, t: Tensor, noise: Tensor) -> GuidanceOutput:
        """The SDS loss on an encoded sample ``z`` at given timesteps and noise (the ELBO objective's warm-up)."""
        prior, cfg = self.prior, self.cfg
        ac = prior.alphas_cumprod
        with torch.no_grad():
            x_t = add_noise(z.detach(), noise, t, ac)
            if cfg.perp_neg.enabled:  # Perp-Neg is defined in the standard convention
                scale = cfg.guidance_scale + (1.0 if cfg.cfg_convention == "threestudio" else 0.0)
                eps_hat = guided_eps(prior, x_t, t, prompts, cams, scale, "standard", cfg.perp_neg)
            else:
                eps_hat = guided_eps(prior, x_t, t, prompts, cams, cfg.guidance_scale, cfg.cfg_convention)
            w = weight(t, ac, cfg.weighting).view(-1, 1, 1, 1)
            g = w * (eps_hat - noise)
            if cfg.grad_clip > 0:
                g = g.clamp(-cfg.grad_clip, cfg.grad_clip)
        loss = surrogate_loss(z, g, cfg.reduction)
        return GuidanceOutput(loss, {"loss_sds": loss.detach(), "grad_norm": g.norm().detach(),
                                     "t": t.float().mean()})
