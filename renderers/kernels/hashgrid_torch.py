"""Multiresolution hash-grid encoding in pure torch (Instant-NGP, Müller et al. 2022, arXiv 2201.05989, §3).

Notation (paper §3, renderers.md §2.3):
- L levels with resolutions N_l = ⌊N_min · b^l⌋, b = exp((ln N_max − ln N_min) / (L − 1)) (eq. 2-3).
- A point u ∈ [0,1]³ is scaled to u·N_l; its feature at level l is the trilinear blend of the F-dimensional
  features stored at the 8 corners of the enclosing cell. The L·F features are concatenated (eq. 4).
- Level l has (N_l + 1)³ vertices. Where that fits in the table size T, the level is stored densely (as tcnn does)
  and sampled with ``F.grid_sample``, which is about 10× faster on a CPU than an 8-corner gather. Otherwise the
  vertex (i, j, k) maps to the table row h = (i·1 ⊕ j·2654435761 ⊕ k·805459861) mod T (eq. 4), computed in int64
  because the products overflow int32.
- Features are initialised from U(−1e-4, 1e-4) (paper §4).

Storage: a dense level is a parameter ``[1, F, N+1, N+1, N+1]`` indexed ``[0, f, k, j, i]`` (z, y, x: the layout
``grid_sample`` expects); a hashed level is a parameter ``[T, F]``.
"""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

PRIMES = (1, 2654435761, 805459861)
"""Per-axis hash multipliers (x, y, z) from the Instant-NGP paper."""


def level_resolutions(n_levels: int, base_resolution: int, max_resolution: int) -> list[int]:
    """Grid resolution N_l of every level (eq. 2-3); a single level uses ``base_resolution``."""
    if n_levels < 1 or base_resolution < 1 or max_resolution < base_resolution:
        raise ValueError(f"bad hash-grid levels: n_levels={n_levels}, base={base_resolution}, max={max_resolution}")
    if n_levels == 1:
        return [base_resolution]
    b = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (n_levels - 1))
    # The small epsilon keeps N_max itself from rounding down to N_max - 1.
    return [int(math.floor(base_resolution * b**level + 1e-6)) for level in range(n_levels)]


def hash_vertices(ijk: Int[Tensor, "*batch 3"], table_size: int) -> Int[Tensor, "*batch"]:
    """Table row of integer vertices: (i·1 ⊕ j·2654435761 ⊕ k·805459861) mod T, in int64."""
    ijk = ijk.long()
    h = (ijk[..., 0] * PRIMES[0]) ^ (ijk[..., 1] * PRIMES[1]) ^ (ijk[..., 2] * PRIMES[2])
    return torch.remainder(h, table_size)


class _GatherBlend(torch.autograd.Function):
    """out[m] = Σ_c w[m,c] · table[idx[m,c]]; the backward scatters with one ``index_add_``.

    Autograd's own backward for ``table[idx]`` accumulates through a slower generic path on CPU; this one is a
    single flat ``index_add_`` over the [M·8] corner rows.
    """

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(table, idx, w)
        return torch.einsum("mcf,mc->mf", table[idx], w)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        table, idx, w = ctx.saved_tensors
        grad_table = grad_w = None
        if ctx.needs_input_grad[0]:
            src = (w[..., None] * grad_out[:, None, :]).reshape(-1, grad_out.shape[-1])
            grad_table = torch.zeros_like(table).index_add_(0, idx.reshape(-1), src)
        if ctx.needs_input_grad[2]:  # only when positions require grad (not in the renderer's hot path)
            grad_w = torch.einsum("mcf,mf->mc", table[idx], grad_out)
        return grad_table, None, grad_w


class HashGrid(nn.Module):
    """Multiresolution grid encoding: points u ∈ [0,1]³ → features [N, L·F].

    Coarse levels whose (N_l + 1)³ vertices fit in ``2**log2_hashmap_size`` rows are dense; finer ones are hashed.
    Points outside [0,1]³ are clamped onto the boundary.
    """

    def __init__(self, n_levels: int, base_resolution: int, max_resolution: int, features_per_level: int,
                 log2_hashmap_size: int, gen: torch.Generator | None = None, init_scale: float = 1e-4):
        super().__init__()
        self.resolutions = level_resolutions(n_levels, base_resolution, max_resolution)
        self.table_size = 2**log2_hashmap_size
        self.features_per_level = features_per_level
        self.is_dense = [(n + 1) ** 3 <= self.table_size for n in self.resolutions]
        params = []
        for n, dense in zip(self.resolutions, self.is_dense):
            shape = (1, features_per_level, n + 1, n + 1, n + 1) if dense else (self.table_size, features_per_level)
            init = (torch.rand(shape, generator=gen) * 2 - 1) * init_scale
            params.append(nn.Parameter(init))
        self.levels = nn.ParameterList(params)

    @property
    def out_dim(self) -> int:
        """Feature width L·F."""
        return len(self.resolutions) * self.features_per_level

    def forward(self, u: Float[Tensor, "N 3"]) -> Float[Tensor, "N D"]:
        """Concatenated per-level features, D = L·F."""
        if u.ndim != 2 or u.shape[-1] != 3:
            raise ValueError(f"HashGrid expects points [N,3], got {tuple(u.shape)}")
        u = u.clamp(0.0, 1.0)
        feats = []
        grid = None
        for n, dense, param in zip(self.resolutions, self.is_dense, self.levels):
            if dense:
                if grid is None:  # the same normalised coordinates serve every dense level
                    grid = (u * 2 - 1).view(1, -1, 1, 1, 3)
                feats.append(self._sample_dense(param, grid))
            else:
                feats.append(self._sample_hashed(param, u, n))
        return torch.cat(feats, dim=-1)

    @staticmethod
    def _sample_dense(param: Tensor, grid: Tensor) -> Tensor:
        # align_corners=True puts vertex 0 at -1 and vertex N at +1, i.e. vertex i at u = i / N.
        out = F.grid_sample(param, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.view(param.shape[1], -1).t()

    def _sample_hashed(self, table: Tensor, u: Tensor, n: int) -> Tensor:
        idx, w = self.corner_indices_weights(u, n)
        return _GatherBlend.apply(table, idx, w.to(table.dtype))

    def corner_indices_weights(self, u: Float[Tensor, "N 3"], n: int) -> tuple[Tensor, Tensor]:
        """Hashed rows [N,8] and trilinear weights [N,8] of the cell corners at resolution ``n``.

        Corner c = 4a + 2b + c' takes offset (a, b, c') along (x, y, z).
        """
        pos = u * n
        i0 = pos.floor().clamp(0, n - 1)  # u = 1 falls in the last cell with fraction 1
        frac = pos - i0
        i0 = i0.long()
        # Hash each axis' two candidate coordinates once, then XOR them in all 8 combinations.
        hx, hy, hz = ((torch.stack([i0[:, a], i0[:, a] + 1], -1) * PRIMES[a]) for a in range(3))
        h = hx[:, :, None, None] ^ hy[:, None, :, None] ^ hz[:, None, None, :]
        idx = torch.remainder(h, self.table_size).reshape(-1, 8)
        wx, wy, wz = (torch.stack([1 - frac[:, a], frac[:, a]], -1) for a in range(3))
        w = (wx[:, :, None, None] * wy[:, None, :, None] * wz[:, None, None, :]).reshape(-1, 8)
        return idx, w

    def vertex_features(self, level: int, ijk: Int[Tensor, "N 3"]) -> Float[Tensor, "N F"]:
        """Stored features of integer vertices (i, j, k) at ``level`` (for references and tests)."""
        param = self.levels[level]
        if self.is_dense[level]:
            i, j, k = ijk.long().unbind(-1)
            return param[0][:, k, j, i].t()
        return param[hash_vertices(ijk, self.table_size)]


__all__ = ["HashGrid", "hash_vertices", "level_resolutions", "PRIMES"]
