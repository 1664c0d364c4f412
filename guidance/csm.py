"""CSM: Classifier Score Matching (TV-3DG, Yin et al. 2024, https://arxiv.org/abs/2410.21299) with visual prompts
(VPCSM), and CSD: Classifier Score Distillation (Yu et al. 2023, https://arxiv.org/abs/2310.19415, Eq. 7-9).

CSD as coded (guidance-spec §2.6): x_t = alpha_t z + sigma_t n with random n, and

    g = w(t) [ c_y e_y + c_neg e_neg + c_null e_null + c_n n ]  (+ w(t) c_pn sum_k w_k perp(e_k - e_neg, e_p - e_neg))

where every coefficient is a schedule (LinearRamp). c_y = s + 1, c_neg = -s, c_n = -1 is SDS in threestudio's
convention; c_y = 1, c_null = -1 is the paper's pure classifier score w(t)(e_y - e_null) (Eq. 8).

CSM (TV-3DG). **The paper's code is not public and only its abstract could be read (guidance-spec §0, §2.6), so
CSM here is a reconstruction; every choice is a config field, and these are the choices and why:**
1. Classifier term only, as the abstract says: g = lambda w(t) s (e_y - e_c)(x_t, t), no generative term e_null - n.
2. e_c is the *null* prompt by default (``uncond="null"``), as in CSD's core form; "negative" is available.
3. Deterministic noising: x_t comes from LucidDreamer's DDIM inversion under the null prompt from the same noise
   (ISM steps a and b, guidance/ism.py), because the README credits LucidDreamer and an earlier name of the method
   was "Visual Prompt Interval Score Matching". The interval schedule, inversion strides and index offset are
   ISM's (tau(i) = i + prior.steps_offset).
4. w(t) = 1 - abar_t ("sds") with s = 7.5 and lambda = 1: CSD's SD weighting and the usual CFG scale; the
   reduction is the batch mean (threestudio's MSE trick), which CSD uses.
5. t is drawn with ISM's warm-up rule (one t per batch), since x_t comes from ISM's inversion.

VPCSM: with an image prompt I (``image``), the conditional branch sees (y, I) and the unconditional branch
(null, no image): g = lambda w s (e(x_t; y, I) - e(x_t; null, 0_img)) + lambda w s_img (e(y, I) - e(y, 0_img)), the
second term optional (``image_guidance_scale``, 0 by default). Diffusers priors condition on I through an IP-Adapter
(guidance/priors/visual_prompt.py); exemplar priors (shapes) through the exemplars nearest to I.
"""

from dataclasses import dataclass, field

import torch
from torch import Tensor

from foundation.cameras import Cameras
from guidance.base import (
    GuidanceOutput,
    LinearRamp,
    Objective,
    TimestepConfig,
    add_noise,
    attach_pixel_clip,
    check_choices,
    const,
    sample_timesteps,
    surrogate_loss,
    to_device,
    weight,
)
from guidance.ism import ISMConfig, interval, inversion_eps, invert_to_xs_xt, lucid_noise, warmup_rate
from guidance.perp_neg import PerpNegConfig, perp_neg_conds, perp_neg_term
from guidance.priors.base import Cond, Prior


@dataclass
class CSMConfig(ISMConfig):
    """Classifier Score Matching (TV-3DG reconstruction, see the module docstring), optionally with an image prompt."""

    lambda_guidance: float = 1.0
    """lambda: multiplies the whole gradient."""
    weighting: str = "sds"
    """w(t): "sds" = 1 - abar_t, "uniform", "fantasia3d", "ism" = sqrt((1 - abar_t)/abar_t)."""
    uncond: str = "null"
    """The classifier's reference branch: "null" (empty prompt) or "negative" (the negative prompt)."""
    reduction: str = "mean"
    """"mean" (threestudio MSE trick, dL/dz = g/B) or "sum" (SpecifyGradient, dL/dz = g)."""
    image: str = ""
    """Visual prompt: path of a reference image (PNG/JPEG); "" for text only."""
    ip_adapter: str = "h94/IP-Adapter"
    """Diffusers priors: IP-Adapter hub id or local folder (loaded with diffusers' load_ip_adapter)."""
    ip_adapter_subfolder: str = "models"
    """Subfolder of the IP-Adapter weights (the image encoder is its image_encoder/ folder)."""
    ip_adapter_weight_name: str = "ip-adapter_sd15.safetensors"
    """IP-Adapter weight file name."""
    ip_adapter_scale: float = 1.0
    """lambda_ip: strength of the image prompt (IP-Adapter attention scale; exemplar priors: image kernel weight)."""
    image_guidance_scale: float = 0.0
    """s_img: optional extra image-guidance term e(y, I) - e(y, 0_img)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choices(self)
        if self.uncond not in ("null", "negative"):
            raise ValueError(f"guidance.uncond must be null or negative, got {self.uncond!r}")
        if self.image:
            from guidance.priors.visual_prompt import check_image_file
            check_image_file(self.image)

    def build(self, prior: Prior, gen: torch.Generator, total_steps: int) -> "CSM":
        return CSM(self, prior, gen, total_steps)


class CSM(Objective):
    """CSM / VPCSM bound to its prior; the visual prompt (if any) is prepared once at build time."""

    def __init__(self, cfg: CSMConfig, prior: Prior, gen: torch.Generator, total_steps: int):
        super().__init__(cfg, prior, gen, total_steps)
        self.visual = None
        if cfg.image:
            from guidance.priors.visual_prompt import VisualPrompt
            self.visual = VisualPrompt.build(prior, cfg.image, cfg)

    def conditions(self, prompts, cams: Cameras) -> tuple[Cond, Cond, Cond | None]:
        """(cond (y, I), reference (null or negative, no image), cond without image (y, 0) or None)."""
        B = len(cams)
        cond = prompts.cond(cams)
        ref = prompts.null(B, cams) if self.cfg.uncond == "null" else prompts.uncond(B, cams)
        if self.visual is None:
            return cond, ref, None
        return self.visual.with_image(cond), self.visual.without_image(ref), self.visual.without_image(cond)

    def __call__(self, rgb: Tensor, prompts, cams: Cameras, step: int, *, t: Tensor | int | None = None,
                 noise: Tensor | None = None) -> GuidanceOutput:
        """rgb [B,H,W,3]; ``t`` is the DDIM index (shared by the batch), ``noise`` may be injected."""
        cfg, prior = self.cfg, self.prior
        attach_pixel_clip(rgb, cfg.pixel_clip)
        z = prior.encode(rgb)
        B = z.shape[0]
        ac, off, T = prior.alphas_cumprod, int(prior.steps_offset), prior.alphas_cumprod.shape[0]
        if t is None:
            ind_t = min(int(sample_timesteps(cfg.timesteps, step, self.total_steps, 1, self.gen, T)[0]), T - 1 - off)
        else:
            ind_t = int(torch.as_tensor(t).reshape(-1)[0])
        ind_s = max(ind_t - interval(cfg, warmup_rate(cfg, step, self.total_steps)), 0)
        if noise is None:
            noise = lucid_noise(z.shape, self.gen, cfg.noise_offset)
        noise = to_device(noise, z.device, z.dtype)
        tau_t = torch.full((B,), ind_t + off, dtype=torch.int64, device=z.device)
        cond, ref, cond_noimg = self.conditions(prompts, cams)
        with torch.no_grad():
            null = prompts.null(B, cams) if self.visual is None else self.visual.without_image(prompts.null(B, cams))
            unc = (prompts.uncond(B, cams) if self.visual is None
                   else self.visual.without_image(prompts.uncond(B, cams)))
            eps_fn = inversion_eps(prior, prompts, B, cfg, cams, null=null, uncond=unc)
            _, _, x_t = invert_to_xs_xt(prior, z.detach(), noise, ind_s, ind_t, cfg, eps_fn)
            conds = [cond, ref] + ([cond_noimg] if cond_noimg is not None and cfg.image_guidance_scale else [])
            k = len(conds)
            eps = prior.predict_eps(torch.cat([x_t] * k), torch.cat([tau_t] * k), Cond.cat(conds),
                                    Cameras.cat([cams] * k)).chunk(k)
            delta = cfg.guidance_scale * (eps[0] - eps[1])
            if k == 3:
                delta = delta + cfg.image_guidance_scale * (eps[0] - eps[2])
            w = weight(tau_t, ac, cfg.weighting).view(-1, *([1] * (z.ndim - 1)))
            g = cfg.lambda_guidance * w * delta
        loss = surrogate_loss(z, g, cfg.reduction)
        return GuidanceOutput(loss, {"loss_csm": loss.detach(), "grad_norm": g.norm().detach(),
                                     "t": float(ind_t + off)})


# ---- CSD ----------------------------------------------------------------------------------------------------------
@dataclass
class CSDConfig:
    """Classifier Score Distillation with scheduled coefficients; defaults from csd-if.yaml (guidance-spec §2.6)."""

    c_y: LinearRamp = field(default_factory=lambda: const(1.0))
    """Coefficient of e_y (the view-dependent prompt)."""
    c_neg: LinearRamp = field(default_factory=lambda: LinearRamp(0.0, -1.0, 0, 5000))
    """Coefficient of e_neg (the negative prompt): 0 -> -1 over steps 0..5000."""
    c_null: LinearRamp = field(default_factory=lambda: LinearRamp(-1.0, 0.0, 0, 5000))
    """Coefficient of e_null (the empty prompt): -1 -> 0 over steps 0..5000."""
    c_n: LinearRamp = field(default_factory=lambda: const(0.0))
    """Coefficient of the sampled noise n (-1 gives SDS's generative term)."""
    c_pn: LinearRamp = field(default_factory=lambda: const(3.0))
    """Coefficient of the Perp-Neg term (csd-if's perpneg_scale), used when perp_neg.enabled."""
    weighting: str = "uniform"
    """w(t): "uniform" (csd-if), "sds" = 1 - abar_t (csd-sd), "fantasia3d", "ism"."""
    timesteps: TimestepConfig = field(default_factory=lambda: TimestepConfig(schedule="two-stage", start=5000,
                                                                             reference_steps=10000))
    """How t is drawn (per sample): t_max 0.98 -> 0.5 at step 5000 of csd-if's 10000 (half of any run)."""
    perp_neg: PerpNegConfig = field(default_factory=PerpNegConfig)
    """Perp-Neg term (csd-if turns it on; off here because it needs view prompts the prior understands)."""
    grad_clip: float = 0.0
    """Clamp each element of g to [-grad_clip, grad_clip]; 0 disables."""
    normalize: bool = False
    """Divide g by its norm (per batch), as CSD's optional grad normalisation."""
    pixel_clip: float = 0.0
    """Dreamer XL's pixel-wise clip of the image gradient (0 disables)."""
    reduction: str = "mean"
    """"mean" (threestudio MSE trick, reference) or "sum" (SpecifyGradient)."""

    def __post_init__(self) -> None:
        check_choices(self)

    def build(self, prior: Prior, gen: torch.Generator, total_steps: int) -> "CSD":
        return CSD(self, prior, gen, total_steps)


class CSD(Objective):
    """Stateless CSD objective bound to its prior."""

    def coefficients(self, step: int) -> dict[str, float]:
        c = self.cfg
        return {"y": c.c_y.at(step), "neg": c.c_neg.at(step), "null": c.c_null.at(step), "n": c.c_n.at(step),
                "pn": c.c_pn.at(step)}

    def __call__(self, rgb: Tensor, prompts, cams: Cameras, step: int, *, t: Tensor | None = None,
                 noise: Tensor | None = None) -> GuidanceOutput:
        cfg, prior = self.cfg, self.prior
        attach_pixel_clip(rgb, cfg.pixel_clip)
        z = prior.encode(rgb)
        B = z.shape[0]
        ac = prior.alphas_cumprod
        t, noise = self.draw_t_noise(z, step, t, noise)
        c = self.coefficients(step)
        pn = cfg.perp_neg.enabled and c["pn"] != 0
        with torch.no_grad():
            x_t = add_noise(z.detach(), noise, t, ac)
            if pn:
                pos, negs, wk = perp_neg_conds(prompts, cams, cfg.perp_neg)
                conds = [pos, prompts.uncond(B, cams), prompts.null(B, cams), *negs]
            else:
                conds = [prompts.cond(cams), prompts.uncond(B, cams), prompts.null(B, cams)]
            k = len(conds)
            eps = prior.predict_eps(torch.cat([x_t] * k), torch.cat([t] * k), Cond.cat(conds),
                                    Cameras.cat([cams] * k)).chunk(k)
            e_y, e_neg, e_null = eps[:3]
            delta = c["y"] * e_y + c["neg"] * e_neg + c["null"] * e_null + c["n"] * noise
            if pn:
                delta = delta + c["pn"] * perp_neg_term(e_neg, e_y, list(eps[3:]), wk.to(z.device))
            g = weight(t, ac, cfg.weighting).view(-1, *([1] * (z.ndim - 1))) * delta
            if cfg.normalize:
                g = g / g.norm().clamp_min(1e-12)
            if cfg.grad_clip > 0:
                g = g.clamp(-cfg.grad_clip, cfg.grad_clip)
        loss = surrogate_loss(z, g, cfg.reduction)
        return GuidanceOutput(loss, {"loss_csd": loss.detach(), "grad_norm": g.norm().detach(),
                                     "t": t.float().mean(), **{f"c_{k}": v for k, v in c.items()}})
