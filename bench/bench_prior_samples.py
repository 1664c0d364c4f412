"""Sample quality of a learned shapes prior with the standard diffusers pipeline (issue #12).

    python bench/bench_prior_samples.py [--prior guidance/priors/weights/shapes-sd] [--seeds 0 1 2 3]
        [--steps 50] [--cfg 7.5] [--grid docs/prior_samples.png] [--json out.json]

Loads the folder with plain ``StableDiffusionPipeline.from_pretrained`` (no Distillery code in the sampling), samples
"a {colour} {shape}" for all 30 pairs of the shapes world x the seeds with DDIM (50 steps, CFG 7.5 by default), and
classifies every sample against the world's ground-truth renders (foundation/shapes.py):

- foreground: pixels farther from the background colour (the median of the image border; the prior was trained on
  white and on random solid backgrounds) than Otsu's threshold on that distance, largest connected component;
- colour: the albedo whose shaded copy is nearest the median interior foreground colour;
- shape: the nearest ground-truth shading map (12 azimuths x 7 elevations per shape) to the sample's, both cropped to
  the foreground's bounding square and resized to 32x32, which makes the test independent of distance and fov.

The classifier is checked first on ground-truth renders from random cameras of the training distribution, random
colours and backgrounds (its accuracy is printed), so a low sample score is the model's and not the classifier's.
Prints markdown rows; the grid shows rows of three prompts x the seeds, wrong samples framed in black.
"""

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

FG_DISTANCE = 0.12
CROP = 32
ELEVATIONS = (-10.0, 5.0, 20.0, 35.0, 50.0, 65.0, 80.0)


def _signature(mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor | None:
    """``value`` [H,W] inside ``mask`` [H,W], cropped to the mask's bounding square and resized to [CROP,CROP]; None
    when the mask is (nearly) empty."""
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    if len(ys) < 4:
        return None
    y0, y1, x0, x1 = ys.min().item(), ys.max().item() + 1, xs.min().item(), xs.max().item() + 1
    side = max(y1 - y0, x1 - x0)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    padded = F.pad((value * mask)[None, None].float(), (side, side, side, side))
    top, left = int(round(cy - side / 2)) + side, int(round(cx - side / 2)) + side
    return F.interpolate(padded[:, :, top:top + side, left:left + side], (CROP, CROP), mode="area")[0, 0]


def _otsu(d: torch.Tensor, bins: int = 64) -> float:
    """Otsu's threshold of the values d (maximises the between-class variance of the two sides)."""
    hist = torch.histc(d.flatten(), bins, 0.0, float(d.max()) + 1e-6)
    centres = (torch.arange(bins) + 0.5) * (float(d.max()) + 1e-6) / bins
    w0 = hist.cumsum(0)
    w1 = hist.sum() - w0
    m0 = (hist * centres).cumsum(0) / w0.clamp_min(1)
    m1 = ((hist * centres).sum() - (hist * centres).cumsum(0)) / w1.clamp_min(1)
    return float(centres[int((w0 * w1 * (m0 - m1) ** 2).argmax())])


class Classifier:
    """Colour and shape of an image of the shapes world, by comparison with ground-truth renders.

    Colour: the albedo whose scaled copy (shading 0.5..1.05) is nearest the median interior foreground pixel.
    Shape: the image is turned into a shading map (each pixel's projection on that albedo), cropped to the
    foreground's bounding square, and compared (mean absolute difference) with the ground-truth shading maps of every
    shape from 12 azimuths x 7 elevations (the light is fixed in the world, so azimuth matters for every shape).
    """

    def __init__(self, resolution: int = 64):
        from foundation.cameras import orbit_cameras
        from foundation.shapes import ALBEDO, COLOURS, SHAPES, render_shape

        self.colours, self.shapes = list(COLOURS), list(SHAPES)
        self.albedo = ALBEDO
        az = torch.arange(0.0, 360.0, 30.0).repeat_interleave(len(ELEVATIONS))
        el = torch.tensor(ELEVATIONS).repeat(12)
        cams = orbit_cameras(az, el, 2.5, 40.0, resolution)
        self.refs: dict[str, torch.Tensor] = {}
        for s in SHAPES:
            r = render_shape(s, cams, supersample=1)
            sigs = [_signature(c, sh / c.clamp_min(1e-6)) for c, sh in zip(r.coverage, r.shaded)]
            self.refs[s] = torch.stack([g for g in sigs if g is not None])

    def foreground(self, img: torch.Tensor) -> torch.Tensor:
        """[H,W,3] in [0,1] -> [H,W] float mask: pixels farther from the border's median colour than Otsu's
        threshold on that distance (at least FG_DISTANCE), then the largest 4-connected component, so a tinted,
        blotchy background of a sample does not join the object."""
        from scipy import ndimage

        border = torch.cat([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3), img[:, :2].reshape(-1, 3),
                            img[:, -2:].reshape(-1, 3)])
        bg = border.median(0).values
        d = (img - bg).norm(dim=-1)
        mask = (d > max(FG_DISTANCE, _otsu(d))).numpy()
        labels, n = ndimage.label(mask)
        if n > 1:
            sizes = ndimage.sum(mask, labels, range(1, n + 1))
            mask = labels == (1 + int(np.argmax(sizes)))
        return torch.from_numpy(mask).float()

    def __call__(self, img: torch.Tensor) -> tuple[str | None, str | None]:
        mask = self.foreground(img)
        if mask.sum() < 4:
            return None, None
        interior = -F.max_pool2d(-mask[None, None], 3, 1, 1)[0, 0]
        pix = img[(interior if interior.sum() >= 4 else mask) > 0.5]
        rgb = pix.median(0).values
        a = self.albedo
        scale = ((a @ rgb) / (a * a).sum(-1)).clamp(0.5, 1.05)
        k = int((scale[:, None] * a - rgb).norm(dim=-1).argmin())
        shading = (img @ a[k]) / (a[k] @ a[k])
        sig = _signature(mask, shading.clamp(0, 1.2))
        scores = {s: (refs - sig).abs().mean((1, 2)).min().item() for s, refs in self.refs.items()}
        return self.colours[k], min(scores, key=scores.get)


def check_classifier(clf: Classifier, n: int, resolution: int, seed: int = 0) -> float:
    """Accuracy (colour and shape both right) on ground-truth renders from the training camera distribution."""
    from foundation.cameras import orbit_cameras
    from foundation.shapes import COLOURS, SHAPES, render_shape

    gen = torch.Generator().manual_seed(seed)
    right = total = 0
    for s in SHAPES:
        u = torch.rand(n, 4, generator=gen)
        cams = orbit_cameras(-180 + 360 * u[:, 0], -10 + 55 * u[:, 1], 2.0 + 0.6 * u[:, 2], 40 + 30 * u[:, 3],
                             resolution)
        r = render_shape(s, cams)
        for i in range(n):
            c = list(COLOURS)[int(torch.randint(0, len(COLOURS), (1,), generator=gen))]
            bg = tuple(torch.rand(3, generator=gen).tolist()) if i % 2 else (1.0, 1.0, 1.0)
            got = clf(r.colourise(c, bg)[i])
            right += got == (c, s)
            total += 1
    return right / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default=os.path.join("guidance", "priors", "weights", "shapes-sd"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--template", default="a {colour} {shape}")
    ap.add_argument("--grid", default="", help="write the sample grid PNG here")
    ap.add_argument("--json", default="", help="write every sample's classification here")
    ap.add_argument("--check-views", type=int, default=8, help="ground-truth renders per shape to check the classifier")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from foundation.shapes import COLOURS, SHAPES

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    t0 = time.perf_counter()
    clf = Classifier()
    acc_gt = check_classifier(clf, args.check_views, 64)
    t_clf = time.perf_counter() - t0
    pipe = StableDiffusionPipeline.from_pretrained(args.prior, dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    pairs = [(c, s) for s in SHAPES for c in COLOURS]
    prompts = [args.template.format(colour=c, shape=s) for c, s in pairs for _ in args.seeds]
    gens = [torch.Generator().manual_seed(seed) for _ in pairs for seed in args.seeds]
    t1 = time.perf_counter()
    with torch.no_grad():
        images = pipe(prompts, num_inference_steps=args.steps, guidance_scale=args.cfg, generator=gens, height=size,
                      width=size, output_type="np").images
    t_sample = time.perf_counter() - t1
    rows, right_colour, right_shape, right = [], 0, 0, 0
    per_pair: dict[tuple[str, str], int] = {}
    for k, (prompt, img) in enumerate(zip(prompts, images)):
        c, s = pairs[k // len(args.seeds)]
        got_c, got_s = clf(torch.from_numpy(np.asarray(img)).float())
        ok = (got_c, got_s) == (c, s)
        right_colour += got_c == c
        right_shape += got_s == s
        right += ok
        per_pair[(c, s)] = per_pair.get((c, s), 0) + ok
        rows.append({"prompt": prompt, "seed": args.seeds[k % len(args.seeds)], "colour": got_c, "shape": got_s,
                     "correct": bool(ok)})
    n = len(prompts)
    print(f"classifier on ground-truth renders: {acc_gt:.1%} ({args.check_views} views x {len(SHAPES)} shapes)")
    print("| prior | prompts x seeds | DDIM steps | CFG | colour right | shape right | both right | sampling s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {os.path.basename(os.path.normpath(args.prior))} | {len(pairs)} x {len(args.seeds)} | {args.steps} | "
          f"{args.cfg:g} | {right_colour / n:.1%} | {right_shape / n:.1%} | {right / n:.1%} | {t_sample:.1f} |")
    wrong = [f"{c} {s} {len(args.seeds) - v}/{len(args.seeds)}" for (c, s), v in per_pair.items()
             if v < len(args.seeds)]
    print("wrong samples by prompt: " + (", ".join(wrong) if wrong else "none"))
    print(f"(classifier setup {t_clf:.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"accuracy": right / n, "colour": right_colour / n, "shape": right_shape / n,
                       "classifier_on_ground_truth": acc_gt, "samples": rows}, f, indent=1)
    if args.grid:
        save_grid(args.grid, images, [r["correct"] for r in rows], per_row=3 * len(args.seeds))


def save_grid(path: str, images, correct: list[bool], per_row: int) -> None:
    """Tiles in rows of ``per_row``, a 1-pixel white gap, wrong samples framed in black."""
    from PIL import Image

    h, w = images[0].shape[:2]
    rows = (len(images) + per_row - 1) // per_row
    grid = np.full((rows * (h + 1), per_row * (w + 1), 3), 255, np.uint8)
    for k, (img, ok) in enumerate(zip(images, correct)):
        tile = (np.asarray(img) * 255).round().clip(0, 255).astype(np.uint8)
        if not ok:
            tile = tile.copy()
            tile[:2], tile[-2:], tile[:, :2], tile[:, -2:] = 0, 0, 0, 0
        r, c = divmod(k, per_row)
        grid[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = tile
    Image.fromarray(grid).quantize(64).save(path, optimize=True)  # 64 colours keep the grid small for docs/


if __name__ == "__main__":
    main()
