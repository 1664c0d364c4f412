"""One backend resolver with one rule (issue #14, item 5): "auto" falls back with one warning, an explicit "cuda"
that cannot be met is a one-line error, for the kernels, the mesh rasteriser, the splats and the run's device."""

import warnings

import pytest
import torch

from foundation import backend
from foundation.backend import CudaUnavailable, resolve


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    from renderers import kernels

    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    probe = kernels._cuda_unavailable_reason  # some tests replace it
    backend._warn_once.cache_clear()
    probe.cache_clear()
    yield
    backend._warn_once.cache_clear()
    probe.cache_clear()


def _no(reason):
    return lambda: reason


def test_auto_falls_back_with_one_warning_and_takes_cuda_when_it_can():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve("auto", _no(None), what="backend") is True
        assert resolve("torch", _no("no GPU"), what="backend") is False  # the fallback asked for: no warning
    with pytest.warns(UserWarning, match=r"backend 'auto' falls back to the torch backend \(no GPU\)") as seen:
        assert resolve("auto", _no("no GPU"), what="backend") is False
        assert resolve("auto", _no("no GPU"), what="backend") is False
    assert len(seen) == 1  # once per process, not once per scene or step


def test_explicit_cuda_that_cannot_be_met_is_a_one_line_error():
    assert resolve("cuda", _no(None), what="device", fallback="cpu") is True
    assert resolve("cuda:1", _no(None), what="device", fallback="cpu") is True
    with pytest.raises(CudaUnavailable) as e:
        resolve("cuda:0", _no("torch sees no CUDA GPU"), what="device", fallback="cpu", hint="--device cpu")
    msg = str(e.value)
    assert "\n" not in msg and "device 'cuda:0' was requested" in msg and "no CUDA GPU" in msg
    assert "--device cpu" in msg and isinstance(e.value, RuntimeError)
    with pytest.raises(ValueError, match="unknown backend 'vulkan'"):
        resolve("vulkan", _no(None), what="backend")


def test_every_resolver_follows_the_rule_without_a_gpu(monkeypatch):
    """The run's device, the volume and splat kernels and the mesh rasteriser, on a machine without CUDA."""
    from engine.train import RunError, resolve_device
    from renderers import kernels
    from renderers.gaussians import resolve_splat_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RunError, match="device 'cuda' was requested") as e:
        resolve_device("cuda")
    assert e.value.code == 2 and "--device cpu" in str(e.value)
    with pytest.warns(UserWarning, match="device 'auto' falls back to the cpu device"):
        assert resolve_device("auto") == torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_device("cpu") == torch.device("cpu")
    for resolve_one in (kernels.resolve_backend, resolve_splat_backend, kernels.resolve_raster_backend):
        backend._warn_once.cache_clear()
        with pytest.raises(CudaUnavailable, match="'cuda' was requested"):
            resolve_one("cuda")
        with pytest.warns(UserWarning, match="falls back to the torch"):
            assert resolve_one("auto") == "torch"


def test_the_raster_backend_without_nvdiffrast_on_a_gpu(monkeypatch):
    """A GPU without nvdiffrast: "auto" uses the exact torch ops (one warning); an explicit "cuda" used to be served
    by them with a warning too, and is now refused like every other unmet cuda."""
    from renderers import kernels
    from renderers.kernels import raster_cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(raster_cuda, "available", lambda: False)
    with pytest.warns(UserWarning, match="nvdiffrast is not importable"):
        assert kernels.resolve_raster_backend("auto") == "torch"
    with pytest.raises(CudaUnavailable, match="nvdiffrast is not importable"):
        kernels.resolve_raster_backend("cuda")
    monkeypatch.setattr(raster_cuda, "available", lambda: True)
    assert kernels.resolve_raster_backend("cuda") == "cuda"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.resolve_raster_backend("auto", device="cpu") == "torch"  # a mesh on the CPU: no warning
        assert kernels.resolve_raster_backend("cuda", device="cpu") == "torch"


def test_a_scene_on_the_cpu_renders_with_torch(monkeypatch):
    """The scene's device was resolved already: "auto" on a CPU scene neither probes nor warns; an explicit "cuda"
    is still checked against the machine, then served by torch for that CPU scene (a GPU run rebuilt on the CPU)."""
    from renderers import kernels

    probed = []
    monkeypatch.setattr(kernels, "_cuda_unavailable_reason", lambda library="nerfacc": probed.append(library))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.resolve_backend("auto", device="cpu") == "torch" and probed == []
        assert kernels.resolve_backend("cuda", device="cpu") == "torch" and probed == ["nerfacc"]
        assert kernels.resolve_backend("cuda", device="cuda") == "cuda"
    monkeypatch.setattr(kernels, "_cuda_unavailable_reason", lambda library="nerfacc": "nvcc failed")
    with pytest.raises(CudaUnavailable, match="nvcc failed"):
        kernels.resolve_backend("cuda", device="cpu")
