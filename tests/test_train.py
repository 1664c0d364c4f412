"""The training loop's promises: resume continues the same run exactly, a stop keeps a checkpoint, a NaN stops the
run with its checkpoints intact, and nothing half-made looks complete."""

import json
import os

import pytest
import torch
from checkpoint_tools import flat_tensors, newest_state

from engine.checkpoint import latest_checkpoint
from engine.cli import build_generate_config
from engine.outputs import read_status
from engine.train import Hooks, RunError, generate
from guidance.base import GuidanceOutput
from guidance.sds import SDS


def _cfg(tmp_path, name="run", steps=6, *extra):
    cfg, _ = build_generate_config(["a red cube", "--steps", str(steps), "--resolution", "24",
                                    "--out", str(tmp_path / name), "--train.video-frames", "4",
                                    "--train.video-resolution", "24", "--train.preview-every", "3",
                                    "--train.checkpoint-every", "3", "--train.eval-views", "2",
                                    "--train.no-progress", "--train.no-export", *extra])
    return cfg


def _scene_tensors(run_dir):
    """The scene's tensors from the newest checkpoint, flattened to {path: tensor}."""
    return flat_tensors(newest_state(run_dir)["scene"])


def test_run_folder_layout(tmp_path):
    run = generate(_cfg(tmp_path))
    for f in ("config.yaml", "status.json", "metrics.jsonl", "turntable.mp4", "eval.json",
              "previews/step_000003.png", "ckpts/step_000006.safetensors"):
        assert os.path.exists(os.path.join(run, f)), f
    status = read_status(run)
    assert status["state"] == "complete" and status["step"] == 6
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert rows and all("loss" in r and "it_per_s" in r for r in rows)
    ev = json.load(open(os.path.join(run, "eval.json")))
    assert 0 <= ev["iou"] <= 1 and ev["psnr"] > 0
    with pytest.raises(RunError, match="already holds a run"):
        generate(_cfg(tmp_path))


def test_stop_and_resume_reproduce_the_uninterrupted_run(tmp_path):
    straight = generate(_cfg(tmp_path, "straight"))
    stopped = generate(_cfg(tmp_path, "stopped"), hooks=Hooks(should_stop=lambda: True))
    status = read_status(stopped)
    assert status["state"] == "interrupted" and status["step"] == 1
    assert not os.path.exists(os.path.join(stopped, "turntable.mp4"))
    generate(None, resume=stopped)
    assert read_status(stopped)["state"] == "complete"
    a, b = _scene_tensors(straight), _scene_tensors(stopped)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nan_stops_the_run_and_keeps_checkpoints(tmp_path, monkeypatch):
    real = SDS.__call__

    def poisoned(self, rgb, prompts, cams, step, **kw):
        out = real(self, rgb, prompts, cams, step, **kw)
        return GuidanceOutput(out.loss * float("nan"), out.logs) if step == 4 else out

    monkeypatch.setattr(SDS, "__call__", poisoned)
    with pytest.raises(RunError, match="became nan at step 4"):
        generate(_cfg(tmp_path, "run", 6, "--guidance", "sds"))  # the objective poisoned above
    run = str(tmp_path / "run")
    status = read_status(run)
    assert status["state"] == "failed" and "step_000003" in status["message"]
    assert latest_checkpoint(os.path.join(run, "ckpts")).endswith("step_000003.safetensors")
    assert not os.path.exists(os.path.join(run, "turntable.mp4"))
    assert all(torch.isfinite(v).all() for v in _scene_tensors(run).values() if v.is_floating_point())


def test_same_seed_same_result_different_seed_differs(tmp_path):
    a = _scene_tensors(generate(_cfg(tmp_path, "a", 3)))
    b = _scene_tensors(generate(_cfg(tmp_path, "b", 3)))
    c = _scene_tensors(generate(_cfg(tmp_path, "c", 3, "--seed", "1")))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].shape == c[k].shape)


def test_init_scene_hook_starts_a_new_run_from_its_state_and_a_resume_from_the_checkpoint(tmp_path):
    """Hooks.init_scene runs once, on a new run's fresh scene, before the first step (what it sets is what training
    starts from); a resumed run takes its scene from the checkpoint and does not call it."""
    seen = []

    def zero_albedo_bias(scene):
        seen.append(scene.step)
        with torch.no_grad():
            scene.mlp[2].bias[1:4] = -20.0  # albedo sigmoid(-20): black

    run = generate(_cfg(tmp_path, "hooked", 3), hooks=Hooks(init_scene=zero_albedo_bias, should_stop=lambda: True))
    assert seen == [0] and read_status(run)["step"] == 1
    bias = newest_state(run)["scene"]["mlp.2.bias"]
    assert (bias[1:4] < -19).all()  # one step of Adam moved it by at most ~1e-3, from -20
    generate(None, resume=run, hooks=Hooks(init_scene=lambda scene: seen.append("again")))
    assert seen == [0] and read_status(run)["state"] == "complete"
