"""The built-in shapes prior: an exemplar prior over renders of the shapes world (engine/shapes.py).

Exemplar views: azimuth every 10 degrees x elevation {0, 10, 20, 30, 40} at distance 2.5 m with a 40 degree
vertical field of view, the orbit the "shapes" preset trains on: 180 views of each of the 5 shapes in each of the 6
colours (5400 exemplars, 64x64 by default). The colour-independent shape renders are cached on disk
(<cache_dir>/shapes/), so only the first run pays for ray casting (a few seconds).
"""

import os

import torch

from engine import shapes
from engine.cameras import orbit_cameras
from guidance.priors.base import PriorError
from guidance.priors.exemplar import ExemplarPrior

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
            d = torch.load(path)
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
        from guidance.priors import cache_dir
        res = cfg.resolution or 64
        cams = exemplar_cameras(res)
        images, dirs, tags = [], [], []
        for shape in shapes.SHAPES:
            r = _shape_renders(shape, res, cache_dir(cfg))
            for colour in shapes.COLOURS:
                images.append(r.colourise(colour).permute(0, 3, 1, 2) * 2 - 1)
                dirs.append(cams.position)
                tags += [(colour, shape)] * len(cams)
        super().__init__(torch.cat(images), torch.cat(dirs), tags, cfg.kappa, device, name="shapes")

    def log_prior(self, prompt: str):
        if prompt.strip():
            try:  # one colour and one shape at most, with the world's own error message
                shapes.parse_prompt(prompt)
            except ValueError as e:
                raise PriorError(str(e)) from None
        return super().log_prior(prompt)
