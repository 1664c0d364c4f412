"""Prompt handling: the three text conditions (prompt, negative, null) and view-dependent prompting.

guidance-spec §1.3 (three conditions) and §1.6 (view-dependent prompting). Embeddings come from the prior's
``embed``, which caches per prompt string, so building a PromptSet once per run costs a handful of encoder calls.
"""

from dataclasses import dataclass

import torch

from engine.cameras import Cameras, ViewThresholds, view_labels
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

    def __post_init__(self) -> None:
        if self.mode not in ("discrete", "interpolated"):
            raise ValueError(f"prompts.mode must be discrete or interpolated, got {self.mode!r}")


VIEWS = ("front", "side", "back", "overhead")


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
        self.thresholds = ViewThresholds(self.cfg.front_threshold, self.cfg.back_threshold,
                                         self.cfg.overhead_threshold)

    def cond(self, cams: Cameras) -> Cond:
        """The prompt condition per camera [C rows]: view-dependent when enabled."""
        n = len(cams)
        if not self.cfg.view_dependent:
            return self.plain.expand(n)
        if self.cfg.mode == "discrete":
            labels = view_labels(cams.azimuth.cpu(), cams.elevation.cpu(), self.thresholds)
            return Cond.cat([self.views[lab] for lab in labels])
        return Cond.cat([self._interpolated(float(a)) for a in cams.azimuth.cpu()])

    def _interpolated(self, az: float) -> Cond:
        """LucidDreamer's blend: r = 1 - |az|/90 between front and side, then side and back."""
        az = (az + 180.0) % 360.0 - 180.0
        if -90.0 <= az < 90.0:
            r = 1.0 - abs(az) / 90.0
            return self.views["side"].lerp(self.views["front"], torch.tensor([r]))
        r = 1.0 - (abs(az) - 90.0) / 90.0
        return self.views["back"].lerp(self.views["side"], torch.tensor([r]))

    def uncond(self, n: int) -> Cond:
        """The negative-prompt condition u (the CFG "uncond"), n rows."""
        return self.uncond_one.expand(n)

    def null(self, n: int) -> Cond:
        """The empty-prompt condition, n rows (DDIM inversion in ISM/TSM, CSD's null)."""
        return self.null_one.expand(n)
