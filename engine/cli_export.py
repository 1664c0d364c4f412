"""`engine export RUN_DIR --format glb|obj|usd|usdz|ply [--out PATH] [--texture-size N] [--faces N] [--up y|z]
[--normal-map opengl|directx]`: export a run folder's newest checkpoint (engine/export/__init__.py).

``--format`` takes one format or a comma-separated list (default: glb, plus ply for Gaussian runs). Files go to
RUN_DIR/export/ unless ``--out`` names a file (one format) or a folder. Exit codes: 0 done, 2 bad input or nothing
to export (one line on stderr), 1 unexpected failure.
"""

import sys

from engine.cli import OneLineParser, UsageError, check_range

USAGE_ERROR = 2
MAX_EXPORT_FACES = 1_000_000
"""--faces above this is refused: the UV unwrap (xatlas) of a bigger mesh takes too long or crashes (issue #18)."""


def _parser() -> OneLineParser:
    from engine.export import FORMATS

    p = OneLineParser(prog="engine export", description=__doc__.split("\n\n")[0].split(": ", 1)[-1])
    p.add_argument("run_dir", help="a run folder (config.yaml + ckpts/)")
    p.add_argument("--format", default=None,
                   help=f"one of {', '.join(FORMATS)}, or a comma-separated list (default: glb; glb,ply for Gaussians)")
    p.add_argument("--out", default=None, help="output file (one format) or folder (default: RUN_DIR/export/)")
    p.add_argument("--texture-size", type=int, default=1024, help="side of the baked textures (default 1024)")
    p.add_argument("--faces", type=int, default=30000,
                   help=f"face budget of the mesh, 1..{MAX_EXPORT_FACES} (default 30000)")
    p.add_argument("--up", choices=("y", "z"), default="y", help="up axis of the exported file (default y, glTF)")
    p.add_argument("--normal-map", choices=("opengl", "directx"), default="opengl",
                   help="normal-map convention: opengl (green up, glTF; default) or directx (green down)")
    p.add_argument("--resolution", type=int, default=128, help="marching-cubes grid per axis (default 128)")
    p.add_argument("--threshold", default="auto", help="density iso-level, or auto (default)")
    p.add_argument("--roughness", type=float, default=0.9, help="roughness for runs without materials")
    p.add_argument("--metallic", type=float, default=0.0, help="metallic for runs without materials")
    p.add_argument("--name", default="model", help="file stem (default model)")
    p.add_argument("--device", default="cpu", help="device to rebuild the scene on (default cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    import torch

    from engine.export import ExportError, ExportOptions, export_run, load_run_scene

    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0) and USAGE_ERROR
    try:
        check_range("--faces", args.faces, 1, MAX_EXPORT_FACES)  # 0 used to turn decimation off silently
        check_range("--texture-size", args.texture_size, 8, 16384)
        check_range("--resolution", args.resolution, 16, 1024)
        check_range("--roughness", args.roughness, 0.0, 1.0)
        check_range("--metallic", args.metallic, 0.0, 1.0)
    except UsageError as e:
        print(f"engine export: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    formats = [f.strip().lower() for f in args.format.split(",") if f.strip()] if args.format else None
    try:
        threshold = args.threshold if args.threshold == "auto" else float(args.threshold)
        opts = ExportOptions(texture_size=args.texture_size, max_faces=args.faces, up=args.up,
                             normal_map=args.normal_map, resolution=args.resolution, threshold=threshold,
                             roughness=args.roughness, metallic=args.metallic, name=args.name)
        torch.set_num_threads(max(1, min(torch.get_num_threads(), 8)))
        scene, _ = load_run_scene(args.run_dir, args.device)
        report = export_run(args.run_dir, formats, args.out, opts, scene=scene)
    except (ExportError, ValueError) as e:
        print(f"engine export: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as e:  # a full disk, a read-only folder: the files already there are left whole (atomic writes)
        print(f"engine export: error: cannot write {e.filename or 'the export'}: {e.strerror or e}", file=sys.stderr)
        return 1
    for fmt, path in report["files"].items():
        print(f"{fmt}: {path}")
    mesh = report.get("mesh")
    if mesh:
        print(f"mesh: {mesh['faces']} faces, {mesh['uv_vertices']} vertices, {mesh['texture_size']}² textures "
              f"({mesh.get('source')}, iso-level {mesh.get('threshold', float('nan')):.4g}); "
              f"{report['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
