"""Stable Diffusion XL behind the Prior protocol (``StableDiffusionXLPipeline`` folders and hub ids).

What differs from SD 1.x/2.x (guidance-spec §1.2):
- Two CLIP text encoders: the penultimate hidden states of both are concatenated into ``prompt_embeds``
  [N,77,D1+D2]; the pooled, projected embedding of the second is ``text_embeds`` [N,P]. With the pipeline's
  ``force_zeros_for_empty_prompt`` (the SDXL default) the empty prompt "" is all zeros, as SDXL's unconditional.
- Micro-conditioning: ``time_ids`` = (original size, crop top-left (0,0), target size), all the prior resolution,
  passed with the pooled embedding as ``added_cond_kwargs``.
- The VAE runs in fp32 (the fp16 SDXL VAE overflows to NaN) with its own scaling_factor (0.13025), unless
  ``prior.vae`` names the fp16-fix VAE (madebyollin/sdxl-vae-fp16-fix, then the prior's dtype) or ``prior.vae_dtype``
  asks for bfloat16 (fp32's range, half the memory at 1024²).
"""

import torch
from torch import Tensor

from guidance.priors.base import Cond, PriorError
from guidance.priors.config import PriorConfig
from guidance.priors.stable_diffusion import ModelSource, StableDiffusionPrior, clip_prompt_ids


class StableDiffusionXLPrior(StableDiffusionPrior):
    """SDXL base: latents at 1/8, Cond {"prompt_embeds": [N,77,D], "text_embeds": [N,P]}."""

    text_components = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2")
    text_encoding = "sdxl-penultimate-v1"

    def __init__(self, source: ModelSource, cfg: PriorConfig, device: torch.device):
        self.force_zeros_for_empty_prompt = bool(source.index.get("force_zeros_for_empty_prompt", True))
        super().__init__(source, cfg, device)
        self.add_time_ids = self._time_ids()

    def _vae_dtype(self) -> torch.dtype:
        """fp32 for SDXL's own VAE (it overflows to NaN in fp16); the prior's dtype for a replacement VAE (the
        fp16-fix one, prior.vae); cfg.vae_dtype when set (bfloat16 has fp32's range and does not overflow)."""
        if self.cfg.vae_dtype != "auto":
            return super()._vae_dtype()
        return self.dtype if self.cfg.vae else torch.float32

    def _cache_fingerprint(self) -> str:
        return f"{super()._cache_fingerprint()}/zeros={self.force_zeros_for_empty_prompt}"

    def _time_ids(self) -> Tensor:
        """[1,6] (original h, w, crop top, left, target h, w), checked against the UNet's added embedding."""
        size = (self.resolution, self.resolution)
        ids = torch.tensor([[*size, 0, 0, *size]], dtype=torch.float32, device=self.device)
        add_embedding = getattr(self.unet, "add_embedding", None)
        time_dim = self.unet.config.get("addition_time_embed_dim")
        if add_embedding is None or time_dim is None:
            raise PriorError(f"{self.name!r}: the UNet has no text_time added embedding; it is not an SDXL base UNet")
        self.pooled_dim = add_embedding.linear_1.in_features - time_dim * ids.shape[1]
        return ids

    def _encode_text(self, prompts: list[str]) -> dict[str, Tensor]:
        hidden, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids, _ = clip_prompt_ids(tokenizer, prompts, self.device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]
        prompt_embeds = torch.cat(hidden, dim=-1)
        if pooled.ndim != 2 or pooled.shape[-1] != self.pooled_dim:
            raise PriorError(f"{self.name!r}: text_encoder_2 gives a pooled embedding of shape {tuple(pooled.shape)}, "
                             f"the UNet expects [N,{self.pooled_dim}]")
        if self.force_zeros_for_empty_prompt:
            empty = torch.tensor([p == "" for p in prompts], device=self.device)
            prompt_embeds = torch.where(empty.view(-1, 1, 1), torch.zeros_like(prompt_embeds), prompt_embeds)
            pooled = torch.where(empty.view(-1, 1), torch.zeros_like(pooled), pooled)
        return {"prompt_embeds": prompt_embeds, "text_embeds": pooled}

    def _added_cond(self, cond: Cond, x_t: Tensor) -> dict:
        if "text_embeds" not in cond.tensors:
            raise ValueError("an SDXL Cond needs text_embeds (the pooled embedding); make it with this prior's embed")
        added = super()._added_cond(cond, x_t)
        added["text_embeds"] = cond.tensors["text_embeds"].to(self.dtype)
        added["time_ids"] = self.add_time_ids.to(self.dtype).expand(x_t.shape[0], -1)
        return added
