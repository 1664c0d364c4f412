"""Backend switch for every op with a torch and a CUDA implementation (style.md §4.3).

- ``resolve_backend("auto"|"torch"|"cuda")`` is called once when a renderer is built; the resolved name is
  stored in the renderer's config and passed to every dispatch function below.
- Each op family has ``<op>_torch.py`` (the readable reference, runs anywhere) and ``<op>_cuda.py`` (imported
  lazily, only once CUDA is known to be present). Dispatch functions validate shapes and dtypes first.

Op families:
- volume rendering (``volume_torch`` / ``volume_cuda``): ``sample_rays``, ``render_weights``,
  ``accumulate_along_rays``.
- Gaussian splatting (``splat_torch`` / ``splat_cuda``): ``splat``.
- mesh rasterisation (``raster_torch`` / ``raster_cuda`` = nvdiffrast, dispatched in ``raster.py``):
  ``rasterize``, ``interpolate``, ``texture``, ``antialias``, with ``resolve_raster_backend``.
"""

import functools
import os

import torch
from jaxtyping import Float
from torch import Tensor

from foundation import backend as backend_rule
from renderers.kernels import splat_torch, volume_torch
from renderers.kernels.splat_torch import SplatResult
from renderers.kernels.volume_torch import OccupancyGrid, RaySamples

BACKENDS = ("auto", "torch", "cuda")
ENV_VAR = "ENGINE_BACKEND"
"""When set (to torch, cuda or auto), overrides the backend requested in the config; for debugging."""


@functools.cache
def _cuda_unavailable_reason(library: str = "nerfacc") -> str | None:
    """None when CUDA is present and ``library``'s kernels build and run, else why not (renderers/kernels/probe.py:
    one real compile and tiny op per library, in a child process under a timeout, stale build locks cleared)."""
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    from renderers.kernels.probe import probe  # noqa: PLC0415

    result = probe(library)
    return None if result.ok else f"{library}'s CUDA kernels are unusable: {result.message}"


_warn_fallback = backend_rule._warn_once
"""The shared once-per-message warning of foundation.backend (tests clear it to see the warning again)."""


def resolve_backend(name: str = "auto", device: torch.device | str | None = None, library: str = "nerfacc") -> str:
    """Resolve a requested backend to "torch" or "cuda" for a scene on ``device`` using ``library``'s kernels, by
    the one rule of foundation.backend.resolve.

    "auto" picks cuda when a GPU is present and ``library`` (nerfacc for volume rendering, gsplat for splatting)
    builds and runs, and otherwise torch (warning once); "cuda" without them raises CudaUnavailable (a RuntimeError).
    A scene on a non-CUDA ``device`` renders with torch: "auto" then needs no probe and no warning (the device was
    resolved already, by the same rule, in engine.train), and an explicit "cuda" is still checked against the
    machine, then served by torch for that scene (a GPU run's saved config rebuilt on the CPU for export or a mesh's
    init-from). The ``ENGINE_BACKEND`` environment variable, when set, replaces ``name``.
    """
    name = os.environ.get(ENV_VAR) or name
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    on_cuda = device is None or torch.device(device).type == "cuda"
    if name == "auto" and not on_cuda:
        return "torch"
    cuda = backend_rule.resolve(name, lambda: _cuda_unavailable_reason(library), what="backend", fallback="torch")
    return "cuda" if cuda and on_cuda else "torch"


def _check_rays(rays_o: Tensor, rays_d: Tensor) -> None:
    if rays_o.ndim != 2 or rays_o.shape[-1] != 3:
        raise ValueError(f"rays_o must be [R,3], got {tuple(rays_o.shape)}")
    if rays_d.shape != rays_o.shape:
        raise ValueError(f"rays_d must match rays_o {tuple(rays_o.shape)}, got {tuple(rays_d.shape)}")
    if not (rays_o.is_floating_point() and rays_d.dtype == rays_o.dtype):
        raise ValueError(f"rays must share one floating dtype, got {rays_o.dtype} and {rays_d.dtype}")


def sample_rays(backend: str, rays_o: Float[Tensor, "R 3"], rays_d: Float[Tensor, "R 3"], *, radius: float,
                n_samples: int, n_importance: int, occupancy: OccupancyGrid | None, density_fn,
                gen: torch.Generator | None, cuda_step_size: float) -> RaySamples:
    """Samples along rays inside [−radius, radius]³, packed (see ``volume_torch.RaySamples``).

    torch: ``n_samples`` stratified samples per ray between the bbox entry and exit, plus ``n_importance``
    hierarchical ones, skipping cells the occupancy grid marks empty. cuda: nerfacc's occupancy-grid marcher at
    ``cuda_step_size`` (needs ``occupancy``). ``gen`` drives the jitter (None: deterministic, for evaluation);
    ``density_fn`` maps points [N,3] to σ [N] and is called without grad.
    """
    _check_rays(rays_o, rays_d)
    if n_samples < 1 or n_importance < 0:
        raise ValueError(f"need n_samples >= 1 and n_importance >= 0, got {n_samples} and {n_importance}")
    match backend:
        case "torch":
            return volume_torch.sample_rays(rays_o, rays_d, radius, n_samples, n_importance, occupancy,
                                            density_fn, gen)
        case "cuda":
            from renderers.kernels import volume_cuda  # noqa: PLC0415

            if occupancy is None:
                raise ValueError("the cuda backend samples through an occupancy grid; pass one")
            jitter = None if gen is None else torch.rand(rays_o.shape[0], generator=gen).to(rays_o)
            return volume_cuda.sample_rays(rays_o, rays_d, occupancy, cuda_step_size, density_fn, jitter)
        case _:
            raise ValueError(f"unknown backend {backend!r}; resolve it with resolve_backend() first")


def render_weights(backend: str, samples: RaySamples, sigmas: Float[Tensor, "M"]) -> Float[Tensor, "M"]:
    """Compositing weights w_i = T_i (1 − exp(−σ_i δ_i)), T_i = exp(−Σ_{j<i} σ_j δ_j), one per sample."""
    if sigmas.shape != (len(samples),):
        raise ValueError(f"sigmas must be [{len(samples)}] (one per sample), got {tuple(sigmas.shape)}")
    if sigmas.dtype != samples.t_starts.dtype:
        raise ValueError(f"sigmas dtype {sigmas.dtype} differs from the samples' {samples.t_starts.dtype}")
    match backend:
        case "torch":
            return volume_torch.render_weights(samples, sigmas)
        case "cuda":
            from renderers.kernels import volume_cuda  # noqa: PLC0415

            return volume_cuda.render_weights(samples, sigmas)
        case _:
            raise ValueError(f"unknown backend {backend!r}; resolve it with resolve_backend() first")


def accumulate_along_rays(backend: str, samples: RaySamples, weights: Float[Tensor, "M"],
                          values: Float[Tensor, "M D"] | None = None) -> Float[Tensor, "R D"]:
    """Per-ray sums Σ_i w_i v_i ([R,D]); Σ_i w_i ([R,1]) when ``values`` is None."""
    if weights.shape != (len(samples),):
        raise ValueError(f"weights must be [{len(samples)}] (one per sample), got {tuple(weights.shape)}")
    if values is not None and (values.ndim != 2 or values.shape[0] != len(samples)):
        raise ValueError(f"values must be [{len(samples)},D] (one row per sample), got {tuple(values.shape)}")
    match backend:
        case "torch":
            return volume_torch.accumulate(samples, weights, values)
        case "cuda":
            from renderers.kernels import volume_cuda  # noqa: PLC0415

            return volume_cuda.accumulate(samples, weights, values)
        case _:
            raise ValueError(f"unknown backend {backend!r}; resolve it with resolve_backend() first")


def splat(backend: str, means: Float[Tensor, "N 3"], quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"],
          opacities: Float[Tensor, "N"], features: Float[Tensor, "C N D"], viewmats: Float[Tensor, "C 4 4"],
          Ks: Float[Tensor, "C 3 3"], width: int, height: int, **options) -> SplatResult:
    """Project and composite 3D Gaussians into C cameras: premultiplied features [C,H,W,D] and alpha [C,H,W,1].

    ``viewmats`` are OpenCV world-to-camera, ``Ks`` pixel intrinsics, ``scales`` post-exp, ``opacities``
    post-sigmoid, ``features`` post-activation. torch: ``splat_torch.splat_torch`` (tile-culled, autograd
    backward); cuda: ``gsplat.rasterization`` (classic or antialiased, packed=False). ``options``: eps2d, near,
    far, tile_size, antialiased, checkpoint (torch only).
    """
    N = means.shape[0]
    expected = {"means": (means, (N, 3)), "quats": (quats, (N, 4)), "scales": (scales, (N, 3)),
                "opacities": (opacities, (N,)), "viewmats": (viewmats, (viewmats.shape[0], 4, 4)),
                "Ks": (Ks, (viewmats.shape[0], 3, 3))}
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"splat: {name} must be {list(shape)}, got {list(t.shape)}")
    if features.ndim != 3 or features.shape[:2] != (viewmats.shape[0], N):
        raise ValueError(f"splat: features must be [C={viewmats.shape[0]},N={N},D], got {list(features.shape)}")
    if len({t.dtype for t in (means, quats, scales, opacities, features, viewmats, Ks)}) != 1:
        raise ValueError("splat: all tensors must share one floating dtype")
    match backend:
        case "torch":
            return splat_torch.splat_torch(means, quats, scales, opacities, features, viewmats, Ks, width, height,
                                           **options)
        case "cuda":
            from renderers.kernels import splat_cuda  # noqa: PLC0415

            if not splat_cuda.available():
                raise RuntimeError("the cuda splat backend needs a CUDA device and gsplat's rasterizer")
            return splat_cuda.splat_cuda(means, quats, scales, opacities, features, viewmats, Ks, width, height,
                                         **options)
        case _:
            raise ValueError(f"unknown backend {backend!r}; resolve it with resolve_backend() first")


from renderers.kernels.raster import (  # noqa: E402
    antialias,
    interpolate,
    rasterize,
    resolve_raster_backend,
    texture,
    uv_derivatives,
)

__all__ = ["rasterize", "interpolate", "texture", "uv_derivatives", "antialias", "resolve_raster_backend",
           "BACKENDS", "ENV_VAR", "resolve_backend", "sample_rays", "render_weights", "accumulate_along_rays",
           "RaySamples", "OccupancyGrid", "splat", "SplatResult"]
