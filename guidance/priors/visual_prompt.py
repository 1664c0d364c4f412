"""Visual prompts for VPCSM (guidance-spec §2.7): an image I that conditions the prior next to the text.

- Diffusers priors (Stable Diffusion 1.x / 2.x): an IP-Adapter (Ye et al. 2023, https://arxiv.org/abs/2308.06721)
  loaded with diffusers' ``load_ip_adapter`` into the prior's own UNet, from a hub id or a local folder. In every
  cross-attention layer out = Attn(Q, K_txt, V_txt) + lambda_ip Attn(Q, W'_k c_img, W'_v c_img), with c_img the
  projected CLIP image embedding. The Cond of every branch then carries "image_embeds" [N,1,D]: the encoded I for
  the conditional branch and zeros (IP-Adapter's unconditional image) for the others, as the pipelines do.
- Exemplar priors (the shapes world): the image conditions on the exemplars *nearest* to it. The distance between
  two images is the mean squared difference of their silhouettes (pixels that differ from the white background by
  more than 0.1) plus the squared distance of their mean foreground colours; a plain pixel distance would let a
  white object beat a red one whenever the silhouettes disagree, since a white object differs little from the
  background. For each exemplar group (same tag set, e.g. "red cube") d_g = min over the group's views, and the image
  log-prior of an exemplar is -lambda_ip (d_g - min_g d_g) / IMAGE_TEMPERATURE, added to the text log-prior. So
  "a cube" with a red reference image selects the red cubes, whatever view the image shows.

Bad input (unreadable file, not an image, more than MAX_PIXELS pixels or MAX_BYTES bytes) raises ValueError.
"""

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from foundation.abilities import declares
from guidance.priors.base import Cond, ExemplarImages, ImageAdapterHost

MAX_BYTES = 32 * 1024 * 1024
MAX_PIXELS = 4096 * 4096
IMAGE_TEMPERATURE = 0.0025
"""Mean-squared-distance scale of the exemplar image kernel ([-1,1] pixels): 0.0025 apart is one nat (sharp enough
that a red reference puts the orange group, its nearest rival, about 18 nats below the red one)."""


def check_image_file(path: str) -> tuple[int, int]:
    """Validate a reference image without decoding it all; returns (width, height). ValueError when unusable."""
    if not os.path.isfile(path):
        raise ValueError(f"image prompt {path!r}: no such file")
    size = os.path.getsize(path)
    if size > MAX_BYTES:
        raise ValueError(f"image prompt {path!r} is {size / 2**20:.0f} MiB; the limit is {MAX_BYTES // 2**20} MiB")
    from PIL import Image
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, DecompressionBombError...
        raise ValueError(f"image prompt {path!r} cannot be read as an image ({type(e).__name__}: {e})") from None
    if w * h > MAX_PIXELS:
        raise ValueError(f"image prompt {path!r} is {w}x{h} pixels; the limit is {MAX_PIXELS} pixels "
                         f"(e.g. 4096x4096); resize it first")
    if w < 1 or h < 1:
        raise ValueError(f"image prompt {path!r} is empty ({w}x{h})")
    return w, h


def load_image(path: str, background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Tensor:
    """[H,W,3] float in [0,1]; transparency is composited over ``background`` (white, like the shapes world)."""
    check_image_file(path)
    from PIL import Image
    try:
        with Image.open(path) as im:
            im = im.convert("RGBA")
            import numpy as np
            a = torch.from_numpy(np.asarray(im).copy()).float() / 255.0
    except Exception as e:
        raise ValueError(f"image prompt {path!r} cannot be decoded ({type(e).__name__}: {e})") from None
    rgb, alpha = a[..., :3], a[..., 3:]
    return rgb * alpha + (1 - alpha) * torch.tensor(background)


class VisualPrompt:
    """Attaches the image condition to Conds: ``with_image`` for the conditional branch, ``without_image`` else."""

    def __init__(self, key: str, on: Tensor, off: Tensor, mode: str):
        self.key, self.on, self.off, self.mode = key, on, off, mode

    @staticmethod
    def build(prior, path: str, cfg) -> "VisualPrompt":
        image = load_image(path)
        if declares(prior, ExemplarImages):
            return VisualPrompt("log_prior", exemplar_image_log_prior(prior, image, cfg.ip_adapter_scale),
                                torch.zeros(len(prior.tags), device=prior.device), "add")
        if declares(prior, ImageAdapterHost):
            check_ip_adapter_fits(prior.name, prior.cross_attention_dim, type(prior).__name__, cfg.ip_adapter,
                                  cfg.ip_adapter_subfolder, cfg.ip_adapter_weight_name)
            emb = prior.load_ip_adapter(cfg.ip_adapter, cfg.ip_adapter_subfolder, cfg.ip_adapter_weight_name,
                                        cfg.ip_adapter_scale, image)
            return VisualPrompt("image_embeds", emb, torch.zeros_like(emb), "set")
        raise ValueError(f"the {type(prior).__name__} prior cannot take an image prompt (supported: exemplar/shapes "
                         f"priors and Stable Diffusion priors through an IP-Adapter)")

    def _attach(self, cond: Cond, value: Tensor) -> Cond:
        n = len(cond)
        t = dict(cond.tensors)
        if self.mode == "add":
            t[self.key] = (t[self.key] + value.to(t[self.key].device)).clamp_min(-1.0e4)
        else:
            t[self.key] = value.expand(n, *value.shape[1:])
        return Cond(t)

    def with_image(self, cond: Cond) -> Cond:
        return self._attach(cond, self.on)

    def without_image(self, cond: Cond) -> Cond:
        return self._attach(cond, self.off)


def exemplar_image_log_prior(prior, image: Tensor, scale: float) -> Tensor:
    """[N] image log-prior over an exemplar prior's exemplars: nearest-view distance per tag group (module doc)."""
    x = image.permute(2, 0, 1)[None].to(prior.device)
    x = F.interpolate(x, size=prior.size, mode="bilinear", align_corners=False, antialias=True) * 2 - 1
    d = _silhouette_colour_distance(x, prior.images)  # [N]
    groups: dict[frozenset, list[int]] = {}
    for i, tag in enumerate(prior.tags):
        groups.setdefault(tag, []).append(i)
    d_group = torch.empty_like(d)
    for idx in groups.values():
        ii = torch.tensor(idx, device=d.device)
        d_group[ii] = d[ii].min()
    return -scale * (d_group - d_group.min()) / IMAGE_TEMPERATURE


def _silhouette_colour_distance(x: Tensor, images: Tensor, chunk: int = 1024) -> Tensor:
    """[N] distance of one image x [1,3,h,w] to images [N,3,h,w] (both in [-1,1], white background = 1)."""
    def stats(imgs):
        fg = ((1.0 - imgs).amax(1) > 0.2).float()  # > 0.1 from white, in [-1,1] units
        colour = (imgs * fg[:, None]).sum((2, 3)) / fg.sum((1, 2)).clamp_min(1.0)[:, None]
        return fg, colour

    fg_x, col_x = stats(x)
    out = []
    for i in range(0, images.shape[0], chunk):
        fg, col = stats(images[i:i + chunk])
        out.append(((fg - fg_x) ** 2).flatten(1).mean(1) + ((col - col_x) ** 2).sum(1) / 4)
    return torch.cat(out)


SUPPORTED_PRIORS = ("Stable Diffusion 1.x (768-d cross-attention) with an SD 1.5 IP-Adapter (the default, "
                    "h94/IP-Adapter models/ip-adapter_sd15.safetensors), or any Stable Diffusion folder whose "
                    "cross-attention width matches its IP-Adapter's; exemplar priors (shapes) through their "
                    "nearest-image kernel. Not: SD 2.x (1024-d, no official IP-Adapter), SDXL, DeepFloyd IF")
"""Which priors take a visual prompt (README, guidance/csm.py)."""

IP_ADAPTER_WIDTHS = {"sd15": 768, "sdxl": 2048}
"""Cross-attention width by the tag in h94/IP-Adapter's file names, for a weight file not downloaded yet."""


def ip_adapter_width(source: str, subfolder: str, weight_name: str) -> int | None:
    """The cross-attention width an IP-Adapter was trained for, read from its safetensors header (no weights are
    loaded) when the file is on disk, else from its name (…_sd15…: 768, …_sdxl…: 2048); None when unknown."""
    path = os.path.join(source, subfolder, weight_name)
    if not os.path.isfile(path) and not os.path.isdir(source):
        try:
            from huggingface_hub import hf_hub_download
            path = hf_hub_download(source, weight_name, subfolder=subfolder or None, local_files_only=True)
        except Exception:  # noqa: BLE001 - not in the cache (or not a hub id): fall back to the name
            path = ""
    if path and os.path.isfile(path) and path.endswith(".safetensors"):
        from safetensors import safe_open
        try:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    if key.endswith("to_k_ip.weight"):
                        return int(f.get_slice(key).get_shape()[1])
        except Exception:  # noqa: BLE001 - a broken file is reported by the loader itself
            return None
    for tag, width in IP_ADAPTER_WIDTHS.items():
        if tag in weight_name.lower():
            return width
    return None


def check_ip_adapter_fits(prior_name: str, cross_dim: int | None, prior_kind: str, source: str, subfolder: str,
                          weight_name: str) -> None:
    """PriorError, before anything is loaded, when the IP-Adapter cannot go into this prior's UNet: its width differs
    from the UNet's cross-attention width (SD 2.1's 1024 vs the SD 1.5 adapter's 768), or the prior is not an SD
    1.x / 2.x one (the adapter is loaded through a StableDiffusionPipeline)."""
    from guidance.priors.base import PriorError
    if prior_kind not in ("StableDiffusionPrior", "sd", "ControlNetPrior"):
        raise PriorError(f"a visual prompt (--image) does not work with the {prior_kind} prior {prior_name!r}. "
                         f"Supported: {SUPPORTED_PRIORS}")
    width = ip_adapter_width(source, subfolder, weight_name)
    if width is not None and cross_dim is not None and width != cross_dim:
        raise PriorError(f"the IP-Adapter {source!r} ({subfolder}/{weight_name}) is for a {width}-d cross-attention, "
                         f"but the prior {prior_name!r} has {cross_dim}-d (e.g. SD 2.x is 1024-d, SD 1.5 768-d); "
                         f"choose a matching --guidance.ip-adapter / --guidance.ip-adapter-weight-name. "
                         f"Supported: {SUPPORTED_PRIORS}")


def check_visual_prompt_prior(prior_name: str, cfg) -> None:
    """The ``check_ip_adapter_fits`` test from the prior's model_index.json and unet/config.json alone (nothing is
    loaded): run before the prior is built. Exemplar priors and models that cannot be read yet pass through."""
    from guidance.priors import prior_family
    family = prior_family(prior_name)
    if family is None:
        return
    if family != "sd":
        check_ip_adapter_fits(prior_name, None, family.upper(), cfg.ip_adapter, cfg.ip_adapter_subfolder,
                              cfg.ip_adapter_weight_name)
    import json

    from guidance.priors.config import resolve_prior_folder
    from guidance.priors.stable_diffusion import ModelSource, cross_attention_width
    folder = ModelSource.resolve(resolve_prior_folder(prior_name))
    config = os.path.join(folder.snapshot or folder.name, "unet", "config.json")
    cross = None
    if os.path.isfile(config):
        with open(config) as f:
            cross = cross_attention_width(json.load(f))
    check_ip_adapter_fits(prior_name, cross, "sd", cfg.ip_adapter, cfg.ip_adapter_subfolder,
                          cfg.ip_adapter_weight_name)
