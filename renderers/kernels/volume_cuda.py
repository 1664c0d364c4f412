"""Volume rendering on a GPU through nerfacc's CUDA path: occupancy-grid ray marching and packed compositing.

Imported lazily by ``renderers.kernels`` only after ``torch.cuda.is_available()``: importing nerfacc's CUDA
backend JIT-builds the extension on first use (and fails fast on a CPU-only torch, cpu-notes.md §2).

Same maths and the same ``RaySamples`` contract as ``volume_torch``, with two differences:
- samples come from ``OccGridEstimator.sampling`` (marching at a fixed step through occupied cells, with
  early stopping and an α threshold) instead of stratified + hierarchical sampling, so ``n_samples`` and
  ``n_importance`` do not apply; the estimator's occupancy is copied from the renderer's own ``OccupancyGrid``,
  which stays the single source of truth (and the only one in checkpoints);
- weights use nerfacc's packed scans over ``ray_indices``.
"""

from collections.abc import Callable

import torch
from nerfacc import OccGridEstimator, accumulate_along_rays, render_weight_from_density
from torch import Tensor

from renderers.kernels.volume_torch import OccupancyGrid, RaySamples


def check_extension() -> None:
    """Raise ImportError/OSError unless nerfacc's CUDA extension loads (this may JIT-build it once)."""
    from nerfacc.cuda._backend import _C  # noqa: PLC0415  (deliberately lazy)

    if _C is None:
        raise ImportError("nerfacc's CUDA extension is unavailable (no CUDA toolkit found to build it)")


def estimator_for(occupancy: OccupancyGrid) -> OccGridEstimator:
    """An ``OccGridEstimator`` mirroring ``occupancy`` (cached on it, rebuilt if the device changed)."""
    est = getattr(occupancy, "_nerfacc_estimator", None)
    device = occupancy.mask.device
    if est is None or est.binaries.device != device:
        r = occupancy.radius
        est = OccGridEstimator([-r, -r, -r, r, r, r], resolution=occupancy.resolution, levels=1).to(device)
        # A plain attribute, not a submodule: it must not appear in the renderer's state_dict.
        object.__setattr__(occupancy, "_nerfacc_estimator", est)
    # Both grids index cells as [ix, iy, iz] over the same box, so the mask copies over as is.
    est.binaries = occupancy.mask[None].clone()
    est.occs = occupancy.occ.reshape(-1).clone()
    return est


def sample_rays(rays_o: Tensor, rays_d: Tensor, occupancy: OccupancyGrid, step_size: float,
                density_fn: Callable[[Tensor], Tensor] | None, jitter: Tensor | None,
                early_stop_eps: float = 1e-4, alpha_thre: float = 0.0) -> RaySamples:
    """March rays through occupied cells at ``step_size``; ``jitter`` [R] in [0,1) offsets each ray's start.

    Samples behind T < ``early_stop_eps`` are dropped. ``alpha_thre`` stays 0 by default, as the torch sampler
    drops no sample for its α: at a 5 mm step, threestudio's 0.01 would drop every sample with σ < 2, i.e. most
    of the initial soft blob.
    """
    est = estimator_for(occupancy)

    def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
        with torch.no_grad():
            x = rays_o[ray_indices] + 0.5 * (t_starts + t_ends)[:, None] * rays_d[ray_indices]
            return density_fn(x)

    # Our own jitter (from the run's generator) instead of nerfacc's `stratified`, which draws from the global RNG.
    t_min = None if jitter is None else jitter * step_size
    ray_indices, t_starts, t_ends = est.sampling(
        rays_o, rays_d, sigma_fn=None if density_fn is None else sigma_fn, near_plane=0.0, t_min=t_min,
        render_step_size=step_size, early_stop_eps=early_stop_eps, alpha_thre=alpha_thre, stratified=False)
    return RaySamples(ray_indices=ray_indices.long(), t_starts=t_starts, t_ends=t_ends,
                      t=0.5 * (t_starts + t_ends), n_rays=rays_o.shape[0])


def render_weights(samples: RaySamples, sigmas: Tensor) -> Tensor:
    """w_i = T_i α_i per sample with nerfacc's packed CUDA scan."""
    w, _, _ = render_weight_from_density(samples.t_starts, samples.t_ends, sigmas,
                                         ray_indices=samples.ray_indices, n_rays=samples.n_rays)
    return w


def accumulate(samples: RaySamples, weights: Tensor, values: Tensor | None = None) -> Tensor:
    """Σ_i w_i v_i per ray."""
    return accumulate_along_rays(weights, values, samples.ray_indices, samples.n_rays)


__all__ = ["check_extension", "estimator_for", "sample_rays", "render_weights", "accumulate"]
