"""The Scene protocol, RenderOutput and backgrounds shared by every renderer.

Renders are channels-last: rgb [C,H,W,3] in [0,1] (display-referred sRGB-like values, what the prior sees),
alpha [C,H,W,1] in [0,1].

Beside ``Scene``, the abilities a scene may declare (foundation/abilities.py: a class declares one by subclassing it,
and the main paths check ``declares(scene, Ability)`` once, with a clear error when it is missing):

- ``AlbedoField``: ``query_albedo(x)``, display-referred colour at points (export's bake without materials).
- ``SurfaceColour``: ``surface_colour(x, n)``, the colour a view along −n sees at surface points (the bake prefers
  it to ``query_albedo`` where a point query is not what the renderer composites: splats).
- ``DensityField``: also ``query_density(x)``, ``field_kind``, ``bound`` (export's marching cubes, mesh init_from).
- ``MeshSource``: ``export_mesh()``, its own triangle mesh (export without marching cubes).
- ``PBRMaterial``: ``query_material(x, uv)``, ``uv_material`` (export's bake of albedo, ORM and normals).
- ``GaussianSplats``: ``export_tensors()``, the splats (``--format ply`` and the default formats).
- ``Relightable``: ``relightable``, ``cfg.eval_shading`` (evaluation against the shapes world).
- ``OwnOptimizer``: ``attach_optimizer(opt)``, densification edits the optimiser (the training loop).
- ``ConditionRenderer``: ``condition_kinds``, ``render_condition`` (ControlNet / materials-prior wiring).
- ``SceneGroup``: ``scenes``, several scenes trained together (export, wiring, evaluation).
"""

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from foundation.abilities import declares
from foundation.cameras import Cameras


@dataclass
class RenderOutput:
    """What every Scene.render returns. Optional maps are None when a renderer cannot produce them."""

    rgb: Tensor  # [C,H,W,3], composited over the background
    alpha: Tensor  # [C,H,W,1]
    depth: Tensor | None = None  # [C,H,W,1], expected ray distance where alpha > 0
    normal: Tensor | None = None  # [C,H,W,3], world-space unit normals (zero where empty)
    albedo: Tensor | None = None  # [C,H,W,3]
    roughness: Tensor | None = None  # [C,H,W,1]
    metallic: Tensor | None = None  # [C,H,W,1]
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rgb.ndim != 4 or self.rgb.shape[-1] != 3:
            raise ValueError(f"RenderOutput.rgb must be [C,H,W,3], got {tuple(self.rgb.shape)}")
        if self.alpha.shape != self.rgb.shape[:-1] + (1,):
            raise ValueError(f"RenderOutput.alpha must be {tuple(self.rgb.shape[:-1]) + (1,)}, "
                             f"got {tuple(self.alpha.shape)}")


@runtime_checkable
class Scene(Protocol):
    """A 3D representation together with its differentiable renderer (style.md §4.1)."""

    def render(self, cams: Cameras, background: Tensor) -> RenderOutput:
        """Render ``cams``; ``background`` is [C,H,W,3] (or broadcastable) in [0,1]."""
        ...

    def param_groups(self) -> dict[str, dict]:
        """Optimiser groups by name: {name: {"params": [...], "lr": float, ...}}."""
        ...

    def regularizers(self, out: RenderOutput, step: int, weights: Mapping[str, float] | None = None
                     ) -> dict[str, Tensor]:
        """Named scalar regulariser terms for this step (weights are applied by the training loop). ``weights`` are
        the run's; a scene may leave out a term whose weight there is 0 instead of computing it."""
        ...

    def after_step(self, step: int, out: RenderOutput) -> None:
        """Structural updates after the optimiser step (densify, prune, occupancy refresh); may be a no-op."""
        ...

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: dict[str, Tensor]) -> Any: ...

    @property
    def regularizer_weights(self) -> dict[str, float]:
        """Default weight of every term ``regularizers`` returns, by name (the run's ``regularizers:`` override them;
        the names a run may set are its renderer config's ``REGULARIZERS``)."""
        ...


# ---- abilities (module docstring) ----------------------------------------------------------------------------------
class AlbedoField(Protocol):
    """Colour at world points, for baking textures of scenes without a material model."""

    @abstractmethod
    def query_albedo(self, x: Tensor) -> Tensor:
        """Display-referred albedo [N,3] in [0,1] at points ``x`` [N,3]."""


class SurfaceColour(Protocol):
    """Colour as the renderer composites it at a surface, for scenes whose point query is not what a view shows (3D
    Gaussians: faint splats around and inside the surface enter a density-weighted mean but are seen through)."""

    @abstractmethod
    def surface_colour(self, x: Tensor, n: Tensor) -> Tensor:
        """Display-referred colour [N,3] in [0,1] a view along −n sees at surface points ``x`` [N,3] (outward unit
        normals ``n`` [N,3])."""


class DensityField(AlbedoField, Protocol):
    """A volumetric field a surface can be extracted from (engine/export/mesh.py, renderers/mesh.py init_from)."""

    field_kind: ClassVar[str] = "density"
    """"density": volumetric sigma (1/m, NeRF); "opacity": unitless summed splat opacity (3D Gaussians)."""
    bound: float = 1.0
    """Half-size of the cube [-bound, bound]^3 the field lives in (where it is sampled)."""

    @abstractmethod
    def query_density(self, x: Tensor) -> Tensor:
        """Density (or opacity, see ``field_kind``) [N] at points ``x`` [N,3], larger inside."""


class MeshSource(Protocol):
    """A scene that is a triangle mesh: export writes it as it is (no marching cubes)."""

    @abstractmethod
    def export_mesh(self) -> dict[str, Tensor]:
        """{"vertices" [V,3], "faces" [F,3], optional "uv" [V,2] (glTF convention) and "normals" [V,3]}."""


class PBRMaterial(Protocol):
    """A scene with a PBR material model: the bake reads its albedo, roughness, metallic and normals."""

    uv_material: bool = False
    """True when the material lives in the mesh's own UV space (the bake then queries it by ``uv``)."""

    @abstractmethod
    def query_material(self, x: Tensor, uv: Tensor | None = None) -> dict[str, Tensor]:
        """{"albedo" (linear) [N,3], "roughness" [N], "metallic" [N], optional "occlusion" [N], "normal" [N,3]}."""


class GaussianSplats(Protocol):
    """A 3D Gaussian splat scene: the tensors of the INRIA PLY layout (renderers/ply.py)."""

    @abstractmethod
    def export_tensors(self) -> dict[str, Tensor]:
        """{"means", "log_scales", "quats", "opacity_logits", "sh_dc", optional "sh_rest"}."""


class Relightable(Protocol):
    """A scene whose albedo carries no lighting (the PBR mesh): evaluation against the shapes world lights it like
    the ground truth by setting ``cfg.eval_shading = "shapes"`` meanwhile (engine/outputs.py ground_truth_light)."""

    relightable: bool = True
    """An instance may turn this off to be evaluated as it renders."""
    cfg: Any
    """Its config, with an ``eval_shading`` field."""


class OptionalNormals(Protocol):
    """A scene whose normal map costs extra work outside training (the NeRF's density gradient, about half of an
    evaluation render): ``eval_normals`` off skips it where only colour and alpha are used (engine/outputs.py
    ``render_views``: previews, the turntable, the evaluation). Shading that needs normals still computes them."""

    eval_normals: bool = True


class OwnOptimizer(Protocol):
    """A scene whose structural updates (densify, prune) edit the optimiser's state: the loop hands it over once."""

    @abstractmethod
    def attach_optimizer(self, optimizer: Any) -> None: ...


class ConditionRenderer(Protocol):
    """A scene that renders per-view condition images into ``extras["control"]`` for a prior that takes them."""

    condition_kinds: ClassVar[tuple[str, ...]] = ()
    """The condition layouts it can render (a prior's ``condition_kind``, guidance/priors/base.py)."""
    render_condition: bool | str
    """False, or the kind to render with each training view (set by the training loop)."""


class SceneGroup(Protocol):
    """Several scenes trained together (VSD particles, renderers/particles.py); export uses the first."""

    scenes: Any
    """The member scenes, a non-empty sequence."""


def scenes_of(scene) -> list:
    """The member scenes of a ``SceneGroup``, else ``[scene]``."""
    return list(scene.scenes) if declares(scene, SceneGroup) else [scene]


@dataclass
class BackgroundConfig:
    """Background behind the object: a solid colour, a random colour per step, or a learned colour; the first and
    the last optionally replaced by a random colour on a share of the training renders (``augment``)."""

    kind: str = "solid"
    """One of "solid", "random", "learned"."""
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Solid (and initial learned) colour in [0,1]."""
    augment: float = 0.0
    """"solid" and "learned": the share of training renders whose background is replaced by a uniform random colour
    (LucidDreamer's ``bg_aug_ratio``, which the ISM family's recipes use). A half-transparent object then shows a
    different colour behind it from step to step, which the prior does not accept as a lighter object."""

    def __post_init__(self) -> None:
        if self.kind not in ("solid", "random", "learned"):
            raise ValueError(f"background.kind must be solid, random or learned, got {self.kind!r}")
        if not 0.0 <= self.augment <= 1.0:
            raise ValueError(f"background.augment must be in [0, 1], got {self.augment}")


class Background(nn.Module):
    """Produces the [C,H,W,3] background for a step; random colours come from the run's generator."""

    def __init__(self, cfg: BackgroundConfig):
        super().__init__()
        self.cfg = cfg
        init = torch.tensor(cfg.color, dtype=torch.float32).clamp(1e-3, 1 - 1e-3)
        self.logit = nn.Parameter(torch.logit(init), requires_grad=cfg.kind == "learned")

    def forward(self, cams: Cameras, gen: torch.Generator | None = None, training: bool = True) -> Tensor:
        C, H, W = len(cams), cams.height, cams.width
        from foundation.device import to_device  # pinned copy: no host sync on a GPU
        if self.cfg.kind == "random" and training:
            col = to_device(torch.rand(C, 1, 1, 3, generator=gen), cams.device)
        else:
            col = torch.sigmoid(self.logit).to(cams.device).view(1, 1, 1, 3).expand(C, 1, 1, 3)
            if self.cfg.augment > 0 and training:
                rand = torch.rand(C, 1, 1, 3, generator=gen)
                pick = torch.rand(C, 1, 1, 1, generator=gen) < self.cfg.augment
                col = torch.where(to_device(pick, cams.device), to_device(rand, cams.device), col)
        return col.expand(C, H, W, 3)

    def param_groups(self, lr: float = 1e-3) -> dict[str, dict]:
        return {"background": {"params": [self.logit], "lr": lr}} if self.cfg.kind == "learned" else {}


def composite(rgb: Tensor, alpha: Tensor, background: Tensor) -> Tensor:
    """Premultiplied ``rgb`` [...,3] plus (1 - alpha) times ``background``."""
    return rgb + (1.0 - alpha) * background


MULTINOMIAL_MAX = 1 << 24
"""torch.multinomial's largest number of categories."""


def draw_by_weight(weights: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """``k`` indices drawn with replacement with probability ∝ ``weights`` [N] (non-negative, positive sum), from the
    CPU generator ``gen``, as a CPU tensor: torch.multinomial up to its MULTINOMIAL_MAX categories, beyond it (a large
    GPU render's samples) the inverse of the weights' cumulative sum at k uniform draws."""
    w = weights.detach().float().clamp_min(0).cpu()
    if w.shape[0] <= MULTINOMIAL_MAX:
        return torch.multinomial(w, k, replacement=True, generator=gen)
    cdf = torch.cumsum(w.double(), 0)
    u = torch.rand(k, generator=gen, dtype=torch.float64) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_max(w.shape[0] - 1)

