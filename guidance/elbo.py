"""ELBO: the prior's own denoising loss, differentiated through its network (a likelihood objective), after an SDS
warm-up that forms the shape.

DreamFusion (Poole et al. 2022, https://arxiv.org/abs/2209.14988, §3.1, Eq. 1-3) starts from the diffusion training
loss on the render's sample z,

    L(z) = E_t,n [ w(t) ||eps(alpha_t z + sigma_t n, t, y) - n||^2 ],

the weighted ELBO of DDPM (Ho et al. 2020, Eq. 14; "simple" when w = 1), and gets SDS by dropping the network's
Jacobian d eps / d x_t from its gradient. SDS's fixed point (E[w (eps_hat - n)] = 0, with CFG) is a mode of the
prompt-sharpened, noise-smoothed density, not the point the model itself finds most likely. This objective keeps
the Jacobian,

    dL/dz = w(t) alpha_t (d eps / d x_t)^T (eps(x_t, t, y) - n),

and so descends the conditional denoising error, the likelihood proxy that ``bench/bench_prior_probe.py framing``
and ``brightness`` measure; Graikos et al. 2022 ("Diffusion models as plug-and-play priors",
https://arxiv.org/abs/2206.09012, §3) optimise an input against a diffusion prior's loss the same way. It costs a
backward pass through the network, so the prior must declare ``InputGradient`` (the diffusers priors do).

From a random start the likelihood alone forms no shape (the conditional model without CFG pulls towards the
blurred average: a red cube run ends a pink blob, IoU 0.60), so the first ``sds_until`` of the run is plain SDS
(DreamFusion Eq. 3, w = 1 - abar_t, CFG at ``guidance_scale`` in ``cfg_convention``) and the rest descends the
likelihood, as a refinement stage. ``likelihood_scale`` s > 1 sharpens the target to the CFG distribution
p(x|y)^s p(x)^(1-s), whose ELBO is s L_y - (s - 1) L_u.

Measured on the learned shapes prior (docs/learned-prior.md, session 29): ``bench_prior_probe.py colour-sds
--objective elbo`` takes a grey blue torus to (45, 62, 195) against the true (40, 70, 200) where SDS ends at
(45, 42, 224). In 3D (400-step NeRF runs, the defaults) it is a trade, not a cure: "a red cube" exports at accuracy
0.071 / completeness 0.067 m and 17.27 dB (SDS: 0.084 / 0.076, 15.96 dB) but darker (luminance 0.64 against 0.97);
"a blue torus" is less over-saturated (chromaticity 0.123 against 0.152) but looser (0.046 / 0.040 against
0.033 / 0.030). A quarter-run warm-up (``sds_until`` 0.25) sharpens the cube further (0.061 / 0.058) and closes the
torus's hole.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from foundation.abilities import declares
from foundation.cameras import Cameras
from guidance.base import GuidanceOutput, Objective, TimestepConfig, add_noise, check_choices, weight
from guidance.priors.base import Cond, InputGradient, Prior
from guidance.prompts import PromptSet
from guidance.sds import SDS, SDSConfig


@dataclass
class ELBOConfig:
    """The prior's denoising loss on the render, through the network, after an SDS warm-up (module docstring)."""

    sds_until: float = 0.5
    """Fraction of the run spent on SDS before the likelihood takes over (0: the likelihood from the first step)."""
    guidance_scale: float = 7.5
    """CFG scale of the SDS warm-up, in ``cfg_convention``."""
    cfg_convention: str = "standard"
    """"standard": eps_u + s (eps_y - eps_u); "threestudio": eps_y + s (eps_y - eps_u)."""
    likelihood_scale: float = 1.0
    """s of the likelihood stage: 1 is the conditional model's ELBO; s > 1 is s L_y - (s - 1) L_u."""
    weighting: str = "sds"
    """w(t) of both stages: "sds" = 1 - abar_t, "uniform" = 1 (DDPM's simple loss), "fantasia3d", "ism"."""
    timesteps: TimestepConfig = None  # type: ignore[assignment]
    """How t is drawn each step."""

    def __post_init__(self) -> None:
        if self.timesteps is None:
            self.timesteps = TimestepConfig()
        if not 0.0 <= self.sds_until <= 1.0:
            raise ValueError(f"elbo sds_until is a fraction of the run in [0, 1], got {self.sds_until}")
        if self.likelihood_scale < 1.0:
            raise ValueError(f"elbo likelihood_scale must be >= 1 (1 = the conditional model), got "
                             f"{self.likelihood_scale}")
        check_choices(self)

    def build(self, prior: Prior, gen: torch.Generator, total_steps: int) -> "ELBO":
        if not declares(prior, InputGradient):
            raise ValueError(f"--guidance elbo differentiates the prior's network, and {type(prior).__name__} does not "
                             "offer that (InputGradient); use a diffusers prior (--prior shapes, an SD folder or a hub "
                             "id) or another objective")
        return ELBO(self, prior, gen, total_steps)


class ELBO(Objective):
    """Stateless; each call is one Monte-Carlo sample (t, n) per view of the weighted denoising loss."""

    def __init__(self, cfg: ELBOConfig, prior, gen: torch.Generator, total_steps: int):
        super().__init__(cfg, prior, gen, total_steps)
        warm = SDSConfig(guidance_scale=cfg.guidance_scale, cfg_convention=cfg.cfg_convention,
                         weighting=cfg.weighting, timesteps=cfg.timesteps, reduction="mean")
        self.warm_up = SDS(warm, prior, gen, total_steps)

    def likelihood_stage(self, step: int) -> bool:
        return step >= self.cfg.sds_until * self.total_steps

    def __call__(self, rgb: Tensor, prompts: PromptSet, cams: Cameras, step: int, *, t: Tensor | None = None,
                 noise: Tensor | None = None) -> GuidanceOutput:
        """rgb [B,H,W,3] in [0,1]; ``t`` [B] and ``noise`` (sample-shaped) may be injected for tests."""
        prior, cfg = self.prior, self.cfg
        z = prior.encode(rgb)
        ac = prior.alphas_cumprod
        t, noise = self.draw_t_noise(z, step, t, noise)
        if not self.likelihood_stage(step):  # the warm-up: SDS itself (DreamFusion Eq. 3), at this step's t and n
            return self.warm_up.from_sample(z, prompts, cams, t, noise)
        w = weight(t, ac, cfg.weighting).view(-1, *([1] * (z.ndim - 1)))
        x_t = add_noise(z, noise, t, ac)
        cond = prompts.cond(cams)

        def err(e: Tensor) -> Tensor:  # per sample: 0.5 w ||e - n||^2
            return 0.5 * (w * (e.float() - noise.float()).square()).flatten(1).sum(1)

        s = cfg.likelihood_scale
        if s == 1.0:
            per_sample = err(prior.predict_eps_grad(x_t, t, cond, cams))
        else:
            e_y, e_u = prior.predict_eps_grad(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                              Cond.cat([cond, prompts.uncond(x_t.shape[0], cams)]),
                                              Cameras.cat([cams, cams])).chunk(2)
            per_sample = s * err(e_y) - (s - 1) * err(e_u)
        loss = per_sample.mean()
        return GuidanceOutput(loss, {"loss_elbo": loss.detach(), "t": t.float().mean()})
