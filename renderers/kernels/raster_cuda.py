"""nvdiffrast wrappers for the mesh raster ops (renderers.md §3.1), imported lazily and only with CUDA.

nvdiffrast is an optional runtime dependency under NVIDIA's non-commercial source licence: nothing of it is
vendored, and the torch backend (raster_torch.py) is always available. Its ops already have the signatures and
output layouts the torch ops mirror: rast = (u, v, z/w, tri_id + 1), clip y = −1 at image row 0.
"""

import functools

import torch
from torch import Tensor


@functools.cache
def available() -> bool:
    """True when a CUDA device is present, ``nvdiffrast.torch`` imports and its plugin builds and rasterises a tiny
    triangle (renderers/kernels/probe.py; the import alone compiles nothing)."""
    if not torch.cuda.is_available():
        return False
    try:
        import nvdiffrast.torch  # noqa: F401, PLC0415
    except (ImportError, OSError, RuntimeError):
        return False
    from renderers.kernels.probe import probe  # noqa: PLC0415

    return probe("nvdiffrast").ok


@functools.cache
def _context(device_index: int):
    import nvdiffrast.torch as dr  # noqa: PLC0415

    return dr.RasterizeCudaContext(device=torch.device("cuda", device_index))


def _ctx(t: Tensor):
    return _context(t.device.index if t.device.index is not None else torch.cuda.current_device())


def rasterize(pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> Tensor:
    import nvdiffrast.torch as dr  # noqa: PLC0415

    rast, _ = dr.rasterize(_ctx(pos), pos.float().contiguous(), tri.int().contiguous(), resolution=list(resolution))
    return rast


def interpolate(attr: Tensor, rast: Tensor, tri: Tensor) -> Tensor:
    import nvdiffrast.torch as dr  # noqa: PLC0415

    out, _ = dr.interpolate(attr.float().contiguous(), rast, tri.int().contiguous())
    return out


def texture(tex: Tensor, uv: Tensor, filter_mode: str = "linear", boundary_mode: str = "wrap",
            mip_level: float = 0.0, uv_da: Tensor | None = None) -> Tensor:
    import nvdiffrast.torch as dr  # noqa: PLC0415

    if tex.ndim == 3:
        tex = tex[None]
    if uv_da is not None:  # per-pixel level from the derivatives (+ the scalar bias), trilinear
        bias = torch.full(uv.shape[:-1], float(mip_level), device=uv.device) if mip_level > 0 else None
        return dr.texture(tex.float().contiguous(), uv.float().contiguous(), uv_da=uv_da.float().contiguous(),
                          mip_level_bias=bias, filter_mode="linear-mipmap-linear", boundary_mode=boundary_mode)
    if mip_level > 0:  # a constant level bias, as the torch op's scalar mip level
        bias = torch.full(uv.shape[:-1], float(mip_level), device=uv.device)
        return dr.texture(tex.float().contiguous(), uv.float().contiguous(), mip_level_bias=bias,
                          filter_mode="linear-mipmap-linear", boundary_mode=boundary_mode)
    return dr.texture(tex.float().contiguous(), uv.float().contiguous(), filter_mode=filter_mode,
                      boundary_mode=boundary_mode)


def antialias(color: Tensor, rast: Tensor, pos: Tensor, tri: Tensor, topology=None) -> Tensor:
    import nvdiffrast.torch as dr  # noqa: PLC0415

    return dr.antialias(color.float().contiguous(), rast, pos.float().contiguous(), tri.int().contiguous())
