"""argv -> GenerateConfig, bad input -> exit code 2 with no run folder, config.yaml replay."""

import os

import pytest

from engine.cli import build_generate_config, main
from engine.config import load_config, save_config
from guidance import GUIDANCES


def test_defaults_are_the_cpu_demo():
    """The demo is the learned shapes prior (a Stable Diffusion folder) at its folder's recommended settings."""
    cfg, resume = build_generate_config(["a red cube"])
    assert resume is None
    assert cfg.prompt == "a red cube" and cfg.prior.name == "shapes"
    # its folder recommends the likelihood objective, two views a step and a CFG of 2.5 for its warm-up with the NeRF
    # (5 with the Gaussians), and the NeRF's exp density
    assert type(cfg.guidance) is GUIDANCES["elbo"] and cfg.guidance.guidance_scale == 2.5
    assert cfg.cameras.batch_size == 2 and cfg.renderer.density_activation == "exp"
    assert (cfg.train.steps, cfg.resolution, cfg.background.kind) == (400, 64, "solid")


def test_choices_shortcuts_and_typed_overrides(tmp_path):
    cfg, _ = build_generate_config(["a blue torus", "--guidance", "sds", "--renderer", "nerf", "--steps", "7",
                                    "--seed", "3", "--resolution", "32", "--out", str(tmp_path / "r"),
                                    "--guidance.guidance-scale", "7.5", "--guidance.timesteps.max", "0.5",
                                    "--cameras.elevation", "5", "30"])
    assert cfg.train.steps == 7 and cfg.seed == 3 and cfg.resolution == 32
    assert cfg.guidance.guidance_scale == 7.5 and cfg.guidance.timesteps.max == 0.5
    assert cfg.cameras.elevation == (5.0, 30.0)
    assert cfg.out == str(tmp_path / "r")


def test_diffusion_prior_selects_the_diffusion_preset():
    cfg, _ = build_generate_config(["a hamburger", "--prior", "some/model"])
    assert cfg.prior.name == "some/model"
    assert cfg.guidance.guidance_scale == 100.0 and cfg.guidance.cfg_convention == "threestudio"


@pytest.mark.parametrize("argv", [
    ["a red cube", "--guidance", "nope"],
    ["a red cube", "--renderer.no-such-field", "1"],
    ["a red cube", "--seed", "banana"],
    [""],
    ["a red cube", "--resolution", "2"],
    ["a red cube", "--guidance.cfg-convention", "weird"],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_generate_config(argv)
    assert e.value.code == 2


def test_unknown_word_fails_cleanly_without_a_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["generate", "a purple dog", "--out", str(out), "--steps", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Vocabulary" in err and "Traceback" not in err
    assert not out.exists()


def test_config_yaml_roundtrip(tmp_path):
    cfg, _ = build_generate_config(["a red cube", "--guidance.guidance-scale", "3", "--cameras.fovy", "30", "50"])
    path = str(tmp_path / "config.yaml")
    save_config(cfg, path)
    back = load_config(path)
    assert back == cfg
    cfg2, _ = build_generate_config(["--load-config", path, "--seed", "9"])
    assert cfg2.seed == 9 and cfg2.guidance.guidance_scale == 3 and cfg2.prompt == "a red cube"


def test_resume_requires_a_run_folder(tmp_path):
    with pytest.raises(SystemExit) as e:
        build_generate_config(["--resume", str(tmp_path)])
    assert e.value.code == 2
    os.makedirs(tmp_path / "r")
    with pytest.raises(SystemExit):
        build_generate_config(["--resume", str(tmp_path / "r"), "--seed", "2"])


@pytest.mark.parametrize("bad", [["--bogus", "3"], ["--seed", "abc"], ["--guidance.weighting", "nope"],
                                 ["--image", "/nonexistent/ref.png"]])
def test_option_errors_are_one_plain_line(bad, tmp_path, capsys, monkeypatch):
    """tyro's refusals come out as exactly one 'engine: error:' line, whatever the terminal width (no box)."""
    for columns in ("40", "200"):
        monkeypatch.setenv("COLUMNS", columns)
        with pytest.raises(SystemExit) as e:
            main(["generate", "a red cube", *bad, "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err
        assert e.value.code == 2
        assert err.count("\n") == 1 and err.startswith("engine: error: "), err
        assert not any(ch in err for ch in "│╭╰─")
    assert not (tmp_path / "run").exists()
