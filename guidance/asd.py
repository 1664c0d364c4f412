"""ASD: Asynchronous Score Distillation (ScaleDreamer, Ma et al. 2024, https://arxiv.org/abs/2407.13584, Eq. 8-9).

Notation (guidance-spec §2.5): one noise n shared by both terms, t ~ UniformInt[min_step, max_step] per sample,

    x_t   = alpha_t z + sigma_t n
    d     = clamp(plus_ratio (t - min_step), 0, T - 1 - t) [ * U(0, 1) when plus_random ]
    t+    = clamp(t + trunc(d), 1, T - 1)          (t+ >= t: the second term sees *more* noise)
    x_t+  = alpha_t+ z + sigma_t+ n
    g     = w(t) [ (e_u + s (e_y - e_u))(x_t, t) - e_y(x_t+, t+) ]

The second term has no CFG and the same view-dependent prompt; w is evaluated at t, not t+. With Perp-Neg the first
term is eps_PN with ScaleDreamer's weights (threestudio's, times 0.5: PerpNegConfig.weight_scale). Loss: the MSE
trick (batch mean) by default. ScaleDreamer anneals both ends of the t range over the whole run:
min 0.5 -> 0.02 and max 0.98 -> 0.5.

Without Perp-Neg the three predictions (e_y and e_u at t, e_y at t+) come from one batched prior call of 3B rows, as
ScaleDreamer batches them (one UNet launch per step instead of two); t+ is computed on the host from the host-drawn t.
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
    attach_pixel_clip,
    check_choices,
    classifier_free_guidance,
    sample_timesteps,
    surrogate_loss,
    to_device,
    weight,
)
from guidance.perp_neg import PerpNegConfig, guided_eps
from guidance.priors.base import Cond, Prior


@dataclass
class ASDConfig:
    """Asynchronous Score Distillation; defaults from asd_sd_nerf.yaml (guidance-spec §2.5)."""

    guidance_scale: float = 7.5
    """CFG scale s in the standard convention."""
    plus_ratio: float = 0.1
    """Shift ratio: t+ - t = plus_ratio (t - min_step) (before randomisation)."""
    plus_random: bool = True
    """Multiply the shift by U(0, 1)."""
    weighting: str = "sds"
    """w(t) at t: "sds" = 1 - abar_t, "uniform", "fantasia3d", "ism"."""
    timesteps: TimestepConfig = field(default_factory=lambda: TimestepConfig(
        schedule="annealed", min=0.5, max=0.98, min_end=0.02, max_end=0.5))
    """How t is drawn: both ends annealed over the run (end unset = the run's last step)."""
    perp_neg: PerpNegConfig = field(default_factory=PerpNegConfig)
    """Perp-Neg on the first term (the reference enables it with weight_scale 0.5)."""
    grad_clip: float = 0.0
    """Clamp each element of g to [-grad_clip, grad_clip]; 0 disables."""
    pixel_clip: float = 0.0
    """Dreamer XL's pixel-wise clip of the image gradient (0 disables)."""
    reduction: str = "mean"
    """"mean" (threestudio MSE trick, reference) or "sum" (SpecifyGradient)."""

    def __post_init__(self) -> None:
        check_choices(self)
        if self.plus_ratio < 0:
            raise ValueError(f"guidance.plus_ratio must be >= 0, got {self.plus_ratio}")

    def build(self, prior: Prior, gen: torch.Generator, total_steps: int) -> "ASD":
        return ASD(self, prior, gen, total_steps)


def shifted_timesteps(t: Tensor, min_step: int, plus_ratio: float, u: Tensor | None, T: int = 1000) -> Tensor:
    """t+ = clamp(t + trunc(clamp(plus_ratio (t - min_step), 0, T-1-t) * u), 1, T-1); u = 1 when None."""
    d = (plus_ratio * (t - min_step).double()).clamp(min=0.0)
    d = torch.minimum(d, (T - 1 - t).double())
    if u is not None:
        d = d * u.double()
    return (t + d.trunc().long()).clamp(1, T - 1)


class ASD(Objective):
    """Stateless ASD objective bound to its prior."""

    def __call__(self, rgb: Tensor, prompts, cams: Cameras, step: int, *, t: Tensor | None = None,
                 noise: Tensor | None = None, u: Tensor | None = None) -> GuidanceOutput:
        """rgb [B,H,W,3]; ``t`` [B], ``noise`` and the shift's uniform draw ``u`` [B] may be injected."""
        cfg, prior = self.cfg, self.prior
        attach_pixel_clip(rgb, cfg.pixel_clip)
        z = prior.encode(rgb)
        B = z.shape[0]
        ac = prior.alphas_cumprod
        T = ac.shape[0]
        min_step = int(T * cfg.timesteps.range_at(step, self.total_steps)[0])
        if t is None:  # drawn on the host, as draw_t_noise does, so that t+ is computed there too (no device read)
            t = sample_timesteps(cfg.timesteps, step, self.total_steps, B, self.gen, T)
        t_host = t if t.device.type == "cpu" else t.cpu()
        t, noise = self.draw_t_noise(z, step, t, noise)
        if u is None and cfg.plus_random:
            u = torch.rand(B, generator=self.gen)
        t_plus = to_device(shifted_timesteps(t_host, min_step, cfg.plus_ratio, u if cfg.plus_random else None, T),
                           z.device)
        with torch.no_grad():
            x_t = add_noise(z.detach(), noise, t, ac)
            x_tp = add_noise(z.detach(), noise, t_plus, ac)
            if cfg.perp_neg.enabled:
                eps_hat = guided_eps(prior, x_t, t, prompts, cams, cfg.guidance_scale, "standard", cfg.perp_neg)
                eps_plus = prior.predict_eps(x_tp, t_plus, prompts.cond(cams), cams)
            else:  # ScaleDreamer's single UNet call: the CFG pair at t and the conditional branch at t+
                cond = prompts.cond(cams)
                e_y, e_u, eps_plus = prior.predict_eps(torch.cat([x_t, x_t, x_tp]), torch.cat([t, t, t_plus]),
                                                       Cond.cat([cond, prompts.uncond(B, cams), cond]),
                                                       Cameras.cat([cams] * 3)).chunk(3)
                eps_hat = classifier_free_guidance(e_u, e_y, cfg.guidance_scale, "standard")
            w = weight(t, ac, cfg.weighting).view(-1, *([1] * (z.ndim - 1)))
            g = w * (eps_hat - eps_plus)
            if cfg.grad_clip > 0:
                g = g.clamp(-cfg.grad_clip, cfg.grad_clip)
        loss = surrogate_loss(z, g, cfg.reduction)
        return GuidanceOutput(loss, {"loss_asd": loss.detach(), "grad_norm": g.norm().detach(),
                                     "t": t.float().mean(), "t_plus": t_plus.float().mean()})
