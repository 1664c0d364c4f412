"""What you download is what you saw (issue #17): train on the shapes world, export, and score the GLB against the
analytic shapes (foundation/shapes.py's SDFs and albedos; never used by training), with engine/export/fidelity.py.

    python bench/bench_fidelity.py [--renderers nerf gaussians mesh] [--shapes cube torus cone] [--steps N]
                                   [--mesh-steps 100] [--seed 0] [--prior shapes-exemplar]

Each run is `engine generate "a <colour> <shape>" --prior shapes-exemplar --renderer R` with the defaults (400 steps;
`--prior shapes` for the learned prior),
whose automatic export writes RUN/export/model.glb. "mesh" is the coarse-to-fine chain: the NeRF run of the same shape
(trained first if "nerf" is not in the list), then `--renderer mesh --renderer.init-from NERF_RUN --steps 100` (the
refinement measured in docs/benchmarks.md, "Mesh and PBR"); its wall time is the refinement's alone. "texture" is
`engine texture` on the exact primitive's mesh (the light-aware prior; only its albedo can be off). Prints one
markdown row per run: accuracy and completeness (metres), the largest piece's share of the surface area, the mean
baseColor (sRGB) against the true albedo, chromaticity distance and luminance ratio (linear RGB), the cube's
face-to-face spread (sRGB /255), corner ratio (the mid-height section's largest over smallest radius: sqrt(2)
for the true cube, 1 for a cylinder, see engine.export.fidelity.corner_ratio) and accuracy / completeness at the
yaw that aligns it best (the prompt does not say which way a cube faces; engine.export.fidelity.best_yaw), the
held-out PSNR/IoU of the renders, and the wall time of the whole command and of its export. `--json PATH` also
writes the rows. `--from-truth N` first fits each scene to the true shape (N steps on ground-truth views, then the run
as usual; its wall time includes the fit): whether a setting keeps the truth, i.e. whether the truth is a fixed point.

    python bench/bench_fidelity.py --diagnose RUN_FOLDER SHAPE [--levels L1 L2 ...]

Where a run's exported geometry is off, and whether the field or the extraction is to blame: the silhouette IoU of
the scene's own renders against the true shape's and against the extracted mesh's (16 orbit views, 64² and 128²,
alpha 0.5), the mean signed distance of the mesh by region (cube faces, or thirds of the height), the radius of
three horizontal sections per azimuth sector (a cube's reaches from 0.40 to 0.566 m), the albedo the renders show
where opaque (the NeRF's albedo map, the Gaussians' colour with the key light off; alpha > 0.9) against the truth's
and the exported GLB's luminance (what you download should be what you saw), and for each
`--levels` value the accuracy / completeness of the mesh marching cubes gives at that level (a sweep against the
ground truth: a diagnostic, never a way to pick the export's level).
"""

import argparse
import json
import os
import platform
import tempfile
import time

import torch

COLOUR_OF = {"cube": "red", "torus": "blue", "cone": "green", "sphere": "yellow", "cylinder": "orange"}


def fit_to_truth(scene, shape: str, colour: str, steps: int, resolution: int, seed: int = 0) -> None:
    """Fit a new scene to the true shape before its run (``--from-truth``): ``steps`` Adam steps on four ground-truth
    views a step (foundation.shapes' renders, elevations -30 to 60 so the underside is seen too), squared error of
    colour and alpha, plus, for a volumetric density field, the occupancy of 8192 random points against the true
    inside (alpha over 5 cm of the density). It asks whether the truth is a fixed point of a setting: the run then
    starts there, and the scores tell whether it stays."""
    from foundation.cameras import CameraConfig, sample_cameras
    from foundation.shapes import render_ground_truth
    from foundation.shapes import sdf as true_sdf

    cams_cfg = CameraConfig(elevation=(-30.0, 60.0))
    opt = torch.optim.Adam(list(scene.param_groups().values()), betas=(0.9, 0.99), eps=1e-15)
    gen = torch.Generator().manual_seed(1000 + seed)
    white = torch.ones(3)
    volumetric = getattr(scene, "field_kind", "") == "density"
    for i in range(steps):
        cams = sample_cameras(cams_cfg, resolution, gen, n=4)
        rgb, alpha = render_ground_truth(shape, colour, cams)
        out = scene.render(cams, white)
        loss = ((out.rgb - rgb) ** 2).mean() + ((out.alpha - alpha) ** 2).mean()
        if volumetric:
            p = (torch.rand(8192, 3, generator=gen) * 2 - 1) * 0.78
            occupied = 1 - torch.exp(-scene.query_density(p) * 0.05)
            loss = loss + ((occupied - (true_sdf(shape, p) < 0).float()) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        scene.after_step(i, out)
    if hasattr(scene, "set_step"):
        scene.set_step(0)


def run_one(renderer: str, shape: str, steps: int | None, seed: int, extra: list[str], folder: str,
            mesh_steps: int = 100, prior: str = "shapes-exemplar", from_truth: int = 0) -> dict:
    """Train, export and score one (renderer, shape) pair in ``folder``/<renderer>-<shape>; returns the row.
    ``from_truth`` > 0: the scene is first fitted to the true shape for that many steps (``fit_to_truth``)."""
    from engine.cli import build_generate_config
    from engine.export.fidelity import score_glb
    from engine.train import Hooks, generate

    colour = COLOUR_OF[shape]
    out = os.path.join(folder, f"{renderer}-{shape}")
    if renderer == "texture":
        return texture_one(shape, colour, steps, seed, extra, out)
    argv = [f"a {colour} {shape}", "--prior", prior, "--renderer", renderer, "--seed", str(seed),
            "--out", out, "--train.no-progress"]
    if renderer == "mesh":
        source = os.path.join(folder, f"nerf-{shape}")
        if not os.path.exists(os.path.join(source, "status.json")):
            run_one("nerf", shape, steps, seed, extra, folder, prior=prior)
        argv += ["--renderer.init-from", source, "--steps", str(mesh_steps)]
    elif steps is not None:
        argv += ["--steps", str(steps)]
    cfg, _ = build_generate_config(argv + extra)
    hooks = Hooks(init_scene=lambda scene: fit_to_truth(scene, shape, colour, from_truth, cfg.resolution, seed)
                  if from_truth > 0 else None)
    t0 = time.perf_counter()
    run = generate(cfg, hooks=hooks)
    wall = time.perf_counter() - t0
    glb = os.path.join(run, "export", "model.glb")
    ev_path = os.path.join(run, "eval.json")
    ev = json.load(open(ev_path)) if os.path.exists(ev_path) else {}
    rep_path = os.path.join(run, "export", "model_export.json")
    export_s = json.load(open(rep_path)).get("seconds") if os.path.exists(rep_path) else None
    if not os.path.exists(glb):
        status = json.load(open(os.path.join(run, "status.json")))
        return {"renderer": renderer, "shape": shape, "colour": colour, "error": status.get("export_error", "?")}
    fid = score_glb(glb, shape, colour, seed=seed).as_dict()
    return {"renderer": renderer, "shape": shape, "colour": colour, "steps": cfg.train.steps, "wall_s": wall,
            "export_s": export_s, "psnr": ev.get("psnr"), "iou": ev.get("iou"), **fid}


def texture_one(shape: str, colour: str, steps: int | None, seed: int, extra: list[str], out: str) -> dict:
    """Goal 3 of issue #17: `engine texture SHAPE.obj "a <colour> <shape>"` on the exact primitive (its geometry is
    the truth, so only the baked albedo is measured)."""
    import trimesh

    from engine.cli import main as cli
    from engine.export.fidelity import score_glb
    from engine.runfolder import load_run
    from renderers.reference import primitive_mesh

    os.makedirs(out, exist_ok=True)
    v, f = primitive_mesh(shape)
    mesh_path = os.path.join(out, f"{shape}.obj")
    trimesh.Trimesh(v.numpy(), f.numpy(), process=False).export(mesh_path)
    run = os.path.join(out, "run")
    argv = ["texture", mesh_path, f"a {colour} {shape}", "--out", run, "--seed", str(seed)]
    argv += ["--steps", str(steps)] if steps is not None else []
    t0 = time.perf_counter()
    rc = cli(argv + extra)
    wall = time.perf_counter() - t0
    glb = os.path.join(run, "textured.glb")
    if rc != 0 or not os.path.exists(glb):
        return {"renderer": "texture", "shape": shape, "colour": colour, "error": f"engine texture exited {rc}"}
    fid = score_glb(glb, shape, colour, seed=seed).as_dict()
    return {"renderer": "texture", "shape": shape, "colour": colour, "steps": load_run(run).config.train.steps,
            "wall_s": wall, "export_s": None, "psnr": None, "iou": None, **fid}  # its bake is inside wall_s


def format_row(r: dict) -> str:
    """One markdown table row."""
    if "error" in r:
        return f"| a {r['colour']} {r['shape']} | {r['renderer']} | export failed: {r['error']} |"
    bc = ", ".join(f"{x:.0f}" for x in r["base_colour"])
    tc = ", ".join(f"{x:.0f}" for x in r["true_colour"])
    spread = "" if r["face_spread"] is None else f"{r['face_spread']:.1f}"
    if r.get("corner_ratio") is not None:
        spread += f", {r['corner_ratio']:.2f}"
    if r.get("yaw") is not None:
        spread += f"; {r['yaw_accuracy']:.3f} / {r['yaw_completeness']:.3f} at {r['yaw']:.0f} deg"
    exp = "" if r["export_s"] is None else f"{r['export_s']:.1f}"
    return (f"| a {r['colour']} {r['shape']} | {r['renderer']} | {r['steps']} | {r['accuracy']:.3f} | "
            f"{r['completeness']:.3f} | {100 * r['largest_piece']:.1f}% ({r['pieces']}) | ({bc}) vs ({tc}) | "
            f"{r['chromaticity_distance']:.3f} | {r['luminance_ratio']:.2f} | {spread} | "
            f"{r['psnr'] or float('nan'):.2f} / {r['iou'] or float('nan'):.3f} | {r['wall_s']:.1f} | {exp} |")


HEADER = ("| prompt | renderer | steps | accuracy m | completeness m | largest piece (pieces) | baseColor vs "
          "true albedo | chroma dist | lum ratio | cube face spread /255, corner ratio; acc / comp at best yaw | "
          "PSNR dB / IoU | wall s | "
          "export s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


@torch.no_grad()
def _shown_albedo(scene, cams):
    """Mean linear albedo [3] the scene's renders show where they are opaque (alpha > 0.9): the NeRF's albedo map,
    or for scenes without one (Gaussians) their colour rendered with the key light off
    (engine.init_from.unlit_render)."""
    import numpy as np

    from engine.export.fidelity import srgb_to_linear
    from engine.init_from import unlit_render

    scene.eval()
    colour, alpha = unlit_render(scene, cams, torch.zeros(3))
    opaque = alpha[..., 0] > 0.9
    seen = (colour / alpha.clamp_min(1e-6))[opaque].clamp(0, 1).cpu().numpy().astype(np.float64)
    return srgb_to_linear(seen).mean(0)


def diagnose(run_dir: str, shape: str, levels: list[float]) -> None:
    """Print the field-vs-extraction diagnosis described in the module docstring."""
    import numpy as np

    from engine.export import load_run_scene
    from engine.export.fidelity import (
        _nearest_distance,
        _sdf,
        albedo_error,
        linear_to_srgb255,
        sample_surface,
        score_glb,
        section_radii,
        signed_error_by_region,
        true_surface_samples,
    )
    from engine.export.mesh import (
        clean,
        extract_mesh,
        fill_cavities,
        marching_cubes,
        remove_floaters,
        sample_grid,
        scene_bound,
    )
    from engine.outputs import render_views
    from foundation import shapes
    try:  # main moved these with the renderers/mesh.py split
        from engine.init_from import init_cameras, silhouette
    except ImportError:
        from renderers.mesh import init_cameras, silhouette

    scene, _ = load_run_scene(run_dir)
    bound = scene_bound(scene)
    t0 = time.perf_counter()
    mesh, info, _ = extract_mesh(scene, 128, "auto", 30000)
    print(f"extraction: level {info['threshold']:.4g} ({info.get('surface', info['field'])}), {info['faces']} faces, "
          f"{time.perf_counter() - t0:.1f} s")
    v, f = torch.from_numpy(mesh.vertices).float(), torch.from_numpy(mesh.faces).long()
    for res in (64, 128):
        cams = init_cameras(bound, res)
        alpha = render_views(scene, cams, torch.ones(3))[1][..., 0]
        gt = shapes.render_shape(shape, cams).coverage.reshape(alpha.shape)
        sil = silhouette(v, f, cams)[..., 0]
        print(f"{res}²: IoU field/true {shapes.mask_iou(alpha, gt):.3f}, mesh/field {shapes.mask_iou(sil, alpha):.3f}, "
              f"mesh/true {shapes.mask_iou(sil, gt):.3f}; area (px) field {float((alpha > 0.5).sum()):.0f}, "
              f"mesh {float((sil > 0.5).sum()):.0f}, true {float((gt > 0.5).sum()):.0f}")
    regions = signed_error_by_region(mesh.vertices, mesh.faces, shape)
    print("mean signed sdf by region: " + ", ".join(f"{r} {d:+.4f} ({100 * w:.0f}%)" for r, (d, w) in regions.items()))
    for y in (-0.3, 0.0, 0.3):  # the horizontal sections: a cube's reach sqrt(2) from faces to edges, a cylinder 1
        r = section_radii(mesh.vertices, mesh.faces, y)
        print(f"section y {y:+.1f}: radius {np.nanmin(r):.3f}-{np.nanmax(r):.3f} over {len(r)} azimuth sectors "
              f"(max/min {np.nanmax(r) / np.nanmin(r):.3f}; the true cube 0.400-0.566, 1.414)")
    shown = _shown_albedo(scene, init_cameras(bound, 64))
    glb = os.path.join(run_dir, "export", "model.glb")
    exported = (f", its export {score_glb(glb, shape, COLOUR_OF[shape]).luminance_ratio:.2f}"
                if os.path.isfile(glb) else "")
    print(f"colour: the renders show albedo {tuple(int(round(c)) for c in linear_to_srgb255(shown))}, luminance "
          f"{albedo_error(shown, COLOUR_OF[shape])[0]:.2f} of the truth's{exported}")
    if levels:
        grid = sample_grid(scene, 128, bound)
        truth = true_surface_samples(shape, 5000)
        lo, hi = float(grid.min()), float(grid.max())
        for level in levels:
            if not lo < level < hi:
                print(f"level {level:.4g}: outside the field's range [{lo:.4g}, {hi:.4g}], skipped")
                continue
            g, _ = fill_cavities(grid, level)
            m = clean(remove_floaters(clean(marching_cubes(g, level, bound))))
            p = sample_surface(m.vertices, m.faces, 5000, np.random.default_rng(0)).points
            d = _sdf(shape, p)
            print(f"level {level:.4g}: accuracy {np.abs(d).mean():.4f}, mean signed {d.mean():+.4f}, "
                  f"completeness {_nearest_distance(truth, p).mean():.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--renderers", nargs="+", default=["nerf", "gaussians"],
                    choices=["nerf", "gaussians", "mesh", "texture"])
    ap.add_argument("--shapes", nargs="+", default=["cube", "torus", "cone"], choices=sorted(COLOUR_OF))
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the engine's, 400)")
    ap.add_argument("--mesh-steps", type=int, default=100, help="refinement steps of the mesh chain")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prior", default="shapes-exemplar",
                    help="the prior of every run (shapes-exemplar, the closed-form one; shapes, the learned default)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--from-truth", type=int, default=0, metavar="N",
                    help="fit each scene to the true shape for N steps before its run: is the truth a fixed point?")
    ap.add_argument("--keep", default=None, help="keep the run folders under this folder")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `engine generate` arguments")
    ap.add_argument("--diagnose", nargs=2, metavar=("RUN_FOLDER", "SHAPE"), default=None,
                    help="diagnose one finished run instead of training (see above)")
    ap.add_argument("--levels", type=float, nargs="+", default=[], help="iso-levels to sweep with --diagnose")
    args = ap.parse_args()
    if args.diagnose:
        diagnose(args.diagnose[0], args.diagnose[1], args.levels)
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}")
    print(HEADER, flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for renderer in args.renderers:
            for shape in args.shapes:
                rows.append(run_one(renderer, shape, args.steps, args.seed, args.extra, args.keep or tmp,
                                    args.mesh_steps, args.prior, args.from_truth))
                print(format_row(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
