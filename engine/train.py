"""The training loop: one readable function, no framework (style.md §4.4).

    for step in range(steps):
        cams = sample_cameras(...); out = scene.render(cams, background)
        g = guidance(out.rgb, prompts, cams, step)  # cams carry out's per-view condition images, if any
        regs = scene.regularizers(out, step, w)  # a term of weight 0 may be left out
        loss = g.loss + sum(w[k] * regs[k]) (+ the anchor views' fit, engine/anchor.py)
        backward; optimiser step; scene.after_step(step, out)

One torch.Generator seeded from cfg.seed drives cameras, timesteps, noise and initialisation, so a run is
reproducible and a resumed run continues the same random stream.
"""

import json
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

from engine import init_from, outputs, runfolder
from engine.anchor import Anchors
from engine.checkpoint import latest_checkpoint, prune_checkpoints, save_checkpoint, step_path
from engine.config import GenerateConfig, default_run_dir, save_config
from foundation.abilities import declares
from foundation.backend import CudaUnavailable, no_cuda_device
from foundation.backend import resolve as resolve_cuda
from foundation.cameras import sample_cameras
from guidance.priors import Prior, build_prior, prior_world
from guidance.priors.base import ConditionedPrior, DeferredChecks, OwnGenerator, PriorContext, TextEncoderRelease
from guidance.priors.shapes import LIGHT_AWARE
from guidance.prompts import PromptSet
from renderers.base import Background, ConditionRenderer, OwnOptimizer, scenes_of


class RunError(Exception):
    """A run failed for a reason the user can act on; ``code`` is the CLI exit code (2: bad input)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``kill``, a closing app) handled exactly like Ctrl-C: checkpoint, status interrupted."""


@contextmanager
def sigterm_as_interrupt():
    """Inside this block SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread, once: a second SIGTERM
    while the checkpoint is being written is ignored, so the save completes. Elsewhere than the main thread it does
    nothing (signal handlers belong to the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def check_new_run_dir(run_dir: str) -> None:
    """A new run goes into a new or empty folder: never a file, nor a folder holding something else (its status.json
    would be overwritten and its checkpoints adopted). RunError (exit code 2) otherwise."""
    if os.path.exists(os.path.join(run_dir, "config.yaml")):
        raise RunError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out", code=2)
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunError(f"--out {run_dir} is a file; give a folder for the run", code=2)
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        raise RunError(f"--out {run_dir} exists and is not a run folder; give a new or empty folder", code=2)


def _try_status(run_dir: str, state: str, step: int, message: str) -> bool:
    """set_status that cannot fail (a full disk): False when status.json could not be written."""
    try:
        outputs.set_status(run_dir, state, step, message)
        return True
    except OSError:
        return False


@dataclass
class Hooks:
    """Optional callbacks for front ends: progress after each step, and a stop request polled every step."""

    on_step: Callable[[int, int, dict], None] | None = None
    """on_step(done, total, logs): ``logs`` holds the step's losses on logged steps (train.log_every) and only its
    step and timings otherwise (reading the losses every step would cost a GPU sync each)."""
    should_stop: Callable[[], bool] | None = None
    on_preview: Callable[[str], None] | None = None
    init_scene: Callable[[object], None] | None = None
    """init_scene(scene): called once on a new run's freshly built scene, before its optimiser exists (a benchmark
    starts a run from a known state this way: bench/bench_fidelity.py --from-truth)."""


def resolve_device(name: str) -> torch.device:
    """The run's device by the one rule of foundation.backend.resolve: "auto" is cuda when torch sees a GPU, else
    cpu with one warning; an explicit cuda[:N] without a GPU is a RunError (exit code 2, one line)."""
    try:
        cuda = resolve_cuda(name, no_cuda_device, what="device", fallback="cpu", hint="--device cpu")
    except (CudaUnavailable, ValueError) as e:
        raise RunError(str(e), code=2) from None
    return torch.device(("cuda" if name == "auto" else name) if cuda else "cpu")


def _prepare(cfg: GenerateConfig, device: torch.device) -> tuple[Prior, PromptSet]:
    """Everything that can reject the input, done before any file is written."""
    try:
        if getattr(cfg.guidance, "image", ""):  # a visual prompt's IP-Adapter must fit the prior: say so before loading
            from guidance.priors.visual_prompt import check_visual_prompt_prior
            check_visual_prompt_prior(cfg.prior.name, cfg.guidance)
        prior = build_prior(cfg.prior, device, _prior_context(cfg))
        prompts = PromptSet(prior, cfg.prompt, cfg.negative_prompt, cfg.prompts)
    except ValueError as e:  # PriorError is a ValueError
        raise RunError(str(e), code=2) from None
    if declares(prior, TextEncoderRelease):  # every prompt of the run is embedded: free the encoders' memory
        prior.release_text_encoders()
    return prior, prompts


def _prior_context(cfg: GenerateConfig) -> PriorContext:
    """What the prior may need to know of the run: the prompt, the lighting conditions the renderer trains under
    (the mesh renderer's environments x rotations; other renderers have none), and the size a fixed mesh is
    normalised to."""
    r = cfg.renderer
    fixed_mesh = getattr(r, "mode", "") == "fixed" and getattr(r, "mesh_path", "")
    return PriorContext(prompt=cfg.prompt, envs=tuple(getattr(r, "envs", ()) or ()),
                        env_rotations=int(getattr(r, "env_rotations", 0) or 0),
                        object_size=float(r.mesh_size) if fixed_mesh else 0.0)


def _build_scene(cfg: GenerateConfig, gen: torch.Generator, device, new: bool):
    """The run's scene (engine/runfolder.py; with particles > 1, a Particles wrapper over that many independently
    initialised scenes, and a camera batch that is a multiple of them). A new run's mesh is initialised from its
    ``init_from`` run (engine/init_from.py); a resumed one's state is the checkpoint's."""
    if cfg.particles > 1 and cfg.cameras.batch_size % cfg.particles:
        cfg.cameras.batch_size = cfg.particles * max(1, cfg.cameras.batch_size // cfg.particles)
    scene = runfolder.build_scene(cfg, gen, device, restore=not new)
    if new:
        init_from.initialise(scene, cfg.renderer)
    return scene


CONDITION_RENDERERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dreammat": ("prior.controlnet", ("mesh", "material")),
    "material": ("the materials prior", ("material",)),
    "lighting": (f"prior {LIGHT_AWARE}", ("mesh",)),
}
"""Per condition kind (a prior's ``condition_kind``): who takes it, and the renderers whose scenes list it in their
``condition_kinds`` (tests/test_material.py checks the two agree)."""


def _wire_condition(prior, scene) -> None:
    """A prior that takes per-view condition images (the ControlNet prior, the materials prior) gets them from the
    scene's renders: set each scene's ``render_condition`` to the prior's declared ``condition_kind``, or refuse a
    scene that is no ``ConditionRenderer`` of that kind (exit 2, before any file is written)."""
    if not declares(prior, ConditionedPrior):
        return
    kind = prior.condition_kind
    scenes = scenes_of(scene)  # Particles holds several
    if not all(declares(s, ConditionRenderer) and kind in s.condition_kinds for s in scenes):
        who, renderers = CONDITION_RENDERERS.get(kind, (f"a prior taking {kind!r} conditions", ()))
        where = (f"the {' or '.join(renderers)} renderer (--renderer {'|'.join(renderers)})" if renderers
                 else "a renderer that renders them")
        raise RunError(f"{who} needs {where}, which renders its condition images with each training view", code=2)
    for s in scenes:
        s.render_condition = kind


def _prior_generator(guidance) -> torch.Generator | None:
    """The prior's own generator (diffusers priors sample the VAE posterior with it, on the prior's device)."""
    return guidance.prior.generator if declares(guidance.prior, OwnGenerator) else None


def _state(step, scene, guidance, background, opt, gen, anchors) -> dict:
    state = {"step": step, "scene": scene.state_dict(), "guidance": guidance.state_dict(),
             "anchor": anchors.state_dict(),
             "background": background.state_dict(), "optimizer": opt.state_dict(),
             "rng": gen.get_state(), "torch_rng": torch.get_rng_state()}
    prior_gen = _prior_generator(guidance)
    if prior_gen is not None:  # so that a resumed run draws the same VAE noise as an uninterrupted one
        state["prior_rng"] = prior_gen.get_state()
    return state


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
    run = None
    if resume:  # config and newest whole checkpoint (a truncated newest one falls back to the one before)
        try:
            run = runfolder.load_run(resume, scene=False,
                                     warn=lambda m: print(f"engine: warning: {m}", file=sys.stderr))
        except runfolder.NoCheckpoint:
            raise RunError(f"{resume} has no checkpoint to resume from", code=2) from None
        except ValueError as e:
            raise RunError(str(e), code=2) from None
        cfg, run_dir = run.config, resume
    else:
        run_dir = cfg.out or default_run_dir(cfg.prompt)
        if cfg.out:
            check_new_run_dir(run_dir)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    prior, prompts = _prepare(cfg, device)

    try:  # a config the scene or the objective refuses (a backend name, an image prompt...) is bad input
        scene = _build_scene(cfg, gen, device, new=run is None)
        if run is None and hooks.init_scene is not None:
            hooks.init_scene(scene)
        guidance = cfg.guidance.build(prior, gen, cfg.train.steps)
    except ValueError as e:
        raise RunError(str(e), code=2) from None
    _wire_condition(prior, scene)
    background = Background(cfg.background).to(device)
    anchors = Anchors(cfg.anchor, cfg.cameras, cfg.resolution, cfg.train.steps, gen, device)
    start = 0
    ckpt = run is not None
    state = run.state if run is not None else {}
    if ckpt:
        scene.load_state_dict(state["scene"])
        if state["guidance"]:
            guidance.load_state_dict(state["guidance"])
        background.load_state_dict(state["background"])
        anchors.load_state_dict(state.get("anchor", {}))
    opt = _make_optimizer(cfg, scene, guidance, background)
    if ckpt:
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        if "prior_rng" in state and _prior_generator(guidance) is not None:
            _prior_generator(guidance).set_state(state["prior_rng"].cpu())
        start = state["step"]
    if declares(scene, OwnOptimizer):
        scene.attach_optimizer(opt)

    created = not resume and (not cfg.out or not os.path.exists(run_dir))  # this run makes its folder
    made = False
    try:
        # exist_ok=False for a new folder: two runs started together can never share one; a default name that
        # another run took in the meantime is drawn again (it has a random suffix)
        for _ in range(8):
            try:
                os.makedirs(run_dir, exist_ok=not created)
                made = created
                break
            except FileExistsError:
                if cfg.out or resume:
                    raise
                run_dir = default_run_dir(cfg.prompt)
        os.makedirs(os.path.join(run_dir, "ckpts"), exist_ok=True)
        os.makedirs(os.path.join(run_dir, "previews"), exist_ok=True)
        if not resume:
            save_config(cfg, os.path.join(run_dir, "config.yaml"))
        for stale in ("turntable.mp4", "eval.json"):  # a resumed run is not complete until it finishes again
            if resume and os.path.exists(os.path.join(run_dir, stale)):
                os.remove(os.path.join(run_dir, stale))
    except OSError as e:
        if made:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise RunError(f"cannot write the run folder {run_dir}: {e.strerror or e}", code=2) from None
    try:
        _loop(cfg, run_dir, start, scene, guidance, background, opt, gen, prompts, device, anchors, hooks)
    except (RunError, OSError, KeyboardInterrupt):
        raise  # the loop recorded why in status.json; the folder is kept, whatever it holds
    except BaseException:
        if created and not os.listdir(os.path.join(run_dir, "ckpts")) and not resume:
            # an unexpected failure before anything worth keeping: leave no half-made folder behind
            status = outputs.read_status(run_dir)
            if status.get("state") not in ("failed", "interrupted"):
                shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


def _loop(cfg, run_dir, start, scene, guidance, background, opt, gen, prompts, device, anchors: Anchors,
          hooks: Hooks) -> None:
    tc = cfg.train
    ckpt_dir = os.path.join(run_dir, "ckpts")
    metrics = open(os.path.join(run_dir, "metrics.jsonl"), "a")
    shapes_world = prior_world(cfg.prior.name) == "shapes"  # evaluated against the world's ground truth
    bar = None
    if tc.progress:
        from tqdm import tqdm
        bar = tqdm(total=tc.steps, initial=start, desc="generate", unit="it", dynamic_ncols=True)
    weights = {**scene.regularizer_weights, **cfg.regularizers}  # names checked at config time (check_config)
    train_s, step = 0.0, start  # seconds spent in training steps (previews, evals, checkpoints excluded)
    watch = _FiniteWatch(device, run_dir, ckpt_dir, guidance.prior)
    if tc.preview_every:  # what the prior committed each anchor view to, beside the render it started from
        anchors.on_draw = lambda k, s, render, target: outputs.save_png(
            os.path.join(run_dir, "previews", f"anchor{k}_step_{s:06d}.png"), torch.cat([render[0], target[0]], 1))
    outputs.set_status(run_dir, "running", step)
    try:
        for step in range(start, tc.steps):
            t_step = time.perf_counter()
            cams = _cams_to(sample_cameras(cfg.cameras, cfg.resolution, gen, step=step), device)
            bg = background(cams, gen)
            out = scene.render(cams, bg)
            # per-view condition images ride with their cameras (guidance/priors/controlnet.py)
            if "control" in out.extras:
                cams = cams.with_condition(out.extras["control"])
            g = guidance(out.rgb, prompts, cams, step)
            regs = scene.regularizers(out, step, weights)
            loss = g.loss + sum(weights.get(k, 1.0) * v for k, v in regs.items())
            anchor = (anchors.term(scene, guidance.prior, prompts, step, _bg_colour(background))
                      if anchors.active else None)
            if anchor is not None:  # the anchor views' fit to their committed targets (engine/anchor.py)
                loss = loss + anchor
                regs = {**regs, "anchor": anchor}
            watch.record(loss, step)
            if not watch.lazy:
                watch.stop_if_bad()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scene.after_step(step, out)
            train_s += time.perf_counter() - t_step
            done = step + 1
            logs = {"step": done, "train_s": round(train_s, 3), "it_per_s": (done - start) / max(train_s, 1e-9)}
            evaluate = tc.eval_every and done % tc.eval_every == 0 and shapes_world
            log_now = evaluate or done % tc.log_every == 0 or done == tc.steps
            if log_now:  # the step's tensors are read here only: one host-device sync per logged step
                watch.stop_if_bad()
                logs = {"step": done, **_host_logs({"loss": loss.detach(), **g.logs,
                                                    **{f"reg_{k}": v.detach() for k, v in regs.items()}}),
                        "train_s": logs["train_s"], "it_per_s": logs["it_per_s"]}
            if evaluate:
                ev = outputs.evaluate_shapes(scene, cfg.prompt, cfg.cameras, tc.eval_views, cfg.resolution, device)
                logs.update({f"eval_{k}": ev[k] for k in ("psnr", "iou") if k in ev})
            if log_now:
                metrics.write(json.dumps(logs) + "\n")
                metrics.flush()
            if bar is not None:
                bar.update(1)
                if log_now:
                    bar.set_postfix(loss=f"{logs['loss']:.4g}", t=f"{logs.get('t', float('nan')):.0f}")
            if tc.preview_every and done % tc.preview_every == 0:
                watch.stop_if_bad()
                path = os.path.join(run_dir, "previews", f"step_{done:06d}.png")
                outputs.save_preview(path, scene, cfg.cameras, cfg.resolution, _eval_bg(background), device)
                if hooks.on_preview:
                    hooks.on_preview(path)
            if tc.checkpoint_every and done % tc.checkpoint_every == 0 and done < tc.steps:
                watch.stop_if_bad()
                _checkpoint(ckpt_dir, done, scene, guidance, background, opt, gen, anchors, tc.keep_checkpoints)
            if hooks.on_step:
                hooks.on_step(done, tc.steps, logs)
            if hooks.should_stop and hooks.should_stop():
                watch.stop_if_bad()
                _checkpoint(ckpt_dir, done, scene, guidance, background, opt, gen, anchors, tc.keep_checkpoints)
                outputs.set_status(run_dir, "interrupted", done, "stopped on request; resume with --resume")
                return
        step = tc.steps
        watch.stop_if_bad()
        _checkpoint(ckpt_dir, step, scene, guidance, background, opt, gen, anchors, tc.keep_checkpoints)
        _finish(cfg, run_dir, scene, background, device, step)
    except RunError:
        raise
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM inside sigterm_as_interrupt()
        done = step  # the step in flight is redone on resume
        watch.stop_if_bad()  # never checkpoint a state a pending non-finite loss has spoiled
        try:
            _checkpoint(ckpt_dir, done, scene, guidance, background, opt, gen, anchors, tc.keep_checkpoints)
        except OSError as err:
            last = latest_checkpoint(ckpt_dir)
            e.note = (f"interrupted; the checkpoint could not be written ({err.strerror or err})"
                      + (f"; --resume {run_dir} continues from {os.path.basename(last)}" if last else ""))
            _try_status(run_dir, "interrupted", done, e.note)
            raise e from None
        _try_status(run_dir, "interrupted", done, f"interrupted; resume with --resume {run_dir}")
        e.run_dir = run_dir  # the CLI says a checkpoint was saved only when this is set
        raise
    except OSError as e:  # a full disk, a folder removed under the run: one clear line, the folder kept
        last = latest_checkpoint(ckpt_dir)
        msg = (f"cannot write to {run_dir} at step {step}: {e.strerror or e}; the run stopped. "
               + (f"Free some space and resume with --resume {run_dir} (last checkpoint {os.path.basename(last)})."
                  if last else "No checkpoint was written."))
        _try_status(run_dir, "failed", step, msg)
        raise RunError(msg) from None
    except Exception:
        if watch.lazy:  # a non-finite loss a few steps back may be why a renderer failed: say that instead
            watch.stop_if_bad()
        raise
    finally:
        metrics.close()
        if bar is not None:
            bar.close()


class _FiniteWatch:
    """The loss's NaN/Inf check without a host-device sync every step.

    On a CPU the loss is checked every step before its backward pass (reading a CPU tensor costs nothing). On a GPU
    the first non-finite step and value are kept in device tensors (``record``, no sync) and read by ``stop_if_bad``
    on logged steps and before anything is written (checkpoint, preview, the end), so no checkpoint ever holds what a
    non-finite loss trained: the run stops with the last good checkpoint, as on the CPU, a few steps later at most.
    """

    def __init__(self, device: torch.device, run_dir: str, ckpt_dir: str, prior=None):
        self.lazy = torch.device(device).type == "cuda"
        self.run_dir, self.ckpt_dir = run_dir, ckpt_dir
        # the prior's deferred NaN checks (GPU)
        self.prior_report = prior.nonfinite_report if declares(prior, DeferredChecks) else None
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_value = torch.zeros((), dtype=torch.float32, device=device)

    def record(self, loss: torch.Tensor, step: int) -> None:
        first = ~torch.isfinite(loss.detach()) & (self.bad_step < 0)
        self.bad_step = torch.where(first, step, self.bad_step)
        self.bad_value = torch.where(first, loss.detach().float(), self.bad_value)

    def stop_if_bad(self) -> None:
        """One host read; RunError (status "failed") when a recorded loss, or a prior's output, was non-finite."""
        step = int(self.bad_step)
        cause = self.prior_report() if self.prior_report is not None else None
        if step < 0 and cause is None:
            return
        last = latest_checkpoint(self.ckpt_dir)
        what = cause + ";" if cause else f"the loss became {float(self.bad_value)} at step {step};"
        msg = (f"{what} the run stopped. "
               + (f"Last good checkpoint: {last}; resume with --resume {self.run_dir} after lowering "
                  f"the learning rate (--train.lr-scale)." if last else "No checkpoint was written yet."))
        outputs.set_status(self.run_dir, "failed", max(step, 0), msg)
        raise RunError(msg)


def _cams_to(cams, device: torch.device):
    """Cameras drawn on the host moved to ``device`` through pinned memory (no host sync: foundation.device)."""
    if torch.device(device).type != "cuda":
        return cams.to(device)
    from foundation.cameras import Cameras
    from foundation.device import to_device
    return Cameras(to_device(cams.c2w, device), to_device(cams.fovy, device), cams.width, cams.height,
                   to_device(cams.azimuth, device), to_device(cams.elevation, device), to_device(cams.distance, device))


def _host_logs(logs: dict) -> dict:
    """``logs`` with every tensor read to a float in one copy per device (one sync), other values as they are."""
    out = dict(logs)
    by_device: dict = {}
    for k, v in logs.items():
        if isinstance(v, torch.Tensor):
            by_device.setdefault(v.device, []).append(k)
    for keys in by_device.values():
        vals = torch.stack([logs[k].detach().float().reshape(()) for k in keys]).cpu().tolist()
        out.update(zip(keys, vals))
    return out


def _bg_colour(background: Background) -> torch.Tensor:
    """The background's colour [3] on its device (no host sync: the training step may read it)."""
    return torch.sigmoid(background.logit.detach())


def _eval_bg(background: Background) -> torch.Tensor:
    return _bg_colour(background).cpu()


def _checkpoint(ckpt_dir, step, scene, guidance, background, opt, gen, anchors, keep) -> None:
    save_checkpoint(step_path(ckpt_dir, step), _state(step, scene, guidance, background, opt, gen, anchors))
    prune_checkpoints(ckpt_dir, keep)


def _finish(cfg: GenerateConfig, run_dir: str, scene, background: Background, device, step: int) -> None:
    """Evaluation, video, then the 'complete' status — the status is written last."""
    tc = cfg.train
    result: dict = {}
    if prior_world(cfg.prior.name) == "shapes" and tc.eval_views > 0:
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

