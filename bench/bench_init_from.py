"""The coarse-to-fine chain on the shapes world: a NeRF (or Gaussians) run, then `--renderer mesh --init-from` it.

    python bench/bench_init_from.py [--prompt "a blue torus"] [--source nerf] [--source-steps 200]
                                    [--steps 100] [--seeds 0 1 2 3] [--out /tmp/bench_init_from]

Reports the ground-truth metrics of engine.outputs.evaluate_shapes (8 held-out views, PSNR and silhouette IoU; the
mesh is lit like the ground truth, see ``ground_truth_light``) for the source run, for the mesh right after the
transfer (step 0: SDF from the source's density, albedo distilled from its renders) and after the refinement, with
wall seconds. Prints a markdown table for docs/benchmarks.md.
"""

import argparse
import os
import shutil
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _generate(argv: list[str]) -> tuple[str, float]:
    from engine.cli import main
    t0 = time.perf_counter()
    if main(["generate", *argv, "--train.no-progress", "--train.video-frames", "0", "--train.no-export"]) != 0:
        raise SystemExit(f"engine generate {' '.join(argv)} failed")
    return argv[argv.index("--out") + 1], time.perf_counter() - t0


def _eval(run: str) -> dict:
    import json
    with open(os.path.join(run, "eval.json")) as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", default="a blue torus")
    ap.add_argument("--source", default="nerf", choices=["nerf", "gaussians"])
    ap.add_argument("--source-steps", type=int, default=200)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--out", default="/tmp/bench_init_from")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `engine generate` flags (mesh runs)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    shutil.rmtree(args.out, ignore_errors=True)

    from engine import outputs
    from engine.config import load_config
    from engine.init_from import initialise
    from renderers.mesh import MeshConfig

    src, src_s = _generate([args.prompt, "--prior", "shapes-exemplar", "--renderer", args.source, "--steps",
                            str(args.source_steps), "--out", os.path.join(args.out, "source")])
    ev = _eval(src)
    rows = [(f"{args.source} source, {args.source_steps} steps", "0", ev["psnr"], ev["iou"], src_s)]
    cfg = load_config(os.path.join(src, "config.yaml"))
    t0 = time.perf_counter()
    mcfg = MeshConfig(init_from=src)
    mesh = mcfg.build(torch.Generator().manual_seed(0))
    initialise(mesh, mcfg)
    mesh.eval()
    ev0 = outputs.evaluate_shapes(mesh, args.prompt, cfg.cameras, 8, cfg.resolution, "cpu")
    rows.append(("mesh at the transfer (step 0)", "0", ev0["psnr"], ev0["iou"], time.perf_counter() - t0))
    finals = []
    for seed in args.seeds:
        run, s = _generate([args.prompt, "--prior", "shapes-exemplar", "--renderer", "mesh",
                            "--renderer.init-from", src,
                            "--steps", str(args.steps), "--seed", str(seed),
                            "--out", os.path.join(args.out, f"mesh_{seed}"), *args.extra])
        ev = _eval(run)
        finals.append(ev)
        rows.append((f"mesh refined, {args.steps} steps", str(seed), ev["psnr"], ev["iou"], s))

    print(f"\n{args.prompt!r}: {args.source} -> mesh refinement ({' '.join(args.extra) or 'defaults'})\n")
    print("| stage | seed | PSNR dB | IoU | wall s |")
    print("|---|---|---|---|---|")
    for stage, seed, psnr, iou, s in rows:
        print(f"| {stage} | {seed} | {psnr:.2f} | {iou:.3f} | {s:.0f} |")
    mean_p = sum(e["psnr"] for e in finals) / len(finals)
    mean_i = sum(e["iou"] for e in finals) / len(finals)
    print(f"\nrefined mean over {len(finals)} seeds: PSNR {mean_p:.2f} dB, IoU {mean_i:.3f} "
          f"(source {rows[0][2]:.2f} / {rows[0][3]:.3f})")


if __name__ == "__main__":
    main()
