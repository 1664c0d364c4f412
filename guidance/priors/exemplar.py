"""The exemplar prior: the exact posterior-mean denoiser of an empirical image set, with a camera kernel.

For an empirical data distribution p(x0) = sum_i pi_i delta(x0 - x_i) and x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps,
the minimum-MSE denoiser is the posterior mean

    D(x_t) = sum_i w_i x_i,   w = softmax_i( -||x_t - sqrt(abar_t) x_i||^2 / (2 (1 - abar_t)) + log pi_i ),

and the matching noise prediction is eps = (x_t - sqrt(abar_t) D) / sqrt(1 - abar_t) (Tweedie's formula). Here the
prior weights are log pi_i = kappa * cos(angle(camera, camera_i)) + log 1[label_i matches the condition]: a von
Mises-Fisher camera kernel makes the prior view-aware, and the label mask makes it text-conditional. The
unconditional branch ("" prompt) keeps every exemplar, so classifier-free guidance is meaningful.

With ``data_sigma`` = sigma_d > 0 each exemplar becomes a small Gaussian, p(x0) = sum_i pi_i N(x0; x_i, sigma_d^2 I),
and the posterior mean stays closed form (a Gaussian-mixture denoiser). With a = sqrt(abar_t), s^2 = 1 - abar_t and
v = a^2 sigma_d^2 + s^2:

    w = softmax_i( -||x_t - a x_i||^2 / (2 v) + log pi_i ),   c = a sigma_d^2 / v,
    D(x_t) = sum_i w_i (x_i + c (x_t - a x_i)) = (1 - a c) sum_i w_i x_i + c x_t.

At noise levels well above sigma_d it is the exemplar denoiser; below sigma_d it returns (about) its own input,
x_t / a, instead of snapping to the nearest exemplar. That is what a trained network does at low noise, and what
DDIM inversion (ISM, TSM, CSM) assumes: with sigma_d = 0 the inverted noise absorbs the whole render-to-exemplar
residual and those objectives lose their pull towards the exemplar (docs/benchmarks.md, "Diagnosis").

Samples live in pixel space ([-1,1], [B,3,h,w]), like DeepFloyd IF: there is no VAE.
"""

import json
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from foundation.cameras import Cameras
from guidance.priors.base import Cond, ExemplarImages, PriorError, scaled_linear_alphas_cumprod

MASKED = -1.0e4  # log-prior of an excluded exemplar: finite, so conditions can be blended linearly


class PixelSpace:
    """Prompt embedding and sample space shared by the pixel-space exemplar priors (shapes, materials): the prompt's
    condition is its log prior over the exemplars (``log_prior``), samples are images in [-1,1] at ``size``."""

    device: torch.device
    size: tuple[int, int]

    def embed(self, prompts: Sequence[str]) -> Cond:
        return Cond({"log_prior": torch.stack([self.log_prior(p) for p in prompts])})

    def encode(self, rgb: Tensor) -> Tensor:
        """[B,H,W,3] in [0,1] -> [B,3,h,w] in [-1,1], resized (antialiased bilinear) to the prior's size."""
        x = rgb.permute(0, 3, 1, 2).to(self.device)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return x * 2.0 - 1.0

    def decode(self, x: Tensor) -> Tensor:
        return ((x + 1.0) / 2.0).clamp(0, 1).permute(0, 2, 3, 1)


class ExemplarPrior(PixelSpace, ExemplarImages):
    """Closed-form prior over exemplar images x_i [N,3,h,w] in [-1,1] with view directions and tag sets.

    A prompt selects the exemplars carrying every vocabulary word it names (extra words are ignored); a prompt
    that names no vocabulary word is an error listing the vocabulary; "" selects all exemplars.
    """

    latent = False
    steps_offset = 0

    def __init__(self, images: Tensor, view_dirs: Tensor, tags: Sequence[Sequence[str]], kappa: float = 150.0,
                 device: torch.device | str = "cpu", name: str = "exemplar", data_sigma: float = 0.0):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"exemplar images must be [N,3,h,w], got {tuple(images.shape)}")
        if view_dirs.shape != (images.shape[0], 3) or len(tags) != images.shape[0]:
            raise ValueError("exemplar images, view_dirs [N,3] and tags must have the same N")
        self.name = name
        self.device = torch.device(device)
        self.size = tuple(images.shape[-2:])
        self.images = images.float().to(self.device)
        self.flat = self.images.reshape(images.shape[0], -1)
        self.sq_norm = (self.flat ** 2).sum(-1)
        self.view_dirs = F.normalize(view_dirs.float(), dim=-1).to(self.device)
        self.tags = [frozenset(t) for t in tags]
        self.vocabulary = sorted(set().union(*self.tags))
        self.kappa = float(kappa)
        if data_sigma < 0:
            raise PriorError(f"prior.data-sigma must be >= 0, got {data_sigma}")
        self.data_sigma = float(data_sigma)
        self.alphas_cumprod = scaled_linear_alphas_cumprod().to(self.device)
        self._cache: dict[str, Tensor] = {}

    # -- text ------------------------------------------------------------------------------------------------
    def _words(self, prompt: str) -> set[str]:
        words = set()
        for w in prompt.lower().split():
            w = w.strip(".,;:!?\"'()")
            if w not in self.vocabulary and w.endswith("s") and w[:-1] in self.vocabulary:
                w = w[:-1]  # plural
            if w in self.vocabulary:
                words.add(w)
        return words

    def log_prior(self, prompt: str) -> Tensor:
        """[N] log-prior over exemplars for one prompt (0 or MASKED)."""
        if prompt in self._cache:
            return self._cache[prompt]
        if not prompt.strip():
            lp = torch.zeros(len(self.tags), device=self.device)
        else:
            words = self._words(prompt)
            if not words:
                raise PriorError(f"the {self.name} prior knows no word of {prompt!r}. "
                                 f"Vocabulary: {', '.join(self.vocabulary)}")
            match = torch.tensor([words <= t for t in self.tags], device=self.device)
            if not match.any():
                raise PriorError(f"no {self.name} exemplar is {' and '.join(sorted(words))} at once "
                                 f"(prompt {prompt!r})")
            lp = torch.where(match, 0.0, MASKED)
        self._cache[prompt] = lp
        return lp

    # -- denoiser --------------------------------------------------------------------------------------------
    def _active(self, cond: Cond) -> Tensor | None:
        """Indices of the exemplars any row of ``cond`` allows, or None when all are (masked ones get w = 0)."""
        keep = (cond.tensors["log_prior"].to(self.device) > MASKED / 2).any(0)
        return None if bool(keep.all()) else keep.nonzero()[:, 0]

    def posterior_weights(self, x_t: Tensor, t: Tensor, cond: Cond, cams: Cameras | None = None,
                          active: Tensor | None = None) -> Tensor:
        """w [B,N] (or [B,len(active)]): posterior probability of each exemplar given x_t (float32)."""
        flat, sq, dirs, lp = self.flat, self.sq_norm, self.view_dirs, cond.tensors["log_prior"].to(self.device)
        if active is not None:  # skip exemplars no row can select: exact, since their weight is 0 anyway
            flat, sq, dirs, lp = flat[active], sq[active], dirs[active], lp[:, active]
        abar = self.alphas_cumprod[t.to(self.device)].float()[:, None]  # [B,1]
        xf = x_t.reshape(x_t.shape[0], -1).float()
        # -||x_t - a x_i||^2 / (2v) up to a per-row constant: (a x_t.x_i - abar |x_i|^2 / 2) / v,
        # v = abar sigma_d^2 + 1 - abar
        v = abar * self.data_sigma ** 2 + (1 - abar)
        logits = (abar.sqrt() * (xf @ flat.T) - 0.5 * abar * sq) / v + lp
        if cams is not None and self.kappa:
            d = F.normalize(cams.position.to(self.device).float(), dim=-1)
            logits = logits + self.kappa * d @ dirs.T
        return torch.softmax(logits, dim=-1)

    def denoise(self, x_t: Tensor, t: Tensor, cond: Cond, cams: Cameras | None = None) -> Tensor:
        """Posterior mean D(x_t) [B,3,h,w] (float32)."""
        active = self._active(cond)
        w = self.posterior_weights(x_t, t, cond, cams, active)
        flat = self.flat if active is None else self.flat[active]
        mean = (w @ flat).reshape(x_t.shape)
        if not self.data_sigma:
            return mean
        abar = self.alphas_cumprod[t.to(self.device)].float().view(-1, 1, 1, 1)
        c = abar.sqrt() * self.data_sigma ** 2 / (abar * self.data_sigma ** 2 + 1 - abar)
        return (1 - abar.sqrt() * c) * mean + c * x_t.float()

    @torch.no_grad()
    def predict_eps(self, x_t: Tensor, t: Tensor, cond: Cond, cams: Cameras | None = None) -> Tensor:
        if len(cond) != x_t.shape[0]:
            raise ValueError(f"cond has {len(cond)} rows for a batch of {x_t.shape[0]}")
        abar = self.alphas_cumprod[t.to(self.device)].float().view(-1, 1, 1, 1)
        D = self.denoise(x_t, t, cond, cams)
        return ((x_t.float() - abar.sqrt() * D) / (1 - abar).sqrt()).to(x_t.dtype)

    # -- persistence -----------------------------------------------------------------------------------------
    def save(self, folder: str) -> None:
        """Write exemplars.safetensors (images, view_dirs) and tags.json into ``folder``."""
        from safetensors.torch import save_file
        os.makedirs(folder, exist_ok=True)
        save_file({"images": self.images.cpu().contiguous(), "view_dirs": self.view_dirs.cpu().contiguous()},
                  os.path.join(folder, "exemplars.safetensors"))
        with open(os.path.join(folder, "tags.json"), "w") as f:
            json.dump([sorted(t) for t in self.tags], f)

    @classmethod
    def from_folder(cls, folder: str, cfg, device="cpu") -> "ExemplarPrior":
        """Load a folder written by ``save``: exemplars.safetensors + tags.json."""
        from safetensors.torch import load_file
        try:
            data = load_file(os.path.join(folder, "exemplars.safetensors"))
            with open(os.path.join(folder, "tags.json")) as f:
                tags = json.load(f)
        except (OSError, ValueError) as e:
            raise PriorError(f"cannot read the exemplar prior in {folder}: {e}") from None
        return cls(data["images"], data["view_dirs"], tags, cfg.kappa, device, name=os.path.basename(folder),
                   data_sigma=cfg.data_sigma)
