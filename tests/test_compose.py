"""engine.compose (issue #14, item 4): one builder for every front end's GenerateConfig -- named choices, then the
command line's typed overrides, then dotted overrides -- with one ConfigError (a one-line ValueError)."""

import pytest

from engine.cli import build_generate_config
from engine.compose import Choices, ConfigError, compose, flag_overrides, set_field


def test_choices_and_dotted_overrides_build_what_the_command_line_builds():
    cli, _ = build_generate_config(["a red cube", "--renderer", "mesh", "--steps", "5", "--seed", "4",
                                    "--cameras.elevation", "-10", "30", "--renderer.no-mipmap",
                                    "--train.lr-scale", "0.5"])
    composed = compose(Choices(prompt="a red cube", renderer="mesh", steps=5),
                       {"seed": 4, "cameras.elevation": [-10, 30], "renderer.mipmap": False,
                        "--train.lr-scale": 0.5})
    assert composed == cli
    # strings (CSV cells, the app's text field) are read as the field's type; "x.no-flag": True is tyro's --no-flag
    from_text = compose(Choices(prompt="a red cube", renderer="mesh", steps=5),
                        {"seed": "4", "cameras.elevation": "-10 30", "renderer.no-mipmap": True,
                         "train.lr_scale": "0.5"})
    assert from_text == cli
    tokens = flag_overrides(["--cameras.elevation", "-10", "30", "--renderer.no-mipmap", "--seed=4"])
    assert tokens == {"cameras.elevation": "-10 30", "renderer.no-mipmap": True, "seed": "4"}


def test_the_rules_are_applied_in_one_place(capsys, monkeypatch):
    import torch

    # the default prior is the learned shapes prior: the diffusion preset, then its folder's recommended settings,
    # said in one line once the config has passed its checks
    demo = compose(Choices(prompt="a red cube"))
    assert demo.prior.name == "shapes" and type(demo.guidance).__name__ == "ELBOConfig"
    assert (demo.guidance.guidance_scale, demo.guidance.cfg_convention, demo.train.steps, demo.resolution) == \
        (2.5, "standard", 400, 64)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "diffusion preset" in err and "then the settings of the prior shapes" in err
    # the closed-form exemplar keeps its calibrated preset (GenerateConfig's defaults: CFG 1)
    exemplar = compose(Choices(prompt="a red cube", prior="shapes-exemplar"))
    assert exemplar.guidance.guidance_scale == 1.0 and capsys.readouterr().err == ""
    # a shapes-world prior's Gaussians train under the world's key light, and so does the NeRF on the learned prior;
    # on the exemplar prior the NeRF keeps DreamFusion's shading; a typed override wins
    for prior in ("shapes", "shapes-exemplar"):
        assert compose(Choices(prompt="a red cube", prior=prior, renderer="gaussians"), say=None).renderer.light \
            == "shapes"
    assert compose(Choices(prompt="a red cube", prior="shapes"), say=None).renderer.light == "shapes"
    assert compose(Choices(prompt="a red cube", prior="shapes-exemplar"), say=None).renderer.light == "dreamfusion"
    assert compose(Choices(prompt="a red cube"), {"renderer.light": "dreamfusion"}, say=None).renderer.light \
        == "dreamfusion"
    # the announcement says what the run will use: choices the user's values replaced are not claimed, theirs are named
    capsys.readouterr()
    compose(Choices(prompt="a red cube", steps=10), {"renderer.light": "dreamfusion", "guidance.guidance_scale": 20})
    err = capsys.readouterr().err
    assert "renderer.light shapes" not in err and "train.steps=400" not in err and "guidance_scale=2.5" not in err
    assert "cameras.distance=[2.5, 2.5]" in err  # the prior's settings nobody replaced are still listed
    assert "yours instead: " in err and "renderer.light=dreamfusion" in err and "train.steps=10" in err \
        and "guidance.guidance_scale=20.0" in err
    # a prompt the shapes world cannot show is refused before anything runs, whichever of its priors
    for prior in ("shapes", "shapes-exemplar"):
        with pytest.raises(ConfigError, match="knows no word of 'a purple dragon'"):
            compose(Choices(prompt="a purple dragon", prior=prior))
    assert compose(Choices(prompt="a red cube", renderer="gaussians"), {"renderer.light": "none"}).renderer.light \
        == "none"
    # a diffusion prior selects the diffusion preset, sized by the device chosen up front (no GPU here: CPU sizes)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = compose(Choices(prompt="a red cube", prior="some/model", guidance="vsd"))
    assert cpu.resolution == 64 and cpu.train.steps == 10000
    assert "diffusion preset" in capsys.readouterr().err
    gpu = compose(Choices(prompt="a red cube", prior="some/model", guidance="vsd", device="cuda"), say=None)
    assert gpu.resolution == 512 and gpu.device == "cuda"
    assert capsys.readouterr().err == ""  # say=None: nothing printed
    # overrides win over every rule
    assert compose(Choices(prompt="a red cube", prior="some/model", device="cuda"), {"resolution": 96},
                   say=None).resolution == 96
    # the command line's typed overrides come before the dotted ones
    seen = []

    def parse(cfg):
        seen.append(cfg.train.steps)
        cfg.seed = 1
        return cfg

    assert compose(Choices(prompt="a cube", steps=3), {"seed": 2}, parse=parse).seed == 2 and seen == [3]


@pytest.mark.parametrize("choices, overrides, message", [
    (Choices(prompt="a red cube", guidance="nope"), {}, "--guidance: 'nope' is not one of"),
    (Choices(prompt="a red cube", renderer="voxels"), {}, "--renderer: 'voxels' is not one of"),
    (Choices(prompt="a red cube", preset="fast"), {}, "--preset: 'fast' is not one of"),
    (Choices(prompt="a red cube", image="x.png"), {}, "no such file"),
    (Choices(prompt="a red cube", guidance="sds", image="x.png"), {}, "--image (a visual prompt) works with"),
    (Choices(prompt="  "), {}, "the prompt is empty"),
    (Choices(prompt="a red cube", steps=-3), {}, "train.steps must be >= 0"),
    (Choices(prompt="a red cube", device="tpu"), {}, "device must be auto, cpu or cuda"),
    (Choices(prompt="a red cube"), {"no_such": 1}, "unrecognised option --no-such"),
    (Choices(prompt="a red cube"), {"renderer.no_such": 1}, "unrecognised option --renderer.no-such"),
    (Choices(prompt="a red cube"), {"guidance.guidance_scale": "abc"}, "--guidance.guidance-scale: expected a number"),
    (Choices(prompt="a red cube"), {"train.progress": "maybe"}, "--train.progress: expected true or false"),
    (Choices(prompt="a red cube"), {"cameras.elevation": "0"}, "--cameras.elevation: expected 2 values"),
    (Choices(prompt="a red cube"), {"resolution": 4}, "resolution must be at least 8"),
    (Choices(prompt="a red cube"), {"resolution": 100000}, "resolution must be in 8..2048"),
    (Choices(prompt="a red cube"), {"seed": 1.5}, "--seed: expected an integer"),
])
def test_bad_input_is_one_clear_line(choices, overrides, message):
    with pytest.raises(ConfigError) as e:
        compose(choices, overrides, say=None)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert isinstance(e.value, ValueError)


def test_the_ism_family_trains_with_its_recipes_background_augmentation(capsys):
    """Rule 3: ISM, TSM and CSM (LucidDreamer's code base: bg_aug_ratio 0.5) replace half the training backgrounds by
    a random colour, said in the preset's line; the prior folder's white background stays the colour; the others do
    not augment; a flag wins."""
    from engine.config import BACKGROUND_AUGMENT

    assert set(BACKGROUND_AUGMENT) == {"ism", "tsm", "csm"}
    for objective in ("ism", "tsm", "csm"):
        cfg = compose(Choices(prompt="a blue torus", guidance=objective))
        assert cfg.background.augment == 0.5 and cfg.background.kind == "solid", objective
        assert cfg.background.color == (1.0, 1.0, 1.0)
        assert "background augmentation 0.5" in capsys.readouterr().err
    for objective in ("sds", "vsd", "asd", "csd"):
        assert compose(Choices(prompt="a blue torus", guidance=objective)).background.augment == 0.0, objective
    assert compose(Choices(prompt="a blue torus", guidance="ism"), {"background.augment": 0.0}).background.augment == 0


def test_bounds_tighten_and_set_field_checks_the_enclosing_config():
    with pytest.raises(ConfigError, match="resolution must be in 16..32"):
        compose(Choices(prompt="a red cube"), {"resolution": 64}, bounds={"resolution": (16, 32)})
    cfg = compose(Choices(prompt="a red cube"))
    set_field(cfg, "train.steps", "12")
    assert cfg.train.steps == 12
    with pytest.raises(ConfigError, match="train.steps must be >= 0"):
        set_field(cfg, "train.steps", -1)


def test_a_saved_config_is_a_base_without_the_preset_rules(tmp_path):
    from engine.config import save_config

    cfg = compose(Choices(prompt="a red cube", renderer="gaussians"), {"renderer.light": "none", "seed": 5})
    path = str(tmp_path / "config.yaml")
    save_config(cfg, path)
    back = compose(Choices(load_config=path), {"seed": 6})
    assert back.renderer.light == "none" and back.seed == 6  # the key-light rule is not re-applied
    with pytest.raises(ConfigError, match="cannot read config"):
        compose(Choices(load_config=str(tmp_path / "missing.yaml")))


def test_a_mesh_on_the_learned_prior_is_key_lit_and_a_refinement_has_its_own_defaults(tmp_path, capsys):
    """The mesh trains under the shapes world's key light on the learned prior (its exemplars' light; the exemplar
    and light-aware priors keep its environments), and a mesh initialised from a run takes engine.compose.REFINEMENT
    (the likelihood at once, a finer tet grid, a slower material) where the user typed none of them."""
    scratch = compose(Choices(prompt="a red cube", prior="shapes", renderer="mesh"), say=None)
    assert scratch.renderer.light == "shapes" and scratch.guidance.sds_until == 0.5
    assert (scratch.renderer.tet_resolution, scratch.renderer.lr_material) == (32, 1e-2)
    assert compose(Choices(prompt="a red cube", prior="shapes-exemplar", renderer="mesh"),
                   say=None).renderer.light == "env"
    chain = compose(Choices(prompt="a red cube", renderer="mesh"), {"renderer.init_from": str(tmp_path)})
    assert chain.renderer.light == "shapes"
    assert (chain.guidance.sds_until, chain.renderer.tet_resolution, chain.renderer.lr_material) == (0.0, 48, 1e-3)
    err = capsys.readouterr().err
    assert "a mesh refining the run it starts from: guidance.sds_until=0.0, renderer.tet_resolution=48, " \
           "renderer.lr_material=0.001" in err
    typed = compose(Choices(prompt="a red cube", renderer="mesh"),
                    {"renderer.init_from": str(tmp_path), "guidance.sds_until": 0.3, "renderer.tet_resolution": 40},
                    say=None)
    assert (typed.guidance.sds_until, typed.renderer.tet_resolution, typed.renderer.lr_material) == (0.3, 40, 1e-3)
    sds = compose(Choices(prompt="a red cube", renderer="mesh", guidance="sds"), {"renderer.init_from": str(tmp_path)},
                  say=None)  # an objective without a warm-up: the renderer's defaults only
    assert not hasattr(sds.guidance, "sds_until") and sds.renderer.tet_resolution == 48
