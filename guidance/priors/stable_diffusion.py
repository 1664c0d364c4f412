"""Diffusers priors behind the Prior protocol: loading by hub id or folder, and Stable Diffusion 1.x / 2.x.

``load_diffusers_prior`` reads the pipeline class from the model's own ``model_index.json`` (never from its name) and
builds the matching prior: ``StableDiffusionPrior`` here, ``StableDiffusionXLPrior`` (guidance/priors/sdxl.py) and
``DeepFloydIFPrior`` (guidance/priors/deepfloyd.py). Components are loaded one by one with ``from_pretrained`` (no
safety checker, no pipeline object). A model that is not on disk and cannot be fetched raises ``PriorError`` at once
(no 20 s of hub retries when the network is down).

Notation (guidance-spec §1.1): abar_t = alphas_cumprod[t], alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t).
Every UNet output is returned as epsilon: v-prediction becomes eps = sigma_t x_t + alpha_t v, and an x0 ("sample")
prediction becomes eps = (x_t - alpha_t x0) / sigma_t.
"""

import gc
import hashlib
import importlib
import json
import os
import socket
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor

from foundation.cameras import Cameras
from guidance.priors.base import (
    Cond,
    DeferredChecks,
    ImageAdapterHost,
    InputGradient,
    LoRAHost,
    OwnGenerator,
    PriorError,
    TextEncoderRelease,
    UNetResiduals,
)
from guidance.priors.config import PriorConfig, cache_dir
from guidance.priors.conversions import to_eps

SUPPORTED: dict[str, tuple[str, str]] = {
    "StableDiffusionPipeline": ("guidance.priors.stable_diffusion", "StableDiffusionPrior"),
    "StableDiffusionXLPipeline": ("guidance.priors.sdxl", "StableDiffusionXLPrior"),
    "IFPipeline": ("guidance.priors.deepfloyd", "DeepFloydIFPrior"),
}
"""model_index.json ``_class_name`` -> (module, prior class)."""

_TRUE = ("1", "on", "yes", "true")


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set (read now, not at import like huggingface_hub does)."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint answers a TCP connect; behind a proxy we cannot tell, so assume yes."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _missing_message(name: str, reason: str, gated: bool = False) -> str:
    msg = (f"cannot load the diffusers model {name!r}: {reason}. "
           f"Download it on a machine with network (`huggingface-cli download {name}`, then copy the Hugging Face "
           f"cache, ~/.cache/huggingface), or pass a local folder written by save_pretrained as the prior name.")
    if gated or "deepfloyd" in name.lower():
        msg += (" DeepFloyd IF is a gated model: accept its licence on its Hugging Face page and log in "
                "(`huggingface-cli login`) before downloading.")
    return msg


@dataclass
class ModelSource:
    """Where a diffusers model comes from: a local folder or a hub id, plus its model_index.json."""

    name: str
    index: dict[str, Any]
    local_files_only: bool = True
    revision: str | None = None
    snapshot: str = ""
    """For a hub id, the local snapshot folder (named by the commit) model_index.json came from."""

    @property
    def pipeline_class(self) -> str:
        return str(self.index.get("_class_name", ""))

    @staticmethod
    def resolve(name: str) -> "ModelSource":
        """Find the model's model_index.json without waiting on a dead network; PriorError when it is unreachable."""
        if os.path.isdir(name):
            path = os.path.join(name, "model_index.json")
            if not os.path.isfile(path):
                raise PriorError(f"{name!r} is a folder but holds no model_index.json; a diffusers prior folder is "
                                 f"one written by DiffusionPipeline.save_pretrained (or a hub snapshot)")
            return ModelSource(name, _read_json(path))
        if name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise PriorError(f"no such model folder: {name!r}")
        return ModelSource._resolve_hub(name)

    @staticmethod
    def _resolve_hub(name: str) -> "ModelSource":
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
        try:
            path = hf_hub_download(name, "model_index.json", local_files_only=True)
            return ModelSource(name, _read_json(path), snapshot=os.path.dirname(path))
        except HFValidationError as e:
            raise PriorError(f"{name!r} is neither a model folder nor a valid hub id ({e})") from None
        except OSError:
            pass
        if hub_offline():
            raise PriorError(_missing_message(name, "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is "
                                                    "set")) from None
        if not _hub_reachable():
            raise PriorError(_missing_message(name, "it is not in the local Hugging Face cache and the hub cannot be "
                                                    "reached (no network)")) from None
        try:
            path = hf_hub_download(name, "model_index.json")
        except GatedRepoError:
            raise PriorError(_missing_message(name, "the repository is gated and this account has no access",
                                              gated=True)) from None
        except RepositoryNotFoundError:
            raise PriorError(f"no model {name!r} on the Hugging Face hub (check the id, or log in for a private "
                             f"repository); a local folder works too") from None
        except OSError as e:
            reason = f"downloading model_index.json failed ({_first_line(e)})"
            raise PriorError(_missing_message(name, reason)) from None
        return ModelSource(name, _read_json(path), local_files_only=False, snapshot=os.path.dirname(path))

    def has(self, key: str) -> bool:
        entry = self.index.get(key)
        return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None

    def require(self, keys: Sequence[str]) -> None:
        """PriorError naming the first component of ``keys`` that model_index.json lacks."""
        for key in keys:
            if not self.has(key):
                raise PriorError(f"{self.name!r}: model_index.json has no {key!r} component; the "
                                 f"{self.pipeline_class} prior needs it")

    def fingerprint(self, keys: Sequence[str]) -> str:
        """A string that changes when the components ``keys`` change, without reading their weights.

        Hub snapshots are immutable, so their commit is enough. A local folder contributes the contents of each
        component's small files (configs, tokenizer) and the name, size and mtime of its weight files.
        """
        if self.snapshot:
            return f"hub:{self.name}@{os.path.basename(self.snapshot)}"
        h = hashlib.sha256(os.path.abspath(self.name).encode())
        for key in keys:
            folder = os.path.join(self.name, key)
            for root, _, files in sorted(os.walk(folder)):
                for f in sorted(files):
                    path = os.path.join(root, f)
                    st = os.stat(path)
                    h.update(os.path.relpath(path, self.name).encode())
                    if st.st_size < (4 << 20):
                        with open(path, "rb") as fh:
                            h.update(fh.read())
                    else:
                        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        return "dir:" + h.hexdigest()

    def component(self, key: str, fp16_variant: bool = False, **kwargs) -> Any:
        """Load the component ``key`` (e.g. "unet") with the library and class model_index.json names for it.

        ``fp16_variant``: load the repository's ``*.fp16.*`` weight files where it has them (half the download):
        found on disk for a folder or a cached snapshot, tried first (then the full files) when downloading.
        """
        self.require([key])
        library, class_name = self.index[key]
        cls = getattr(importlib.import_module(library), class_name)
        kw = {"subfolder": key}
        if self.local_files_only:
            kw["local_files_only"] = True
        if self.revision:
            kw["revision"] = self.revision
        has = self.has_fp16_files(key) if fp16_variant else False
        if has is None:  # not on disk yet: ask the hub for the fp16 files, fall back to the full ones
            try:
                return cls.from_pretrained(self.name, **kw, variant="fp16", **kwargs)
            except (OSError, ValueError):
                return cls.from_pretrained(self.name, **kw, **kwargs)
        return cls.from_pretrained(self.name, **kw, **({"variant": "fp16"} if has else {}), **kwargs)

    def has_fp16_files(self, key: str) -> bool | None:
        """Whether the component folder ``key`` holds fp16 variant weights (``name.fp16.safetensors``); None when
        the folder is not on disk (a hub model not downloaded yet)."""
        folder = os.path.join(self.snapshot or self.name, key)
        if not os.path.isdir(folder):
            return None
        return any(".fp16." in f for f in os.listdir(folder))


def _read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def resolve_dtype(cfg: PriorConfig, device: torch.device) -> torch.dtype:
    """cfg.dtype -> torch dtype; "auto" is fp16 on CUDA and fp32 elsewhere."""
    match cfg.dtype:
        case "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        case "float16" | "fp16":
            return torch.float16
        case "bfloat16" | "bf16":
            return torch.bfloat16
        case "float32" | "fp32":
            return torch.float32
        case _:
            raise PriorError(f"prior dtype must be auto, float16, bfloat16 or float32, got {cfg.dtype!r}")


def load_diffusers_prior(name: str, cfg: PriorConfig, device: torch.device | str = "cpu"):
    """Build the prior for the diffusers model ``name`` (hub id or folder), chosen by its model_index.json class."""
    source = ModelSource.resolve(name)
    cls_name = source.pipeline_class
    if cls_name not in SUPPORTED:
        raise PriorError(f"{name!r} is a {cls_name or 'unknown'} model (model_index.json _class_name), which is not "
                         f"supported as a prior; supported pipeline classes: {', '.join(SUPPORTED)}")
    module, attr = SUPPORTED[cls_name]
    prior_cls = getattr(importlib.import_module(module), attr)
    try:
        return prior_cls(source, cfg, torch.device(device))
    except PriorError:
        raise
    except OSError as e:
        raise PriorError(_missing_message(name, f"some files are missing ({_first_line(e)})")) from None


def check_finite(what: str, x: Tensor, hint: str = "") -> Tensor:
    """Raise PriorError when ``x`` holds NaN or Inf (fp16 overflow, broken weights) instead of training on garbage."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise PriorError(f"the prior produced {bad} non-finite values (NaN/Inf) in {what} "
                         f"(shape {tuple(x.shape)}, dtype {x.dtype}). {hint or 'Try dtype float32.'}")
    return x



class EmbedCache:
    """Text embeddings on disk, one safetensors file per (model fingerprint, prompt), written atomically."""

    def __init__(self, folder: str, fingerprint: str):
        self.folder, self.fingerprint = folder, fingerprint
        self._warned = False

    def _path(self, prompt: str) -> str:
        key = hashlib.sha256(f"{self.fingerprint}\0{prompt}".encode()).hexdigest()
        return os.path.join(self.folder, key[:2], key[2:34] + ".safetensors")

    def load(self, prompt: str) -> dict[str, Tensor] | None:
        from safetensors import safe_open
        path = self._path(prompt)
        if not os.path.isfile(path):
            return None
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("prompt") != prompt or meta.get("fingerprint") != self.fingerprint:
                    return None
                return {k: f.get_tensor(k) for k in f.keys()}
        except Exception:  # a truncated or foreign file is a cache miss, never an error
            return None

    def save(self, prompt: str, tensors: dict[str, Tensor]) -> None:
        from safetensors.torch import save_file
        path = self._path(prompt)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, tmp,
                      metadata={"prompt": prompt, "fingerprint": self.fingerprint})
            os.replace(tmp, path)
        except OSError as e:
            if not self._warned:
                warnings.warn(f"cannot write the text-embedding cache under {self.folder}: {e}", stacklevel=3)
                self._warned = True


OFFLOADS = ("auto", "keep", "cpu", "free")


class PeftLoRA:
    """A peft LoRA (rank r, on to_q/to_k/to_v/to_out.0) on a diffusers UNet: the ``LoRAAdapter`` of a diffusers prior.

    The adapter is off except inside ``DiffusersPrior.lora_output``, so the prior's own predictions stay pretrained. It
    is toggled on the cached LoRA layers only (``set_active``), by their ``_disable_adapters`` flag: peft's
    ``unet.enable_adapters`` / ``disable_adapters`` walk every UNet module (about 2,000 on SD 2.1, 11 ms a pair) and
    ``disable_adapters`` also sets ``requires_grad=False`` on every LoRA tensor, so a loss whose backward runs after
    the call has disabled the adapter again (VSD's particle loss) would give the LoRA no gradient at all.
    ``time_offset``, while set, is added to the output of the UNet's time embedding (a forward hook).
    """

    def __init__(self, unet: torch.nn.Module, name: str, rank: int):
        from peft import LoraConfig
        from peft.tuners.tuners_utils import BaseTunerLayer
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name=name)
        self.name, self._unet = name, [unet]  # a list: the UNet is the prior's, not the adapter's
        self.params = [p for n, p in self._named()]
        for p in self.params:  # train in fp32 whatever the UNet dtype (peft casts activations to the LoRA dtype)
            p.data = p.data.float()
            p.requires_grad_(True)
        # peft's layers are duck-typed third-party objects: which carry this adapter, and whether they have a switch
        self.layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer) and name in getattr(m, "lora_A", {})]
        if not self.layers or not all(hasattr(m, "_disable_adapters") for m in self.layers):
            raise RuntimeError("this peft version exposes no per-layer adapter switch (_disable_adapters); VSD's "
                               "particle LoRA needs peft >= 0.7")
        self.time_embed_dim = int(unet.time_embedding.linear_2.out_features)
        self.time_offset: Tensor | None = None
        unet.time_embedding.register_forward_hook(self._add_time_offset)
        self.set_active(False)

    def _named(self):
        return [(n, p) for n, p in self._unet[0].named_parameters() if "lora_" in n and self.name in n]

    def set_active(self, active: bool) -> None:
        """Switch the LoRA on or off in its own layers, leaving every ``requires_grad`` as it is."""
        for m in self.layers:
            m._disable_adapters = not active

    def _add_time_offset(self, module, inputs, output):
        return output if self.time_offset is None else output + self.time_offset.to(output.dtype)

    def state_dict(self) -> dict[str, Tensor]:
        """The LoRA tensors by their UNet parameter names."""
        return {n: p.detach() for n, p in self._named()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        params = dict(self._named())
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v)


class DiffusersPrior(TextEncoderRelease, DeferredChecks, OwnGenerator, LoRAHost, UNetResiduals, InputGradient):
    """What every diffusers prior shares: UNet + schedule loading, prompt caches and epsilon prediction.

    Text encoders are loaded lazily, on the first prompt missing from both the memory and the disk cache, and
    after each embedding call kept, moved to the CPU or freed (cfg.text_encoder_offload). Subclasses name their
    ``text_components``, implement ``encode``, ``decode``, ``_encode_text`` and, where the UNet needs more than
    ``encoder_hidden_states``, ``_added_cond``.

    Attributes:
        unet: the denoiser (weights frozen; VSD may add LoRA adapters to it).
        prediction_type: the UNet's native output, "epsilon", "v_prediction" or "sample".
        cross_attention_kwargs: passed to every UNet call when set (e.g. {"scale": 0.0} for a LoRA scale).
        generator: the torch.Generator behind posterior sampling; reseed it for reproducible runs.
    """

    latent: bool = True
    text_components: tuple[str, ...] = ("tokenizer", "text_encoder")
    text_encoding: str = ""
    """Version tag of ``_encode_text``; part of the disk-cache key, so changing the encoding invalidates it."""
    default_offload: str = "keep"

    def __init__(self, source: ModelSource, cfg: PriorConfig, device: torch.device):
        self.name, self.cfg, self.device = source.name, cfg, device
        self.dtype = resolve_dtype(cfg, device)
        if cfg.ip_adapter:
            raise PriorError("IP-Adapter loading is not implemented for diffusers priors yet; leave ip_adapter empty")
        if cfg.text_encoder_offload not in OFFLOADS:
            raise PriorError(f"text_encoder_offload must be one of {OFFLOADS}, got {cfg.text_encoder_offload!r}")
        self.offload = self.default_offload if cfg.text_encoder_offload == "auto" else cfg.text_encoder_offload
        source.require(self.text_components)
        self._source = source
        for key in self.text_components:
            setattr(self, key, None)
        self.unet = self._frozen(source.component("unet", self._half_files(), torch_dtype=self.dtype))
        if cfg.attention_slicing:
            self.unet.set_attention_slice("auto")
        self._load_schedule(source)
        self.cross_attention_kwargs: dict[str, Any] | None = None
        self.unet_kwargs: Callable[[Tensor, Tensor, Cond], dict[str, Any]] | None = None
        """Optional provider of extra UNet keyword arguments, called as (x_t, t, cond) before each UNet call
        (e.g. a ControlNet's down/mid residuals, guidance/priors/controlnet.py)."""
        self.generator = torch.Generator(device=device).manual_seed(0)
        self._nonfinite: dict[str, tuple[Tensor, tuple, torch.dtype, str]] = {}
        self.defer_checks = device.type == "cuda"
        """NaN/Inf checks of per-step tensors as device flags read periodically (``_finite``), not a sync each."""
        self._embeds: dict[str, Cond] = {}
        self.embed_cache = EmbedCache(os.path.join(cache_dir(cfg), "text_embeds"), self._cache_fingerprint()) \
            if cfg.embed_cache else None

    def _half_files(self) -> bool:
        """Whether to load fp16 variant weight files: the prior runs in half precision and cfg allows it."""
        return bool(self.cfg.fp16_variant) and self.dtype in (torch.float16, torch.bfloat16)

    def release_text_encoders(self) -> None:
        """Free the text encoders now that the run's prompts are embedded (cached in memory and on disk): 0.7 GB on
        SD 2.1, 1.6 GB on SDXL. A later new prompt reloads them. Only under text_encoder_offload "auto"."""
        if self.cfg.text_encoder_offload != "auto":
            return
        freed = [k for k in self.text_components if isinstance(getattr(self, k), torch.nn.Module)]
        for key in freed:
            setattr(self, key, None)
        if freed:
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _load_schedule(self, source: ModelSource) -> None:
        scheduler = source.component("scheduler")
        if not hasattr(scheduler, "alphas_cumprod"):
            raise PriorError(f"{self.name!r}: scheduler {type(scheduler).__name__} exposes no alphas_cumprod")
        self.alphas_cumprod = scheduler.alphas_cumprod.detach().to(device=self.device, dtype=torch.float32)
        self.prediction_type = str(scheduler.config.get("prediction_type", "epsilon"))
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise PriorError(f"{self.name!r}: unsupported prediction_type {self.prediction_type!r}")
        self.steps_offset = int(scheduler.config.get("steps_offset", 0))
        self.scheduler_config = dict(scheduler.config)

    def _frozen(self, module: torch.nn.Module, device: torch.device | None = None) -> torch.nn.Module:
        module.requires_grad_(False)
        return module.to(device or self.device).eval()

    def _cache_fingerprint(self) -> str:
        return f"{type(self).__name__}/{self.text_encoding}/{self.dtype}/" + \
            self._source.fingerprint(self.text_components)

    # ---- text conditions -------------------------------------------------------------------------------------
    def embed(self, prompts: Sequence[str]) -> Cond:
        """Text conditions for the prompts ("" is the null condition), cached per prompt string.

        Looks in memory, then on disk (cfg.embed_cache), and encodes only what is left, in one batch. A single
        prompt returns the cached Cond itself, so repeated calls give the very same tensors.
        """
        if isinstance(prompts, str):
            raise ValueError("embed takes a list of prompts, got a single string")
        missing = [p for p in dict.fromkeys(prompts) if p not in self._embeds]
        found = {}
        for p in missing:
            hit = self.embed_cache.load(p) if self.embed_cache else None
            if hit is not None:
                found[p] = hit
        todo = [p for p in missing if p not in found]
        if todo:
            with self._text_encoders(), torch.no_grad():
                tensors = self._encode_text(todo)
            for i, p in enumerate(todo):
                found[p] = {k: v[i:i + 1] for k, v in tensors.items()}
                check_finite(f"the text embedding of {p!r}", found[p]["prompt_embeds"])
                if self.embed_cache:
                    self.embed_cache.save(p, found[p])
        for p, row in found.items():
            self._embeds[p] = Cond({k: v.to(self.device, self.dtype).clone() for k, v in row.items()})
        conds = [self._embeds[p] for p in prompts]
        return conds[0] if len(conds) == 1 else Cond.cat(conds)

    @contextmanager
    def _text_encoders(self):
        """Load missing text components, put the encoders on the device, then keep / offload / free them."""
        try:
            for key in self.text_components:
                module = getattr(self, key)
                if module is None:
                    kw = {} if key.startswith("tokenizer") else {"torch_dtype": self.dtype,
                                                                  "fp16_variant": self._half_files()}
                    module = self._source.component(key, **kw)
                if isinstance(module, torch.nn.Module):
                    module = self._frozen(module)
                setattr(self, key, module)
        except OSError as e:
            raise PriorError(_missing_message(self.name, f"its text encoder cannot be loaded ({_first_line(e)})")) \
                from None
        try:
            yield
        finally:
            self._offload_text_encoders()

    def _offload_text_encoders(self) -> None:
        encoders = [k for k in self.text_components if isinstance(getattr(self, k), torch.nn.Module)]
        match self.offload:
            case "keep":
                return
            case "cpu":
                for key in encoders:
                    getattr(self, key).to("cpu")
            case "free":
                for key in encoders:
                    setattr(self, key, None)
                gc.collect()
            case _:
                raise PriorError(f"text_encoder_offload must be one of {OFFLOADS}, got {self.offload!r}")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _encode_text(self, prompts: list[str]) -> dict[str, Tensor]:
        """Encode prompts in one batch -> {"prompt_embeds": [N,L,D], ...}; the text components are loaded."""
        raise NotImplementedError

    # ---- noise prediction ------------------------------------------------------------------------------------
    def _added_cond(self, cond: Cond, x_t: Tensor) -> dict[str, Any]:
        """UNet ``added_cond_kwargs``: IP-Adapter image embeddings when the Cond carries them."""
        if "image_embeds" in cond.tensors:
            return {"image_embeds": [cond.tensors["image_embeds"].to(self.dtype)]}
        return {}

    def _unet_output(self, x_t: Tensor, t: Tensor, cond: Cond, grad: bool = False) -> Tensor:
        added = self._added_cond(cond, x_t)
        extra = self.unet_kwargs(x_t, t, cond) if self.unet_kwargs is not None else {}
        with torch.enable_grad() if grad else torch.no_grad():
            out = self.unet(x_t.to(self.dtype), t, encoder_hidden_states=cond.tensors["prompt_embeds"].to(self.dtype),
                            added_cond_kwargs=added or None, cross_attention_kwargs=self.cross_attention_kwargs,
                            return_dict=False, **extra)[0]
        return out.to(x_t.dtype)

    @contextmanager
    def unet_residuals(self, provider: Callable[[Tensor, Tensor, Cond], dict[str, Any]]):
        """Inside the block every UNet call gets ``provider(x_t, t, cond)`` as extra keyword arguments
        (``UNetResiduals``: a ControlNet's residuals, guidance/priors/controlnet.py); ``unet_kwargs`` is restored
        afterwards."""
        previous, self.unet_kwargs = self.unet_kwargs, provider
        try:
            yield self
        finally:
            self.unet_kwargs = previous

    # ---- a LoRA on the UNet (``LoRAHost``: VSD's particle score) -----------------------------------------------
    def attach_lora(self, name: str, rank: int) -> PeftLoRA:
        """Add the peft LoRA ``name`` of rank ``rank`` to the UNet (B starts at zero: the UNet stays pretrained)."""
        return PeftLoRA(self.unet, name, rank)

    def lora_output(self, adapter: PeftLoRA, x_t: Tensor, t: Tensor, cond: Cond, *,
                    time_offset: Tensor | None = None, control: Tensor | None = None,
                    cams: Cameras | None = None) -> Tensor:
        """The UNet's raw output [B,c,h,w] (native parameterisation ``prediction_type``) with ``adapter`` on and
        ``time_offset`` [B,time_embed_dim] added to the time embedding, with gradient to both. The added
        conditioning (``_added_cond``) and the ``unet_residuals`` provider apply as in ``predict_eps``. This prior
        takes no condition images (``control``); ``cams`` is unused. DeepFloyd IF's UNet also predicts the variance
        (6 channels): the output is the first c channels."""
        if control is not None:
            raise ValueError(f"the {type(self).__name__} prior takes no condition images")
        x = x_t.to(self.device)
        t = t.to(self.device)
        added = self._added_cond(cond, x)
        extra = self.unet_kwargs(x, t, cond) if self.unet_kwargs is not None else {}
        adapter.time_offset = None if time_offset is None else time_offset.to(self.device)
        adapter.set_active(True)
        try:
            out = self.unet(x.to(self.dtype), t,
                            encoder_hidden_states=cond.tensors["prompt_embeds"].to(self.device, self.dtype),
                            added_cond_kwargs=added or None, return_dict=False, **extra)[0]
        finally:
            adapter.set_active(False)
            adapter.time_offset = None
        return out[:, : x_t.shape[1]].to(x_t.dtype)

    def predict_eps(self, x_t: Tensor, t: Tensor, cond: Cond, cams: Cameras | None = None) -> Tensor:
        """Noise prediction eps(x_t, t, cond) [B,c,h,w] for int timesteps t [B]; cond has B rows.

        The UNet runs under no_grad in its own dtype; the result comes back in x_t's dtype, always as epsilon,
        and is checked for NaN/Inf. ``cams`` is unused by text-conditioned priors.
        """
        return self._predict_eps(x_t, t, cond, grad=False)

    def predict_eps_grad(self, x_t: Tensor, t: Tensor, cond: Cond, cams: Cameras | None = None) -> Tensor:
        """``predict_eps`` with autograd through the UNet to ``x_t`` (``InputGradient``); the weights stay frozen."""
        return self._predict_eps(x_t, t, cond, grad=True)

    def _predict_eps(self, x_t: Tensor, t: Tensor, cond: Cond, grad: bool) -> Tensor:
        if x_t.ndim != 4:
            raise ValueError(f"x_t must be [B,c,h,w], got {tuple(x_t.shape)}")
        b = x_t.shape[0]
        t = torch.as_tensor(t, device=self.device).long().reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"t must be [B={b}] integer timesteps, got {tuple(t.shape)}")
        if len(cond) != b:
            raise ValueError(f"cond has {len(cond)} rows but x_t has batch {b}")
        x_t = x_t.to(self.device) if grad else x_t.detach().to(self.device)
        out = self._unet_output(x_t, t, cond.to(self.device), grad=grad)
        eps = self._to_eps(out, x_t, t)
        return self._finite("the noise prediction", eps, "The UNet overflowed; try dtype float32 or bfloat16.")

    def _finite(self, what: str, x: Tensor, hint: str) -> Tensor:
        """NaN/Inf guard on a per-step tensor. On a CPU: ``check_finite`` at once. On a GPU, reading the answer would
        be a host-device sync per UNet call; instead a device flag per ``what`` accumulates it, and the training loop
        reads them all with ``nonfinite_report`` on its logged steps and before it writes a checkpoint."""
        if not self.defer_checks:
            return check_finite(what, x, hint)
        bad = ~torch.isfinite(x).all()
        prev = self._nonfinite.get(what)
        self._nonfinite[what] = (bad if prev is None else prev | bad, tuple(x.shape), x.dtype, hint)
        return x

    def nonfinite_report(self) -> str | None:
        """The message for the first deferred NaN/Inf seen since the last call (one host read), else None."""
        if not self._nonfinite:
            return None
        items = list(self._nonfinite.items())
        flags = torch.stack([flag for _, (flag, *_rest) in items]).cpu().tolist()
        self._nonfinite.clear()
        for (what, (_, shape, dtype, hint)), bad in zip(items, flags):
            if bad:
                return (f"the prior produced non-finite values (NaN/Inf) in {what} (shape {shape}, dtype {dtype}). "
                        f"{hint or 'Try dtype float32.'}")
        return None

    def _to_eps(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        try:
            return to_eps(out, x_t, t, self.alphas_cumprod, self.prediction_type)
        except ValueError as e:
            raise PriorError(str(e)) from None


def cross_attention_width(unet_config) -> int | None:
    """The cross-attention width of a UNet config (a diffusers config or its config.json dict); None when the blocks
    disagree or it is missing."""
    d = unet_config.get("cross_attention_dim") if isinstance(unet_config, Mapping) else None
    if isinstance(d, (list, tuple)):
        d = d[0] if len(set(d)) == 1 else None
    return int(d) if d is not None else None


def clip_prompt_ids(tokenizer, prompts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
    """Token ids and attention mask, padded to the tokenizer's max length as the diffusers pipelines do."""
    inputs = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    return inputs.input_ids.to(device), inputs.attention_mask.to(device)


class StableDiffusionPrior(DiffusersPrior, ImageAdapterHost):
    """Stable Diffusion 1.x / 2.x (``StableDiffusionPipeline``): a VAE latent prior with one CLIP text encoder.

    Cond: {"prompt_embeds": [N,77,D]}, the text encoder's last hidden state as the pipeline uses it ("" is
    encoded like any prompt). Above the native resolution the VAE encodes and decodes in tiles.
    """

    latent = True
    text_encoding = "clip-last-v1"

    def __init__(self, source: ModelSource, cfg: PriorConfig, device: torch.device):
        super().__init__(source, cfg, device)
        self.vae = self._frozen(self._load_vae(source))
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        shift = self.vae.config.get("shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0
        self.native_resolution = int(self.unet.config.sample_size) * self.vae_scale
        self.resolution = int(cfg.resolution) or self.native_resolution
        if self.resolution % self.vae_scale:
            raise PriorError(f"prior resolution {self.resolution} must be a multiple of {self.vae_scale} "
                             f"(the VAE's downsampling factor)")
        if self.resolution > self.native_resolution and hasattr(self.vae, "enable_tiling"):
            self.vae.enable_tiling()

    @property
    def cross_attention_dim(self) -> int | None:
        """The UNet's cross-attention width (``ImageAdapterHost``)."""
        return cross_attention_width(self.unet.config)

    def load_ip_adapter(self, source: str, subfolder: str, weight_name: str, scale: float, image: Tensor) -> Tensor:
        """Load an IP-Adapter into the UNet with diffusers' ``load_ip_adapter`` and encode ``image`` [H,W,3] in [0,1]
        (``ImageAdapterHost``; guidance/priors/visual_prompt.py checks the adapter fits first).

        A transient StableDiffusionPipeline is assembled from the prior's own modules (no copy), so the adapter's
        attention processors land in this UNet. Returns the image embedding [1,1,D] (prior device and dtype).
        """
        from diffusers import DDIMScheduler, StableDiffusionPipeline
        from PIL import Image

        pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=self.unet, scheduler=DDIMScheduler.from_config(self.scheduler_config),
                                       safety_checker=None, feature_extractor=None, image_encoder=None,
                                       requires_safety_checker=False)
        offline = os.path.isdir(source) or hub_offline()
        try:
            pipe.load_ip_adapter(source, subfolder=subfolder, weight_name=weight_name,
                                 local_files_only=True if offline else None)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise PriorError(f"cannot load the IP-Adapter {source!r} ({subfolder}/{weight_name}): "
                             f"{_first_line(e)}") from None
        pipe.set_ip_adapter_scale(scale)
        pipe.image_encoder.requires_grad_(False).eval()
        self.unet.requires_grad_(False)
        self.image_encoder = pipe.image_encoder
        with torch.no_grad():
            pil = Image.fromarray((image.clamp(0, 1).numpy() * 255 + 0.5).astype("uint8"))
            emb, _ = pipe.encode_image(pil, self.device, 1)  # [1,D]
        return emb[:, None].to(self.device, self.dtype)

    def _vae_dtype(self) -> torch.dtype:
        """cfg.vae_dtype, or with "auto" the prior's dtype."""
        if self.cfg.vae_dtype == "auto":
            return self.dtype
        return resolve_dtype(PriorConfig(dtype=self.cfg.vae_dtype), self.device)

    def _load_vae(self, source: ModelSource):
        """The model's VAE, or cfg.vae (an AutoencoderKL hub id or folder) in its place."""
        dtype = self._vae_dtype()
        if not self.cfg.vae:
            return source.component("vae", self._half_files() and dtype != torch.float32, torch_dtype=dtype)
        from diffusers import AutoencoderKL
        kw = {"local_files_only": True} if (hub_offline() or os.path.isdir(self.cfg.vae)) else {}
        try:
            return AutoencoderKL.from_pretrained(self.cfg.vae, torch_dtype=dtype, **kw)
        except (OSError, ValueError) as e:
            raise PriorError(_missing_message(self.cfg.vae, f"the VAE cannot be loaded ({_first_line(e)})")) from None

    def _encode_text(self, prompts: list[str]) -> dict[str, Tensor]:
        ids, mask = clip_prompt_ids(self.tokenizer, prompts, self.device)
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        out = self.text_encoder(ids, attention_mask=mask if use_mask else None)
        return {"prompt_embeds": out[0]}

    def encode(self, rgb: Tensor) -> Tensor:
        """Renders [B,H,W,3] in [0,1] -> latents [B,4,h,w] (fp32), differentiable through the VAE encoder.

        The render is bilinearly resized to the prior resolution, mapped to [-1,1], encoded, and the posterior is
        sampled (cfg.vae_sample, with ``self.generator``) or its mean taken, then scaled by the VAE's scaling_factor.
        """
        if rgb.ndim != 4 or rgb.shape[-1] != 3:
            raise ValueError(f"rgb must be [B,H,W,3], got {tuple(rgb.shape)}")
        x = rgb.to(self.device).permute(0, 3, 1, 2)
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, (self.resolution, self.resolution), mode="bilinear", align_corners=False)
        x = (2 * x - 1).to(self.vae.dtype)
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample(generator=self.generator) if self.cfg.vae_sample else posterior.mode()
        z = (z.float() - self.shift_factor) * self.scaling_factor
        return self._finite("the encoded latents", z, "The VAE overflowed; use a float32 VAE (dtype float32).")

    def decode(self, x: Tensor) -> Tensor:
        """Latents [B,4,h,w] -> images [B,H,W,3] in [0,1], without gradient."""
        with torch.no_grad():
            z = x.to(self.device).float() / self.scaling_factor + self.shift_factor
            img = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]
        return ((img.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
