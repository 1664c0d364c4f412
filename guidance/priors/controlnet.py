"""Light- and geometry-aware ControlNet guidance (DreamMat, renderers.md §3.4) around a Stable Diffusion prior.

``ControlNetPrior`` wraps a ``StableDiffusionPrior`` (guidance/priors/stable_diffusion.py) and a diffusers
``ControlNetModel`` (hub id or ``save_pretrained`` folder). Every ``predict_eps`` runs the ControlNet on the same
x_t, t and text condition, conditioned on images of the *current geometry*, and passes its down/mid residuals into
the UNet call through the prior's declared ``UNetResiduals`` hook. Everything else (encode, decode, embed,
alphas_cumprod, ...) is the wrapped prior's, so every guidance objective works unchanged. The abilities it declares
(guidance/priors/base.py) are forwarded explicitly; VSD's LoRA particle score (``lora_output``) gets the same
residuals as the pretrained branch.

How the condition travels: the mesh scene (and the material scene, for its flat sample) renders it with each
training view when ``render_condition`` is on (``RenderOutput.extras["control"]``); the training loop
(engine/train.py ``_wire_condition``) turns that on for a ``ConditionedPrior`` whose ``condition_kind``
("dreammat") is among the scene's ``condition_kinds``, and hands the guidance
``cams.with_condition(out.extras["control"])``. The images ride on the
Cameras batch, which objectives re-batch exactly like x_t (``Cameras.cat`` for classifier-free guidance, indexing),
so every prior row gets its own view's condition.

Condition (renderers/condition.py ``condition_maps``; DreamMat's 22 channels), per camera:

    channel 0      inverse camera distance, foreground mapped per image to [0.1, 1] (nearest = 1)
    channels 1-3   shading normal in camera space (OpenGL: +X right, +Y up, +Z to the viewer) as (n + 1) / 2
    channels 4-21  six sRGB renders of the geometry with white albedo under the render's own environment and
                   rotation, (metallic, roughness) = (0, 0.08), (0, 0.5), (0, 1), (1, 0.08), (1, 0.5), (1, 1)

All values in [0, 1] (diffusers' ControlNet convention for conditioning images), 0 on the background; made at the
render resolution, channels-last [C,H,W,22], and resized here (bilinear) to the prior's image resolution as
[B,22,H',W'] (H' = latent size x VAE factor, e.g. 512 for SD-2.1-base). The ControlNet must have
``conditioning_channels == 22``. Classifier-free guidance applies the same condition to the conditional and the
unconditional rows (the diffusers pipelines' default, not guess mode).

No gradient reaches the ControlNet: its weights are frozen and it runs under ``torch.no_grad``.
"""

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from foundation.abilities import declares
from foundation.cameras import Cameras
from guidance.priors.base import (
    Cond,
    ConditionedPrior,
    DeferredChecks,
    ImageAdapterHost,
    LoRAAdapter,
    LoRAHost,
    OwnGenerator,
    PriorError,
    TextEncoderRelease,
    UNetResiduals,
)

CONDITION_CHANNELS = 22
CONDITION_KIND = "dreammat"
"""The name scenes list in their ``condition_kinds`` when they can render this layout (renderers/mesh.py,
renderers/material.py)."""
_OWN = ("prior", "controlnet", "scale", "takes_condition")


class ControlNetPrior(ConditionedPrior, TextEncoderRelease, DeferredChecks, OwnGenerator, LoRAHost, ImageAdapterHost):
    """A diffusers SD prior whose UNet is steered by a ControlNet on the mesh scene's condition images."""

    condition_kind = CONDITION_KIND  # the layout of the per-view condition images it takes (module docstring)

    def __init__(self, prior, controlnet: torch.nn.Module, scale: float = 1.0):
        if not declares(prior, UNetResiduals, LoRAHost, ImageAdapterHost) or not prior.latent:
            raise PriorError("prior.controlnet needs a latent diffusers prior (Stable Diffusion 1.x / 2.x)")
        channels = int(controlnet.config.get("conditioning_channels", 3))
        if channels != CONDITION_CHANNELS:
            raise PriorError(f"the ControlNet takes {channels}-channel conditions; the light-aware condition has "
                             f"{CONDITION_CHANNELS} (depth 1, normal 3, six light renders 3 each)")
        self.prior = prior
        controlnet = controlnet.requires_grad_(False).to(prior.device).eval()
        self.controlnet = controlnet if controlnet.dtype == prior.dtype else controlnet.to(dtype=prior.dtype)
        self.scale = float(scale)
        self.takes_condition = True  # the training loop asks the scene for per-view condition images

    @classmethod
    def load(cls, prior, name: str, scale: float = 1.0) -> "ControlNetPrior":
        """Load a ``ControlNetModel`` by hub id or folder (no network when HF_HUB_OFFLINE is set) and wrap ``prior``."""
        from diffusers import ControlNetModel

        from guidance.priors.stable_diffusion import _first_line, hub_offline

        try:
            net = ControlNetModel.from_pretrained(name, torch_dtype=prior.dtype,
                                                  local_files_only=os.path.isdir(name) or hub_offline())
        except (OSError, ValueError) as e:
            raise PriorError(f"cannot load the ControlNet {name!r} ({_first_line(e)}); pass a folder written by "
                             f"ControlNetModel.save_pretrained or a downloaded hub id") from None
        return cls(prior, net, scale)

    def __getattr__(self, name: str) -> Any:
        # everything but predict_eps is the wrapped prior's (only reached for attributes not set here)
        if name in _OWN:
            raise AttributeError(name)
        return getattr(self.prior, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # objectives and the IP-Adapter loader set prior attributes (cross_attention_kwargs, image_encoder, ...):
        # they belong to the wrapped prior, whose UNet call reads them
        if name in _OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.prior, name, value)

    def condition(self, cams: Cameras | None, batch: int) -> Tensor:
        """The condition images [B,22,H',W'] of ``cams`` at the prior's image resolution (see module docstring)."""
        if cams is None or len(cams) != batch:
            raise ValueError(f"the ControlNet prior needs the {batch} cameras of its x_t rows, got "
                             f"{None if cams is None else len(cams)}")
        images = cams.condition
        if images is None:
            raise ValueError("these cameras carry no ControlNet condition: prior.controlnet needs the mesh or material "
                             "renderer (--renderer mesh|material), which renders the condition with each training view")
        if images.shape[-1] != CONDITION_CHANNELS:
            raise ValueError(f"condition images must be [B,H,W,{CONDITION_CHANNELS}], got {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float()
        res = int(self.prior.resolution)
        if x.shape[-2:] != (res, res):
            x = F.interpolate(x, (res, res), mode="bilinear", align_corners=False)
        return x.clamp(0, 1)

    def residuals(self, x_t: Tensor, t: Tensor, cond: Cond, image: Tensor) -> dict[str, Any]:
        """The UNet keyword arguments {down_block_additional_residuals, mid_block_additional_residual}."""
        dt = self.prior.dtype
        with torch.no_grad():
            down, mid = self.controlnet(x_t.to(dt), t, encoder_hidden_states=cond.tensors["prompt_embeds"].to(dt),
                                        controlnet_cond=image.to(x_t.device, dt), conditioning_scale=self.scale,
                                        return_dict=False)
        return {"down_block_additional_residuals": list(down), "mid_block_additional_residual": mid}

    def predict_eps(self, x_t: Tensor, t: Tensor, cond: Cond, cams: Cameras | None = None) -> Tensor:
        """The wrapped prior's eps(x_t, t, cond) [B,c,h,w] with the ControlNet's residuals for ``cams``' images."""
        image = self.condition(cams, x_t.shape[0])
        with self.prior.unet_residuals(lambda x, tt, c: self.residuals(x, tt, c, image)):
            return self.prior.predict_eps(x_t, t, cond, cams)

    # ---- the declared abilities, forwarded to the wrapped prior ----------------------------------------------------
    def lora_output(self, adapter: LoRAAdapter, x_t: Tensor, t: Tensor, cond: Cond, *,
                    time_offset: Tensor | None = None, control: Tensor | None = None,
                    cams: Cameras | None = None) -> Tensor:
        """The wrapped prior's LoRA output with the ControlNet's residuals for ``control`` [B,22,H',W'] (or, when not
        given, the condition images ``cams`` carry); with neither, the LoRA branch without ControlNet."""
        if control is None and cams is not None:
            control = self.condition(cams, x_t.shape[0])
        if control is None:
            return self.prior.lora_output(adapter, x_t, t, cond, time_offset=time_offset)
        image = control
        with self.prior.unet_residuals(lambda x, tt, c: self.residuals(x, tt, c, image)):
            return self.prior.lora_output(adapter, x_t, t, cond, time_offset=time_offset)

    def attach_lora(self, name: str, rank: int) -> LoRAAdapter:
        return self.prior.attach_lora(name, rank)

    def release_text_encoders(self) -> None:
        self.prior.release_text_encoders()

    def nonfinite_report(self) -> str | None:
        return self.prior.nonfinite_report()

    @property
    def cross_attention_dim(self) -> int | None:
        return self.prior.cross_attention_dim

    def load_ip_adapter(self, source: str, subfolder: str, weight_name: str, scale: float, image: Tensor) -> Tensor:
        return self.prior.load_ip_adapter(source, subfolder, weight_name, scale, image)


__all__ = ["ControlNetPrior", "CONDITION_CHANNELS", "CONDITION_KIND"]
