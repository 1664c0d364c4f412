"""Perp-Neg (Armandpour et al. 2023, https://arxiv.org/abs/2304.04968, Eq. 7) and the guided noise prediction every
objective shares: plain CFG or Perp-Neg, with the view-dependent prompt (guidance-spec §1.3, §1.6, §1.7).

Notation: e_u = eps(x_t; u) (negative prompt), e_p = eps(x_t; y_pos), e_k = eps(x_t; y_neg_k), weights w_k <= 0,

    perp(a, b) = a - <a, b> / max(<b, b>, 1e-6) b          (per sample, over C,H,W)
    eps_PN     = e_u + s [ (e_p - e_u) + sum_k w_k perp(e_k - e_u, e_p - e_u) ].

Two weight functions are implemented, checked against the spec's tables:
- "threestudio" (prompt_processors/base.py): f(a,b,c; r) = a exp(-b r) + c, front half with r = 1 - |az|/90 and
  negatives (front, side), back half with r = 2 - |az|/90 and negatives (side, front), overhead with w = 0.
- "lucid" (LucidDreamer perpneg_utils): negative_w = -2, front_decay 2, side_decay 10, no overhead view.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from foundation.cameras import Cameras, view_labels
from guidance.base import classifier_free_guidance
from guidance.priors.base import Cond, Prior

WEIGHT_FUNCTIONS = ("threestudio", "lucid")


@dataclass
class PerpNegConfig:
    """Perp-Neg: view prompts of the *other* directions as perpendicular negative prompts."""

    enabled: bool = False
    """Replace plain CFG by Perp-Neg (needs view-dependent prompting)."""
    weights: str = "threestudio"
    """Weight function: "threestudio" or "lucid" (LucidDreamer)."""
    weight_scale: float = 1.0
    """Multiplies every w_k (ScaleDreamer's guidance_perp_neg * -1, e.g. 0.5)."""

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_FUNCTIONS:
            raise ValueError(f"perp_neg.weights must be one of {WEIGHT_FUNCTIONS}, got {self.weights!r}")


def _f(a: float, b: float, c: float, r: float) -> float:
    return a * math.exp(-b * r) + c


def threestudio_weights(azimuth: float, elevation: float = 0.0, overhead_threshold: float = 60.0
                        ) -> tuple[tuple[str, str, float], tuple[tuple[str, float], ...]]:
    """One camera's positive blend (a, b, r), meaning y_pos = r E_a + (1 - r) E_b, and negatives [(view, w_k)]
    in threestudio's rule."""
    az = (azimuth + 180.0) % 360.0 - 180.0
    if elevation > overhead_threshold:
        return ("overhead", "overhead", 1.0), (("overhead", 0.0), ("overhead", 0.0))
    if abs(az) < 90.0:
        r = 1.0 - abs(az) / 90.0
        return ("front", "side", r), (("front", -_f(4, 0.5, -2.426, r)), ("side", -_f(4, 0.5, -2.426, 1 - r)))
    r = 2.0 - abs(az) / 90.0
    return ("side", "back", r), (("side", -_f(1, 0.5, -0.606, r)), ("front", -_f(1, 0.5, 0.967, r)))


def lucid_weights(azimuth: float) -> tuple[tuple[str, str, float], tuple[tuple[str, float], ...]]:
    """One camera's positive blend (a, b, r) and negatives [(view, w_k)] in LucidDreamer's rule."""
    az = (azimuth + 180.0) % 360.0 - 180.0
    if -90.0 <= az < 90.0:
        r = 1.0 - abs(az) / 90.0
        w_front = 0.0 if r > 0.8 else -2.0 * math.exp(-2.0 * r)
        w_side = 0.0 if r < 0.2 else -2.0 * math.exp(-10.0 * (1.0 - r))
        return ("front", "side", r), (("front", w_front), ("side", w_side))
    r = 1.0 - (abs(az) - 90.0) / 90.0
    w_side = 0.0 if r > 0.8 else -math.exp(-10.0 * r)
    return ("side", "back", r), (("side", w_side), ("front", -2.0))


def perp_neg_conds(prompts, cams: Cameras, cfg: PerpNegConfig) -> tuple[Cond, list[Cond], Tensor]:
    """Positive conds [B], two negative conds (each [B]) and weights [B,2] for a camera batch."""
    pos, negs, ws = [], ([], []), []
    angles = torch.stack([cams.azimuth, cams.elevation], 1).tolist()  # one host read for the batch, not 2 per camera
    for az, el in angles:
        if cfg.weights == "threestudio":
            (a, b, r), neg = threestudio_weights(az, el, prompts.thresholds.overhead)
        else:
            (a, b, r), neg = lucid_weights(az)
        pos.append(prompts.views[b].lerp(prompts.views[a], torch.tensor([r])))
        for k in range(2):
            negs[k].append(prompts.views[neg[k][0]])
        ws.append([neg[0][1] * cfg.weight_scale, neg[1][1] * cfg.weight_scale])
    return Cond.cat(pos), [Cond.cat(n) for n in negs], torch.tensor(ws, dtype=torch.float64)


def perpendicular(a: Tensor, b: Tensor) -> Tensor:
    """a minus its projection on b, per sample over all non-batch dims."""
    dims = tuple(range(1, a.ndim))
    coef = (a * b).sum(dims, keepdim=True) / (b * b).sum(dims, keepdim=True).clamp_min(1e-6)
    return a - coef * b


def perp_neg_combine(e_u: Tensor, e_p: Tensor, e_negs: list[Tensor], w: Tensor, scale: float) -> Tensor:
    """eps_PN = e_u + s [(e_p - e_u) + sum_k w_k perp(e_k - e_u, e_p - e_u)], w [B,K]."""
    d_pos = e_p - e_u
    acc = d_pos
    for k, e_k in enumerate(e_negs):
        wk = w[:, k].to(e_u.dtype).view(-1, *([1] * (e_u.ndim - 1)))
        acc = acc + wk * perpendicular(e_k - e_u, d_pos)
    return e_u + scale * acc


def perp_neg_term(e_u: Tensor, e_p: Tensor, e_negs: list[Tensor], w: Tensor) -> Tensor:
    """sum_k w_k perp(e_k - e_u, e_p - e_u) alone (CSD adds it with its own coefficient)."""
    return perp_neg_combine(e_u, e_p, e_negs, w, 1.0) - e_p


def guided_eps(prior: Prior, x_t: Tensor, t: Tensor, prompts, cams: Cameras, scale: float, convention: str = "standard",
               perp_neg: PerpNegConfig | None = None, cond: Cond | None = None, uncond: Cond | None = None) -> Tensor:
    """The CFG (or Perp-Neg) prediction at (x_t, t) with the view-dependent prompt, one batched prior call.

    Perp-Neg always uses the standard convention (as every reference does). ``cond`` / ``uncond`` override the
    prompt set's conditions (e.g. with image embeddings attached).
    """
    B = x_t.shape[0]
    uncond = prompts.uncond(B, cams) if uncond is None else uncond
    if perp_neg is not None and perp_neg.enabled:
        pos, negs, w = perp_neg_conds(prompts, cams, perp_neg)
        eps = prior.predict_eps(torch.cat([x_t] * 4), torch.cat([t] * 4), Cond.cat([uncond, pos, *negs]),
                                Cameras.cat([cams] * 4))
        e_u, e_p, e_n1, e_n2 = eps.chunk(4)
        return perp_neg_combine(e_u, e_p, [e_n1, e_n2], w.to(x_t.device), scale)
    cond = prompts.cond(cams) if cond is None else cond
    if convention == "standard" and scale == 1.0:
        return prior.predict_eps(x_t, t, cond, cams)
    eps = prior.predict_eps(torch.cat([x_t, x_t]), torch.cat([t, t]), Cond.cat([cond, uncond]),
                            Cameras.cat([cams, cams]))
    eps_y, eps_u = eps.chunk(2)
    return classifier_free_guidance(eps_u, eps_y, scale, convention)


__all__ = ["PerpNegConfig", "threestudio_weights", "lucid_weights", "perp_neg_conds", "perpendicular",
           "perp_neg_combine", "perp_neg_term", "guided_eps", "view_labels"]
