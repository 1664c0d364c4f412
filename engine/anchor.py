"""Anchor views: reference images the prior commits to, so that a symmetric start picks one shape (issue #17).

Score distillation from a round start averages over what the prompt leaves open. The shapes world's cube is the
clearest case (docs/benchmarks.md, session 35): the prior cannot tell which way a cube faces, each view's gradient
pulls towards a cube at its own yaw, and the run settles on their average, a drum of the cube's corner radius
(corner ratio 1.05, 7 cm off on every side) although an exact cube is a fixed point of the same optimisation (fit
to the truth first, 400 more steps keep it at 0.004 / 0.015 m, session 36).

An anchor breaks the tie the way DreamCraft3D (Sun et al. 2023, https://arxiv.org/abs/2310.16818, §3) and Magic123
(Qian et al. 2023, https://arxiv.org/abs/2306.17843, Eq. 2) do with a reference image, except that the image comes
from the prior itself, through the scene: the anchor camera's render z0 is noised to t0 = s·T and denoised by DDIM
(eta 0, ``ddim_steps`` moves, CFG ``guidance_scale``, the view's prompt), SDEdit (Meng et al. 2021,
https://arxiv.org/abs/2108.01073, §3). The sample is one committed answer that still keeps the render's layout
(where the object stands, its size, its rough shape). The scene is then also fitted to it:

    L_anchor = weight · mean_pixels ||render(c_anchor) - target||^2

every step from ``start`` to ``end`` (fractions of the run), beside the objective's loss. The target is drawn
again every ``every`` steps from the scene's current render, with the strength s going linearly from
``strength[0]`` to ``strength[1]``, so later targets follow the shape the other views agree on and sharpen it
(Instruct-NeRF2NeRF's iterated dataset update, Haque et al. 2023, https://arxiv.org/abs/2303.12789, §4.2). After
``end`` the objective alone refines: a committed shape is kept (the exact cube is a fixed point of the run), though
what the anchor committed to is only as exact as the prior's 64-pixel samples.

With several ``azimuths`` the anchors take turns (one extra render a step); the first target is drawn at ``start``
and the others at ``start + stagger`` (a fraction of the run), when the first has committed the shape they must
agree with. The targets are part of the run's checkpoint, so a resumed run fits the same images, and each draw is
saved beside the run's previews (previews/anchor<k>_step_<N>.png: the render, then the target).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from foundation.cameras import CameraConfig, Cameras, orbit_cameras
from guidance.base import add_noise, ddim_move, x0_hat
from guidance.perp_neg import guided_eps


@dataclass
class AnchorConfig:
    """Anchor views (module docstring); ``weight`` 0, the default, turns them off. Measured on the shapes world
    (docs/benchmarks.md, session 36): they turn the demo cube's drum into a cube on some seeds (corner ratio 1.05 ->
    1.3-1.4) but not all, and cost the torus 0.5-1 cm, so no preset turns them on yet."""

    weight: float = 0.0
    """Weight of the anchor views' mean squared pixel error against their targets (0: no anchors)."""
    azimuths: tuple[float, ...] = (0.0,)
    """Azimuths (degrees) of the anchor cameras; they take turns, one render a step."""
    elevation: float = 20.0
    """Elevation (degrees) of the anchor cameras, at the training cameras' mean distance and field of view."""
    start: float = 0.125
    """Fraction of the run at which the first target is drawn and the anchor term starts."""
    end: float = 0.25
    """Fraction of the run at which the anchor term stops (the objective alone refines after it)."""
    stagger: float = 0.0625
    """Anchors after the first draw their first target this fraction of the run after ``start``."""
    every: int = 25
    """Steps between two draws of the targets."""
    strength: tuple[float, float] = (0.6, 0.3)
    """SDEdit strength s (t0 = s·T) of the first and of the last draw, linear in between."""
    ddim_steps: int = 20
    """DDIM moves from t0 down to 0 for one target."""
    guidance_scale: float = 7.5
    """CFG scale (standard convention) of the targets' denoising."""

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"anchor.weight must be >= 0, got {self.weight}")
        if not self.azimuths:
            raise ValueError("anchor.azimuths needs at least one azimuth")
        if not 0.0 <= self.start < self.end <= 1.0:
            raise ValueError(f"anchor.start and anchor.end must satisfy 0 <= start < end <= 1, got {self.start}, "
                             f"{self.end}")
        if self.stagger < 0 or (len(self.azimuths) > 1 and self.stagger >= self.end - self.start):
            raise ValueError(f"anchor.stagger must lie in [0, end - start) with several azimuths, got {self.stagger}")
        if self.every < 1 or self.ddim_steps < 1:
            raise ValueError(f"anchor.every and anchor.ddim_steps must be >= 1, got {self.every}, {self.ddim_steps}")
        if not all(0.0 < s <= 1.0 for s in self.strength) or len(self.strength) != 2:
            raise ValueError(f"anchor.strength is two SDEdit strengths in (0, 1], got {self.strength}")
        if not -90.0 < self.elevation < 90.0:
            raise ValueError(f"anchor.elevation must lie in (-90, 90) degrees, got {self.elevation}")


class Anchors:
    """The anchor views of one run: ``term`` gives the step's loss (None outside [start, end) or when off)."""

    def __init__(self, cfg: AnchorConfig, cameras: CameraConfig, resolution: int, total_steps: int,
                 gen: torch.Generator, device: torch.device | str = "cpu"):
        self.cfg, self.gen, self.total = cfg, gen, total_steps
        distance = sum(cameras.distance) / 2
        fovy = sum(cameras.fovy) / 2
        n = len(cfg.azimuths)
        self.cams = [orbit_cameras(torch.tensor([float(a)]), torch.tensor([cfg.elevation]), torch.tensor([distance]),
                                   fovy, resolution).to(device) for a in cfg.azimuths]  # moved once, not a step
        self.first = [self._step(cfg.start) + (self._step(cfg.stagger) if k else 0) for k in range(n)]
        self.targets: list[Tensor | None] = [None] * n
        self.draws = 0
        self.on_draw = None
        """Called as on_draw(k, step, render, target) after anchor k's target is drawn (the run saves both)."""

    def _step(self, fraction: float) -> int:
        return int(round(fraction * self.total))

    @property
    def active(self) -> bool:
        return self.cfg.weight > 0

    def strength_at(self, step: int) -> float:
        """The SDEdit strength of a target drawn at ``step`` (linear from start to end)."""
        a, b = self._step(self.cfg.start), self._step(self.cfg.end)
        u = min(max((step - a) / max(b - a, 1), 0.0), 1.0)
        return self.cfg.strength[0] + (self.cfg.strength[1] - self.cfg.strength[0]) * u

    @torch.no_grad()
    def sdedit(self, prior, prompts, render: Tensor, cams: Cameras, strength: float) -> Tensor:
        """One target: ``render`` [1,H,W,3] noised to t0 = strength·(T-1) with the run's generator, then denoised by
        DDIM with CFG on the view's prompt; an image [1,H,W,3] in [0,1]."""
        ac = prior.alphas_cumprod
        cams = cams.to(prior.device)
        z0 = prior.encode(render.to(prior.device))
        t0 = int(round(strength * (ac.shape[0] - 1)))
        ts = torch.linspace(t0, 0, self.cfg.ddim_steps + 1).round().long().tolist()
        noise = torch.randn(z0.shape, generator=self.gen).to(z0.device, z0.dtype)
        x = add_noise(z0, noise, torch.tensor([t0], device=z0.device), ac)
        for t, t_next in zip(ts[:-1], ts[1:], strict=True):
            eps = guided_eps(prior, x, torch.tensor([t], device=z0.device), prompts, cams, self.cfg.guidance_scale)
            x = ddim_move(x, eps, ac[t], ac[t_next]) if t_next > 0 else x0_hat(x, eps, ac[t])  # the last: to x0
        image = prior.decode(x).clamp(0, 1)
        if image.shape[1:3] != render.shape[1:3]:  # the prior's own size (the render is resized in encode)
            image = F.interpolate(image.permute(0, 3, 1, 2), size=tuple(render.shape[1:3]), mode="bilinear",
                                  antialias=True, align_corners=False).permute(0, 2, 3, 1)
        return image.to(render.device)

    def term(self, scene, prior, prompts, step: int, background: Tensor) -> Tensor | None:
        """The anchor loss of ``step`` (drawing the targets that are due first), or None."""
        if not self.active or not self._step(self.cfg.start) <= step < self._step(self.cfg.end):
            return None
        for k, cam in enumerate(self.cams):
            due = step >= self.first[k] and (self.targets[k] is None or (step - self.first[k]) % self.cfg.every == 0)
            if due:
                with torch.no_grad():
                    render = scene.render(cam, background).rgb
                self.targets[k] = self.sdedit(prior, prompts, render, cam, self.strength_at(step))
                self.draws += 1
                if self.on_draw is not None:
                    self.on_draw(k, step, render, self.targets[k])
        live = [k for k, t in enumerate(self.targets) if t is not None]
        if not live:
            return None
        k = live[step % len(live)]
        out = scene.render(self.cams[k], background)
        return self.cfg.weight * ((out.rgb - self.targets[k]) ** 2).mean()

    def state_dict(self) -> dict[str, Tensor]:
        return {f"target_{k}": t for k, t in enumerate(self.targets) if t is not None}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for k in range(len(self.targets)):
            self.targets[k] = state.get(f"target_{k}")


__all__ = ["AnchorConfig", "Anchors"]
