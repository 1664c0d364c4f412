"""Forward+backward time and peak memory of the Gaussian splat backends; prints a markdown table.

    python bench/bench_gaussians.py [--sizes 64 128 256] [--counts 1000 10000 50000] [--budget 60]
    python bench/bench_gaussians.py --run RUN_FOLDER [--views 2] [--sizes 64]

Scene: N Gaussians uniform in a ball of radius 0.6, scale 0.03, opacity 0.3, random rotations, one camera at 2.5 m
with a 40° field of view, features = RGB + distance + normal (D = 7, what Gaussians.render composites).
Each combination runs in a fresh subprocess. Time is the minimum of ``--repeats`` runs after one warm-up (the minimum,
because the machine is shared and noise only adds time). CPU peak memory is the child's peak RSS minus its RSS just
before the first render; CUDA peak is torch.cuda.max_memory_allocated. A combination is skipped when the previous
(smaller) resolution for the same N took longer than ``--budget`` seconds.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from foundation.cameras import orbit_cameras
from renderers.kernels import splat, splat_cuda


def _scene(n: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = d * 0.6 * torch.rand(n, 1, generator=g) ** (1 / 3)
    quats = torch.randn(n, 4, generator=g)
    scales = torch.full((n, 3), 0.03) * (0.5 + torch.rand(n, 3, generator=g))
    opac = torch.full((n,), 0.3)
    feats = torch.rand(1, n, 7, generator=g)
    return [t.to(device) for t in (means, quats, scales, opac, feats)]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def run_one(backend: str, n: int, size: int, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median seconds of forward+backward and peak memory in MB for one (backend, N, resolution)."""
    cams = orbit_cameras([30.0], 20.0, 2.5, 40.0, size)
    vm, K = cams.viewmat_opencv().to(device), cams.intrinsics().to(device)
    leaves = [t.requires_grad_(True) for t in _scene(n, device)]
    times = []
    rss0 = _current_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = splat(backend, *leaves, vm, K, size, size)
        (r.render.square().sum() + r.alpha.sum()).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - t0)
        for t in leaves:
            t.grad = None
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else _peak_rss_mb() - rss0)
    return min(times), peak


def run_scene(run_dir: str, views: int, size: int, repeats: int) -> tuple[int, float]:
    """(N, minimum seconds of forward+backward) of a trained Gaussians run's newest checkpoint, at ``views`` orbit
    cameras (elevation 20°, 2.5 m, 40°; the demo's two views a step by default) and the torch backend on CPU."""
    from engine.runfolder import load_run
    from renderers.gaussians import Gaussians

    scene = load_run(run_dir).scene
    if not isinstance(scene, Gaussians):
        raise SystemExit(f"{run_dir} is not a Gaussians run (its scene is {type(scene).__name__})")
    az = torch.linspace(0.0, 360.0, views + 1)[:-1] + 30.0
    cams = orbit_cameras(az, 20.0, 2.5, 40.0, size)
    vm, K = cams.viewmat_opencv(), cams.intrinsics()
    params = (scene.means, scene.quats, scene.scales, scene.opacities)
    leaves = [t.detach().clone().requires_grad_(True) for t in params]
    feats = torch.rand(views, leaves[0].shape[0], 7, generator=torch.Generator().manual_seed(0), requires_grad=True)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        r = splat("torch", *leaves, feats, vm, K, size, size)
        (r.render.square().sum() + r.alpha.sum()).backward()
        if i > 0:
            times.append(time.perf_counter() - t0)
    return leaves[0].shape[0], min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--counts", type=int, nargs="+", default=[1000, 10000, 50000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=60.0, help="skip larger combos once one takes this long (s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--run", default=None, help="time a trained Gaussians run's scene instead of random ones")
    ap.add_argument("--views", type=int, default=2, help="cameras per render with --run")
    ap.add_argument("--one", nargs=4, metavar=("BACKEND", "DEVICE", "N", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        b, dev, n, size = args.one
        print(json.dumps(run_one(b, int(n), int(size), args.repeats, torch.device(dev))))
        return
    if args.run:
        print("| run | N | views | resolution | fwd+bwd (ms) |")
        print("|---|---|---|---|---|")
        for size in args.sizes:
            n, sec = run_scene(args.run, args.views, size, args.repeats)
            print(f"| {args.run} | {n} | {args.views} | {size}² | {1000 * sec:.0f} |", flush=True)
        return
    runs = [("torch", torch.device("cpu"))]
    if splat_cuda.available():
        runs += [("torch", torch.device("cuda")), ("cuda", torch.device("cuda"))]
    print("| backend | device | N | resolution | fwd+bwd (ms) | peak mem (MB) |")
    print("|---|---|---|---|---|---|")
    for backend, device in runs:
        for n in args.counts:
            slow = False
            for size in args.sizes:
                if slow:
                    print(f"| {backend} | {device.type} | {n} | {size}² | skipped (previous > {args.budget:.0f} s) | |")
                    continue
                cmd = [sys.executable, __file__, "--repeats", str(args.repeats), "--threads", str(args.threads),
                       "--one", backend, device.type, str(n), str(size)]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                sec, mem = json.loads(res.stdout.strip().splitlines()[-1])
                slow = sec > args.budget
                print(f"| {backend} | {device.type} | {n} | {size}² | {1000 * sec:.0f} | {mem:.0f} |", flush=True)


if __name__ == "__main__":
    main()
