"""The training loop: one readable function, no framework (style.md §4.4).

    for step in range(steps):
        cams = sample_cameras(...); out = scene.render(cams, background)
        g = guidance(out.rgb, prompts, cams, step)  # cams carry out's per-view condition images, if any
        regs = scene.regularizers(out, step)
        loss = g.loss + sum(w[k] * regs[k]); backward; optimiser step; scene.after_step(step, out)

One torch.Generator seeded from cfg.seed drives cameras, timesteps, noise and initialisation, so a run is
reproducible and a resumed run continues the same random stream.
"""

import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable

import torch

from engine import outputs
from engine.cameras import sample_cameras
from engine.checkpoint import latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint, step_path
from engine.config import GenerateConfig, default_run_dir, load_config, save_config
from guidance.priors import SHAPES_WORLD, Prior, build_prior
from guidance.prompts import PromptSet
from renderers.base import Background


class RunError(Exception):
    """A run failed for a reason the user can act on; ``code`` is the CLI exit code (2: bad input)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@dataclass
class Hooks:
    """Optional callbacks for front ends: progress after each step, and a stop request polled every step."""

    on_step: Callable[[int, int, dict], None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_preview: Callable[[str], None] | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunError("device cuda was asked for, but torch sees no CUDA GPU (use --device cpu)", code=2)
    return torch.device(name)


def _prepare(cfg: GenerateConfig, device: torch.device) -> tuple[Prior, PromptSet]:
    """Everything that can reject the input, done before any file is written."""
    try:
        prior = build_prior(cfg.prior, device)
        prompts = PromptSet(prior, cfg.prompt, cfg.negative_prompt, cfg.prompts)
    except ValueError as e:  # PriorError is a ValueError
        raise RunError(str(e), code=2) from None
    return prior, prompts


def _build_scene(cfg: GenerateConfig, gen: torch.Generator, device):
    """The run's scene; with particles > 1, a Particles wrapper over that many independently initialised scenes."""
    if cfg.particles == 1:
        return cfg.renderer.build(gen, device)
    from renderers.particles import Particles
    if cfg.cameras.batch_size % cfg.particles:
        cfg.cameras.batch_size = cfg.particles * max(1, cfg.cameras.batch_size // cfg.particles)
    return Particles([cfg.renderer.build(gen, device) for _ in range(cfg.particles)])


def _wire_condition(prior, scene) -> None:
    """A prior that takes per-view condition images (the ControlNet prior) gets them from the scene's renders: turn
    on each scene's ``render_condition``, or refuse a scene that cannot render one."""
    if not getattr(prior, "takes_condition", False):
        return
    scenes = getattr(scene, "scenes", [scene])  # Particles holds several
    if not all(hasattr(s, "render_condition") for s in scenes):
        raise RunError("prior.controlnet needs the mesh renderer (--renderer mesh), which renders the ControlNet's "
                       "condition with each training view", code=2)
    for s in scenes:
        s.render_condition = True


def _state(step, scene, guidance, background, opt, gen) -> dict:
    guidance_state = guidance.state_dict() if hasattr(guidance, "state_dict") else {}
    return {"step": step, "scene": scene.state_dict(), "guidance": guidance_state,
            "background": background.state_dict(), "optimizer": opt.state_dict(),
            "rng": gen.get_state(), "torch_rng": torch.get_rng_state()}


def _make_optimizer(cfg: GenerateConfig, scene, guidance, background) -> torch.optim.Optimizer:
    groups = []
    for name, g in scene.param_groups().items():
        groups.append({**g, "name": name, "lr": g["lr"] * cfg.train.lr_scale})
    for source in (guidance.param_groups(), background.param_groups()):
        groups += [{**g, "name": name} for name, g in source.items()]
    return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)


def generate(cfg: GenerateConfig, resume: str | None = None, hooks: Hooks | None = None) -> str:
    """Run text-to-3D and return the run folder. ``resume`` continues a run folder from its last checkpoint."""
    hooks = hooks or Hooks()
    if resume:
        cfg = load_config(os.path.join(resume, "config.yaml"))
        run_dir = resume
    else:
        run_dir = cfg.out or default_run_dir(cfg.prompt)
        if os.path.exists(os.path.join(run_dir, "config.yaml")):
            raise RunError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out", code=2)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    prior, prompts = _prepare(cfg, device)

    scene = _build_scene(cfg, gen, device)
    _wire_condition(prior, scene)
    guidance = cfg.guidance.build(prior, gen, cfg.train.steps)
    background = Background(cfg.background).to(device)
    start = 0
    ckpt = latest_checkpoint(os.path.join(run_dir, "ckpts")) if resume else None
    if resume and ckpt is None:
        raise RunError(f"{run_dir} has no checkpoint to resume from", code=2)
    if ckpt:
        state = load_checkpoint(ckpt)
        scene.load_state_dict(state["scene"])
        if state["guidance"]:
            guidance.load_state_dict(state["guidance"])
        background.load_state_dict(state["background"])
    opt = _make_optimizer(cfg, scene, guidance, background)
    if ckpt:
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
    if hasattr(scene, "attach_optimizer"):
        scene.attach_optimizer(opt)

    created = not os.path.exists(run_dir)
    os.makedirs(os.path.join(run_dir, "ckpts"), exist_ok=True)
    os.makedirs(os.path.join(run_dir, "previews"), exist_ok=True)
    if not resume:
        save_config(cfg, os.path.join(run_dir, "config.yaml"))
    for stale in ("turntable.mp4", "eval.json"):  # a resumed run is not complete until it finishes again
        if resume and os.path.exists(os.path.join(run_dir, stale)):
            os.remove(os.path.join(run_dir, stale))
    try:
        _loop(cfg, run_dir, start, scene, guidance, background, opt, gen, prompts, device, hooks)
    except BaseException:
        if created and not os.listdir(os.path.join(run_dir, "ckpts")) and not resume:
            # nothing worth keeping was produced: leave no half-made folder behind
            status = outputs.read_status(run_dir)
            if status.get("state") not in ("failed", "interrupted"):
                shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


def _loop(cfg, run_dir, start, scene, guidance, background, opt, gen, prompts, device, hooks: Hooks) -> None:
    tc = cfg.train
    ckpt_dir = os.path.join(run_dir, "ckpts")
    metrics = open(os.path.join(run_dir, "metrics.jsonl"), "a")
    bar = None
    if tc.progress:
        from tqdm import tqdm
        bar = tqdm(total=tc.steps, initial=start, desc="generate", unit="it", dynamic_ncols=True)
    weights = {**getattr(scene, "regularizer_weights", {}), **cfg.regularizers}
    train_s, step = 0.0, start  # seconds spent in training steps (previews, evals, checkpoints excluded)
    outputs.set_status(run_dir, "running", step)
    try:
        for step in range(start, tc.steps):
            t_step = time.perf_counter()
            cams = sample_cameras(cfg.cameras, cfg.resolution, gen).to(device)
            bg = background(cams, gen)
            out = scene.render(cams, bg)
            if "control" in out.extras:  # per-view condition images ride with their cameras (guidance/controlnet.py)
                cams = cams.with_condition(out.extras["control"])
            g = guidance(out.rgb, prompts, cams, step)
            regs = scene.regularizers(out, step)
            loss = g.loss + sum(weights.get(k, 1.0) * v for k, v in regs.items())
            if not torch.isfinite(loss):
                last = latest_checkpoint(ckpt_dir)
                msg = (f"the loss became {loss.item()} at step {step}; the run stopped. "
                       + (f"Last good checkpoint: {last}; resume with --resume {run_dir} after lowering "
                          f"the learning rate (--train.lr-scale)." if last else "No checkpoint was written yet."))
                outputs.set_status(run_dir, "failed", step, msg)
                raise RunError(msg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scene.after_step(step, out)
            train_s += time.perf_counter() - t_step
            done = step + 1
            logs = {"step": done, "loss": loss.item(), **g.logs,
                    **{f"reg_{k}": v.item() for k, v in regs.items()},
                    "train_s": round(train_s, 3), "it_per_s": (done - start) / max(train_s, 1e-9)}
            evaluate = tc.eval_every and done % tc.eval_every == 0 and cfg.prior.name in SHAPES_WORLD
            if evaluate:
                ev = outputs.evaluate_shapes(scene, cfg.prompt, cfg.cameras, tc.eval_views, cfg.resolution, device)
                logs.update({f"eval_{k}": ev[k] for k in ("psnr", "iou") if k in ev})
            if evaluate or done % tc.log_every == 0 or done == tc.steps:
                metrics.write(json.dumps(logs) + "\n")
                metrics.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4g}", t=f"{g.logs.get('t', float('nan')):.0f}")
            if tc.preview_every and done % tc.preview_every == 0:
                path = os.path.join(run_dir, "previews", f"step_{done:06d}.png")
                outputs.save_preview(path, scene, cfg.cameras, cfg.resolution, _eval_bg(background), device)
                if hooks.on_preview:
                    hooks.on_preview(path)
            if tc.checkpoint_every and done % tc.checkpoint_every == 0 and done < tc.steps:
                _checkpoint(ckpt_dir, done, scene, guidance, background, opt, gen, tc.keep_checkpoints)
            if hooks.on_step:
                hooks.on_step(done, tc.steps, logs)
            if hooks.should_stop and hooks.should_stop():
                _checkpoint(ckpt_dir, done, scene, guidance, background, opt, gen, tc.keep_checkpoints)
                outputs.set_status(run_dir, "interrupted", done, "stopped on request; resume with --resume")
                return
        step = tc.steps
        _checkpoint(ckpt_dir, step, scene, guidance, background, opt, gen, tc.keep_checkpoints)
        _finish(cfg, run_dir, scene, background, device, step)
    except KeyboardInterrupt:
        done = step  # the step in flight is redone on resume
        _checkpoint(ckpt_dir, done, scene, guidance, background, opt, gen, tc.keep_checkpoints)
        outputs.set_status(run_dir, "interrupted", done, f"interrupted; resume with --resume {run_dir}")
        raise
    finally:
        metrics.close()
        if bar is not None:
            bar.close()


def _eval_bg(background: Background) -> torch.Tensor:
    return torch.sigmoid(background.logit.detach()).cpu()


def _checkpoint(ckpt_dir, step, scene, guidance, background, opt, gen, keep) -> None:
    save_checkpoint(step_path(ckpt_dir, step), _state(step, scene, guidance, background, opt, gen))
    prune_checkpoints(ckpt_dir, keep)


def _finish(cfg: GenerateConfig, run_dir: str, scene, background: Background, device, step: int) -> None:
    """Evaluation, video, then the 'complete' status — the status is written last."""
    tc = cfg.train
    result: dict = {}
    if cfg.prior.name in SHAPES_WORLD and tc.eval_views > 0:
        result = outputs.evaluate_shapes(scene, cfg.prompt, cfg.cameras, tc.eval_views, cfg.resolution, device)
        if result:
            outputs.write_json(os.path.join(run_dir, "eval.json"), result)
    if tc.video_frames > 0:
        outputs.save_turntable(os.path.join(run_dir, "turntable.mp4"), scene, cfg.cameras, tc.video_frames,
                               tc.video_resolution, _eval_bg(background), device)
    extra: dict = {"eval": result} if result else {}
    message = ""
    # -- automatic export (issue #6): GLB, plus PLY for Gaussians, into RUN/export/; a failed export is noted in
    # status.json but does not fail the run (it stays complete; retry with `engine export RUN`).
    if tc.export:
        try:
            from engine.export import export_finished_run
            extra["exports"] = export_finished_run(run_dir, scene, tc.export_texture_size)
        except Exception as e:  # noqa: BLE001 - any export failure must not lose the run
            extra["export_error"] = f"{type(e).__name__}: {e}"
            message = f"export failed ({extra['export_error']}); retry with: engine export {run_dir}"
    outputs.set_status(run_dir, "complete", step, message, **extra)

