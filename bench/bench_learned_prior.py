"""Every objective x renderer x prompt through the learned shapes prior, at the objectives' paper defaults (issue #12).

    python bench/bench_learned_prior.py [--prior shapes] [--objectives sds vsd ism tsm asd csm csd]
        [--renderers nerf gaussians] [--prompts "a red cube" "a blue torus"] [--out /tmp/bench_learned]
        [--extra --train.steps 400 ...]

Each run is the plain command a user types, `engine generate PROMPT --prior P --guidance G --renderer R` (plus
`--train.video-frames 0 --train.no-export`: the bench measures the distillation, not the video or the export), in a
child process with one torch thread. Everything else comes from the diffusion preset (the objective's own defaults,
taken from its paper: guidance-spec.md) and the prior folder's distillery.json (cameras, background, run length,
CFG 7.5); `--paper` puts back the paper's CFG scale where it differs (SDS: 100).

Quality is the run's eval.json (engine.outputs.evaluate_shapes: 8 held-out views against the shapes world's analytic
ground truth, never seen by the prior's training as such): PSNR on the prompted object, silhouette IoU, the mean
opacity inside the true silhouette (below 1: the background shows through), and which of
the world's 5 shapes (by silhouette IoU) and 6 colours (by PSNR) the result is closest to. "right" means both the
closest shape and the closest colour are the prompted ones. Prints a markdown table for docs/benchmarks.md.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PAPER_CFG = {"sds": ["--guidance.guidance-scale", "100", "--guidance.cfg-convention", "threestudio"]}
"""Where an objective's paper scale differs from the learned prior folder's recommended CFG 7.5 (standard): DreamFusion
(SD) uses 100 in threestudio's convention (guidance-spec.md 2.1). VSD, ISM, TSM, ASD and CSM use 7.5; CSD has no CFG
scale (its c_y / c_neg / c_null schedules are its own defaults)."""


def run(prior: str, objective: str, renderer: str, prompt: str, out: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "engine.cli", "generate", prompt, "--prior", prior, "--guidance", objective,
           "--renderer", renderer, "--out", out, "--train.video-frames", "0", "--train.no-export",
           "--train.no-progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    row = {"objective": objective, "renderer": renderer, "prompt": prompt, "wall_s": round(wall, 1), "rc": p.returncode}
    if p.returncode != 0:
        row["error"] = (p.stderr.strip().splitlines() or ["?"])[-1]
        return row
    with open(os.path.join(out, "eval.json")) as f:
        ev = json.load(f)
    steps = None
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if rows:
        steps = rows[-1].get("step")
    colour, shape = prompt.split()[-2:]
    row.update(psnr=round(ev["psnr"], 2), iou=round(ev["iou"], 3), closest_shape=ev["closest_shape"],
               closest_colour=ev["closest_colour"], mean_rgb=ev["mean_rgb_in_mask"],
               alpha=ev.get("mean_alpha_in_mask"), steps=steps,
               right=ev["closest_shape"] == shape and ev["closest_colour"] == colour,
               preset=next((ln for ln in p.stderr.splitlines() if "diffusion preset" in ln), "").strip())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="shapes")
    ap.add_argument("--objectives", nargs="+", default=["sds", "vsd", "ism", "tsm", "asd", "csm", "csd"])
    ap.add_argument("--renderers", nargs="+", default=["nerf", "gaussians"])
    ap.add_argument("--prompts", nargs="+", default=["a red cube", "a blue torus"])
    ap.add_argument("--out", default="/tmp/bench_learned")
    ap.add_argument("--jsonl", default="", help="append every row here as it finishes")
    ap.add_argument("--paper", action="store_true",
                    help="every objective at its paper's CFG scale (PAPER_CFG), over the folder's recommendation")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `engine generate` flags (last)")
    a = ap.parse_args()
    rows = []
    for renderer in a.renderers:
        for objective in a.objectives:
            for prompt in a.prompts:
                out = os.path.join(a.out, f"{renderer}-{objective}-{prompt.replace(' ', '_')}-{time.time_ns()}")
                extra = [*PAPER_CFG.get(objective, []), *a.extra] if a.paper else a.extra
                r = run(a.prior, objective, renderer, prompt, out, extra)
                rows.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
                if a.jsonl:
                    with open(a.jsonl, "a") as f:
                        f.write(json.dumps(r) + "\n")
    mode = "paper CFG scales" if a.paper else "the folder's recommended settings"
    print(f"\nprior {a.prior}, {mode}, 1 torch thread; extra flags: {' '.join(a.extra) or 'none'}\n")
    print("| renderer | objective | prompt | PSNR dB | IoU | alpha in silhouette | closest shape | closest colour "
          "| right | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["rc"]:
            print(f"| {r['renderer']} | {r['objective']} | {r['prompt']} | failed: {r['error']} | | | | | no | "
                  f"{r['wall_s']} |")
            continue
        print(f"| {r['renderer']} | {r['objective']} | {r['prompt']} | {r['psnr']:.2f} | {r['iou']:.3f} | "
              f"{r['alpha']:.3f} | "
              f"{r['closest_shape']} | {r['closest_colour']} | {'yes' if r['right'] else 'no'} | {r['wall_s']} |")
    ok = sum(bool(r.get("right")) for r in rows)
    print(f"\nright shape and colour: {ok}/{len(rows)}")


if __name__ == "__main__":
    main()
