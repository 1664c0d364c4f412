"""Guidance suite on the shapes world: objective x (PSNR / IoU against ground truth, s/step, steps to the bar).

    python bench/bench_guidance.py [--steps 300] [--prompts "a red cube" "a blue torus"] [--objectives sds vsd ...]
                                   [--renderer nerf] [--eval-every 50] [--diversity] [--out /tmp/bench_guidance]

Each run is `engine generate PROMPT --prior shapes-exemplar --guidance NAME` with the shapes-world settings of
tests/test_guidance_e2e.py (PROOF_ARGS). Quality is the held-out evaluation of engine.outputs (PSNR on 8 views at
azimuth 5 + 45 k, silhouette IoU), measured on the final scene and, every --eval-every steps, on checkpoints through
the training loop's hooks, to find the first step at which PSNR >= 16 dB and IoU >= 0.80 (the proof's bar).
--diversity runs "a cube" with 4 VSD particles and with 4 SDS seeds, every scene starting from its own random
saturated colour (--renderer.init-albedo random), and reports the final colours, their mean pairwise distance and
chroma (max - min channel).
Prints a markdown table (paste it into docs/benchmarks.md, "## Guidance suite").
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def run(name: str, prompt: str, steps: int, out: str, renderer: str, eval_every: int, seed: int = 0,
        extra: list[str] | None = None) -> dict:
    from engine import outputs
    from engine.cli import build_generate_config
    from engine.train import Hooks, generate
    from tests.test_guidance_e2e import IOU_BAR, PSNR_BAR, proof_argv
    argv = proof_argv(name, prompt, out, steps, seed) + ["--renderer", renderer, "--train.no-progress",
                                                         "--train.video-frames", "0", *(extra or [])]
    cfg, _ = build_generate_config(argv)
    curve, reached, t_train = [], None, [0.0, time.perf_counter()]
    scene_ref = {}

    def on_step(done, total, logs):
        nonlocal reached
        if eval_every and done % eval_every == 0 and done < total and "scene" in scene_ref:
            t0 = time.perf_counter()
            ev = outputs.evaluate_shapes(scene_ref["scene"], cfg.prompt, cfg.cameras, 8, cfg.resolution, "cpu")
            t_train[1] += time.perf_counter() - t0  # evaluation time is not training time
            curve.append((done, ev["psnr"], ev["iou"]))
            if reached is None and ev["psnr"] >= PSNR_BAR and ev["iou"] >= IOU_BAR:
                reached = done

    import engine.train as train_mod
    orig = train_mod._build_scene

    def capture(*a, **k):
        scene_ref["scene"] = orig(*a, **k)
        return scene_ref["scene"]
    train_mod._build_scene = capture
    try:
        t0 = time.perf_counter()
        run_dir = generate(cfg, hooks=Hooks(on_step=on_step))
        wall = time.perf_counter() - t0
    finally:
        train_mod._build_scene = orig
    with open(os.path.join(run_dir, "eval.json")) as f:
        ev = json.load(f)
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    s_per_step = 1.0 / rows[-1]["it_per_s"] if rows and rows[-1].get("it_per_s") else wall / steps
    if reached is None and ev["psnr"] >= PSNR_BAR and ev["iou"] >= IOU_BAR:
        reached = steps
    return {"name": name, "prompt": prompt, "psnr": ev["psnr"], "iou": ev["iou"], "colour": ev["colour"],
            "mean_rgb": ev["mean_rgb_in_mask"], "s_per_step": s_per_step, "reached": reached, "curve": curve}


def diversity(steps: int, out: str, renderer: str) -> list[str]:
    """Final colours of 4 VSD particles and of 4 SDS seeds on "a cube", from random saturated initial colours."""
    import engine.train as train_mod
    from engine.cli import build_generate_config
    from engine.outputs import evaluate_shapes
    from engine.train import generate
    from tests.test_guidance_e2e import proof_argv
    lines = []
    for name, n_particles, seeds in (("vsd", 4, [0]), ("sds", 1, [0, 1, 2, 3])):
        colours = []
        for seed in seeds:
            argv = proof_argv(name, "a cube", f"{out}/div-{name}-{seed}", steps, seed) + [
                "--renderer", renderer, "--particles", str(n_particles), "--train.no-progress",
                "--train.video-frames", "0", "--train.eval-views", "0", "--train.no-export",
                "--renderer.init-albedo", "random"]
            cfg, _ = build_generate_config(argv)
            holder = {}
            orig = train_mod._build_scene
            train_mod._build_scene = lambda *a, **k: holder.setdefault("s", orig(*a, **k))
            try:
                generate(cfg)
            finally:
                train_mod._build_scene = orig
            scenes = getattr(holder["s"], "scenes", [holder["s"]])
            for sc in scenes:
                ev = evaluate_shapes(sc, "a cube", cfg.cameras, 8, cfg.resolution, "cpu")
                colours.append((ev["colour"], ev["mean_rgb_in_mask"]))
        rgb = torch.tensor([c for _, c in colours])
        pair = torch.cdist(rgb, rgb)[torch.triu_indices(len(rgb), len(rgb), 1).unbind()]
        chroma = rgb.amax(1) - rgb.amin(1)
        lines.append(f"- {name} ({'4 particles' if n_particles > 1 else '4 seeds'}): "
                     + "; ".join(f"{c} {tuple(round(v, 2) for v in m)}" for c, m in colours)
                     + f" | mean pairwise rgb distance {pair.mean():.3f}, "
                     + f"chroma {', '.join(f'{x:.2f}' for x in chroma)}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--prompts", nargs="+", default=["a red cube", "a blue torus"])
    p.add_argument("--objectives", nargs="+", default=["sds", "vsd", "ism", "tsm", "asd", "csm", "csd"])
    p.add_argument("--renderer", default="nerf")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--diversity", action="store_true")
    p.add_argument("--out", default="/tmp/bench_guidance")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # shared machines: OMP_NUM_THREADS=1
    results = []
    for name in a.objectives:
        for prompt in a.prompts:
            r = run(name, prompt, a.steps, f"{a.out}/{name}-{prompt.replace(' ', '_')}-{time.time_ns()}", a.renderer,
                    a.eval_every)
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    print(f"\nshapes world, {a.renderer}, {a.steps} steps, 64x64, seed 0; bar PSNR >= 16 dB and IoU >= 0.80\n")
    print("| objective | prompt | PSNR dB | IoU | colour | s/step | steps to bar |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['prompt']} | {r['psnr']:.2f} | {r['iou']:.3f} | {r['colour']} | "
              f"{r['s_per_step']:.3f} | {r['reached'] if r['reached'] is not None else 'not reached'} |")
    if a.diversity:
        print("\nDiversity on \"a cube\" (final colour per particle / seed, mean rgb inside the true silhouette):")
        for line in diversity(a.steps, a.out, a.renderer):
            print(line)


if __name__ == "__main__":
    main()
