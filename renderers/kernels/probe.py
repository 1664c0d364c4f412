"""Probe each CUDA kernel library once, separately, with a real compile and a tiny op, in a child process.

gsplat, nerfacc and nvdiffrast ship (or are installed as) sources that torch's cpp_extension JIT-compiles on first
use: importing them compiles nothing, so an import check says nothing about whether the first training step will
work. A build can also fail, take minutes, or hang on a ``lock`` file left by a killed build (torch's FileBaton waits
for it forever). So each library is probed:

- once per process per library (``probe`` is cached), and independently: the Gaussians' CUDA path depends on gsplat
  only, the NeRF's on nerfacc only, the mesh's on nvdiffrast only;
- in a child python that imports the library and runs one tiny op on the GPU, which forces the compile; the child runs
  under a timeout (``DISTILLERY_JIT_TIMEOUT``, default 900 s), so a slow or broken build becomes a clear message and a
  torch fallback instead of a crash or a hang in the training loop. The compiled extension lands in torch's
  extensions folder, so the parent's own import afterwards only loads it;
- after clearing a stale build lock: a ``lock`` older than ``DISTILLERY_STALE_LOCK_S`` (default 600 s) with no built
  library next to it is a killed build; its folder is removed (nerfacc would otherwise wait on it forever). A child
  we kill on timeout leaves its lock too, which is removed the same way at once.

``engine doctor`` prints every probe with its time, so a user can pre-build the kernels before a run.
"""

import functools
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

JIT_TIMEOUT_ENV = "DISTILLERY_JIT_TIMEOUT"
STALE_LOCK_ENV = "DISTILLERY_STALE_LOCK_S"


@dataclass(frozen=True)
class Library:
    """A CUDA kernel library: its torch-extension build name and the child's test program (prints nothing on
    success; any exception fails the probe)."""

    build_name: str
    code: str


_NERFACC = """
import torch, nerfacc
from nerfacc.cuda._backend import _C
assert _C is not None, "nerfacc found no CUDA toolkit (nvcc) to build its extension"
est = nerfacc.OccGridEstimator([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], resolution=8, levels=1).cuda()
est.binaries.fill_(True)
o = torch.tensor([[0.0, 0.0, -3.0]], device="cuda"); d = torch.tensor([[0.0, 0.0, 1.0]], device="cuda")
ri, t0, t1 = est.sampling(o, d, render_step_size=0.1)
assert ri.numel() > 0, "nerfacc's marcher returned no samples"
torch.cuda.synchronize()
"""

_GSPLAT = """
import torch
from gsplat import rasterization
dev = "cuda"
means = torch.tensor([[0.0, 0.0, 2.0]], device=dev); quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]], device=dev)
scales = torch.full((1, 3), 0.2, device=dev); opac = torch.ones(1, device=dev); rgb = torch.ones(1, 3, device=dev)
K = torch.tensor([[[16.0, 0.0, 8.0], [0.0, 16.0, 8.0], [0.0, 0.0, 1.0]]], device=dev)
img, alpha, _ = rasterization(means, quats, scales, opac, rgb, torch.eye(4, device=dev)[None], K, 16, 16)
assert float(alpha.max()) > 0, "gsplat rendered nothing"
torch.cuda.synchronize()
"""

_NVDIFFRAST = """
import torch
import nvdiffrast.torch as dr
ctx = dr.RasterizeCudaContext()
pos = torch.tensor([[[-0.5, -0.5, 0.0, 1.0], [0.5, -0.5, 0.0, 1.0], [0.0, 0.5, 0.0, 1.0]]], device="cuda")
rast, _ = dr.rasterize(ctx, pos, torch.tensor([[0, 1, 2]], dtype=torch.int32, device="cuda"), resolution=[8, 8])
assert float(rast[..., 3].max()) > 0, "nvdiffrast rasterised nothing"
torch.cuda.synchronize()
"""

LIBRARIES: dict[str, Library] = {
    "nerfacc": Library("nerfacc_cuda", _NERFACC),
    "gsplat": Library("gsplat_cuda", _GSPLAT),
    "nvdiffrast": Library("nvdiffrast_plugin", _NVDIFFRAST),
}
"""The kernel libraries, by name; the volume, splat and raster op families use nerfacc, gsplat and nvdiffrast."""


@dataclass(frozen=True)
class Probe:
    """The outcome of one library's probe: usable or not, how long it took (a first probe includes the compile), and
    a one-line message (why not, or what was cleaned up)."""

    library: str
    ok: bool
    seconds: float
    message: str


def build_dir(build_name: str) -> str:
    """Where torch's cpp_extension builds ``build_name`` (``TORCH_EXTENSIONS_DIR`` or its per-python/CUDA cache
    folder), the folder the library's own JIT loader uses (it creates it too, so asking for it changes nothing)."""
    from torch.utils import cpp_extension

    try:
        return cpp_extension._get_build_directory(build_name, verbose=False)
    except Exception:  # noqa: BLE001 - a private helper; fall back to the public variable
        root = os.environ.get("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/torch_extensions"))
        return os.path.join(root, build_name)


def clear_stale_lock(build_dir: str, max_age_s: float | None = None, now: float | None = None) -> str | None:
    """Remove ``build_dir`` when it holds a build lock older than ``max_age_s`` and no built library (a killed build,
    on which a later build would wait forever); returns what was done, or None when nothing was stale."""
    lock = os.path.join(build_dir, "lock")
    if not os.path.exists(lock):
        return None
    max_age_s = float(os.environ.get(STALE_LOCK_ENV, 600)) if max_age_s is None else max_age_s
    age = (time.time() if now is None else now) - os.path.getmtime(lock)
    if age < max_age_s:
        return None
    built = glob.glob(os.path.join(build_dir, "*.so")) + glob.glob(os.path.join(build_dir, "*.pyd"))
    if built:
        os.remove(lock)
        return f"removed a stale build lock ({age:.0f} s old) next to a built library in {build_dir}"
    shutil.rmtree(build_dir, ignore_errors=True)
    return f"removed a killed build ({age:.0f} s old lock, no library) in {build_dir}"


def run_child(code: str, timeout: float) -> tuple[bool, float, str]:
    """Run ``code`` in a child python under ``timeout`` seconds: (ok, seconds, last line of its error output)."""
    t0 = time.perf_counter()
    # its own session: on timeout the whole group goes (ninja and nvcc too, not only the python that started them)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        proc.communicate()
        return False, time.perf_counter() - t0, f"did not finish within {timeout:.0f} s (raise {JIT_TIMEOUT_ENV})"
    dt = time.perf_counter() - t0
    if proc.returncode == 0:
        return True, dt, ""
    lines = [ln.strip() for ln in (err or out).strip().splitlines() if ln.strip()]
    return False, dt, (lines[-1] if lines else f"exit code {proc.returncode}")[:400]


@functools.cache
def probe(library: str) -> Probe:
    """Whether ``library``'s CUDA kernels build and run here (cached per process; see the module docstring)."""
    if library not in LIBRARIES:
        raise ValueError(f"unknown kernel library {library!r}; expected one of {', '.join(LIBRARIES)}")
    if not torch.cuda.is_available():
        return Probe(library, False, 0.0, "no CUDA GPU (torch.cuda.is_available() is False)")
    lib = LIBRARIES[library]
    folder = build_dir(lib.build_name)
    notes = [n for n in [clear_stale_lock(folder)] if n]
    if not glob.glob(os.path.join(folder, "*.so")):
        print(f"engine: building {library}'s CUDA kernels (first use; this can take minutes, `engine doctor` "
              f"builds them ahead)", file=sys.stderr)
    ok, dt, why = run_child(lib.code, float(os.environ.get(JIT_TIMEOUT_ENV, 900)))
    if not ok:
        cleaned = clear_stale_lock(folder, max_age_s=0.0)  # our own killed child's lock, if any
        notes += [n for n in [cleaned] if n]
    msg = "; ".join(([] if ok else [why]) + notes)
    return Probe(library, ok, round(dt, 2), msg)


__all__ = ["LIBRARIES", "Library", "Probe", "probe", "clear_stale_lock", "run_child", "build_dir"]
