"""Dispatch for the mesh raster op family (style.md §4.3): ``rasterize``, ``interpolate``, ``texture``,
``antialias``, each with a torch backend (raster_torch.py, any device) and a cuda backend (nvdiffrast, optional).
``uv_derivatives`` (screen-space uv derivatives for mip-mapped ``texture``) is analytic tensor math from the
rasteriser's output, shared by both backends.

``resolve_raster_backend`` follows the one rule of foundation.backend.resolve, CUDA meaning a GPU *and* nvdiffrast:
nvdiffrast is never required, so "auto" without it uses the torch ops (on the GPU if there is one, warning once) —
they are exact, only slower — while an explicit "cuda" without it is an error. Re-exported by ``renderers.kernels``.
"""

from torch import Tensor

from foundation.backend import no_cuda_device, resolve
from renderers.kernels import raster_torch
from renderers.kernels.raster_torch import edge_topology


def resolve_raster_backend(name: str = "auto", device=None) -> str:
    """"torch" or "cuda" (= nvdiffrast) for the raster ops of a mesh on ``device``, by foundation.backend.resolve
    (module docstring); a mesh on a non-CUDA device rasterises with torch, as renderers.kernels.resolve_backend."""
    import torch  # noqa: PLC0415

    from renderers.kernels import raster_cuda  # noqa: PLC0415  (imports nothing of nvdiffrast by itself)

    if name not in ("auto", "torch", "cuda"):
        raise ValueError(f"unknown backend {name!r}; expected one of auto, torch, cuda")
    on_cuda = device is None or torch.device(device).type == "cuda"
    if name == "auto" and not on_cuda:
        return "torch"

    def why_not() -> str | None:
        return no_cuda_device() or (None if raster_cuda.available() else "nvdiffrast is not importable")

    cuda = resolve(name, why_not, what="mesh raster backend", hint="backend 'torch'")
    return "cuda" if cuda and on_cuda else "torch"


def _check(pos: Tensor, tri: Tensor) -> None:
    if pos.ndim not in (2, 3) or pos.shape[-1] != 4 or not pos.is_floating_point():
        raise ValueError(f"rasterize: pos must be float clip coordinates [V,4] or [B,V,4], got {tuple(pos.shape)}")
    if tri.ndim != 2 or tri.shape[-1] != 3 or tri.is_floating_point():
        raise ValueError(f"rasterize: tri must be integer [F,3], got {tuple(tri.shape)} {tri.dtype}")


def rasterize(backend: str, pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> Tensor:
    """rast [B,H,W,4] = (u, v, z/w, tri_id + 1); see raster_torch."""
    _check(pos, tri)
    match backend:
        case "torch":
            return raster_torch.rasterize(pos, tri, resolution)
        case "cuda":
            from renderers.kernels import raster_cuda  # noqa: PLC0415

            return raster_cuda.rasterize(pos if pos.ndim == 3 else pos[None], tri, resolution)
        case _:
            raise ValueError(f"unknown backend {backend!r}; resolve it with resolve_raster_backend() first")


def interpolate(backend: str, attr: Tensor, rast: Tensor, tri: Tensor) -> Tensor:
    """Per-pixel attributes [B,H,W,C] from vertex attributes [V,C] or [B,V,C]."""
    if rast.ndim != 4 or rast.shape[-1] != 4:
        raise ValueError(f"interpolate: rast must be [B,H,W,4], got {tuple(rast.shape)}")
    if attr.ndim not in (2, 3):
        raise ValueError(f"interpolate: attr must be [V,C] or [B,V,C], got {tuple(attr.shape)}")
    match backend:
        case "torch":
            return raster_torch.interpolate(attr, rast, tri)
        case "cuda":
            from renderers.kernels import raster_cuda  # noqa: PLC0415

            return raster_cuda.interpolate(attr, rast, tri)
        case _:
            raise ValueError(f"unknown backend {backend!r}; resolve it with resolve_raster_backend() first")


def uv_derivatives(pos: Tensor, tri: Tensor, rast: Tensor, uv: Tensor, uv_tri: Tensor | None = None) -> Tensor:
    """uv_da [B,H,W,4] = (du/dx, du/dy, dv/dx, dv/dy) per pixel of ``uv`` [N,2] over ``rast``: analytic barycentric
    derivatives, no gradient; either backend's rast. ``uv_tri`` [F,3] indexes ``uv`` per triangle when it differs
    from ``tri`` (e.g. per-corner UVs); by default uv is per vertex of ``pos``."""
    import torch  # noqa: PLC0415

    with torch.no_grad():
        db = raster_torch.bary_derivatives(pos, tri, rast)
        return raster_torch.interpolate_da(uv.detach(), rast, tri if uv_tri is None else uv_tri, db)


def texture(backend: str, tex: Tensor, uv: Tensor, filter_mode: str = "linear", boundary_mode: str = "wrap",
            mip_level: float = 0.0, uv_da: Tensor | None = None) -> Tensor:
    """Sample tex [B,h,w,C] at uv [B,H,W,2] (uv (0,0) = first texel in memory); ``uv_da`` [B,H,W,4] turns on
    per-pixel trilinear mip-mapping (``mip_level`` is then a level bias)."""
    if uv.ndim != 4 or uv.shape[-1] != 2:
        raise ValueError(f"texture: uv must be [B,H,W,2], got {tuple(uv.shape)}")
    if uv_da is not None and uv_da.shape != (*uv.shape[:-1], 4):
        raise ValueError(f"texture: uv_da must be [B,H,W,4] like uv, got {tuple(uv_da.shape)}")
    match backend:
        case "torch":
            return raster_torch.texture(tex, uv, filter_mode, boundary_mode, mip_level, uv_da)
        case "cuda":
            from renderers.kernels import raster_cuda  # noqa: PLC0415

            return raster_cuda.texture(tex, uv, filter_mode, boundary_mode, mip_level, uv_da)
        case _:
            raise ValueError(f"unknown backend {backend!r}; resolve it with resolve_raster_backend() first")


def antialias(backend: str, color: Tensor, rast: Tensor, pos: Tensor, tri: Tensor, topology=None) -> Tensor:
    """Analytic silhouette antialiasing (gradients to ``pos`` through silhouette crossings)."""
    if color.shape[:-1] != rast.shape[:-1]:
        raise ValueError(f"antialias: color {tuple(color.shape)} and rast {tuple(rast.shape)} differ in [B,H,W]")
    match backend:
        case "torch":
            return raster_torch.antialias(color, rast, pos, tri, topology)
        case "cuda":
            from renderers.kernels import raster_cuda  # noqa: PLC0415

            return raster_cuda.antialias(color, rast, pos if pos.ndim == 3 else pos[None], tri)
        case _:
            raise ValueError(f"unknown backend {backend!r}; resolve it with resolve_raster_backend() first")


__all__ = ["resolve_raster_backend", "rasterize", "interpolate", "texture", "antialias", "edge_topology"]
