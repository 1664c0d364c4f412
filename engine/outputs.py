"""The run folder: status, metrics, previews, the turntable video and the ground-truth evaluation.

Layout (conventions.md §3.4):
    RUN/config.yaml        replayable config (engine generate --load-config RUN/config.yaml)
    RUN/status.json        {"state": running|complete|failed|interrupted, "step": N, "message": ...}
    RUN/metrics.jsonl      one JSON row per logged step
    RUN/previews/          step_XXXXXX.png, four views side by side
    RUN/ckpts/             step_XXXXXX.safetensors
    RUN/turntable.mp4      360 degree video, written only when the run completes
    RUN/eval.json          held-out metrics against ground truth (shapes prior)
Every file is written under a temporary name and renamed, so nothing half-written looks complete: the helpers
``atomic_path`` and ``atomic_write`` below do it for every output of the engine (run folders and exports).
"""

import contextlib
import json
import os
import secrets
import time
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from foundation import shapes
from foundation.abilities import declares
from foundation.cameras import CameraConfig, Cameras, turntable
from renderers.base import OptionalNormals, Relightable, scenes_of


@contextmanager
def atomic_path(path: str):
    """A temporary path beside ``path`` (same folder, same extension, so writers that pick a format by extension
    still work); when the block succeeds it is renamed over ``path`` in one step, when it fails (a kill, a full disk)
    the temporary file is removed and whatever ``path`` held before is left as it was."""
    folder, base = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(base)
    tmp = os.path.join(folder, f".{stem}.{secrets.token_hex(4)}.tmp{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextmanager
def atomic_write(path: str, mode: str = "w", **kw):
    """``open(path, mode)`` that only ever shows a whole file at ``path`` (atomic_path; flushed to disk first)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str, data: dict, **kw) -> None:
    with atomic_write(path) as f:
        json.dump(data, f, indent=2, **kw)


def set_status(run_dir: str, state: str, step: int, message: str = "", **extra) -> None:
    write_json(os.path.join(run_dir, "status.json"),
               {"state": state, "step": step, "message": message, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **extra})


def read_status(run_dir: str) -> dict:
    try:
        with open(os.path.join(run_dir, "status.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def to_uint8(img: Tensor) -> np.ndarray:
    return (img.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def save_png(path: str, img: Tensor) -> None:
    from PIL import Image
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(img)).save(tmp)


@torch.no_grad()
def render_views(scene, cams: Cameras, background: Tensor, chunk: int = 4) -> tuple[Tensor, Tensor]:
    """rgb [C,H,W,3] and alpha [C,H,W,1] of ``cams`` in chunks, without gradient.

    The scene is put in eval mode meanwhile, so evaluation renders use no random shading or jitter and draw
    nothing from the run's generator (previews do not change the training trajectory).
    """
    # a torch module scene (a particle group's members keep their mode, as they always have)
    module = scene if isinstance(scene, torch.nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.train(False)
    rgbs, alphas = [], []
    skip = [s for s in scenes_of(scene) if declares(s, OptionalNormals) and s.eval_normals]
    for s in skip:  # only colour and alpha are kept: no normal map
        s.eval_normals = False
    try:
        for i in range(0, len(cams), chunk):
            c = cams[i:i + chunk]
            out = scene.render(c, background.to(c.device).view(1, 1, 1, 3).expand(len(c), c.height, c.width, 3))
            rgbs.append(out.rgb.float().cpu())
            alphas.append(out.alpha.float().cpu())
    finally:
        if module is not None:
            module.train(was_training)
        for s in skip:
            s.eval_normals = True
    return torch.cat(rgbs), torch.cat(alphas)


def save_preview(path: str, scene, cam_cfg: CameraConfig, resolution: int, background: Tensor,
                 device) -> None:
    rgb, _ = render_views(scene, turntable(4, cam_cfg, resolution).to(device), background)
    save_png(path, torch.cat(list(rgb), dim=1))


def save_turntable(path: str, scene, cam_cfg: CameraConfig, frames: int, resolution: int, background: Tensor,
                   device, fps: int = 24) -> None:
    """A 360 degree mp4 (H.264 via imageio-ffmpeg), written to a temporary file and renamed."""
    import imageio.v2 as imageio
    rgb, _ = render_views(scene, turntable(frames, cam_cfg, resolution).to(device), background)
    with atomic_path(path) as tmp, imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                                                     ffmpeg_log_level="error") as w:
        for frame in rgb:
            w.append_data(to_uint8(frame))


def eval_cameras(cam_cfg: CameraConfig, n: int, resolution: int) -> Cameras:
    """Held-out views: azimuth 5 + k*360/n degrees at the evaluation elevation (between the exemplar views)."""
    return turntable(n, cam_cfg, resolution, azimuth_offset=5.0)


@contextmanager
def ground_truth_light(scene):
    """Scenes that declare ``Relightable`` (the PBR mesh, whose albedo carries no lighting; renderers/base.py) render
    under the shapes world's own light (eval_shading "shapes") inside this block, unless an instance turned
    ``relightable`` off; field scenes bake their lighting into their colour and render as they are."""
    meshes = [s for s in scenes_of(scene) if declares(s, Relightable) and s.relightable]
    old = [s.cfg.eval_shading for s in meshes]
    for s in meshes:
        s.cfg.eval_shading = "shapes"
    try:
        yield scene
    finally:
        for s, o in zip(meshes, old):
            s.cfg.eval_shading = o


def evaluate_shapes(scene, prompt: str, cam_cfg: CameraConfig, n: int, resolution: int, device) -> dict:
    """PSNR and silhouette IoU against the shapes world's ground truth on held-out views.

    Needs a shape in the prompt; without a colour, PSNR is computed against the closest of the world's colours
    (the prompt allows any) and the chosen colour is reported. Relightable scenes are lit like the ground truth
    (``ground_truth_light``), so the comparison is of geometry and albedo, not of lighting models.
    """
    colour, shape = shapes.parse_prompt(prompt)
    if shape is None:
        return {}
    cams = eval_cameras(cam_cfg, n, resolution)
    white = torch.ones(3)
    with ground_truth_light(scene):
        rgb, alpha = render_views(scene, cams.to(device), white)
    ref = shapes.render_shape(shape, cams)
    scores = {c: shapes.psnr(rgb, ref.colourise(c)) for c in shapes.COLOURS}
    best = colour or max(scores, key=scores.get)
    mask = ref.coverage > 0.5
    mean_rgb = (rgb[mask].mean(0) if mask.any() else rgb.reshape(-1, 3).mean(0)).tolist()
    # Opacity where the object should be: a half-transparent result shows the background through it, which PSNR
    # reads as a lighter colour (the ISM family's tori, docs/learned-prior.md).
    mean_alpha = float(alpha[..., 0][mask].mean()) if mask.any() else 0.0
    # Which world object the result is closest to (what "the right shape and colour" means, issue #12): the shape
    # whose silhouettes overlap it most, and the colour whose ground truth (on the prompted shape) it matches best.
    iou_by_shape = {s: round(shapes.mask_iou(alpha[..., 0], (ref if s == shape else shapes.render_shape(s, cams))
                                             .coverage), 4) for s in shapes.SHAPES}
    return {"psnr": scores[best], "iou": shapes.mask_iou(alpha[..., 0], ref.coverage), "colour": best,
            "mean_rgb_in_mask": [round(v, 4) for v in mean_rgb], "mean_alpha_in_mask": round(mean_alpha, 4),
            "views": n, "resolution": resolution,
            "shape": shape, "closest_colour": max(scores, key=scores.get),
            "closest_shape": max(iou_by_shape, key=iou_by_shape.get), "iou_by_shape": iou_by_shape}
