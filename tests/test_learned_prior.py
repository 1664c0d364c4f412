"""The learned shapes prior (issue #12): the training command, and the shipped folder (`--prior shapes`).

The training test runs `engine train-prior shapes` on a tiny configuration (32 px, two views per shape, a few steps)
twice and checks it is deterministic and writes a folder that plain diffusers loads offline. The shipped-folder tests
load guidance/priors/weights/shapes-sd through `--prior shapes` and check its size and its text conditioning.
"""

import hashlib
import json
import os

import pytest
import torch

from guidance.priors import BUILTIN_FOLDERS, PriorConfig, build_prior

SHIPPED = BUILTIN_FOLDERS["shapes"]
TINY = ["--resolution", "32", "--views-per-shape", "2", "--vae-steps", "3", "--vae-batch", "2", "--vae-crop", "16",
        "--unet-steps", "3", "--unet-batch", "4", "--vae-channels", "32", "32", "32", "32",
        "--unet-channels", "32", "32", "--text-hidden", "32",
        "--log-every", "1", "--warmup", "1", "--checkpoint-every", "2", "--threads", "1"]


def _digest(folder: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            if f.endswith(".safetensors"):
                with open(os.path.join(root, f), "rb") as fh:
                    out[os.path.relpath(os.path.join(root, f), folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _run(argv):
    from engine.cli import main
    return main(["train-prior", *argv])


def test_train_prior_is_deterministic_and_loads_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert _run(["shapes", "--out", a, "--seed", "3", *TINY]) == 0
    assert _run(["shapes", "--out", b, "--seed", "3", *TINY]) == 0
    da, db = _digest(a), _digest(b)
    assert set(da) == {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                       "text_encoder/model.safetensors"}
    assert da == db
    record = json.load(open(os.path.join(a, "training.json")))
    assert record["complete"] and record["unet_steps_run"] == 3 and record["vae_steps_run"] == 3
    assert 0.05 < record["scaling_factor"] < 50
    assert os.path.isdir(a + ".train")  # checkpoints beside the folder

    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(a, dtype=torch.float32)
    assert pipe.vae.config.scaling_factor == pytest.approx(record["scaling_factor"], rel=1e-6)
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.scheduler.config.beta_start == 0.00085 and pipe.scheduler.config.beta_end == 0.012
    assert pipe.tokenizer("a red cube").input_ids[1:4] == [pipe.tokenizer.convert_tokens_to_ids(w + "</w>")
                                                           for w in ("a", "red", "cube")]
    pipe.set_progress_bar_config(disable=True)
    img = pipe("a red cube", num_inference_steps=2, height=32, width=32, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 32, 32, 3) and torch.isfinite(torch.from_numpy(img)).all()

    # The folder says which world it models (distillery.json), so a run on it is evaluated against that world's
    # ground truth like a run on a built-in prior, and its recommended settings are applied.
    from engine.train_prior import RECOMMENDED_BY_OBJECTIVE, RECOMMENDED_DEFAULTS, RECOMMENDED_OBJECTIVE
    from guidance.priors import prior_objective, prior_world
    doc = json.load(open(os.path.join(a, "distillery.json")))
    assert doc["world"] == "shapes" and doc["defaults"] == RECOMMENDED_DEFAULTS
    assert doc["defaults_by_objective"] == RECOMMENDED_BY_OBJECTIVE and prior_objective(a) == RECOMMENDED_OBJECTIVE
    assert prior_world(a) == "shapes" and prior_world(str(tmp_path)) is None and prior_world("shapes") == "shapes"
    from engine.cli import main
    run = str(tmp_path / "run")
    assert main(["generate", "a red cube", "--prior", a, "--out", run, "--train.steps", "2", "--train.no-export",
                 "--train.video-frames", "0", "--train.no-progress", "--resolution", "32"]) == 0
    ev = json.load(open(os.path.join(run, "eval.json")))
    assert ev["shape"] == "cube" and ev["closest_shape"] in ("cube", "sphere", "cylinder", "cone", "torus")


def test_train_prior_conditions_on_the_camera(tmp_path, monkeypatch):
    """``--camera-code``: the UNet learns with each view's camera code on its caption (a different UNet from the same
    seed without it), the folder tells its runs to send the code (distillery.json ``prompts.camera_code``, which a run
    on it takes, with engine/train_prior.py ``CAMERA_CODE_BY_OBJECTIVE``), and plain diffusers still samples it from
    the prompt alone."""
    from engine.train_prior import RECOMMENDED_BY_OBJECTIVE, RECOMMENDED_BY_OBJECTIVE_AND_RENDERER

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert _run(["shapes", "--out", a, "--seed", "3", *TINY]) == 0
    assert _run(["shapes", "--out", b, "--seed", "3", *TINY, "--camera-code"]) == 0
    da, db = _digest(a), _digest(b)
    assert da["vae/diffusion_pytorch_model.safetensors"] == db["vae/diffusion_pytorch_model.safetensors"]
    assert da["unet/diffusion_pytorch_model.safetensors"] != db["unet/diffusion_pytorch_model.safetensors"]
    assert json.load(open(os.path.join(b, "training.json")))["config"]["camera_code"] is True
    assert json.load(open(os.path.join(b, "distillery.json")))["defaults"]["prompts.camera_code"] is True
    by_objective = json.load(open(os.path.join(b, "distillery.json")))["defaults_by_objective"]
    assert by_objective["csd"] == {"prompts.camera_code": False}  # CSD distills the text's classifier alone
    assert by_objective["elbo"] == {**RECOMMENDED_BY_OBJECTIVE["elbo"], "guidance.guidance_scale": 5.0,
                                    "cameras.elevation": [-10.0, 45.0]}  # the views where the data has them
    by_pair = json.load(open(os.path.join(b, "distillery.json")))["defaults_by_objective_and_renderer"]
    smooth = RECOMMENDED_BY_OBJECTIVE_AND_RENDERER["elbo"]  # the albedo smoothness, for every folder
    assert by_pair == {"elbo": {"nerf": {**smooth["nerf"], "guidance.guidance_scale": 2.5},  # a gentler warm-up
                                "gaussians": smooth["gaussians"]}}
    assert "prompts.camera_code" not in json.load(open(os.path.join(a, "distillery.json")))["defaults"]
    assert json.load(open(os.path.join(a, "distillery.json")))["defaults_by_objective_and_renderer"] == {
        "elbo": smooth}
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(b, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    img = pipe("a red cube", num_inference_steps=2, height=32, width=32, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 32, 32, 3) and torch.isfinite(torch.from_numpy(img)).all()
    import yaml

    from engine.cli import main
    run = str(tmp_path / "run")
    assert main(["generate", "a red cube", "--prior", b, "--out", run, "--train.steps", "2", "--train.no-export",
                 "--train.video-frames", "0", "--train.no-progress", "--resolution", "32"]) == 0
    assert yaml.safe_load(open(os.path.join(run, "config.yaml")))["prompts"]["camera_code"] is True


def test_train_prior_takes_its_vae_from_a_folder(tmp_path, monkeypatch):
    """``--vae-from FOLDER``: the VAE phase is the folder's VAE (byte for byte in the new folder), the background
    share shapes the UNet's data alone and the scaling factor is measured again; a folder without a vae/ is refused
    before anything is written."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert _run(["shapes", "--out", a, "--seed", "3", *TINY]) == 0
    assert _run(["shapes", "--out", b, "--seed", "3", *TINY, "--vae-from", a, "--white-background", "0.9"]) == 0
    da, db = _digest(a), _digest(b)
    vae = "vae/diffusion_pytorch_model.safetensors"
    assert da[vae] == db[vae] and da["unet/diffusion_pytorch_model.safetensors"] != db[
        "unet/diffusion_pytorch_model.safetensors"]
    record = json.load(open(os.path.join(b, "training.json")))
    assert record["complete"] and record["vae_steps_run"] == 0 and record["unet_steps_run"] == 3
    assert record["config"]["vae_from"] == a and record["config"]["white_background"] == 0.9
    first = json.load(open(os.path.join(a, "training.json")))
    assert record["scaling_factor"] != first["scaling_factor"]
    assert record["from"]["config"] == first["config"]  # the VAE's own run stays on record
    with pytest.raises(SystemExit) as e:
        _run(["shapes", "--out", str(tmp_path / "c"), "--vae-from", str(tmp_path)])
    assert e.value.code == 2 and not os.path.exists(tmp_path / "c")


def test_train_prior_fine_tunes_a_folder(tmp_path, monkeypatch):
    """``--unet-from FOLDER``: the UNet starts from the folder's (a fine-tune: the result differs from it but stays
    close), the folder's text encoder and VAE come along byte for byte with its scaling factor, the folder's record
    is kept under "from" (the chain of commands stays on record), and a folder without a unet/ is refused before
    anything is written."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from safetensors.torch import load_file
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert _run(["shapes", "--out", a, "--seed", "3", *TINY]) == 0
    # the architecture options are left at their defaults: the loaded models' shapes are what training.json records
    tiny_training = TINY[:TINY.index("--vae-channels")] + TINY[TINY.index("--log-every"):]
    assert _run(["shapes", "--out", b, "--seed", "3", *tiny_training, "--unet-from", a, "--white-background", "0.9",
                 "--unet-lr", "1e-4"]) == 0
    da, db = _digest(a), _digest(b)
    unet = "unet/diffusion_pytorch_model.safetensors"
    for part in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert da[part] == db[part]
    assert da[unet] != db[unet]
    ua, ub = (load_file(os.path.join(f, unet)) for f in (a, b))
    moved = max((ua[k].float() - ub[k].float()).abs().max().item() for k in ua)
    assert 0 < moved < 0.05  # three steps at 1e-4 from the folder's weights, not a fresh initialisation
    record, first = (json.load(open(os.path.join(f, "training.json"))) for f in (b, a))
    assert record["complete"] and record["from"] == first and record["scaling_factor"] == first["scaling_factor"]
    assert record["config"]["unet_from"] == a and record["vae_steps_run"] == 0
    assert record["config"]["unet_channels"] == [64, 128, 128]  # the command as given ...
    assert record["architecture"] == first["architecture"]  # ... and the models as trained
    assert first["architecture"]["unet_channels"] == [32, 32] and first["architecture"]["text_hidden"] == 32
    assert first["architecture"]["vae_channels"] == [32, 32, 32, 32]
    for part, name in (("unet", "config.json"), ("vae", "config.json"), ("tokenizer", "tokenizer_config.json")):
        saved = json.load(open(os.path.join(b, part, name)))  # not where, nor how, the fine-tune loaded them
        assert not {"_name_or_path", "is_local", "local_files_only"} & set(saved), (part, saved)
    for bad in (["--unet-from", str(tmp_path)], ["--unet-from", a, "--vae-from", a]):
        with pytest.raises(SystemExit) as e:
            _run(["shapes", "--out", str(tmp_path / "d"), *bad])
        assert e.value.code == 2 and not os.path.exists(tmp_path / "d")


def test_train_prior_refuses_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _run(["castles", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        _run(["shapes", "--out", str(tmp_path / "y"), "--vae-crop", "12"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "castles" in err[0] and "vae_crop" in err[1]
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")


def test_train_prior_options_are_the_config_fields(tmp_path):
    """The flags are TrainPriorConfig's fields, parsed from the dataclass (defaults only there); --out is required."""
    from engine.cli import UsageError
    from engine.cli_train_prior import parse
    from engine.train_prior import TrainPriorConfig

    out = str(tmp_path / "p")
    assert parse(["shapes", "--out", out]).prior == TrainPriorConfig(out=out)
    cmd = parse(["shapes", "--out", out, "--no-fp16", "--resume", "--vae-channels", "8", "8", "8", "8",
                 "--minutes", "2.5", "--unet-steps", "7"])
    assert cmd.prior == TrainPriorConfig(out=out, fp16=False, resume=True, vae_channels=(8, 8, 8, 8), minutes=2.5,
                                         unet_steps=7)
    for argv, message in ((["shapes"], "--out DIR is required"), (["shapes", "--out", out, "--bogus"], "--bogus"),
                          (["shapes", "--out", out, "--unet-batch", "0"], "unet_batch must be >= 1")):
        with pytest.raises(UsageError, match=message):
            parse(argv)


def _megabytes(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs) / 1e6


def test_shipped_prior_loads_through_its_name():
    assert _megabytes(SHIPPED) <= 20.0
    from guidance.priors.stable_diffusion import StableDiffusionPrior
    prior = build_prior(PriorConfig(name="shapes"))
    assert type(prior) is StableDiffusionPrior
    assert BUILTIN_FOLDERS["shapes-sd"] == SHIPPED  # the earlier name still loads it
    assert prior.native_resolution == 64 and prior.latent
    from foundation.cameras import orbit_cameras
    from foundation.shapes import render_ground_truth
    x, _ = render_ground_truth("torus", "blue", orbit_cameras([30.0], [20.0], 2.5, 40.0, 64))
    z = prior.encode(x)
    assert z.shape == (1, 4, 8, 8)
    assert 0.5 < z.std().item() < 2.0  # scaling_factor makes the latents about unit variance, as in SD
    back = prior.decode(z)
    assert (back - x).abs().mean() < 0.1  # the VAE reconstructs the world
    assert (back - x).abs().max(-1).values.mean() < 0.15


def _foreground_mean(img: torch.Tensor) -> torch.Tensor:
    border = torch.cat([img[0], img[-1], img[:, 0], img[:, -1]])
    bg = border.median(0).values
    fg = (img - bg).norm(dim=-1) > 0.12
    assert fg.sum() > 20, "the sample shows no object"
    return img[fg].mean(0)


def test_shipped_prior_text_conditioning_is_real(monkeypatch):
    """Same seed, "a red cube" vs "a green cube": the object's colour follows the text (plain diffusers, DDIM)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(SHIPPED, dtype=torch.float32)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    seeds = [0, 1]
    prompts = ["a red cube"] * len(seeds) + ["a green cube"] * len(seeds)
    gens = [torch.Generator().manual_seed(s) for s in seeds * 2]
    imgs = torch.from_numpy(pipe(prompts, num_inference_steps=20, guidance_scale=7.5, generator=gens,
                                 output_type="np").images)
    g_minus_r = [(lambda m: m[1] - m[0])(_foreground_mean(img)).item() for img in imgs]
    for k in range(len(seeds)):
        red, green = g_minus_r[k], g_minus_r[len(seeds) + k]
        assert red < 0 < green, (seeds[k], red, green)  # the object is red, then green
        assert green - red > 0.3, (seeds[k], red, green)


def test_prior_folder_defaults_apply_and_yield_to_flags(tmp_path, capsys):
    from engine.cli import build_generate_config
    folder = tmp_path / "prior"
    folder.mkdir()
    (folder / "distillery.json").write_text(json.dumps({"defaults": {
        "train.steps": 123, "guidance.guidance_scale": 7.5, "cameras.elevation": [0, 30],
        "guidance.not_a_field_of_sds": 1}}))
    cfg, _ = build_generate_config(["a red cube", "--prior", str(folder)])
    assert cfg.train.steps == 123 and cfg.guidance.guidance_scale == 7.5 and cfg.cameras.elevation == (0, 30)
    assert "train.steps=123" in capsys.readouterr().err
    cfg, _ = build_generate_config(["a red cube", "--prior", str(folder), "--steps", "50",
                                    "--guidance.guidance-scale", "20"])
    assert cfg.train.steps == 50 and cfg.guidance.guidance_scale == 20
    (folder / "distillery.json").write_text(json.dumps({"defaults": {"train.no_such_thing": 1}}))
    with pytest.raises(SystemExit) as e:
        build_generate_config(["a red cube", "--prior", str(folder)])
    assert e.value.code == 2 and "no_such_thing" in capsys.readouterr().err


def test_prior_folder_recommends_an_objective_for_runs_that_name_none(tmp_path, capsys):
    """A folder's distillery.json "objective" is the objective of a run that names none (said on stderr, with the
    way back to SDS); a named --guidance, an image prompt (csm) and a saved config win; a name that is not an
    objective is the folder's one-line error."""
    from engine.cli import build_generate_config
    from engine.compose import Choices, compose
    from engine.config import save_config
    from guidance.elbo import ELBOConfig
    from guidance.sds import SDSConfig
    folder = tmp_path / "prior"
    folder.mkdir()
    (folder / "distillery.json").write_text(json.dumps({"objective": "elbo",
                                                        "defaults": {"guidance.guidance_scale": 7.5}}))
    cfg, _ = build_generate_config(["a red cube", "--prior", str(folder)])
    assert type(cfg.guidance) is ELBOConfig and cfg.guidance.guidance_scale == 7.5
    assert "guidance elbo (the prior's recommended objective" in capsys.readouterr().err
    cfg, _ = build_generate_config(["a red cube", "--prior", str(folder), "--guidance", "sds"])
    assert type(cfg.guidance) is SDSConfig
    from PIL import Image
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "ref.png")
    assert type(compose(Choices(prompt="a red cube", prior=str(folder), image=str(tmp_path / "ref.png")),
                        say=None).guidance).__name__ == "CSMConfig"  # an image prompt alone selects csm
    saved = str(tmp_path / "config.yaml")
    save_config(compose(Choices(prompt="a red cube", prior=str(folder), guidance="vsd"), say=None), saved)
    assert type(compose(Choices(load_config=saved), say=None).guidance).__name__ == "VSDConfig"
    (folder / "distillery.json").write_text(json.dumps({"objective": "no-such-objective"}))
    with pytest.raises(SystemExit) as e:
        build_generate_config(["a red cube", "--prior", str(folder)])
    assert e.value.code == 2 and "recommends the objective 'no-such-objective'" in capsys.readouterr().err
    cfg, _ = build_generate_config(["a red cube", "--prior", str(folder), "--guidance", "sds"])  # named: not read
    assert type(cfg.guidance) is SDSConfig


def test_prior_folder_defaults_by_objective_apply_to_that_objective_only(tmp_path, capsys):
    """distillery.json "defaults_by_objective"[<objective>] applies after "defaults" to runs of that objective only
    (the recommended one or a named one), and yields to flags; a malformed entry is the folder's one-line error."""
    from engine.cli import build_generate_config
    folder = tmp_path / "prior"
    folder.mkdir()
    (folder / "distillery.json").write_text(json.dumps({
        "objective": "elbo", "defaults": {"cameras.batch_size": 2, "train.steps": 77},
        "defaults_by_objective": {"elbo": {"cameras.batch_size": 4}, "vsd": {"train.steps": 88}}}))
    cfg, _ = build_generate_config(["a red cube", "--prior", str(folder)])  # elbo, recommended
    assert cfg.cameras.batch_size == 4 and cfg.train.steps == 77
    assert "cameras.batch_size=4" in capsys.readouterr().err
    cfg, _ = build_generate_config(["a red cube", "--prior", str(folder), "--guidance", "sds"])
    assert cfg.cameras.batch_size == 2 and cfg.train.steps == 77
    cfg, _ = build_generate_config(["a red cube", "--prior", str(folder), "--guidance", "vsd"])
    assert cfg.cameras.batch_size == 2 and cfg.train.steps == 88
    cfg, _ = build_generate_config(["a red cube", "--prior", str(folder), "--cameras.batch-size", "1"])
    assert cfg.cameras.batch_size == 1
    (folder / "distillery.json").write_text(json.dumps({"defaults_by_objective": {"sds": [1, 2]}}))
    with pytest.raises(SystemExit) as e:
        build_generate_config(["a red cube", "--prior", str(folder), "--guidance", "sds"])
    assert e.value.code == 2 and "cannot read the prior's defaults" in capsys.readouterr().err


def test_nerf_views_from_below_only_where_the_data_reaches(tmp_path):
    """write_defaults gives elbo's NeRF views from below the objective's -10 only for data that reaches lower
    (``lowest_elevation``), 5 degrees inside it and at most 30 below the horizon."""
    from engine.train_prior import nerf_lowest_view, write_defaults

    assert [nerf_lowest_view(e) for e in (-10.0, -20.0, -35.0, -60.0, 20.0)] == [-10.0, -15.0, -30.0, -30.0, -10.0]
    for low, expect in ((-10.0, None), (-35.0, [-30.0, 45.0])):
        write_defaults(str(tmp_path), camera_code=True, lowest_elevation=low)
        nerf = json.load(open(tmp_path / "distillery.json"))["defaults_by_objective_and_renderer"]["elbo"]["nerf"]
        assert nerf.get("cameras.elevation") == expect and nerf["guidance.guidance_scale"] == 2.5
    write_defaults(str(tmp_path), camera_code=False, lowest_elevation=-35.0)
    nerf = json.load(open(tmp_path / "distillery.json"))["defaults_by_objective_and_renderer"]["elbo"]["nerf"]
    assert "cameras.elevation" not in nerf and "guidance.guidance_scale" not in nerf


def test_prior_folder_defaults_by_objective_and_renderer_apply_to_that_pair_only(tmp_path, capsys):
    """distillery.json "defaults_by_objective_and_renderer"[<objective>][<renderer>] applies after the objective's
    settings, to runs of that objective with that renderer only, and yields to flags."""
    from engine.cli import build_generate_config
    folder = tmp_path / "prior"
    folder.mkdir()
    (folder / "distillery.json").write_text(json.dumps({
        "objective": "elbo", "defaults": {"train.steps": 77},
        "defaults_by_objective": {"elbo": {"guidance.guidance_scale": 5.0}},
        "defaults_by_objective_and_renderer": {"elbo": {"nerf": {"guidance.guidance_scale": 3.0}},
                                               "sds": {"gaussians": {"train.steps": 66}}}}))
    cfg, _ = build_generate_config(["a red cube", "--prior", str(folder)])  # elbo with the NeRF (the defaults)
    assert cfg.guidance.guidance_scale == 3.0 and cfg.train.steps == 77
    assert "guidance.guidance_scale=3.0" in capsys.readouterr().err
    cfg, _ = build_generate_config(["a red cube", "--prior", str(folder), "--renderer", "gaussians"])
    assert cfg.guidance.guidance_scale == 5.0 and cfg.train.steps == 77
    cfg, _ = build_generate_config(["a red cube", "--prior", str(folder), "--guidance", "sds", "--renderer",
                                    "gaussians"])
    assert cfg.train.steps == 66
    cfg, _ = build_generate_config(["a red cube", "--prior", str(folder), "--guidance.guidance-scale", "9"])
    assert cfg.guidance.guidance_scale == 9
    (folder / "distillery.json").write_text(json.dumps({"defaults_by_objective_and_renderer": {"elbo": [1]}}))
    with pytest.raises(SystemExit) as e:
        build_generate_config(["a red cube", "--prior", str(folder), "--guidance", "elbo"])
    assert e.value.code == 2 and "cannot read the prior's defaults" in capsys.readouterr().err


def test_vsd_lora_learns_on_the_shipped_prior():
    """VSD's particle LoRA trains through the shipped prior: after a few steps every LoRA tensor has moved (B starts
    at 0), and the particle's epsilon for a fixed (x_t, t) has changed and differs from the frozen prior's
    (LoRA off)."""
    from foundation.cameras import orbit_cameras
    from foundation.shapes import render_ground_truth
    from guidance.base import add_noise
    from guidance.prompts import PromptSet
    from guidance.vsd import VSDConfig, camera_vector

    torch.manual_seed(0)
    prior = build_prior(PriorConfig(name="shapes"))  # a fresh prior: VSD adds its adapter to this UNet
    vsd = VSDConfig(particle_lr=1e-2).build(prior, torch.Generator().manual_seed(0), 4)
    lora = vsd.particle.lora
    prompts = PromptSet(prior, "a red cube")
    cams = orbit_cameras(torch.tensor([0.0, 90.0]), 20.0, 2.5, 40.0, 64)
    rgb, _ = render_ground_truth("cube", "red", cams)
    plain, cam = prompts.plain.expand(2), camera_vector(cams)
    with torch.no_grad():
        z = prior.encode(rgb)
        t = torch.tensor([500, 500])
        x_t = add_noise(z, torch.randn(z.shape, generator=torch.Generator().manual_seed(1)), t, prior.alphas_cumprod)
        eps_frozen = prior.predict_eps(x_t, t, plain)
    eps_start = vsd.particle_eps(x_t, t, plain, cam)
    before = [p.detach().clone() for p in lora]
    opt = torch.optim.Adam(vsd.param_groups()["guidance"]["params"], lr=1e-2)
    for step in range(4):
        opt.zero_grad(set_to_none=True)
        vsd(rgb.clone().requires_grad_(True), prompts, cams, step).loss.backward()
        opt.step()
    assert all(not torch.equal(a, p.detach()) for a, p in zip(before, lora))  # every LoRA tensor moved
    eps_phi = vsd.particle_eps(x_t, t, plain, cam)
    with torch.no_grad():
        eps_frozen_after = prior.predict_eps(x_t, t, plain)
    torch.testing.assert_close(eps_frozen_after, eps_frozen)  # the prior's own predictions stay pretrained
    assert torch.isfinite(eps_phi).all()
    moved = (eps_phi - eps_start).abs().mean().item()
    apart = (eps_phi - eps_frozen).abs().mean().item()
    assert moved > 1e-3 and apart > 1e-3, (moved, apart)


def _x0_estimates(prior, pairs, scale, x_t, t):
    """The CFG'd one-step x0 estimate, decoded and clamped to [0, 1], for each (prompt, negative) in ``pairs``:
    eps = eps_u + s (eps_y - eps_u) (standard CFG, Ho & Salimans 2022), x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)
    (DDPM eq. 15)."""
    from guidance.base import x0_hat
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    out = []
    with torch.no_grad():
        for y, u in pairs:
            embs = prior.embed([y, u])
            ey, eu = (prior.predict_eps(x_t, t, embs[i].expand(len(t))) for i in (0, 1))
            out.append(prior.decode(x0_hat(x_t, eu + scale * (ey - eu), abar)).clamp(0, 1))
    return out


def _red_chroma(img: torch.Tensor) -> torch.Tensor:
    """Per image: mean over pixels of R - (G + B) / 2."""
    return (img[..., 0] - (img[..., 1] + img[..., 2]) / 2).flatten(1).mean(1)


def _saturation(img: torch.Tensor) -> torch.Tensor:
    """Per image: mean over pixels of max - min channel (the HSV chroma)."""
    return (img.max(-1).values - img.min(-1).values).flatten(1).mean(1)


@pytest.fixture(scope="module")
def shipped_prior():
    torch.manual_seed(0)
    return build_prior(PriorConfig(name="shapes"))


def test_shipped_prior_negative_prompt_moves_away_from_red(shipped_prior):
    """"a cube" with the negative prompt "red" against the empty one, same noise at t = 999, CFG 7.5: the decoded
    x0 estimate is less red (R - (G+B)/2) on average over eight seeds and in most of them. Measured on the weights
    of session 20: lower in 5 of 8 seeds, mean drop 0.037 (largest 0.107, largest rise 0.051); session 19's weights
    dropped it in each of 4 seeds, by 0.07 to 0.44. The frozen random text encoder (engine/train_prior.py) gives
    "red" alone a weak embedding, so the effect is real but small."""
    prior = shipped_prior
    t = torch.full((8,), 999)
    x_t = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    plain, negated = _x0_estimates(prior, [("a cube", ""), ("a cube", "red")], 7.5, x_t, t)
    drop = _red_chroma(plain) - _red_chroma(negated)
    assert (drop > 0).sum() >= 5 and drop.mean() > 0.02, drop.tolist()


def test_shipped_prior_high_cfg_saturates(shipped_prior):
    """"a red cube" at CFG 100 against 7.5, from a grey cube render noised to t = 500 (same noise): the guided
    estimate is more saturated in every one of four views (max - min channel; measured +0.039 to +0.082, mean +0.060
    on the shipped weights, +0.08 to +0.21 on session 19's), the usual over-saturation of large CFG scales
    (DreamFusion's 100 included). On session 19's weights its redness did not rise with it (0.065 at 100 against
    0.086 at 7.5): the extra chroma is not all the prompt's colour."""
    from foundation.cameras import orbit_cameras
    from foundation.shapes import render_ground_truth
    from guidance.base import add_noise
    prior = shipped_prior
    cams = orbit_cameras(torch.tensor([0.0, 60.0, 120.0, 200.0]), 20.0, 2.5, 40.0, 64)
    rgb, _ = render_ground_truth("cube", "red", cams)
    grey = rgb.mean(-1, keepdim=True).expand_as(rgb).contiguous()
    t = torch.full((4,), 500)
    with torch.no_grad():
        z = prior.encode(grey)
    x_t = add_noise(z, torch.randn(z.shape, generator=torch.Generator().manual_seed(0)), t, prior.alphas_cumprod)
    (low,), (high,) = (_x0_estimates(prior, [("a red cube", "")], s, x_t, t) for s in (7.5, 100.0))
    gain = _saturation(high) - _saturation(low)
    assert (gain > 0.02).all() and gain.mean() > 0.04, gain.tolist()


def test_shipped_prior_recommended_defaults_are_applied(capsys):
    """`--prior shapes` (the default) alone gets the folder's distillery.json on top of the diffusion preset: the
    cameras and white background the model was trained on and CFG 7.5 (docs/learned-prior.md, first 3D
    measurement); flags win."""
    from engine.cli import build_generate_config
    cfg, _ = build_generate_config(["a red cube", "--prior", "shapes", "--guidance", "sds"])
    assert cfg.guidance.guidance_scale == 7.5 and cfg.guidance.cfg_convention == "standard"
    assert cfg.cameras.elevation == (0.0, 40.0) and cfg.cameras.distance == (2.5, 2.5)
    assert cfg.cameras.fovy == (40.0, 40.0)
    assert cfg.background.kind == "solid" and cfg.background.color == (1.0, 1.0, 1.0)
    assert "then the settings of the prior shapes" in capsys.readouterr().err
    cfg, _ = build_generate_config(["a red cube", "--prior", "shapes", "--guidance", "vsd"])
    assert cfg.guidance.guidance_scale == 7.5 and cfg.background.kind == "solid"  # VSD has no cfg_convention: skipped
    assert cfg.cameras.batch_size == 1  # two views a step are elbo's setting only
    cfg, _ = build_generate_config(["a red cube", "--prior", "shapes"])  # its recommended objective, elbo
    assert type(cfg.guidance).__name__ == "ELBOConfig" and cfg.cameras.batch_size == 2
    assert cfg.guidance.guidance_scale == 2.5  # its warm-up's CFG on the camera-coded folder, with the NeRF
    gauss, _ = build_generate_config(["a red cube", "--prior", "shapes", "--renderer", "gaussians"])
    assert gauss.guidance.guidance_scale == 5.0  # and with the Gaussians
    assert gauss.cameras.elevation == (-10.0, 45.0)  # its views over the range of both halves of the prior's data
    assert cfg.cameras.elevation == (-30.0, 45.0)  # the NeRF's also from below (E's data reaches -35)
    assert cfg.renderer.density_activation == "exp"
    assert cfg.renderer.lambda_albedo_smooth == 10.0 and gauss.renderer.albedo_smooth_reg == 10.0  # even colour
    sds, _ = build_generate_config(["a red cube", "--prior", "shapes", "--guidance", "sds"])
    assert sds.renderer.lambda_albedo_smooth == 0.0  # measured under elbo only
    assert cfg.renderer.see_through == 0.15 and sds.renderer.see_through == 0.0  # the NeRF torus's hole opens
    assert gauss.renderer.prune_opacity == 0.05 and gauss.renderer.albedo_smooth_eps == 0.02  # even cube faces
    assert cfg.prompts.camera_code  # its UNet reads each view's camera (--camera-code)
    cfg, _ = build_generate_config(["a red cube", "--prior", "shapes", "--guidance", "csd"])
    assert not cfg.prompts.camera_code  # but CSD's classifier direction is the text's alone
    cfg, _ = build_generate_config(["a red cube", "--prior", "shapes", "--guidance.guidance-scale", "100",
                                    "--background.kind", "random"])
    assert cfg.guidance.guidance_scale == 100 and cfg.background.kind == "random"


PAPER_CFG = {"sds": ["--guidance.guidance-scale", "100", "--guidance.cfg-convention", "threestudio"]}
"""DreamFusion's scale; every other objective's paper uses 7.5, the shipped folder's recommendation
(bench/bench_learned_prior.py PAPER_CFG)."""
OBJECTIVE_STEPS = 400
OBJECTIVE_BARS = {"psnr": 12.0, "iou": 0.65}
"""The folder's run length (what a user's run does). Measured at 400 steps, NeRF, one thread on the shipped
(session-26) weights (docs/benchmarks.md): PSNR 12.47-16.93 dB, IoU 0.677-0.854 for the seven objectives since the
NeRF trains under the world's key light (session 27; the ISM family lost 0.2-0.6 dB for an exported albedo that meets
issue #17's bounds); before it 12.89-16.76 / 0.706-0.844 (on the
session-21 weights 14.14-17.14 / 0.749-0.865, with samples 76.7% right instead of 95.8%); the untrained starting blob
scores about 10.9 dB / 0.60. At 200 steps, ISM and CSM with their background augmentation were still pale (closest
colour orange, opacity not yet up), so the test runs the full length."""


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sds", "vsd", "ism", "tsm", "asd", "csm", "csd"])
def test_every_objective_turns_a_red_cube_into_a_red_cube_through_the_learned_prior(objective, tmp_path):
    """Issue #12: each objective at its paper's defaults (the diffusion preset; SDS at CFG 100), on the shipped
    learned prior with its recommended cameras and background, NeRF, 64 px, OBJECTIVE_STEPS steps: the result is
    closest to the red cube among the world's 5 shapes and 6 colours (eval.json), and clears a PSNR and IoU bar
    against the analytic ground truth. The full table (NeRF and Gaussians, cube and torus, 400 steps) is
    bench/bench_learned_prior.py's."""
    from engine.cli import main
    run = tmp_path / "run"
    assert main(["generate", "a red cube", "--prior", "shapes", "--guidance", objective, "--out", str(run),
                 "--train.steps", str(OBJECTIVE_STEPS), "--train.no-export", "--train.video-frames", "0",
                 "--train.no-progress", *PAPER_CFG.get(objective, [])]) == 0
    ev = json.load(open(run / "eval.json"))
    assert ev["closest_shape"] == "cube" and ev["closest_colour"] == "red", ev
    assert ev["psnr"] >= OBJECTIVE_BARS["psnr"] and ev["iou"] >= OBJECTIVE_BARS["iou"], ev


@pytest.mark.slow
def test_ism_turns_a_blue_torus_into_an_opaque_blue_torus(tmp_path):
    """Issue #12's former misses: on a plain white background ISM's inversion target accepted a half-transparent
    torus as a lighter one (mean opacity 0.55 in the silhouette, closest colour white). With its recipe's background
    augmentation (the diffusion preset's 0.5 for the ISM family) the NeRF torus is blue and mostly opaque: measured
    18.57 dB, IoU 0.762, opacity 0.69 at 400 steps (docs/benchmarks.md, session 22); under the world's key light
    (the default since session 27) 18.17 dB, IoU 0.690, opacity 0.642."""
    from engine.cli import main
    run = tmp_path / "run"
    assert main(["generate", "a blue torus", "--prior", "shapes", "--guidance", "ism", "--out", str(run),
                 "--train.no-export", "--train.video-frames", "0", "--train.no-progress"]) == 0
    ev = json.load(open(run / "eval.json"))
    assert ev["closest_shape"] == "torus" and ev["closest_colour"] == "blue", ev
    assert ev["mean_alpha_in_mask"] >= 0.60 and ev["psnr"] >= 17.5 and ev["iou"] >= 0.65, ev


def test_unet_batches_follow_the_latent_and_timestep_options():
    """``unet_latents``: posterior samples (fresh noise of the posterior's std per draw) or exactly the means;
    ``low_t_share``: that share of the timesteps below ``low_t_max``, the rest over all 1000."""
    from engine.train_prior import TrainPriorConfig, draw_unet_batch
    mean, std = torch.randn(50, 4, 2, 2), torch.rand(50, 4, 2, 2) * 0.1 + 0.05
    cfg = TrainPriorConfig(out="x", unet_batch=4000)
    idx, z, t = draw_unet_batch(cfg, mean, std, 0.5, torch.Generator().manual_seed(0))
    resid = (z / 0.5 - mean[idx]) / std[idx]
    assert abs(resid.std().item() - 1) < 0.02 and abs(resid.mean().item()) < 0.02
    assert t.min() >= 0 and t.max() <= 999 and (t < 50).float().mean() < 0.08
    cfg = TrainPriorConfig(out="x", unet_batch=4000, unet_latents="mean", low_t_share=0.25, low_t_max=20)
    idx, z, t = draw_unet_batch(cfg, mean, std, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(z, mean[idx] * 0.5)
    share = (t < 20).float().mean().item()
    assert abs(share - (0.25 + 0.75 * 0.02)) < 0.03 and t.max() > 900
    for bad in ({"unet_latents": "mode"}, {"low_t_share": 1.5}, {"low_t_max": 0}):
        with pytest.raises(ValueError):
            TrainPriorConfig(out="x", **bad)


def test_autoencoder_batches_can_show_every_colour():
    """``vae_free_albedo``: that share of the autoencoder's objects gets a uniform random albedo instead of a world
    colour; at 0 the batch is the one older runs drew (same generator, same images), so shipped recipes replay."""
    from engine.train_prior import ShapesData, TrainPriorConfig, _draw_images, random_backgrounds
    from foundation.shapes import ALBEDO
    cov = torch.zeros(2, 3, 8, 8)
    cov[..., 2:6, 2:6] = 1.0
    data = ShapesData(cov, cov * 0.5, torch.zeros(2, 3, dtype=torch.long))  # flat shading 0.5 inside the square

    def colours(x):  # the object's albedo per image (shading 0.5, so the pixel is albedo / 2)
        return ((x[:, :, 4, 4] + 1) / 2) * 2

    def is_world(a):
        return (a[:, None, :] - ALBEDO[None]).abs().amax(-1).amin(-1) < 1e-5

    g = torch.Generator().manual_seed(1)  # the batch before the option: shape, view, colour, background, in order
    s, v, c = (torch.randint(0, n, (400,), generator=g) for n in (2, 3, len(ALBEDO)))
    old = data.images(s, v, c, random_backgrounds(400, 0.5, g))
    assert torch.equal(_draw_images(data, 400, 0.5, torch.Generator().manual_seed(1), 0.0), old)
    assert is_world(colours(old)).all()
    mixed = colours(_draw_images(data, 400, 0.5, torch.Generator().manual_seed(1), 0.5))
    share = 1 - is_world(mixed).float().mean().item()
    assert 0.4 < share < 0.6
    free = colours(_draw_images(data, 400, 0.5, torch.Generator().manual_seed(1), 1.0))
    assert not is_world(free).any() and free.min() < 0.05 and free.max() > 0.95 and free.std(0).min() > 0.2
    with pytest.raises(ValueError):
        TrainPriorConfig(out="x", vae_free_albedo=1.5)
    with pytest.raises(ValueError, match="needs camera_code"):
        TrainPriorConfig(out="x", camera_uncond=True)


def _probe():
    """bench/bench_prior_probe.py as a module."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "bench_prior_probe.py")
    spec = importlib.util.spec_from_file_location("bench_prior_probe", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    return probe


def test_shipped_prior_tells_which_way_a_cube_faces_from_the_camera_code():
    """The shipped UNet reads the camera code (``--camera-code``): the true red cube is far likelier axis-aligned than
    turned 45 degrees when each view's code joins the prompt (measured 0.0063 against 0.1090 on E, the folder shipped
    since session 39; C's 0.0073 against 0.0882), while the prompt alone cannot tell the two apart (0.0165 /
    0.0174): without the code a 3D run settles into the cube's average over yaw, a drum (docs/benchmarks.md, sessions
    35, 38 and 39)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(SHIPPED, torch_dtype=torch.float32, safety_checker=None)
    (plain0, coded0), (plain45, coded45) = _probe().yaw_profile(pipe, "cube", "red", None, [0.0, 45.0])
    assert coded0 < 0.25 * coded45 and coded0 < plain0
    assert abs(plain0 - plain45) < 0.2 * plain0


def test_the_likelihood_brings_an_oversized_true_cube_back_to_its_size():
    """bench/bench_prior_probe.py ``size``: one number, the scale of the true red cube under the world's key light,
    descended on the shipped prior's denoising loss (guidance/elbo.py's) through the antialiased silhouette. From 1.25
    it is back near the truth within 100 steps (measured 0.977 at step 50, 0.988-0.995 from step 150 to 300; SDS with
    CFG 7.5 settles 4-7% too large; docs/benchmarks.md, session 34)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(SHIPPED, torch_dtype=torch.float32, safety_checker=None)
    seen = _probe().size(pipe, "cube", "red", None, 1.25, 7.5, 100, objective="elbo")
    assert seen[0] == pytest.approx(1.25)
    assert 0.93 < seen[-1] < 1.05, seen


def test_train_prior_builds_a_factor_four_autoencoder_the_engine_loads(tmp_path, monkeypatch):
    """Three ``--vae-channels``: a VAE of factor 4 (32 px -> 8x8 latents) and a UNet of that latent size, which the
    engine's loader takes as such (its factor read from the VAE) and a run renders through."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = str(tmp_path / "f4")
    argv = [a for a in TINY]
    i = argv.index("--vae-channels")
    argv[i + 1:i + 5] = ["32", "32", "32"]
    assert _run(["shapes", "--out", out, "--seed", "0", *argv]) == 0
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(out, dtype=torch.float32)
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 8
    with torch.no_grad():
        z = pipe.vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean
    assert z.shape == (1, 4, 8, 8)
    prior = build_prior(PriorConfig(name=out))
    assert prior.vae_scale == 4 and prior.native_resolution == 32
    from engine.cli import main
    run = str(tmp_path / "run")
    assert main(["generate", "a red cube", "--prior", out, "--out", run, "--train.steps", "2", "--train.no-export",
                 "--train.video-frames", "0", "--train.no-progress", "--resolution", "32"]) == 0
    assert os.path.exists(os.path.join(run, "eval.json"))


def test_training_views_reach_below_the_object_on_request():
    """``lowest_elevation``: the diffusion half of the training cameras starts there instead of -10 degrees (views
    from under the object for a camera-coded prior); the default draws exactly the cameras it always drew, and a
    range past 45 or below -89 is refused."""
    from engine.train_prior import TrainPriorConfig, sample_views
    base = sample_views(TrainPriorConfig(out="x", views_per_shape=2000), torch.Generator().manual_seed(0))
    low = sample_views(TrainPriorConfig(out="x", views_per_shape=2000, lowest_elevation=-35.0),
                       torch.Generator().manual_seed(0))
    el, el_low = base[1], low[1]
    assert float(el.min()) >= -10.0 and float(el.min()) < -9.0 and float(el_low.min()) < -34.0
    diffusion = (base[2] != 2.5) & (el < 60.0)  # the diffusion half: distances in 2.0..2.6, not overhead
    assert torch.equal(el[~diffusion], el_low[~diffusion])  # the shapes preset's and the overhead views unchanged
    assert torch.allclose((el_low[diffusion] + 35.0) / 80.0, (el[diffusion] + 10.0) / 55.0, atol=1e-5)
    assert ((el_low > -35.0) & (el_low < -10.0)).float().mean() > 0.1
    for bad in (-90.0, 46.0):
        with pytest.raises(ValueError, match="lowest_elevation"):
            TrainPriorConfig(out="x", lowest_elevation=bad)


def test_resumed_training_reuses_only_the_renders_of_the_same_cameras(tmp_path, monkeypatch, capsys):
    """``--resume`` loads the cached renders of the work folder only when they were drawn with the same cameras: a
    different ``--lowest-elevation`` renders its own set (its cache file is keyed by it)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = str(tmp_path / "p")
    assert _run(["shapes", "--out", out, "--seed", "3", *TINY, "--resume"]) == 0
    capsys.readouterr()
    assert _run(["shapes", "--out", out, "--seed", "3", *TINY, "--resume"]) == 0
    assert "renders: loaded" in capsys.readouterr().err
    assert _run(["shapes", "--out", out, "--seed", "3", *TINY, "--resume", "--lowest-elevation", "-30"]) == 0
    assert "renders: loaded" not in capsys.readouterr().err
    assert len([f for f in os.listdir(out + ".train") if f.startswith("renders_")]) == 2


def test_vae_colour_probe_measures_how_the_shipped_autoencoder_carries_brightness():
    """bench/bench_prior_probe.py ``vae-colour`` on the shipped VAE (docs/benchmarks.md, session 43): a 15% brightness
    change moves the green cube's latent about 0.6 times as far as the red cube's (measured 0.045 against 0.074), the
    round trip keeps the red cube's red within a few levels and brightens the green cube's green (130 against 115);
    ``colour_error`` is the fidelity bench's goal-2 pair (luminance ratio, chromaticity distance)."""
    from diffusers import StableDiffusionPipeline

    probe = _probe()
    assert probe.colour_error(tuple(v / 255 for v in (200, 30, 30)), "red") == pytest.approx((1.0, 0.0), abs=1e-9)
    lum, chroma = probe.colour_error(tuple(v / 255 for v in (30, 160, 60)), "red")
    assert lum > 1.5 and chroma > 0.3
    pipe = StableDiffusionPipeline.from_pretrained(SHIPPED, torch_dtype=torch.float32, safety_checker=None)
    red, green = probe.vae_colour(pipe, (("cube", "red"), ("cube", "green")))
    assert red["latent_change"][0] > 0.06 and red["latent_change"][1] > 0.06
    assert max(green["latent_change"]) < 0.75 * min(red["latent_change"])
    assert abs(red["round_trip"][0] - red["input"][0]) < 5
    assert green["round_trip"][1] > green["input"][1] + 8
