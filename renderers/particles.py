"""Particles: N independently initialised scenes behind one Scene (VSD's particles, ProlificDreamer §3.2).

Camera i of a batch is rendered by particle i % N, so a camera batch of size k N gives every particle k views per
step. Parameter groups are merged with a "p<i>." name prefix, regulariser terms are averaged over the particles that
rendered (each keeps its own term, so the loop's weights still apply), ``after_step`` is forwarded with each
particle's own slice of the render, and the state dict nests each particle's under "p<i>.".
"""

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from foundation.abilities import declares
from foundation.cameras import Cameras
from renderers.base import OwnOptimizer, RenderOutput, SceneGroup


def _rows(out: RenderOutput, idx: Tensor) -> RenderOutput:
    """The rows ``idx`` of every tensor field of a RenderOutput (extras: tensors with the batch dim only)."""
    n = out.rgb.shape[0]
    pick = lambda v: v[idx] if isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == n else v  # noqa: E731
    return RenderOutput(rgb=out.rgb[idx], alpha=out.alpha[idx],
                        **{k: pick(getattr(out, k)) for k in ("depth", "normal", "albedo", "roughness", "metallic")},
                        extras={k: pick(v) for k, v in out.extras.items()})


class Particles(SceneGroup, OwnOptimizer):
    """A Scene made of N scenes; camera i is rendered by scene i % N (a ``SceneGroup``: export, evaluation and the
    condition wiring look at its members)."""

    def __init__(self, scenes: list):
        if not scenes:
            raise ValueError("Particles needs at least one scene")
        self.scenes = list(scenes)
        self._last: list[tuple[int, Tensor, RenderOutput]] = []

    def __len__(self) -> int:
        return len(self.scenes)

    @property
    def regularizer_weights(self) -> dict[str, float]:
        return dict(self.scenes[0].regularizer_weights)

    def _assignment(self, n_cams: int) -> list[tuple[int, Tensor]]:
        N = len(self.scenes)
        return [(p, torch.arange(p, n_cams, N)) for p in range(min(N, n_cams))]

    def render(self, cams: Cameras, background: Tensor) -> RenderOutput:
        """Render camera i with particle i % N and reassemble the batch in camera order."""
        C = len(cams)
        bg = background.expand(C, *background.shape[1:]) if background.shape[0] == 1 else background
        parts = []
        for p, idx in self._assignment(C):
            sub = Cameras(cams.c2w[idx], cams.fovy[idx], cams.width, cams.height, cams.azimuth[idx],
                          cams.elevation[idx], cams.distance[idx])
            parts.append((p, idx, self.scenes[p].render(sub, bg[idx.to(bg.device)])))
        self._last = parts
        if len(parts) == 1:
            return parts[0][2]
        order = torch.cat([idx for _, idx, _ in parts]).argsort()

        def merge(name):
            vals = [getattr(o, name) for _, _, o in parts]
            return None if any(v is None for v in vals) else torch.cat(vals)[order.to(vals[0].device)]
        extras = {}
        for k in parts[0][2].extras:
            vals = [o.extras.get(k) for _, _, o in parts]
            if all(isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == len(i) for v, (_, i, _) in zip(vals, parts)):
                extras[k] = torch.cat(vals)[order.to(vals[0].device)]
        return RenderOutput(rgb=merge("rgb"), alpha=merge("alpha"), depth=merge("depth"), normal=merge("normal"),
                            albedo=merge("albedo"), roughness=merge("roughness"), metallic=merge("metallic"),
                            extras={**extras, "particles": [(p, o) for p, _, o in parts]})

    def _outputs(self, out: RenderOutput) -> list[tuple[int, RenderOutput]]:
        if "particles" in out.extras:
            return out.extras["particles"]
        if len(self._last) == 1:
            return [(self._last[0][0], out)]
        return [(p, _rows(out, idx)) for p, idx, _ in self._last]

    def param_groups(self) -> dict[str, dict]:
        groups = {}
        for i, s in enumerate(self.scenes):
            for name, g in s.param_groups().items():
                groups[f"p{i}.{name}"] = g
        return groups

    def regularizers(self, out: RenderOutput, step: int, weights: Mapping[str, float] | None = None
                     ) -> dict[str, Tensor]:
        """Each named term averaged over the particles that rendered this step."""
        sums: dict[str, list[Tensor]] = {}
        for p, o in self._outputs(out):
            for k, v in self.scenes[p].regularizers(o, step, weights).items():
                sums.setdefault(k, []).append(v)
        return {k: torch.stack(v).mean() for k, v in sums.items()}

    def after_step(self, step: int, out: RenderOutput) -> None:
        for p, o in self._outputs(out):
            self.scenes[p].after_step(step, o)

    def attach_optimizer(self, opt) -> None:
        """Forward the optimiser to particles that restructure their parameters (densification)."""
        for i, s in enumerate(self.scenes):
            if declares(s, OwnOptimizer):
                s.attach_optimizer(_PrefixedOptimizer(opt, f"p{i}."))

    def state_dict(self) -> dict[str, Tensor]:
        out = {}
        for i, s in enumerate(self.scenes):
            out.update({f"p{i}.{k}": v for k, v in s.state_dict().items()})
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> Any:
        for i, s in enumerate(self.scenes):
            prefix = f"p{i}."
            s.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def to(self, device) -> "Particles":
        for s in self.scenes:
            if isinstance(s, torch.nn.Module):
                s.to(device)
        return self


class _PrefixedOptimizer:
    """A view of the run's optimiser in which one particle sees its own groups under their unprefixed names."""

    def __init__(self, opt, prefix: str):
        self._opt, self._prefix = opt, prefix

    @property
    def param_groups(self):
        return [g for g in self._opt.param_groups if str(g.get("name", "")).startswith(self._prefix)]

    @property
    def state(self):
        return self._opt.state

    def __getattr__(self, name):
        return getattr(self._opt, name)
