"""The Prior protocol: one pretrained (or closed-form) 2D diffusion model, knowing nothing of score distillation.

A prior works in its own sample space ``x`` [B,c,h,w]: VAE latents for latent diffusion, pixels in [-1,1] for
pixel-space models (DeepFloyd IF, the exemplar priors). ``encode`` maps renders [B,H,W,3] in [0,1] into that space
with gradient, ``decode`` maps back. Text conditions are opaque ``Cond`` batches made by ``embed``; a guidance
objective selects, concatenates and blends them but never looks inside.

Beside ``Prior``, the abilities a prior may declare (foundation/abilities.py: a class declares one by subclassing it;
objectives, wrappers and the training loop check ``declares(prior, Ability)``, never an attribute's presence):

- ``TextEncoderRelease``: ``release_text_encoders()`` once the run's prompts are embedded (the training loop).
- ``DeferredChecks``: ``nonfinite_report()``, NaN checks read on logged steps (the training loop).
- ``OwnGenerator``: ``generator``, the prior's own sampling stream, saved in checkpoints (the training loop).
- ``LoRAHost``: ``attach_lora``, ``lora_output``: VSD's particle score on the prior's own network (guidance/vsd.py).
- ``InputGradient``: ``predict_eps_grad``, the noise prediction differentiable w.r.t. its input (guidance/elbo.py).
- ``UNetResiduals``: ``unet_residuals(provider)``, extra UNet inputs for the calls inside (the ControlNet wrapper).
- ``ConditionedPrior``: ``condition_kind``, per-view condition images riding on the cameras (training-loop wiring).
- ``ExemplarImages``: ``images``, ``tags``, ``size``: a visual prompt picks exemplars by image (visual_prompt.py).
- ``ImageAdapterHost``: ``cross_attention_dim``, ``load_ip_adapter``: a visual prompt through an IP-Adapter.
"""

from abc import abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from foundation.cameras import Cameras


@dataclass
class Cond:
    """A batch of N conditions: named tensors that all share the leading dimension N."""

    tensors: dict[str, Tensor]

    def __post_init__(self) -> None:
        sizes = {k: v.shape[0] for k, v in self.tensors.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"Cond tensors disagree on the batch size: {sizes}")

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def __getitem__(self, idx) -> "Cond":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return Cond({k: v[idx] for k, v in self.tensors.items()})

    def expand(self, n: int) -> "Cond":
        """Repeat a single condition n times (N must be 1) or return self when N == n."""
        if len(self) == n:
            return self
        if len(self) != 1:
            raise ValueError(f"cannot expand a Cond of {len(self)} rows to {n}")
        return Cond({k: v.expand(n, *v.shape[1:]) for k, v in self.tensors.items()})

    @staticmethod
    def cat(conds: Sequence["Cond"]) -> "Cond":
        keys = conds[0].tensors.keys()
        for c in conds[1:]:
            if c.tensors.keys() != keys:
                raise ValueError(f"cannot concatenate Conds with keys {sorted(keys)} and {sorted(c.tensors.keys())}")
        return Cond({k: torch.cat([c.tensors[k] for c in conds]) for k in keys})

    def lerp(self, other: "Cond", weight: Tensor) -> "Cond":
        """Row-wise (1 - weight) * self + weight * other, weight [N] (embedding interpolation, guidance-spec §1.6).

        ``weight`` may live anywhere (a CPU tensor from the prompt schedule): it moves to each tensor's device and
        dtype, so CUDA embeddings never meet a CPU weight."""
        out = {}
        for k, a in self.tensors.items():
            w = weight.to(device=a.device, dtype=a.dtype).view(-1, *([1] * (a.ndim - 1)))
            out[k] = a + w * (other.tensors[k] - a)
        return Cond(out)

    def to(self, device) -> "Cond":
        return Cond({k: v.to(device) for k, v in self.tensors.items()})


@runtime_checkable
class Prior(Protocol):
    """A 2D diffusion model over images, with an epsilon-prediction interface.

    Attributes:
        alphas_cumprod: [T] abar_t for t = 0..T-1 (float32, on the prior's device).
        steps_offset: the scheduler's offset between a DDIM index and a model timestep (1 for SD-2.1, SDXL).
        latent: True when ``x`` is a VAE latent (so the render passes through an encoder).
        device: where the model runs; guidance moves inputs there.
    """

    alphas_cumprod: Tensor
    steps_offset: int
    latent: bool
    device: torch.device

    def encode(self, rgb: Tensor) -> Tensor:
        """Renders [B,H,W,3] in [0,1] -> samples x [B,c,h,w], differentiable."""
        ...

    def decode(self, x: Tensor) -> Tensor:
        """Samples x [B,c,h,w] -> images [B,H,W,3] in [0,1] (no gradient needed)."""
        ...

    def embed(self, prompts: Sequence[str]) -> Cond:
        """Text conditions for the prompts ("" is the null condition), cached per prompt."""
        ...

    def predict_eps(self, x_t: Tensor, t: Tensor, cond: Cond, cams: Cameras | None = None) -> Tensor:
        """Noise prediction eps(x_t, t, cond) [B,c,h,w] for int timesteps t [B]; cond has B rows.

        Always epsilon, whatever the model predicts natively (v-prediction is converted inside). Never carries a
        gradient to the model's weights; callers wrap it in no_grad where they need no graph at all.
        """
        ...


# ---- abilities (module docstring) ----------------------------------------------------------------------------------
class TextEncoderRelease(Protocol):
    """A prior whose text encoders can be freed once every prompt of the run is embedded (and cached)."""

    @abstractmethod
    def release_text_encoders(self) -> None: ...


class DeferredChecks(Protocol):
    """A prior that checks its outputs for NaN/Inf lazily (device flags, no sync per call) and reports on request."""

    @abstractmethod
    def nonfinite_report(self) -> str | None:
        """The message for the first non-finite value seen since the last call, else None (one host read)."""


class OwnGenerator(Protocol):
    """A prior that draws from its own ``torch.Generator`` (a VAE posterior sample); checkpoints save its state."""

    generator: torch.Generator


class LoRAAdapter(Protocol):
    """A trainable low-rank adapter on a prior's network, made by ``LoRAHost.attach_lora`` (off outside its calls)."""

    params: list
    """Its trainable tensors (fp32), in a fixed order."""
    layers: list
    """The network's modules it lives in (switched on only inside ``lora_output``)."""
    time_embed_dim: int
    """Width of the network's time embedding, where ``lora_output``'s ``time_offset`` is added."""

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...


class LoRAHost(Protocol):
    """A prior whose own denoiser can carry a trainable LoRA: VSD's particle score eps_phi (ProlificDreamer, Wang et
    al. 2023, §3.2: "a LoRA of the pretrained model", with the camera added to the time embedding)."""

    prediction_type: str
    """The network's native parameterisation ("epsilon", "v_prediction", "sample"): what ``lora_output`` returns."""

    @abstractmethod
    def attach_lora(self, name: str, rank: int) -> LoRAAdapter:
        """Add the adapter ``name`` of rank ``rank`` (zero-initialised B, so the network starts pretrained)."""

    @abstractmethod
    def lora_output(self, adapter: LoRAAdapter, x_t: Tensor, t: Tensor, cond: "Cond", *,
                    time_offset: Tensor | None = None, control: Tensor | None = None,
                    cams: Cameras | None = None) -> Tensor:
        """The adapted network's raw output [B,c,h,w] (native parameterisation), with gradient to the adapter and to
        ``time_offset`` [B,time_embed_dim] (added to the time embedding); ``predict_eps`` stays pretrained.
        ``control`` / ``cams``: a conditioned prior's condition images, given or read from the cameras."""


class InputGradient(Protocol):
    """A prior whose noise prediction can carry a gradient back to its input x_t (the network's weights stay frozen):
    what the likelihood objective needs (guidance/elbo.py), which differentiates the denoising loss itself instead
    of dropping the network's Jacobian as SDS does."""

    @abstractmethod
    def predict_eps_grad(self, x_t: Tensor, t: Tensor, cond: "Cond", cams: Cameras | None = None) -> Tensor:
        """``predict_eps`` with autograd through the network to ``x_t`` (none to the weights)."""


class UNetResiduals(Protocol):
    """A prior whose UNet calls take extra keyword arguments from a provider (a ControlNet's down/mid residuals)."""

    @abstractmethod
    def unet_residuals(self, provider: Callable[[Tensor, Tensor, "Cond"], dict[str, Any]]) -> AbstractContextManager:
        """Inside the block every UNet call gets ``provider(x_t, t, cond)`` as extra keyword arguments."""


class ConditionedPrior(Protocol):
    """A prior that takes per-view condition images on its cameras (``Cameras.condition``), rendered by a scene that
    lists ``condition_kind`` in its ``condition_kinds`` (renderers/base.py ``ConditionRenderer``)."""

    condition_kind: ClassVar[str]


class ExemplarImages(Protocol):
    """An exemplar prior: its images [N,3,h,w] in [-1,1] at ``size`` and their tag sets (a visual prompt's kernel)."""

    images: Tensor
    tags: Sequence
    size: tuple[int, int]


class ImageAdapterHost(Protocol):
    """A prior that loads an IP-Adapter into its UNet and encodes a reference image (guidance/priors/visual_prompt)."""

    @property
    @abstractmethod
    def cross_attention_dim(self) -> int | None:
        """The UNet's cross-attention width (None when mixed or unknown)."""

    @abstractmethod
    def load_ip_adapter(self, source: str, subfolder: str, weight_name: str, scale: float, image: Tensor) -> Tensor:
        """Load the adapter into the UNet at ``scale`` and return the image embedding [1,1,D] of ``image``."""


class PriorError(ValueError):
    """A prior cannot be built or cannot serve a prompt; the message is meant for the user as is."""


@dataclass(frozen=True)
class PriorContext:
    """What a run tells ``build_prior`` for the priors that depend on it: the prompt, and the lighting conditions
    its renders use (the mesh renderer's training environments and rotations; none for the other renderers). The
    light-aware shapes prior renders its exemplars for exactly these; every other prior ignores the context."""

    prompt: str = ""
    envs: tuple[str, ...] = ()
    env_rotations: int = 0
    object_size: float = 0.0
    """The longest bounding-box side the renderer scales its object to, centred (a fixed mesh read from a file,
    foundation/meshio.py ``load_mesh``); 0: the object keeps its own size and place."""


def scaled_linear_alphas_cumprod(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """abar_t of Stable Diffusion's "scaled_linear" schedule (guidance-spec §1.1), float64 -> float32."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()
