"""The built-in shapes prior: an exemplar prior over renders of the shapes world (foundation/shapes.py).

Exemplar views: azimuth every 10 degrees x elevation {0, 10, 20, 30, 40} at distance 2.5 m with a 40 degree
vertical field of view, the orbit the "shapes" preset trains on: 180 views of each of the 5 shapes in each of the 6
colours (5400 exemplars, 64x64 by default). The colour-independent shape renders are cached on disk
(<cache_dir>/shapes/), so only the first run pays for ray casting (a few seconds).
"""

import math
import os

import torch

from foundation import shapes
from foundation.cameras import Cameras, orbit_cameras
from guidance.priors.base import Cond, ConditionedPrior, PriorContext, PriorError
from guidance.priors.exemplar import MASKED, ExemplarPrior

AZIMUTH_STEP = 10.0
ELEVATIONS = (0.0, 10.0, 20.0, 30.0, 40.0)
DISTANCE = 2.5
FOVY = 40.0
CACHE_VERSION = 1


def exemplar_cameras(resolution: int):
    """The exemplar orbit: every azimuth step at every elevation."""
    az = torch.arange(0.0, 360.0, AZIMUTH_STEP)
    az, el = torch.meshgrid(az, torch.tensor(ELEVATIONS), indexing="ij")
    az = (az.reshape(-1) + 180.0) % 360.0 - 180.0
    return orbit_cameras(az, el.reshape(-1), DISTANCE, FOVY, resolution)


def _shape_renders(shape: str, resolution: int, cache: str) -> shapes.ShapeRender:
    path = os.path.join(cache, "shapes", f"v{CACHE_VERSION}-{shape}-{resolution}.pt")
    if os.path.exists(path):
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, never pickles
            return shapes.ShapeRender(d["coverage"].float(), d["shaded"].float())
        except Exception:  # a truncated cache file is rebuilt, never trusted
            pass
    r = shapes.render_shape(shape, exemplar_cameras(resolution))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save({"coverage": r.coverage.half(), "shaded": r.shaded.half()}, tmp)
    os.replace(tmp, path)
    return r


class ShapesPrior(ExemplarPrior):
    """Exemplar prior over every (colour, shape) of the shapes world, tagged with its colour and shape words."""

    def __init__(self, cfg, device="cpu"):
        from guidance.priors.config import cache_dir
        res = cfg.resolution or 64
        cams = exemplar_cameras(res)
        images, dirs, tags = [], [], []
        for shape in shapes.SHAPES:
            r = _shape_renders(shape, res, cache_dir(cfg))
            for colour in shapes.COLOURS:
                images.append(r.colourise(colour).permute(0, 3, 1, 2) * 2 - 1)
                dirs.append(cams.position)
                tags += [(colour, shape)] * len(cams)
        super().__init__(torch.cat(images), torch.cat(dirs), tags, cfg.kappa, device, name="shapes",
                         data_sigma=cfg.data_sigma)

    def log_prior(self, prompt: str):
        if prompt.strip():
            try:  # one colour and one shape at most, with the world's own error message
                shapes.parse_prompt(prompt)
            except ValueError as e:
                raise PriorError(str(e)) from None
        return super().log_prior(prompt)


# -- light-aware mode (DreamMat's idea on the shapes world) -----------------------------------------------------------
LIGHT_AWARE = "shapes-light"
"""The prior name of the light-aware mode (the `engine texture` preset's prior; ``build_prior`` builds it for the
run's context: the mesh renderer's environments and rotations, the prompt's shape)."""
LIGHT_AZIMUTH_STEP = 30.0
LIGHT_ELEVATIONS = (-40.0, -20.0, 0.0, 20.0, 40.0)
EXEMPLAR_ROUGHNESS = 0.7


def lighting_word(env: str, rotation_index: int) -> str:
    """The vocabulary word naming one (environment, rotation) condition, e.g. "env-studio-r1"."""
    return f"env-{os.path.splitext(os.path.basename(env))[0]}-r{rotation_index}"


class LightAwareShapesPrior(ExemplarPrior, ConditionedPrior):
    """Shapes-world exemplars rendered by the mesh renderer itself (renderers/reference.py
    ``render_constant_material``) under the procedural environments, each tagged with its colour, shape and
    lighting word (``lighting_word``).

    The exemplar material is a constant dielectric (the world's albedo, roughness 0.7, metallic 0), rendered
    under every environment in ``envs`` at ``rotations`` evenly spaced rotations about +Y, from azimuth every 30
    degrees x elevation {-40, -20, 0, 20, 40} at 2.5 m / 40 degrees (the texture preset trains on exactly these
    views). Rendered by the training renderer's own path and placed as it places a user's mesh (``object_size``),
    a training render of the true material is its exemplar to float rounding, so the truth is a fixed point of the
    guidance: with the earlier supersampled reference renders and the primitive at its own size, a blue torus
    scaled to 0.8 m was pulled lighter (0.196 chromaticity). A prompt carrying a lighting word selects the
    exemplars lit that way, so the guidance is *conditioned on the environment the render used*, as DreamMat's
    ControlNet is: the only albedo that matches every lit exemplar is the unshaded one, so shading cannot be baked
    into it. ``shapes`` restricts the world to the shapes needed (rendering is the cost: ~2 s per shape x lighting
    at 64 px, one thread).
    The default ``ShapesPrior`` is unchanged.

    The lighting reaches the prior in one of two ways: a lighting word in the prompt, or, in the training loop, as
    the per-view condition the mesh scene renders with each view (``condition_kind`` "lighting": [B,2] = (index in
    ``envs``, rotation index), renderers/mesh.py ``lighting_condition``); each row then keeps only the exemplars lit
    as its own view was, in the conditional and the unconditional branch alike (as a ControlNet's condition).
    """

    takes_condition = True
    condition_kind = "lighting"

    @classmethod
    def for_run(cls, cfg, context: PriorContext, device="cpu") -> "LightAwareShapesPrior":
        """The prior a run needs: exemplars lit under the run's training environments and rotations, of the
        prompt's shape only (all five without one). PriorError when the run's renders have no lighting conditions."""
        if context.env_rotations <= 0 or not context.envs:
            raise PriorError(f"prior {LIGHT_AWARE} needs --renderer mesh with renderer.env-rotations > 0 (as engine "
                             f"texture sets them)")
        try:
            _, shape = shapes.parse_prompt(context.prompt)
        except ValueError as e:
            raise PriorError(str(e)) from None
        return cls(cfg, tuple(context.envs), context.env_rotations, (shape,) if shape else None, device,
                   object_size=context.object_size)

    def __init__(self, cfg, envs=("studio", "sky", "rgb", "sunset"), rotations: int = 4,
                 shapes_subset: tuple[str, ...] | None = None, device="cpu", object_size: float = 0.0):
        from foundation.meshio import normalise_placement
        from renderers.pbr import srgb_to_linear
        from renderers.reference import primitive_mesh, render_constant_material

        res = cfg.resolution or 64
        az = torch.arange(0.0, 360.0, LIGHT_AZIMUTH_STEP)
        az, el = torch.meshgrid(az, torch.tensor(LIGHT_ELEVATIONS), indexing="ij")
        cams = orbit_cameras((az.reshape(-1) + 180.0) % 360.0 - 180.0, el.reshape(-1), DISTANCE, FOVY, res)
        images, dirs, tags = [], [], []
        self.envs, self.rotations = tuple(envs), rotations
        albedos = srgb_to_linear(shapes.ALBEDO)
        for shape in shapes_subset or shapes.SHAPES:
            v, f = primitive_mesh(shape)
            if object_size > 0:  # placed as the renderer places a user's mesh (bounding box centred, longest side)
                v = torch.from_numpy(normalise_placement(v.double().numpy(), object_size)[0])
            for env in envs:
                for k in range(rotations):
                    r = render_constant_material(v, f, cams, env, 2 * math.pi * k / rotations, albedos,
                                                 EXEMPLAR_ROUGHNESS)
                    for colour, img in zip(shapes.COLOURS, r):
                        images.append(img.permute(0, 3, 1, 2) * 2 - 1)
                        dirs.append(cams.position)
                        tags += [(colour, shape, lighting_word(env, k))] * len(cams)
        super().__init__(torch.cat(images), torch.cat(dirs), tags, cfg.kappa, device, name="shapes-light",
                         data_sigma=cfg.data_sigma)
        words = [lighting_word(env, k) for env in self.envs for k in range(rotations)]
        self.light_index = torch.tensor([next(words.index(w) for w in t if w.startswith("env-")) for t in tags],
                                        device=self.device)

    def condition(self, cams: Cameras | None, batch: int) -> None:
        """No condition images: the lighting acts on the exemplar weights (``denoise``)."""
        return None

    def lighting_log_prior(self, cams: Cameras | None, batch: int) -> torch.Tensor | None:
        """[B,N] 0 for the exemplars lit like each row's view, MASKED elsewhere; None without a lighting condition."""
        cond = None if cams is None else cams.condition
        if cond is None:
            return None
        if cond.shape != (batch, 2):
            raise PriorError(f"the light-aware shapes prior takes a [B,2] lighting condition, got {tuple(cond.shape)}")
        row = cond[:, 0].round().long() * self.rotations + cond[:, 1].round().long()
        match = self.light_index[None, :] == row.to(self.device)[:, None]
        return torch.where(match, 0.0, MASKED)

    def denoise(self, x_t, t, cond: Cond, cams: Cameras | None = None):
        """The exemplar posterior mean, each row restricted to the exemplars lit like its view (the lighting joins the
        prompt's log prior before the active exemplars are chosen, so the others cost nothing)."""
        light = self.lighting_log_prior(cams, x_t.shape[0])
        if light is not None:
            cond = Cond({**cond.tensors, "log_prior": cond.tensors["log_prior"].to(self.device) + light})
        return super().denoise(x_t, t, cond, cams)

    def log_prior(self, prompt: str):
        if prompt.strip():
            try:
                shapes.parse_prompt(prompt)
            except ValueError as e:
                raise PriorError(str(e)) from None
        return super().log_prior(prompt)
