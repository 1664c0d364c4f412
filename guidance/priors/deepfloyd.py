"""DeepFloyd IF stage I behind the Prior protocol (``IFPipeline`` folders and hub ids): a pixel-space prior.

guidance-spec §1.2: x = bilinear resize of (2 rgb - 1) to 64x64 (the UNet's sample_size; cfg.resolution
overrides it), no VAE. The UNet predicts 6 channels: the first 3 are epsilon, the learned variance is ignored.
Text: T5 on the lower-cased, stripped prompt, padded to 77 tokens, with attention mask, as the pipeline does
(without its optional caption cleaning). The T5-XXL encoder is large, so by default it is freed after each
embedding call (cfg.text_encoder_offload "auto"); embeddings are cached in memory and on disk, so a run whose
prompts were seen before never loads it.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from guidance.priors.base import Cond, PriorError
from guidance.priors.config import PriorConfig
from guidance.priors.stable_diffusion import DiffusersPrior, ModelSource


class DeepFloydIFPrior(DiffusersPrior):
    """IF stage I: x [B,3,64,64] in [-1,1]; Cond {"prompt_embeds": [N,77,D]}."""

    latent = False
    text_encoding = "if-t5-v1"
    default_offload = "free"
    max_length = 77

    def __init__(self, source: ModelSource, cfg: PriorConfig, device: torch.device):
        super().__init__(source, cfg, device)
        channels = int(self.unet.config.in_channels)
        if channels != 3 or int(self.unet.config.out_channels) not in (3, 6):
            raise PriorError(f"{self.name!r}: expected a pixel UNet with 3 input and 3 or 6 output channels (IF "
                             f"stage I), got {channels} -> {self.unet.config.out_channels}")
        self.resolution = int(cfg.resolution) or int(self.unet.config.sample_size)

    def _encode_text(self, prompts: list[str]) -> dict[str, Tensor]:
        texts = [p.lower().strip() for p in prompts]
        inputs = self.tokenizer(texts, padding="max_length", max_length=self.max_length, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        out = self.text_encoder(inputs.input_ids.to(self.device), attention_mask=inputs.attention_mask.to(self.device))
        return {"prompt_embeds": out[0]}

    def _unet_output(self, x_t: Tensor, t: Tensor, cond: Cond, grad: bool = False) -> Tensor:
        return super()._unet_output(x_t, t, cond, grad)[:, : x_t.shape[1]]

    def encode(self, rgb: Tensor) -> Tensor:
        """Renders [B,H,W,3] in [0,1] -> pixels [B,3,r,r] in [-1,1] (fp32), differentiable."""
        if rgb.ndim != 4 or rgb.shape[-1] != 3:
            raise ValueError(f"rgb must be [B,H,W,3], got {tuple(rgb.shape)}")
        x = (2 * rgb.to(self.device).float() - 1).permute(0, 3, 1, 2)
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, (self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return x

    def decode(self, x: Tensor) -> Tensor:
        """Pixels [B,3,r,r] in [-1,1] -> images [B,r,r,3] in [0,1]."""
        return ((x.detach().float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
