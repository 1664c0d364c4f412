"""Volume rendering on any device in pure torch: bbox-clipped stratified + hierarchical sampling, an occupancy
grid for skipping empty space, and compositing through nerfacc's batched (pure-torch) functions.

Notation (Mildenhall et al. 2020, arXiv 2003.08934, eq. 3; Max 1995):
- A ray r(t) = o + t·d is cut into intervals [t_i, t_{i+1}) of length δ_i; the field is evaluated once per
  interval, at t̂_i (a jittered point inside it during training, its midpoint otherwise).
- α_i = 1 − exp(−σ_i δ_i), T_i = exp(−Σ_{j<i} σ_j δ_j), w_i = T_i α_i, and C = Σ_i w_i c_i, A = Σ_i w_i.
- Hierarchical sampling (eq. 5): the coarse weights define a piecewise-constant pdf over the intervals; fine
  points are drawn by inverse-transform sampling, merged with the coarse ones and sorted, and the interval
  bounds become the midpoints between neighbouring points.

Layout: samples are handed to the field *packed* (``RaySamples``: one row per evaluated sample, sorted by ray then
t), the layout nerfacc's CUDA path uses. This backend keeps, next to that, the dense ``[R_hit, S]`` layout the
samples came from, so that compositing can run through nerfacc's batched functions (its packed scans are
CUDA-only); skipped samples simply have σ = 0 there.

nerfacc's samplers and ``ray_aabb_intersect`` need CUDA (cpu-notes.md §2), so they are written here.
"""

from collections.abc import Callable
from dataclasses import dataclass

import nerfacc
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn


@dataclass
class RaySamples:
    """Packed samples: sample m lies on ray ``ray_indices[m]`` over [t_starts[m], t_ends[m]), evaluated at t[m].

    ``dense_*`` hold this backend's dense layout (None for packed-only samples from the CUDA marcher):
    sample m sits at flat position ``dense_index[m]`` of the ``[R_hit, S]`` arrays ``dense_t_starts``/``dense_t_ends``.
    """

    ray_indices: Int[Tensor, "M"]
    t_starts: Float[Tensor, "M"]
    t_ends: Float[Tensor, "M"]
    t: Float[Tensor, "M"]
    n_rays: int
    dense_index: Int[Tensor, "M"] | None = None
    dense_t_starts: Float[Tensor, "Rh S"] | None = None
    dense_t_ends: Float[Tensor, "Rh S"] | None = None

    def __len__(self) -> int:
        return self.t.shape[0]

    def positions(self, rays_o: Float[Tensor, "R 3"], rays_d: Float[Tensor, "R 3"]) -> Float[Tensor, "M 3"]:
        """World positions o + t·d of the samples."""
        return rays_o[self.ray_indices] + self.t[:, None] * rays_d[self.ray_indices]

    def to(self, device) -> "RaySamples":
        def mv(x):
            return None if x is None else x.to(device)

        return RaySamples(self.ray_indices.to(device), self.t_starts.to(device), self.t_ends.to(device),
                          self.t.to(device), self.n_rays, mv(self.dense_index), mv(self.dense_t_starts),
                          mv(self.dense_t_ends))


def ray_aabb(rays_o: Float[Tensor, "R 3"], rays_d: Float[Tensor, "R 3"], radius: float
             ) -> tuple[Float[Tensor, "R"], Float[Tensor, "R"], Bool[Tensor, "R"]]:
    """Entry and exit distances of rays through the cube [−radius, radius]³ (slab method), and whether they hit.

    ``near`` is clamped at 0, so a camera inside the cube starts sampling at its own centre.
    """
    # Keep the sign of near-zero components so that 1/d is a huge number of the right sign, never NaN.
    d = torch.where(rays_d.abs() < 1e-9, torch.full_like(rays_d, 1e-9) * torch.where(rays_d < 0, -1.0, 1.0), rays_d)
    inv = 1.0 / d
    t0 = (-radius - rays_o) * inv
    t1 = (radius - rays_o) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far, far > near


def stratified_intervals(near: Float[Tensor, "R"], far: Float[Tensor, "R"], n: int, u: Float[Tensor, "R n"] | None
                         ) -> tuple[Tensor, Tensor, Tensor]:
    """n equal intervals between near and far per ray; points at u ∈ [0,1) inside each (midpoints when u is None).

    Returns t_starts, t_ends, t, each [R, n] and sorted along each ray.
    """
    s = torch.linspace(0.0, 1.0, n + 1, device=near.device, dtype=near.dtype)
    edges = near[:, None] + (far - near)[:, None] * s
    t_starts, t_ends = edges[:, :-1], edges[:, 1:]
    frac = torch.full_like(t_starts, 0.5) if u is None else u
    return t_starts, t_ends, t_starts + frac * (t_ends - t_starts)


def sample_pdf(edges: Float[Tensor, "R S1"], weights: Float[Tensor, "R S"], u: Float[Tensor, "R n"]
               ) -> Float[Tensor, "R n"]:
    """Inverse-transform samples from the piecewise-constant pdf ∝ weights over the intervals given by ``edges``.

    ``u`` must be sorted along each row (stratified or evenly spaced); the result then is sorted too. A small
    floor on the weights keeps empty rays uniform instead of NaN.
    """
    pdf = weights + 1e-5
    pdf = pdf / pdf.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1).clamp_max(1.0)
    idx = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True)
    lo = (idx - 1).clamp(0, edges.shape[-1] - 1)
    hi = idx.clamp(0, edges.shape[-1] - 1)
    c_lo, c_hi = cdf.gather(-1, lo), cdf.gather(-1, hi)
    e_lo, e_hi = edges.gather(-1, lo), edges.gather(-1, hi)
    frac = ((u - c_lo) / (c_hi - c_lo).clamp_min(1e-12)).clamp(0.0, 1.0)
    return e_lo + frac * (e_hi - e_lo)


def merge_points(t: Float[Tensor, "R S"], t_fine: Float[Tensor, "R n"], near: Float[Tensor, "R"],
                 far: Float[Tensor, "R"]) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted union of coarse and fine points; interval bounds are the midpoints (near and far at the ends)."""
    t_all, _ = torch.sort(torch.cat([t, t_fine], -1), -1)
    mid = 0.5 * (t_all[:, 1:] + t_all[:, :-1])
    t_starts = torch.cat([near[:, None], mid], -1)
    t_ends = torch.cat([mid, far[:, None]], -1)
    return t_starts, t_ends, t_all


class OccupancyGrid(nn.Module):
    """A G³ grid over [−radius, radius]³ marking cells where the field may be non-empty.

    ``occ`` holds an exponential moving maximum of α = 1 − exp(−σ·δ) per cell (σ at a jittered point, δ the
    reference step), as nerfacc's ``OccGridEstimator`` does; a cell is occupied when its ``occ`` exceeds
    min(threshold, mean occ). Skipped cells get no gradient of their own, but they still change through the
    grid vertices and MLP weights they share with occupied neighbours, so geometry can grow into them; every
    cell is re-evaluated at each update. Until the first update every cell is occupied.
    """

    def __init__(self, radius: float, resolution: int, threshold: float = 0.01, decay: float = 0.95):
        super().__init__()
        if resolution < 1:
            raise ValueError(f"occupancy resolution must be >= 1, got {resolution}")
        self.radius, self.resolution, self.threshold, self.decay = radius, resolution, threshold, decay
        g = resolution
        self.register_buffer("occ", torch.zeros(g, g, g))
        self.register_buffer("mask", torch.ones(g, g, g, dtype=torch.bool))

    def cell_index(self, x: Float[Tensor, "N 3"]) -> Int[Tensor, "N 3"]:
        """Integer cell (ix, iy, iz) of each point, clamped into the grid."""
        g = self.resolution
        return ((x + self.radius) * (g / (2 * self.radius))).floor().long().clamp(0, g - 1)

    def lookup(self, x: Float[Tensor, "*batch 3"]) -> Bool[Tensor, "*batch"]:
        """Whether each point lies in an occupied cell."""
        ijk = self.cell_index(x.reshape(-1, 3))
        g = self.resolution
        flat = (ijk[:, 0] * g + ijk[:, 1]) * g + ijk[:, 2]
        return self.mask.reshape(-1)[flat].view(x.shape[:-1])

    def cell_points(self, u: Float[Tensor, "G3 3"]) -> Float[Tensor, "G3 3"]:
        """World points at offset u ∈ [0,1)³ inside every cell, cells in (x, y, z) row-major order."""
        g = self.resolution
        ar = torch.arange(g, device=self.occ.device, dtype=self.occ.dtype)
        ijk = torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), -1).reshape(-1, 3)
        return (ijk + u) * (2 * self.radius / g) - self.radius

    @torch.no_grad()
    def update(self, density_fn: Callable[[Tensor], Tensor], step_size: float, u: Float[Tensor, "G3 3"],
               chunk: int = 65536) -> None:
        """Refresh every cell from σ = density_fn(x) at one point per cell (offset u), then re-threshold."""
        x = self.cell_points(u)
        sigma = torch.cat([density_fn(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])
        alpha = 1.0 - torch.exp(-sigma * step_size)
        self.occ.copy_(torch.maximum(self.occ * self.decay, alpha.view_as(self.occ)))
        thre = min(self.threshold, self.occ.mean().item())
        self.mask.copy_(self.occ > thre)


def sample_rays(rays_o: Float[Tensor, "R 3"], rays_d: Float[Tensor, "R 3"], radius: float, n_samples: int,
                n_importance: int = 0, occupancy: OccupancyGrid | None = None,
                density_fn: Callable[[Tensor], Tensor] | None = None, gen: torch.Generator | None = None,
                early_stop_eps: float = 1e-4) -> RaySamples:
    """Stratified (+ optional hierarchical) samples inside the bbox, minus those in empty occupancy cells.

    Args:
        rays_o, rays_d: ray origins and unit directions.
        radius: the bbox is [−radius, radius]³; rays that miss it get no samples.
        n_samples: stratified samples per ray.
        n_importance: extra samples per ray drawn from the coarse weights (0 disables). Needs ``density_fn``
            (σ of points [N,3] → [N]), which is then run without grad on the coarse samples; fine and coarse
            samples behind T < ``early_stop_eps`` are dropped.
        occupancy: skip samples in unoccupied cells (None keeps all).
        gen: generator for the jitter; None places every point mid-interval (evaluation).
    """
    near, far, hit = ray_aabb(rays_o, rays_d, radius)
    hit_ids = hit.nonzero()[:, 0]
    o, d, near, far = rays_o[hit_ids], rays_d[hit_ids], near[hit_ids], far[hit_ids]
    n_hit = hit_ids.shape[0]

    u = None if gen is None else torch.rand(n_hit, n_samples, generator=gen).to(o)
    t_starts, t_ends, t = stratified_intervals(near, far, n_samples, u)
    keep = _occupied(occupancy, o, d, t)
    if n_importance > 0:
        if density_fn is None:
            raise ValueError("hierarchical sampling (n_importance > 0) needs a density_fn")
        t_starts, t_ends, t, keep = _resample(o, d, near, far, t_starts, t_ends, t, keep, n_importance,
                                              occupancy, density_fn, gen, early_stop_eps)
    rows, cols = keep.nonzero(as_tuple=True)
    return RaySamples(ray_indices=hit_ids[rows], t_starts=t_starts[rows, cols], t_ends=t_ends[rows, cols],
                      t=t[rows, cols], n_rays=rays_o.shape[0], dense_index=rows * t.shape[1] + cols,
                      dense_t_starts=t_starts, dense_t_ends=t_ends)


def _occupied(occupancy: OccupancyGrid | None, o: Tensor, d: Tensor, t: Tensor) -> Tensor:
    if occupancy is None:
        return torch.ones_like(t, dtype=torch.bool)
    return occupancy.lookup(o[:, None, :] + t[..., None] * d[:, None, :])


@torch.no_grad()
def _resample(o, d, near, far, t_starts, t_ends, t, keep, n_importance, occupancy, density_fn, gen,
              early_stop_eps):
    """Coarse pass without grad, then importance samples merged in (eq. 5); drops invisible samples."""
    sigma = torch.zeros_like(t)
    if keep.any():
        sigma[keep] = density_fn((o[:, None, :] + t[..., None] * d[:, None, :])[keep])
    w, trans, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigma)
    edges = torch.cat([t_starts, t_ends[:, -1:]], -1)
    n = n_importance
    if gen is None:
        u = ((torch.arange(n, device=t.device, dtype=t.dtype) + 0.5) / n).expand(t.shape[0], n)
    else:
        u = (torch.arange(n, dtype=t.dtype) + torch.rand(t.shape[0], n, generator=gen)).to(t) / n
    t_fine = sample_pdf(edges, w, u)
    t_starts, t_ends, t_all = merge_points(t, t_fine, near, far)
    keep = _occupied(occupancy, o, d, t_all)
    # Early stop: each point gets the coarse transmittance at the start of the coarse interval it falls in
    # (an upper bound on its own), and points hidden behind T < eps are dropped.
    coarse_bin = (torch.searchsorted(edges.contiguous(), t_all.contiguous(), right=True) - 1).clamp(0, t.shape[1] - 1)
    keep &= trans.gather(-1, coarse_bin) > early_stop_eps
    return t_starts, t_ends, t_all, keep


def render_weights(samples: RaySamples, sigmas: Float[Tensor, "M"]) -> Float[Tensor, "M"]:
    """w_i = T_i α_i per sample, through nerfacc's batched ``render_weight_from_density`` on the dense layout."""
    if samples.dense_index is None:
        raise ValueError("the torch backend needs samples with a dense layout (from volume_torch.sample_rays)")
    shape = samples.dense_t_starts.shape
    dense = sigmas.new_zeros(shape.numel()).index_put((samples.dense_index,), sigmas).view(shape)
    w, _, _ = nerfacc.render_weight_from_density(samples.dense_t_starts, samples.dense_t_ends, dense)
    return w.reshape(-1)[samples.dense_index]


def accumulate(samples: RaySamples, weights: Float[Tensor, "M"], values: Float[Tensor, "M D"] | None = None
               ) -> Float[Tensor, "R D"]:
    """Σ_i w_i v_i per ray ([R,1] of Σ w_i when ``values`` is None); rays without samples get 0."""
    return nerfacc.accumulate_along_rays(weights, values, samples.ray_indices, samples.n_rays)


def distortion(samples: RaySamples, weights: Float[Tensor, "M"]) -> Float[Tensor, "R"]:
    """Mip-NeRF 360's distortion loss per ray (Barron et al. 2022, arXiv 2111.12077, eq. 15), in the units of t:

        L(r) = Σ_i Σ_j w_i w_j |m_i − m_j| + (1/3) Σ_i w_i² δ_i,   m_i = (t_i + t_{i+1}) / 2,  δ_i = t_{i+1} − t_i.

    It is smallest when a ray's weight sits in one short interval: it turns a soft cloud of density into a surface.
    The double sum is evaluated in O(M) with the samples sorted by t within each ray (both backends' layout):
    Σ_{i,j} w_i w_j |m_i − m_j| = 2 Σ_i w_i (m_i W_i − S_i), W_i = Σ_{j<i} w_j, S_i = Σ_{j<i} w_j m_j (exclusive
    per-ray prefix sums, taken in float64 so that subtracting a ray's offset from the packed cumulative sum stays
    exact). Pure torch on the packed samples, so the same code serves the cuda backend's samples."""
    if weights.shape != (len(samples),):
        raise ValueError(f"weights must be [{len(samples)}] (one per sample), got {tuple(weights.shape)}")
    out = weights.new_zeros(samples.n_rays)
    if len(samples) == 0:
        return out
    ray = samples.ray_indices
    m = 0.5 * (samples.t_starts + samples.t_ends)
    delta = samples.t_ends - samples.t_starts
    w64, wm64 = weights.double(), (weights * m).double()
    # Each sample's ray's first packed index (samples are grouped by ray), found once for both prefix sums.
    first = torch.full((samples.n_rays,), len(ray), dtype=torch.long, device=ray.device)
    first = first.scatter_reduce(0, ray, torch.arange(len(ray), device=ray.device), "amin")[ray]

    def exclusive_per_ray(x: Tensor) -> Tensor:
        c = torch.cumsum(x, 0) - x  # exclusive, over the whole packed array
        return c - c[first]

    cross = 2.0 * weights * (m * exclusive_per_ray(w64).to(m.dtype) - exclusive_per_ray(wm64).to(m.dtype))
    return out.index_add(0, ray, cross + weights**2 * delta / 3.0)


__all__ = ["RaySamples", "OccupancyGrid", "ray_aabb", "stratified_intervals", "sample_pdf", "merge_points",
           "sample_rays", "render_weights", "accumulate", "distortion"]
