"""Benchmark the NeRF renderer: one training iteration (render + L2 loss + regularisers + backward + Adam).

Prints, per resolution, the wall-clock and CPU milliseconds per iteration (median and min), the evaluated samples
per iteration and the process's peak RSS so far. Resolutions run in increasing order, so each peak-RSS figure
covers that resolution and the ones before it.

    python bench/bench_nerf.py                       # default config, 64² and 128², 1 view, albedo shading
    python bench/bench_nerf.py --shading lambertian  # every step shaded, so normals are computed
    python bench/bench_nerf.py --set samples_per_ray=24 --set levels=5

On a shared machine, wall-clock times vary with load; "cpu" (process CPU time / threads) is steadier.
"""

import argparse
import ast
import dataclasses
import resource
import statistics
import time
import warnings

import torch

from foundation.cameras import orbit_cameras
from renderers.nerf import NeRFConfig

SHADING_PROBS = {"albedo": (1.0, 0.0, 0.0), "textureless": (0.0, 1.0, 0.0), "lambertian": (0.0, 0.0, 1.0)}


def parse_overrides(items: list[str]) -> dict:
    """``name=value`` strings into NeRFConfig keyword arguments (values parsed as Python literals)."""
    fields = {f.name for f in dataclasses.fields(NeRFConfig)}
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in fields:
            raise SystemExit(f"unknown NeRFConfig field {name!r}")
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name] = value
    return out


def bench(cfg: NeRFConfig, res: int, iters: int, warmup: int, threads: int) -> dict:
    """Time ``iters`` training iterations at ``res``² after ``warmup`` untimed ones."""
    gen = torch.Generator().manual_seed(0)
    nerf = cfg.build(gen)
    opt = torch.optim.Adam(list(nerf.param_groups().values()), betas=(0.9, 0.99))
    weights = cfg.default_weights()
    bg = torch.ones(1, res, res, 3)
    target = torch.full((1, res, res, 3), 0.5)
    wall, cpu, samples = [], [], []
    for step in range(warmup + iters):
        cams = orbit_cameras(torch.rand(1, generator=gen) * 360 - 180, 20.0, 2.5, 40.0, res)
        t0, c0 = time.perf_counter(), time.process_time()
        out = nerf.render(cams, bg)
        regs = nerf.regularizers(out, step)
        loss = ((out.rgb - target) ** 2).mean() + sum(weights[k] * v for k, v in regs.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        nerf.after_step(step, out)
        if step >= warmup:
            wall.append(time.perf_counter() - t0)
            cpu.append((time.process_time() - c0) / threads)
            samples.append(out.extras["n_samples"])
    return {"wall": wall, "cpu": cpu, "samples": statistics.mean(samples),
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    p.add_argument("--iters", type=int, default=10, help="timed iterations per resolution")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shading", choices=sorted(SHADING_PROBS) + ["schedule"], default="albedo",
                   help="force one shading mode every step, or 'schedule' for the config's own random choice")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a NeRFConfig field")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="backend 'auto' falls back")
    overrides = parse_overrides(args.set)
    if args.shading != "schedule":
        overrides.setdefault("shading_probs", SHADING_PROBS[args.shading])
        overrides.setdefault("ambient_only_steps", 0)
    cfg = NeRFConfig(**overrides)
    print(f"NeRF bench: threads={args.threads} shading={args.shading} overrides={overrides or '{}'}")
    print(f"{'res':>5} {'wall ms (med/min)':>18} {'cpu ms (med/min)':>17} {'samples':>8} {'peak RSS MB':>12}")
    for res in sorted(args.resolutions):
        r = bench(cfg, res, args.iters, args.warmup, args.threads)
        print(f"{res:>5} {statistics.median(r['wall']) * 1e3:>9.0f} / {min(r['wall']) * 1e3:<6.0f} "
              f"{statistics.median(r['cpu']) * 1e3:>8.0f} / {min(r['cpu']) * 1e3:<6.0f} {r['samples']:>8.0f} "
              f"{r['rss_mb']:>12.0f}")


if __name__ == "__main__":
    main()
