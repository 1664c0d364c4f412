"""CUDA splatting through ``gsplat.rasterization`` (imported lazily: importing this module needs no GPU).

gsplat JIT-compiles its extension on first use; :func:`available` probes that build once (in a child process, with a
timeout), so callers must only reach :func:`splat_cuda` when it is true (the backend switch guarantees it).
"""

from functools import lru_cache

from jaxtyping import Float
from torch import Tensor

from renderers.kernels.splat_torch import SplatResult


@lru_cache(maxsize=1)
def available() -> bool:
    """True when a CUDA device is present and gsplat's kernels compile and render a tiny splat (renderers/kernels/
    probe.py: importing gsplat compiles nothing, its PyPI wheel JIT-builds on first use)."""
    import torch

    if not torch.cuda.is_available():
        return False
    from renderers.kernels.probe import probe

    return probe("gsplat").ok


def splat_cuda(means: Float[Tensor, "N 3"], quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"],
               opacities: Float[Tensor, "N"], features: Float[Tensor, "C N D"], viewmats: Float[Tensor, "C 4 4"],
               Ks: Float[Tensor, "C 3 3"], width: int, height: int, *, eps2d: float = 0.3, near: float = 0.01,
               far: float = 1e10, tile_size: int = 16, antialiased: bool = False,
               checkpoint: bool = False) -> SplatResult:
    """Same contract as :func:`renderers.kernels.splat_torch.splat_torch`, computed by gsplat's CUDA kernels.

    ``checkpoint`` is accepted for signature parity and ignored (gsplat's backward is already memory-lean).
    """
    from gsplat import rasterization

    render, alpha, meta = rasterization(
        means, quats, scales, opacities, features, viewmats, Ks, width, height,
        near_plane=near, far_plane=far, eps2d=eps2d, packed=False, tile_size=tile_size, render_mode="RGB",
        rasterize_mode="antialiased" if antialiased else "classic", sh_degree=None)
    return SplatResult(render, alpha, meta["means2d"], meta["radii"], meta["depths"])


__all__ = ["available", "splat_cuda"]
