"""Benchmark the README demo: wall time, iterations per second and peak memory of
`engine generate "a red cube"` (the learned shapes prior; or any prior, prompt or renderer), plus its quality against
ground truth.

    python bench/bench_demo.py [--prompt "a red cube"] [--prior shapes] [--renderer nerf] [--steps 400] [--seeds 0 1]

Prints one markdown row per seed. Peak memory is the process's maximum resident set size (ru_maxrss).
"""

import argparse
import json
import os
import platform
import resource
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", default="a red cube")
    ap.add_argument("--prior", default="shapes", help="shapes (learned, the demo's) or shapes-exemplar, a folder...")
    ap.add_argument("--renderer", default="nerf")
    ap.add_argument("--guidance", default=None, help="default: the prior's recommended objective (the demo's)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--eval-every", type=int, default=50, help="evaluate against ground truth every N steps")
    ap.add_argument("--target-psnr", type=float, default=19.0, help="report training seconds to reach this PSNR")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `engine generate` arguments")
    args = ap.parse_args()

    from engine.cli import build_generate_config
    from engine.train import generate

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")
    print("| prompt | prior | renderer | guidance | seed | steps | wall s | train s | train it/s | peak RSS MiB "
          "| PSNR dB "
          f"| IoU | train s to {args.target_psnr:g} dB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            argv = [args.prompt, "--prior", args.prior, "--renderer", args.renderer,
                    *(["--guidance", args.guidance] if args.guidance else []),
                    "--seed", str(seed), "--out", os.path.join(tmp, "run"), "--train.no-progress",
                    "--train.eval-every", str(args.eval_every)]
            if args.steps is not None:
                argv += ["--steps", str(args.steps)]
            cfg, _ = build_generate_config(argv + args.extra)
            t0 = time.perf_counter()
            run = generate(cfg)
            wall = time.perf_counter() - t0
            rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
            ev = json.load(open(os.path.join(run, "eval.json"))) if os.path.exists(os.path.join(run, "eval.json")) \
                else {}
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        reach = next((r["train_s"] for r in rows if r.get("eval_psnr", -1) >= args.target_psnr), None)
        objective = type(cfg.guidance).__name__.removesuffix("Config").lower()
        print(f"| {args.prompt} | {args.prior} | {args.renderer} | {objective} | {seed} | {cfg.train.steps} | "
              f"{wall:.1f} | "
              f"{rows[-1]['train_s']:.1f} | {rows[-1]['it_per_s']:.2f} | {rss:.0f} | "
              f"{ev.get('psnr', float('nan')):.2f} | {ev.get('iou', float('nan')):.3f} | "
              f"{'not reached' if reach is None else f'{reach:.1f}'} |", flush=True)


if __name__ == "__main__":
    main()
