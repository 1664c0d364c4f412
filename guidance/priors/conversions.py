"""The diffusion parameterisation, written once beside the priors: noising, the clean-sample estimate, DDIM moves,
and conversions between a model's output (epsilon, v or x0 "sample") and epsilon.

Notation (guidance-spec §1): abar_t = alphas_cumprod[t], alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t);
x_t = alpha_t x + sigma_t eps.
"""

from torch import Tensor


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


def to_eps(out: Tensor, x_t: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: str) -> Tensor:
    """Model output -> epsilon: v gives sigma x_t + alpha v; x0 ("sample") gives (x_t - alpha x0) / sigma."""
    abar = _bcast(alphas_cumprod[t], out)
    match prediction_type:
        case "epsilon":
            return out
        case "v_prediction":
            return (1 - abar).sqrt() * x_t + abar.sqrt() * out
        case "sample":
            return (x_t - abar.sqrt() * out) / (1 - abar).sqrt()
        case _:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def from_eps(eps: Tensor, x_t: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: str) -> Tensor:
    """Epsilon -> model output, the inverse of ``to_eps``: v = (eps - sigma x_t) / alpha, x0 = (x_t - sigma eps) /
    alpha."""
    abar = _bcast(alphas_cumprod[t], eps)
    match prediction_type:
        case "epsilon":
            return eps
        case "v_prediction":
            return (eps - (1 - abar).sqrt() * x_t) / abar.sqrt()
        case "sample":
            return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        case _:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def training_target(x0: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: str) -> Tensor:
    """The diffusion loss target: n (epsilon), alpha n - sigma x0 (v), or x0 (sample)."""
    abar = _bcast(alphas_cumprod[t], x0)
    match prediction_type:
        case "epsilon":
            return noise
        case "v_prediction":
            return abar.sqrt() * noise - (1 - abar).sqrt() * x0
        case "sample":
            return x0
        case _:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}")
