"""Export a run (or any scene) to the formats game and film tools read: GLB, OBJ+MTL, USD/USDZ and 3DGS PLY.

Pipeline for the mesh formats (renderers.md §5; conventions.md §3.1):
1. geometry: a mesh scene's own mesh (``scene.export_mesh()``), or marching cubes on the density field with an
   automatic, render-matched iso-level, floater removal, decimation to ``max_faces`` and smooth normals (mesh.py);
2. UV atlas with xatlas (user/mesh-scene UVs are kept), tangents (bake.py);
3. textures baked in UV space by querying the scene at each texel's surface point: base colour (sRGB), ORM
   (linear: occlusion, roughness, metallic) and a tangent-space normal map (OpenGL; DirectX flips G) (bake.py);
4. writers: GLB (gltf.py), OBJ+MTL and USD/USDZ (formats.py), all beside a loose-textures folder
   ``<stem>_textures/`` with albedo.png, roughness.png, metallic.png, normal.png and orm.png.
PLY (Gaussian scenes only) goes through renderers.ply.save_ply.

Frame: +Y up, right-handed, metres, front +Z, the object centred on the orbit target: the frame of the renders.
``up="z"`` turns +Y into +Z for Z-up tools (the GLB stays Y-up per the glTF spec unless asked).

What a scene must declare (renderers/base.py abilities, checked once with ``declares``): ``MeshSource``
(``export_mesh() -> {"vertices", "faces", ["uv" (glTF convention)], ["normals"], ["placement"]}``: the mesh scene;
``placement`` = (scale, centre): a user's mesh goes back to its own frame, vertices * scale + centre) or
``DensityField`` (``query_density``, ``field_kind``, ``bound``: NeRF, Gaussians) for the geometry; ``PBRMaterial``
(``query_material``) or ``AlbedoField`` (``query_albedo``) for the textures; ``GaussianSplats`` (``export_tensors``)
for PLY; a ``SceneGroup`` (particles) exports its first scene. A material run (``MaterialScene``) has its own
writer (engine/material_export.py).
"""

import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from engine.export.bake import BakeOptions, Textures, bake, unwrap
from engine.export.errors import ExportError
from engine.export.gltf import png_bytes, write_glb
from engine.export.mesh import Mesh, compact, extract_mesh, up_matrix, vertex_normals
from engine.outputs import atomic_path, write_json
from foundation.abilities import declares
from renderers.base import DensityField, GaussianSplats, MeshSource, PBRMaterial, scenes_of

FORMATS = ("glb", "obj", "usd", "usdz", "ply")
MESH_FORMATS = ("glb", "obj", "usd", "usdz")
EXTENSIONS = {"glb": ".glb", "obj": ".obj", "usd": ".usd", "usdz": ".usdz", "ply": ".ply"}


@dataclass
class ExportOptions:
    """Everything `engine export` can set."""

    texture_size: int = 1024
    """Side of the baked textures in texels."""
    max_faces: int = 15000
    """Face budget of the exported mesh (decimation target). 15,000 rather than 30,000: xatlas's unwrap time grows
    faster than the face count (7.7 s at 30k faces, 3.6 at 20k, 1.7 at 15k on the demo cube, one core) while the
    surface moves by under 0.1 mm (mean distance between the two, 1.17 m object)."""
    up: str = "y"
    """Up axis of the exported file: "y" (glTF, Maya, Unity, USD default) or "z" (Blender-style, Unreal)."""
    normal_map: str = "opengl"
    """Normal-map convention: "opengl" (green up; glTF) or "directx" (green down)."""
    resolution: int = 128
    """Marching-cubes grid resolution per axis (density-field scenes)."""
    threshold: float | str = "auto"
    """Iso-level of the density field, or "auto" (see engine/export/mesh.py)."""
    min_component: float = 0.05
    """Drop connected components smaller than this fraction of the largest one's area (floaters)."""
    roughness: float = 0.9
    """Constant roughness for scenes without materials (NeRF, Gaussians)."""
    metallic: float = 0.0
    """Constant metallic for scenes without materials."""
    padding: int = 4
    """Gutter between UV charts in texels."""
    name: str = "model"
    """File stem of the exported files."""

    def __post_init__(self) -> None:
        up_matrix(self.up)  # validates
        BakeOptions(texture_size=self.texture_size, normal_map=self.normal_map)  # validates
        if self.resolution < 16:
            raise ValueError(f"resolution must be >= 16, got {self.resolution}")
        if self.threshold != "auto" and not isinstance(self.threshold, (int, float)):
            raise ValueError(f"threshold must be a number or 'auto', got {self.threshold!r}")


@dataclass
class Baked:
    """A textured mesh ready for the writers (already in the export frame)."""

    mesh: Mesh
    tangents: np.ndarray
    textures: Textures
    info: dict


def _base_scene(scene):
    """The first scene of a multi-particle wrapper (a ``SceneGroup``), else the scene itself."""
    return scenes_of(scene)[0]


def _scene_mesh(scene, opts: ExportOptions) -> tuple[Mesh, dict, object]:
    if declares(scene, MeshSource):
        m = scene.export_mesh()

        def arr(key, dtype):
            v = m.get(key)
            if v is None:
                return None
            return (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)).astype(dtype)

        mesh = Mesh(arr("vertices", np.float64), arr("faces", np.int64), arr("normals", np.float64),
                    arr("uv", np.float64))
        if mesh.normals is None:
            mesh.normals = vertex_normals(mesh.vertices, mesh.faces)
        info = {"source": "scene mesh", "faces": mesh.num_faces, "kept_uv": mesh.uv is not None}
        if m.get("placement") is not None:
            scale, centre = m["placement"]
            info["placement"] = {"scale": float(scale), "centre": [float(c) for c in centre]}
        return mesh, info, None
    if not declares(scene, DensityField):
        raise ExportError(f"{type(scene).__name__} is neither a mesh (MeshSource) nor a density field (DensityField); "
                          f"cannot export a mesh")
    mesh, info, normals = extract_mesh(scene, opts.resolution, opts.threshold, opts.max_faces,
                                       min_component=opts.min_component)
    return mesh, {"source": "marching cubes", **info}, normals


def bake_scene(scene, opts: ExportOptions) -> Baked:
    """Geometry, UVs, tangents and textures of ``scene``, transformed into the export frame."""
    scene = _base_scene(scene)
    t0 = time.perf_counter()
    mesh, info, field_normals = _scene_mesh(scene, opts)
    t1 = time.perf_counter()
    mesh = unwrap(mesh, opts.texture_size, opts.padding)
    t2 = time.perf_counter()
    step = info.get("spacing", 0.01)
    bopts = BakeOptions(texture_size=opts.texture_size, padding=opts.padding, roughness=opts.roughness,
                        metallic=opts.metallic, normal_map=opts.normal_map, normal_step=step,
                        scene_uv=bool(info.get("kept_uv")) and declares(scene, PBRMaterial) and scene.uv_material)
    textures, tan = bake(scene, mesh, bopts, field_normals=field_normals)
    t3 = time.perf_counter()
    R = up_matrix(opts.up)
    v = mesh.vertices
    if "placement" in info:  # the user's own placement and units (a uniform scale: normals and tangents keep)
        v = v * info["placement"]["scale"] + np.asarray(info["placement"]["centre"])
    mesh = Mesh(v @ R.T, mesh.faces, mesh.normals @ R.T, mesh.uv)
    tan = np.concatenate([tan[:, :3] @ R.T, tan[:, 3:]], -1)
    info.update({"uv_vertices": int(mesh.vertices.shape[0]), "texture_size": opts.texture_size, "up": opts.up,
                 "normal_map": opts.normal_map,
                 "mean_base_color": [float(x) for x in textures.base_color.reshape(-1, 3).mean(0)],
                 "seconds": {"mesh": t1 - t0, "unwrap": t2 - t1, "bake": t3 - t2}})
    return Baked(mesh, tan, textures, info)


def write_textures(folder: str, tex: Textures) -> dict[str, str]:
    """The loose textures: albedo.png, roughness.png, metallic.png, normal.png, orm.png."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    images = {"albedo": tex.base_color, "roughness": tex.roughness, "metallic": tex.metallic,
              "normal": tex.normal, "orm": tex.orm}
    paths = {}
    for key, img in images.items():
        paths[key] = os.path.join(folder, f"{key}.png")
        with atomic_path(paths[key]) as tmp:
            Image.fromarray(img).save(tmp)
    return paths


def write_mesh_format(fmt: str, path: str, baked: Baked, opts: ExportOptions, textures_dir: str | None = None) -> str:
    """Write one mesh format to ``path`` with its loose textures in ``textures_dir`` (default ``<stem>_textures/``
    beside it)."""
    from engine.export import formats

    folder = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    tex_dir = textures_dir or os.path.join(folder, f"{stem}_textures")
    write_textures(tex_dir, baked.textures)
    rel = os.path.relpath(tex_dir, folder)
    m, tex = baked.mesh, baked.textures
    kwargs = dict(vertices=m.vertices, faces=m.faces, normals=m.normals, uv=m.uv)
    match fmt:
        case "glb":
            write_glb(path, tangents=baked.tangents, base_color_png=png_bytes(tex.base_color),
                      orm_png=png_bytes(tex.orm), normal_png=png_bytes(tex.normal), name=stem,
                      extras={"up": opts.up, "units": "metres", "normal_map": opts.normal_map}, **kwargs)
        case "obj":
            formats.write_obj(path, textures_rel=rel, name=stem, **kwargs)
        case "usd":
            with atomic_path(path) as tmp:
                formats.write_usd(tmp, textures_rel=rel, up=opts.up, name=stem, **kwargs)
        case "usdz":
            formats.write_usdz(path, tex_dir, up=opts.up, name=stem, **kwargs)
        case _:
            raise ValueError(f"{fmt} is not a mesh format ({', '.join(MESH_FORMATS)})")
    return path


def write_ply(path: str, scene, up: str) -> str:
    """3DGS PLY (INRIA layout) via renderers.ply.save_ply; Gaussian scenes only."""
    scene = _base_scene(scene)
    if not declares(scene, GaussianSplats):
        raise ExportError(f"ply is the Gaussian-splat format; this run's scene ({type(scene).__name__}) has no "
                          f"splats. Use --format glb, obj, usd or usdz")
    from renderers.ply import save_ply

    with atomic_path(path) as tmp:
        save_ply(tmp, scene, up=up)
    return path


def output_paths(formats: list[str], out: str | None, default_dir: str, stem: str) -> dict[str, str]:
    """Where each format goes: ``out`` is a file path (one format, its extension) or a folder."""
    if out and len(formats) == 1 and os.path.splitext(out)[1].lower() == EXTENSIONS[formats[0]]:
        return {formats[0]: out}
    if out and os.path.splitext(out)[1] and not os.path.isdir(out):
        raise ExportError(f"--out {out}: with --format {','.join(formats)} give a folder or a "
                          f"{'/'.join(EXTENSIONS[f] for f in formats)} file")
    folder = out or default_dir
    return {f: os.path.join(folder, (stem if f != "ply" else f"{stem}_splats") + EXTENSIONS[f]) for f in formats}


def export_scene(scene, formats: list[str], paths: dict[str, str], opts: ExportOptions | None = None) -> dict:
    """Write ``formats`` of ``scene`` to ``paths``; returns a report (files, geometry info, timings)."""
    opts = opts or ExportOptions()
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ExportError(f"unknown format {bad[0]!r}; choose from {', '.join(FORMATS)}")
    t0 = time.perf_counter()
    report: dict = {"files": {}, "options": asdict(opts)}
    for f in formats:
        os.makedirs(os.path.dirname(os.path.abspath(paths[f])), exist_ok=True)
    if "ply" in formats:
        report["files"]["ply"] = write_ply(paths["ply"], scene, opts.up)
    mesh_formats = [f for f in formats if f in MESH_FORMATS]
    if mesh_formats:
        with torch.no_grad():
            baked = bake_scene(scene, opts)
        report["mesh"] = baked.info
        for f in mesh_formats:
            report["files"][f] = write_mesh_format(f, paths[f], baked, opts)
    report["seconds"] = time.perf_counter() - t0
    return report


# -- run folders ----------------------------------------------------------------------------------------------------
def load_run_scene(run_dir: str, device: str = "cpu"):
    """Rebuild the scene of a run folder from config.yaml and its newest checkpoint: (scene, GenerateConfig)
    (engine/runfolder.py, with this command's wording)."""
    import sys

    from engine import runfolder

    try:
        run = runfolder.load_run(run_dir, device,
                                 warn=lambda m: print(f"engine export: warning: {m}", file=sys.stderr))
    except runfolder.NoCheckpoint:
        raise ExportError(f"{run_dir} has no checkpoint (ckpts/step_*.safetensors) to export") from None
    except runfolder.NotARunFolder as e:
        raise ExportError(str(e)) from None
    return run.scene, run.config


def default_formats(scene) -> list[str]:
    """GLB always; PLY too for Gaussian scenes."""
    return ["glb", "ply"] if declares(_base_scene(scene), GaussianSplats) else ["glb"]


def export_run(run_dir: str, formats: list[str] | None = None, out: str | None = None,
               opts: ExportOptions | None = None, scene=None) -> dict:
    """Export a run folder (its newest checkpoint, or the live ``scene``) to RUN/export/ or ``out``.

    Writes RUN/export/export.json (or beside ``out``) with the report.
    """
    opts = opts or ExportOptions()
    if scene is None:
        scene, _ = load_run_scene(run_dir)
    formats = formats or default_formats(scene)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ExportError(f"unknown format {bad[0]!r}; choose from {', '.join(FORMATS)}")
    paths = output_paths(formats, out, os.path.join(run_dir, "export"), opts.name)
    report = export_scene(scene, formats, paths, opts)
    report_dir = os.path.dirname(os.path.abspath(next(iter(paths.values()))))
    write_json(os.path.join(report_dir, f"{opts.name}_export.json"), report, default=str)
    return report


def export_finished_run(run_dir: str, scene, texture_size: int = 1024) -> dict[str, str]:
    """The automatic export at the end of `engine generate`: GLB (and PLY for Gaussians) into RUN/export/."""
    from renderers.material import MaterialScene

    if isinstance(scene, MaterialScene):  # a material run's files: maps, MaterialX, USD, preview (not a mesh)
        from engine.material_export import write_material

        return write_material(run_dir, scene, texture_size)
    report = export_run(run_dir, scene=scene, opts=ExportOptions(texture_size=texture_size))
    return {k: os.path.relpath(v, run_dir) for k, v in report["files"].items()}


__all__ = ["ExportOptions", "ExportError", "FORMATS", "Baked", "bake_scene", "export_scene", "export_run",
           "export_finished_run", "load_run_scene", "write_textures", "write_ply", "compact"]
