"""ISM: Interval Score Matching (LucidDreamer, Liang et al. 2023, https://arxiv.org/abs/2311.11284, Eq. 14-17) and
TSM: Trajectory Score Matching (Dreamer XL, Miao et al. 2024, https://arxiv.org/abs/2405.11252, Eq. 9-11).

Notation (guidance-spec §2.3-2.4). Everything counts in DDIM *indices* i; the model timestep is
tau(i) = i + prior.steps_offset (1 for SD-2.1-base / SDXL schedulers, 0 for the exemplar priors), so with the
reference's offset the clean latent is first noised to t = 1, not 0 (LucidDreamer issue #46). With z the encoded
render and n the step's noise:

    a. x_s = DDIM-invert(add_noise(z, n, tau(start)), null) to index s     (coarse: xs_inv_steps moves of xs_delta_t)
    b. e_s = eps(x_s, tau(s), null);  x_t = DDIM(x_s, e_s, tau(s) -> tau(t))
    c. ISM target: e_s                                                      (Eq. 16)
    d. pred = e_u + s_cfg (e_y - e_u) at (x_t, tau(t)), or Perp-Neg
    e. g = lambda sqrt((1 - abar_tau(t)) / abar_tau(t)) (pred - target)     (Eq. 17)

with s = max(t - Delta, 0), Delta annealed from delta_t_start to delta_t over the warm-up. One t is shared by the
batch. TSM adds a second path from the same x_s to mu = round(s + (t - s) sqrt(1 - gamma^2)):
x_mu = DDIM(x_s, e_s, tau(s) -> tau(mu)), target = eps(x_mu, tau(mu), null); gamma = 1 gives mu = s, exactly ISM.
Dreamer XL's pixel-wise gradient clipping (``pixel_clip``) is a backward hook on the rendered image.

"null" is the empty prompt; with denoise_guidance_scale c > 1 the inversion uses the reverse CFG
e_null + c (e_u - e_null) (u the negative prompt), as the reference does.
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor

from foundation.cameras import Cameras
from guidance.base import (
    GuidanceOutput,
    Objective,
    TimestepConfig,
    attach_pixel_clip,
    check_choices,
    ddim_invert,
    ddim_move,
    sample_timesteps,
    surrogate_loss,
    to_device,
    weight,
)
from guidance.perp_neg import PerpNegConfig, guided_eps
from guidance.priors.base import Cond, Prior


def _default_ism_timesteps() -> TimestepConfig:
    return TimestepConfig(schedule="warmup", min=0.02, max=0.98, max_end=0.5, end=1500, reference_steps=5000)


@dataclass
class ISMConfig:
    """Interval Score Matching (LucidDreamer); reference defaults from its configs (guidance-spec §2.3)."""

    guidance_scale: float = 7.5
    """CFG scale s in the standard convention, e_u + s (e_y - e_u)."""
    lambda_guidance: float = 0.1
    """lambda: multiplies the whole gradient."""
    delta_t: int = 80
    """Interval t - s in DDIM indices after the warm-up."""
    delta_t_start: int = 100
    """Interval at step 0 when annealing_intervals is on."""
    annealing_intervals: bool = True
    """Anneal the interval from delta_t_start to delta_t over the warm-up."""
    xs_delta_t: int = 200
    """Index stride of the coarse inversion to x_s."""
    xs_inv_steps: int = 5
    """Maximum number of coarse inversion moves."""
    denoise_guidance_scale: float = 1.0
    """Inversion guidance c: <= 1 uses the null prompt; > 1 uses the reverse CFG e_null + c (e_u - e_null)."""
    noise_offset: float = 0.1
    """Std of LucidDreamer's per-channel noise offset, shared over the batch (0 disables)."""
    timesteps: TimestepConfig = field(default_factory=_default_ism_timesteps)
    """How the index t is drawn (one per step): default LucidDreamer's warm-up, 1500 of its 5000 steps (scaled to
    the run's length: the first 30% of any run)."""
    weighting: str = "ism"
    """w(t): "ism" = sqrt((1 - abar_t)/abar_t) (reference), or "sds", "uniform", "fantasia3d"."""
    perp_neg: PerpNegConfig = field(default_factory=PerpNegConfig)
    """Perp-Neg instead of plain CFG (LucidDreamer turns it on for characters)."""
    pixel_clip: float = 0.0
    """Dreamer XL's pixel-wise clip c_img of the image gradient (0 disables; TSM's reference uses 0.05)."""
    reduction: str = "sum"
    """"sum" (SpecifyGradient: dL/dz = g, reference) or "mean" (threestudio's MSE trick: g/B)."""

    def __post_init__(self) -> None:
        check_choices(self)
        if self.delta_t < 0 or self.delta_t_start < 0 or self.xs_delta_t < 1 or self.xs_inv_steps < 0:
            raise ValueError("guidance.delta_t / delta_t_start must be >= 0, xs_delta_t >= 1, xs_inv_steps >= 0")

    def build(self, prior: Prior, gen: torch.Generator, total_steps: int) -> "ISM":
        return ISM(self, prior, gen, total_steps)


@dataclass
class TSMConfig(ISMConfig):
    """Trajectory Score Matching (Dreamer XL): ISM plus the second path to mu; defaults from its configs."""

    gamma: float = 0.3
    """Path-2 ratio: mu = round(s + (t - s) sqrt(1 - gamma^2)); gamma = 1 reduces exactly to ISM."""
    pixel_clip: float = 0.05
    """Pixel-wise clip c_img of the total gradient on the rendered image (0 disables)."""
    timesteps: TimestepConfig = field(default_factory=lambda: TimestepConfig(
        schedule="warmup", min=0.02, max=0.98, max_end=0.5, end=750, reference_steps=2500))
    """How the index t is drawn: Dreamer XL's warm-up is 750 of its 2500 steps (scaled to the run's length)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"guidance.gamma must be in [0, 1], got {self.gamma}")

    def build(self, prior: Prior, gen: torch.Generator, total_steps: int) -> "ISM":
        return ISM(self, prior, gen, total_steps)


def warmup_rate(cfg: ISMConfig, step: int, total_steps: int) -> float:
    """wr = 1 - min(step / warmup_iter, 1), with warmup_iter = timesteps.end (scaled to the run's length from
    ``timesteps.reference_steps``; the run's length when unset)."""
    end = cfg.timesteps.steps_for(total_steps)[1]
    return 1.0 - min(step / max(end, 1), 1.0)


def interval(cfg: ISMConfig, wr: float) -> int:
    """Delta = int(delta_t + wr (delta_t_start - delta_t)) when annealing, else delta_t (guidance-spec §2.3)."""
    return int(cfg.delta_t + wr * (cfg.delta_t_start - cfg.delta_t)) if cfg.annealing_intervals else cfg.delta_t


def lucid_noise(shape, gen: torch.Generator, offset: float) -> Tensor:
    """N(0, I) plus offset * N(0, 1) per channel, shared over the batch (LucidDreamer)."""
    n = torch.randn(shape, generator=gen)
    if offset:
        n = n + offset * torch.randn((1, shape[1]) + (1,) * (len(shape) - 2), generator=gen)
    return n


def inversion_eps(prior: Prior, prompts, B: int, cfg: ISMConfig, cams: Cameras | None, null: Cond | None = None,
                  uncond: Cond | None = None):
    """eps(x, t) used for every inversion move: null prompt, or reverse CFG when denoise_guidance_scale > 1."""
    null = prompts.null(B, cams) if null is None else null
    uncond = prompts.uncond(B, cams) if uncond is None else uncond
    c = cfg.denoise_guidance_scale
    if c <= 1.0:
        return lambda x, t: prior.predict_eps(x, t, null, cams)

    def reverse_cfg(x, t):
        e = prior.predict_eps(torch.cat([x, x]), torch.cat([t, t]), Cond.cat([null, uncond]),
                              None if cams is None else Cameras.cat([cams, cams]))
        e_null, e_u = e.chunk(2)
        return e_null + c * (e_u - e_null)
    return reverse_cfg


def invert_to_xs_xt(prior: Prior, z: Tensor, noise: Tensor, ind_s: int, ind_t: int, cfg: ISMConfig, eps_fn
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Steps a and b: (x_s, e_s, x_t) by coarse DDIM inversion from the same noise, then one move s -> t."""
    ac, off = prior.alphas_cumprod, int(prior.steps_offset)
    B = z.shape[0]
    start = max(ind_s - cfg.xs_delta_t * cfg.xs_inv_steps, 0)
    x_s = ddim_invert(prior, z, noise, start, ind_s, cfg.xs_delta_t, cfg.xs_inv_steps, None, eps_fn=eps_fn)
    tau_s = torch.full((B,), ind_s + off, dtype=torch.int64, device=z.device)
    tau_t = torch.full((B,), ind_t + off, dtype=torch.int64, device=z.device)
    e_s = eps_fn(x_s, tau_s)
    x_t = ddim_move(x_s, e_s, ac[tau_s], ac[tau_t])
    return x_s, e_s, x_t


class ISM(Objective):
    """ISM (and TSM when the config has gamma < 1) bound to its prior; stateless."""

    def sample_index(self, step: int) -> int:
        """One DDIM index t for the whole batch (guidance-spec §1.5), capped so tau(t) stays a valid timestep."""
        T = self.prior.alphas_cumprod.shape[0]
        t = int(sample_timesteps(self.cfg.timesteps, step, self.total_steps, 1, self.gen, T)[0])
        return min(t, T - 1 - int(self.prior.steps_offset))

    def __call__(self, rgb: Tensor, prompts, cams: Cameras, step: int, *, t: Tensor | int | None = None,
                 noise: Tensor | None = None) -> GuidanceOutput:
        """rgb [B,H,W,3] in [0,1]. ``t`` is the DDIM *index* (int or [B] with equal entries); ``noise`` may be
        injected for tests."""
        cfg, prior = self.cfg, self.prior
        attach_pixel_clip(rgb, cfg.pixel_clip)
        z = prior.encode(rgb)
        B = z.shape[0]
        ind_t = self.sample_index(step) if t is None else int(torch.as_tensor(t).reshape(-1)[0])
        wr = warmup_rate(cfg, step, self.total_steps)
        ind_s = max(ind_t - interval(cfg, wr), 0)
        if noise is None:
            noise = lucid_noise(z.shape, self.gen, cfg.noise_offset)
        noise = to_device(noise, z.device, z.dtype)
        ac, off = prior.alphas_cumprod, int(prior.steps_offset)
        tau_t = torch.full((B,), ind_t + off, dtype=torch.int64, device=z.device)
        with torch.no_grad():
            eps_fn = inversion_eps(prior, prompts, B, cfg, cams)
            x_s, e_s, x_t = invert_to_xs_xt(prior, z.detach(), noise, ind_s, ind_t, cfg, eps_fn)
            target, ind_mu = e_s, ind_s
            gamma = getattr(cfg, "gamma", 1.0)
            if gamma < 1.0:
                ind_mu = int(round(ind_s + (ind_t - ind_s) * (1.0 - gamma ** 2) ** 0.5))
                if ind_mu != ind_s:
                    tau_s = torch.full_like(tau_t, ind_s + off)
                    tau_mu = torch.full_like(tau_t, ind_mu + off)
                    x_mu = ddim_move(x_s, e_s, ac[tau_s], ac[tau_mu])
                    target = eps_fn(x_mu, tau_mu)
            pred = guided_eps(prior, x_t, tau_t, prompts, cams, cfg.guidance_scale, "standard", cfg.perp_neg)
            w = weight(tau_t, ac, cfg.weighting).view(-1, *([1] * (z.ndim - 1)))
            g = cfg.lambda_guidance * w * (pred - target)
        loss = surrogate_loss(z, g, cfg.reduction)
        name = "tsm" if isinstance(cfg, TSMConfig) else "ism"
        return GuidanceOutput(loss, {f"loss_{name}": loss.detach(), "grad_norm": g.norm().detach(),
                                     "t": float(ind_t + off), "s": float(ind_s + off), "mu": float(ind_mu + off)})
