"""Benchmark `engine material` on the materials world: a dozen prompts against their ground-truth maps.

    python bench/bench_material.py [--steps 300] [--supersample 2] [--size 64] [--prompts "a red checker" ...]

Each prompt runs the "material" preset (materials prior, SDS) through engine.train.generate, then the written maps
are measured by foundation.materials.evaluate: colour error and spread of the base-colour clusters (sRGB levels, worst
cluster), roughness and metallic means, the dominant frequency vs the true one (the period; for a plain material
"ok" means no component above 2 sRGB levels), the seam ratio, and the embossed relief. Prints one markdown row
per prompt (docs/benchmarks.md, "Materials").
"""

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch
from PIL import Image

PROMPTS = (
    "a matte red plain material",
    "a glossy red checker material",
    "a metallic yellow stripes material",
    "a matte blue dots material",
    "a glossy green stripes material",
    "a metallic orange checker material",
    "a matte white checker material",
    "a glossy blue plain material",
    "a metallic green dots material",
    "a matte orange stripes material",
    "an embossed glossy yellow dots material",
    "an embossed matte blue checker material",
)


def run_one(prompt: str, steps: int, supersample: int, size: int, out: str) -> tuple[dict, float]:
    from engine.config import PRESETS
    from engine.train import generate
    from foundation import materials

    cfg = PRESETS["material"]()
    cfg.prompt, cfg.out = prompt, out
    cfg.renderer = type(cfg.renderer)(texels=size, supersample=supersample)
    cfg.train.steps, cfg.train.progress, cfg.train.export_texture_size = steps, False, size
    cfg.train.preview_every = 0
    t0 = time.perf_counter()
    generate(cfg)
    wall = time.perf_counter() - t0
    read = lambda n: np.asarray(Image.open(os.path.join(out, n)))  # noqa: E731
    maps = {"basecolor": read("basecolor.png") / 255.0, "roughness": read("roughness.png") / 255.0,
            "metallic": read("metallic.png") / 255.0, "height": read("height.png") / 65535.0,
            "normal": read("normal.png") / 255.0 * 2 - 1}
    return materials.evaluate(maps, materials.parse_prompt(prompt)), wall


def true_tilt(prompt: str, size: int = 64) -> float:
    """Mean |n_xy| of the true normals where they tilt (the embossed pattern's edges)."""
    from foundation.materials import gt_height_tensor, parse_prompt
    from renderers.material import tangent_normals
    n = tangent_normals(gt_height_tensor(parse_prompt(prompt), size), None, True)[0, :2].norm(dim=0)
    return float(n[n > 0.1].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--supersample", type=int, default=2)
    ap.add_argument("--size", type=int, default=64, help="texels of the optimised and written maps")
    ap.add_argument("--prompts", nargs="+", default=list(PROMPTS))
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; steps {args.steps}, supersample {args.supersample}, {args.size} texels")
    print("| prompt | colour err | colour spread | roughness (true) | metallic (true) | frequency (true) | period "
          "| seam ratio | height relief (true) | relief in normals: cos, tilt (true) | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    from foundation.materials import FINISHES, parse_prompt
    with tempfile.TemporaryDirectory() as tmp:
        for i, prompt in enumerate(args.prompts):
            ev, wall = run_one(prompt, args.steps, args.supersample, args.size, os.path.join(tmp, str(i)))
            r, m = FINISHES[parse_prompt(prompt).finish]
            relief = f"{ev['relief']:.2f} ({ev['true_relief']:.0f})" if "relief" in ev else "-"
            nrm = (f"{ev['normal_cos_edges']:.3f}, {ev['normal_tilt_edges']:.2f} (1, {true_tilt(prompt):.2f})"
                   if "normal_cos_edges" in ev else f"flat: tilt {ev.get('normal_tilt_flat', 0):.3f}")
            fmt = lambda f: "none" if f is None else f"{tuple(f)}"  # noqa: E731
            print(f"| {prompt} | {ev['colour_error']:.1f} | {ev['colour_spread']:.1f} | {ev['roughness_mean']:.2f} "
                  f"({r:g}) | {ev['metallic_mean']:.2f} ({m:g}) | {fmt(ev['frequency'])} ({fmt(ev['true_frequency'])}) "
                  f"| {'ok' if ev['period_ok'] else 'wrong'} | {ev['seam_ratio']:.2f} | {relief} | {nrm} "
                  f"| {wall:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
