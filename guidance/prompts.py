"""Prompt handling: the three text conditions (prompt, negative, null) and view-dependent prompting.

guidance-spec §1.3 (three conditions) and §1.6 (view-dependent prompting). Embeddings come from the prior's
``embed``, which caches per prompt string, so building a PromptSet once per run costs a handful of encoder calls.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from foundation.cameras import Cameras, ViewThresholds, cameras_code
from guidance.priors.base import Cond, Prior


@dataclass
class PromptConfig:
    """View-dependent prompting options."""

    view_dependent: bool = True
    """Append ", front view" / ", side view" / ... according to the camera."""
    mode: str = "discrete"
    """"discrete": threestudio's labels; "interpolated": LucidDreamer's blend of front/side/back embeddings."""
    front_threshold: float = 45.0
    """|azimuth| below this is the front view (degrees)."""
    back_threshold: float = 45.0
    """|azimuth| above 180 minus this is the back view (degrees)."""
    overhead_threshold: float = 60.0
    """Elevation above this is the overhead view (degrees)."""
    camera_code: bool = False
    """Add each camera's ``foundation.cameras.camera_code`` to every row of its prompt condition (the conditional
    branch only: the negative and null conditions stay camera-free, as the prior was trained). For priors trained
    with it (`engine train-prior shapes --camera-code`), whose distillery.json sets it; a prior that was not
    ignores the code as noise, so leave it off there."""
    camera_uncond: bool = False
    """With ``camera_code``: add the code to the negative and null conditions too, so classifier-free guidance
    amplifies the text alone (MVDream's way). Only for a prior whose unconditional model learned the camera
    (`engine train-prior shapes --camera-uncond`)."""

    def __post_init__(self) -> None:
        if self.mode not in ("discrete", "interpolated"):
            raise ValueError(f"prompts.mode must be discrete or interpolated, got {self.mode!r}")
        if self.camera_uncond and not self.camera_code:
            raise ValueError("prompts.camera_uncond adds the camera code to the negative and null conditions; it "
                             "needs prompts.camera_code")


VIEWS = ("front", "side", "back", "overhead")


def view_index(azimuth_deg: Tensor, elevation_deg: Tensor, th: ViewThresholds = ViewThresholds()) -> Tensor:
    """Index into VIEWS per camera [C] (int64, on the cameras' device): foundation.cameras.view_labels' rule (side by
    default, then front, back, overhead, a later match overriding), as tensor ops, so choosing the view prompts never
    reads the cameras back to the host."""
    az = (azimuth_deg + 180.0) % 360.0 - 180.0
    idx = torch.full(az.shape, VIEWS.index("side"), dtype=torch.int64, device=az.device)
    idx = torch.where(az.abs() < th.front, VIEWS.index("front"), idx)
    idx = torch.where(az.abs() > 180.0 - th.back, VIEWS.index("back"), idx)
    return torch.where(elevation_deg > th.overhead, VIEWS.index("overhead"), idx)


class PromptSet:
    """The embedded conditions of one run: prompt y (plain and per view), negative u, null ""."""

    def __init__(self, prior: Prior, prompt: str, negative: str = "", cfg: PromptConfig | None = None):
        if not prompt or not prompt.strip():
            raise ValueError("the prompt is empty; describe the object to generate, e.g. \"a red cube\"")
        self.prior, self.prompt, self.negative = prior, prompt.strip(), negative
        self.cfg = cfg or PromptConfig()
        texts = [self.prompt, negative, ""] + [f"{self.prompt}, {v} view" for v in VIEWS]
        embs = prior.embed(texts)
        self.plain, self.uncond_one, self.null_one = embs[0], embs[1], embs[2]
        self.views = {v: embs[3 + i] for i, v in enumerate(VIEWS)}
        if self.cfg.camera_code and "prompt_embeds" not in self.plain.tensors:  # refused before any step runs
            raise ValueError(f"prompts.camera_code needs a prior with a text embedding (prompt_embeds); the "
                             f"{getattr(prior, 'name', type(prior).__name__)} prior has none")
        self.thresholds = ViewThresholds(self.cfg.front_threshold, self.cfg.back_threshold,
                                         self.cfg.overhead_threshold)

    def cond(self, cams: Cameras) -> Cond:
        """The prompt condition per camera [C rows]: view-dependent when enabled."""
        n = len(cams)
        if not self.cfg.view_dependent:
            out = self.plain.expand(n)
        elif self.cfg.mode == "discrete":
            idx = view_index(cams.azimuth, cams.elevation, self.thresholds)
            stacked = self._stacked()
            out = stacked[idx.to(next(iter(stacked.tensors.values())).device)]
        else:
            out = self._interpolated_batch(cams.azimuth)
        return self._with_camera(out, cams) if self.cfg.camera_code else out

    def _with_camera(self, cond: Cond, cams: Cameras) -> Cond:
        """``cond`` with each row's camera code added to its text embedding (``PromptConfig.camera_code``)."""
        emb = cond.tensors["prompt_embeds"]
        code = cameras_code(cams, emb.shape[-1]).to(emb.device, emb.dtype)
        return Cond({**cond.tensors, "prompt_embeds": emb + code[:, None, :]})

    def _stacked(self) -> Cond:
        """The four view conditions in VIEWS order, one row each (built once)."""
        if not hasattr(self, "_views_stacked"):
            self._views_stacked = Cond.cat([self.views[v] for v in VIEWS])
        return self._views_stacked

    def _interpolated_batch(self, azimuth: Tensor) -> Cond:
        """``_interpolated`` for every camera at once, on the cameras' device (no per-camera host read): the same
        blend weights, computed in float64 like the scalar rule."""
        views = {v: self.views[v] for v in ("front", "side", "back")}
        dev = next(iter(views["front"].tensors.values())).device
        az = (azimuth.to(dev).double() + 180.0) % 360.0 - 180.0
        front_half = (az >= -90.0) & (az < 90.0)
        r = torch.where(front_half, 1.0 - az.abs() / 90.0, 1.0 - (az.abs() - 90.0) / 90.0)
        out = {}
        for k in views["front"].tensors:
            front, side, back = (views[v].tensors[k] for v in ("front", "side", "back"))
            shape = (-1, *([1] * (front.ndim - 1)))
            fh = front_half.view(shape)
            a = torch.where(fh, side, back)
            b = torch.where(fh, front, side)
            out[k] = a + r.to(a.dtype).view(shape) * (b - a)
        return Cond(out)

    def _interpolated(self, az: float) -> Cond:
        """LucidDreamer's blend: r = 1 - |az|/90 between front and side, then side and back."""
        az = (az + 180.0) % 360.0 - 180.0
        if -90.0 <= az < 90.0:
            r = 1.0 - abs(az) / 90.0
            return self.views["side"].lerp(self.views["front"], torch.tensor([r]))
        r = 1.0 - (abs(az) - 90.0) / 90.0
        return self.views["back"].lerp(self.views["side"], torch.tensor([r]))

    def uncond(self, n: int, cams: Cameras | None = None) -> Cond:
        """The negative-prompt condition u (the CFG "uncond"), n rows; with ``camera_uncond`` and the n cameras, each
        row carries its camera's code."""
        return self._unconditional(self.uncond_one, n, cams)

    def null(self, n: int, cams: Cameras | None = None) -> Cond:
        """The empty-prompt condition, n rows (DDIM inversion in ISM/TSM, CSD's null); cameras as ``uncond``."""
        return self._unconditional(self.null_one, n, cams)

    def _unconditional(self, one: Cond, n: int, cams: Cameras | None) -> Cond:
        out = one.expand(n)
        if cams is None or not (self.cfg.camera_code and self.cfg.camera_uncond):
            return out
        if len(cams) != n:
            raise ValueError(f"{len(cams)} cameras for {n} condition rows")
        return self._with_camera(out, cams)
