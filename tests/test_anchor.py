"""Anchor views (engine/anchor.py): the prior commits a view to one answer and the scene is fitted to it, the targets
survive a resume, and bad settings are refused before a run starts."""

import pytest
import torch
from checkpoint_tools import flat_tensors, newest_state

from engine.anchor import AnchorConfig, Anchors
from engine.cli import build_generate_config
from engine.outputs import read_status
from engine.train import Hooks, generate
from foundation.cameras import CameraConfig
from guidance.priors import PriorConfig, build_prior
from guidance.prompts import PromptSet
from renderers.nerf import NeRFConfig


def _cfg(tmp_path, name, *extra):
    cfg, _ = build_generate_config(["a red cube", "--steps", "6", "--resolution", "32", "--out", str(tmp_path / name),
                                    "--train.video-frames", "0", "--train.checkpoint-every", "3",
                                    "--train.eval-views", "2", "--train.no-progress", "--train.no-export",
                                    "--anchor.weight", "2000", "--anchor.start", "0", "--anchor.end", "1",
                                    "--anchor.every", "2", "--anchor.azimuths", "0", "90", "--anchor.stagger", "0.5",
                                    "--anchor.ddim-steps", "4", *extra])
    return cfg


def test_a_run_stopped_between_target_draws_resumes_with_the_same_targets(tmp_path):
    """Stopped at step 3 (the first anchor's target drawn at 0 and 2, the second's not yet: it starts at 3), resumed:
    the scene and both targets equal the uninterrupted run's, so the targets travel in the checkpoint."""
    straight = generate(_cfg(tmp_path, "straight"))
    calls = []
    stopped = generate(_cfg(tmp_path, "stopped"),
                       hooks=Hooks(should_stop=lambda: calls.append(1) or len(calls) == 3))
    assert read_status(stopped)["state"] == "interrupted" and read_status(stopped)["step"] == 3
    held = newest_state(stopped)["anchor"]
    assert sorted(held) == ["target_0"] and held["target_0"].shape == (1, 32, 32, 3)
    generate(None, resume=stopped)
    a, b = flat_tensors(newest_state(straight)), flat_tensors(newest_state(stopped))
    keys = [k for k in a if k.startswith(("/scene", "/anchor"))]
    assert "/anchor/target_1" in keys and keys == [k for k in b if k.startswith(("/scene", "/anchor"))]
    for k in keys:
        assert torch.equal(a[k], b[k]), k


def test_the_prior_commits_a_grey_blob_and_the_scene_follows():
    """On the shipped prior, "a red cube": the SDEdit target of the NeRF's initial grey blob is red (the prompt's
    answer, not the render), and 80 steps of the anchor term alone bring the anchor view's render towards it."""
    torch.manual_seed(0)
    prior = build_prior(PriorConfig(name="shapes"))
    prompts = PromptSet(prior, "a red cube")
    gen = torch.Generator().manual_seed(0)
    scene = NeRFConfig(light="shapes", density_activation="exp").build(gen)
    cfg = AnchorConfig(weight=2000.0, start=0.0, end=1.0, every=1000)
    anchors = Anchors(cfg, CameraConfig(), 64, 100, torch.Generator().manual_seed(1))
    white = torch.ones(3)
    with torch.no_grad():
        before = scene.render(anchors.cams[0], white).rgb
    first = anchors.term(scene, prior, prompts, 0, white)
    target = anchors.targets[0]
    fg = (target.min(-1).values < 0.8)[0]  # the target's object pixels
    r, g, b = target[0][fg].mean(0)
    assert fg.float().mean() > 0.1 and r > 0.5 and r - (g + b) / 2 > 0.3, (r, g, b)
    br, bg_, bb = before[0][fg].mean(0)
    assert abs(br - (bg_ + bb) / 2) < 0.1  # the render was grey: the colour is the prior's commitment
    opt = torch.optim.Adam([g for g in scene.param_groups().values()], betas=(0.9, 0.99), eps=1e-15)
    for step in range(1, 81):
        loss = anchors.term(scene, prior, prompts, step, white)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(anchors.targets[0], target) and anchors.draws == 1  # every=1000: drawn once
    assert loss.item() < 0.5 * first.item()  # measured: 77.1 -> 19.8
    assert anchors.term(scene, prior, prompts, 100, white) is None  # the run's end: off


def test_anchor_strength_goes_from_first_to_last_draw():
    anchors = Anchors(AnchorConfig(weight=1.0, start=0.25, end=0.75, strength=(0.8, 0.2)), CameraConfig(), 16, 400,
                      torch.Generator())
    assert anchors.strength_at(100) == pytest.approx(0.8) and anchors.strength_at(300) == pytest.approx(0.2)
    assert anchors.strength_at(200) == pytest.approx(0.5) and anchors.first == [100]
    off = Anchors(AnchorConfig(), CameraConfig(), 16, 400, torch.Generator())
    assert off.term(None, None, None, 150, torch.ones(3)) is None  # weight 0: never renders, never draws


@pytest.mark.parametrize("flags, words", [
    (["--anchor.weight", "-1"], "anchor.weight"),
    (["--anchor.start", "0.6", "--anchor.end", "0.5"], "anchor.start"),
    (["--anchor.strength", "0", "0.3"], "anchor.strength"),
    (["--anchor.every", "0"], "anchor.every"),
    (["--anchor.azimuths", "0", "90", "--anchor.stagger", "0.5"], "anchor.stagger"),
])
def test_bad_anchor_settings_are_refused_before_a_run(flags, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        build_generate_config(["a red cube", "--out", str(tmp_path / "r"), *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"engine: error: {words}" in err and not (tmp_path / "r").exists()
