"""`engine export RUN_DIR --format glb|obj|usd|usdz|ply [--out PATH] [--texture-size N] [--faces N] [--up y|z]
[--normal-map opengl|directx]`: export a run folder's newest checkpoint (engine/export/__init__.py).

``--format`` takes one format or a comma-separated list (default: glb, plus ply for Gaussian runs). Files go to
RUN_DIR/export/ unless ``--out`` names a file (one format) or a folder. Exit codes: 0 done, 2 bad input or nothing
to export (one line on stderr), 1 unexpected failure.
"""

import sys
from dataclasses import dataclass, field

from engine.cli import UsageError, check_range, parse_command
from engine.export import ExportOptions

USAGE_ERROR = 2
MAX_EXPORT_FACES = 1_000_000
"""--faces above this is refused: the UV unwrap (xatlas) of a bigger mesh takes too long or crashes (issue #18)."""
BOUNDS = {"max_faces": ("--faces", 1, MAX_EXPORT_FACES),  # 0 used to turn decimation off silently
          "texture_size": ("--texture-size", 8, 16384), "resolution": ("--resolution", 16, 1024),
          "roughness": ("--roughness", 0.0, 1.0), "metallic": ("--metallic", 0.0, 1.0)}
"""Ranges of the export options (field -> flag, low, high), checked before the run folder is read."""


@dataclass
class ExportCommand:
    """Export a run folder's newest checkpoint (mesh formats baked with PBR textures; ply for Gaussians)."""

    run_dir: str
    """A run folder (config.yaml + ckpts/)."""
    format: str = ""
    """One of glb, obj, usd, usdz, ply, or a comma-separated list ("": glb, plus ply for Gaussian runs)."""
    out: str = ""
    """Output file (one format) or folder ("": RUN_DIR/export/)."""
    device: str = "cpu"
    """Device to rebuild the scene on."""
    options: ExportOptions = field(default_factory=ExportOptions)
    """What the exporter does (engine.export.ExportOptions; --faces is short for --max-faces)."""


def parse(argv: list[str]) -> ExportCommand:
    """argv after 'export' -> ExportCommand, bounds checked; UsageError (one line) when refused."""
    cmd = parse_command(ExportCommand, argv, "engine export", __doc__.split("\n\n")[0].split(": ", 1)[-1],
                        aliases={"--faces": "--max-faces"})
    for name, (flag, lo, hi) in BOUNDS.items():
        check_range(flag, getattr(cmd.options, name), lo, hi)
    return cmd


def main(argv: list[str] | None = None) -> int:
    import torch

    from engine.export import ExportError, export_run, load_run_scene

    try:
        cmd = parse(list(sys.argv[1:] if argv is None else argv))
    except UsageError as e:
        print(f"engine export: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except SystemExit as e:  # --help
        return int(e.code or 0) and USAGE_ERROR
    formats = [f.strip().lower() for f in cmd.format.split(",") if f.strip()] or None
    try:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), 8)))
        scene, _ = load_run_scene(cmd.run_dir, cmd.device)
        report = export_run(cmd.run_dir, formats, cmd.out or None, cmd.options, scene=scene)
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
