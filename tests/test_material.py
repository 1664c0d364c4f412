"""Issue #16: `engine material` - tileable PBR materials by score distillation, measured on the materials world.

- the world: prompt parsing, ground-truth maps (period, seam), the catalogue;
- the scene: the materials prior's exemplar for a view is exactly the scene's render of the true maps (so the truth
  is a fixed point of the guidance), gradients reach every map including across the tile's seam;
- quality (one 300-step run on the materials prior, ~1 min on 2 cores): base colour clusters near the true colours
  with low spread (no baked shading), roughness/metallic means near the truth, the pattern's period, the seam, unit
  normals; the written files: MaterialX validate(), USD material wiring, the Khronos glTF validator on preview.glb;
- the run-folder life: interrupted + --resume equals an uninterrupted run; files only at completion, all or none;
- the diffusers prior path on the tiny SD pipeline (2 steps), with DreamMat's light-aware ControlNet conditioned on
  the plane's 22-channel renders (engine material --controlnet, engine generate --prior.controlnet); the condition
  kind is the prior's (materials prior: 13 channels); --no-tileable and --normal-map directx;
- bad input: unknown word, --size 0 or huge, unwritable --out: one line, exit 2, no folder.
"""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from test_export import assert_valid_glb
from tiny_models import tiny_controlnet_path, tiny_sd_path

from engine.cli import main
from engine.config import PRESETS
from engine.train import Hooks, generate
from foundation import materials

PROMPT = "a glossy red checker material"
STEPS = 300


# -- the world --------------------------------------------------------------------------------------------------------
def test_prompt_parsing_and_vocabulary():
    spec = materials.parse_prompt(PROMPT)
    assert spec == materials.MaterialSpec("red", "checker", "glossy", False)
    assert materials.parse_prompt("Embossed metallic BLUE dots, tileable").embossed
    assert materials.parse_prompt("a striped material").pattern == "stripes"
    for bad in ("weathered oak planks", "a red plaid material", "a red blue checker material", "a material"):
        with pytest.raises(ValueError, match="materials"):
            materials.parse_prompt(bad)
    assert len(materials.catalogue()) == 6 * 4 * 3 * 2


@pytest.mark.parametrize("pattern,frequency", [("plain", None), ("checker", (2, 2)), ("stripes", (4, 0)),
                                               ("dots", (4, 0))])
def test_ground_truth_period_and_seam(pattern, frequency):
    gt = materials.ground_truth(materials.MaterialSpec("blue", pattern, "matte", True), 64)
    lum = gt["basecolor"].numpy() @ np.array([0.2126, 0.7152, 0.0722])
    assert materials.dominant_frequency(lum) == frequency
    if pattern != "plain":
        assert materials.seam_ratio(gt["basecolor"].numpy()) <= 1.05  # tileable by construction
        assert gt["height"].max() > 0.9 and gt["height"].min() < 0.1  # embossed: the pattern is raised
        # a crop of a larger tile does not wrap: the measure sees its seam
        cut = materials.ground_truth(materials.MaterialSpec("blue", pattern, "matte"), 72)["basecolor"][:64, :64]
        assert materials.seam_ratio(cut.numpy()) > 1.5
    assert gt["roughness"].unique().tolist() == [0.800000011920929]


def _scene_with_truth(spec, texels=64):
    cfg = PRESETS["material"]()
    cfg.renderer.texels = texels
    scene = cfg.renderer.build(torch.Generator().manual_seed(0))
    gt = materials.ground_truth(spec, texels)
    logit = lambda x: torch.logit(x.clamp(1e-4, 1 - 1e-4))  # noqa: E731
    with torch.no_grad():
        scene.color.copy_(logit(gt["basecolor"]).permute(2, 0, 1)[None])
        scene.rough.copy_(logit(gt["roughness"])[None, None])
        scene.metal.copy_(logit(gt["metallic"])[None, None])
        scene.height.copy_(gt["height"][None])
    scene.step.fill_(10**6)  # relief on
    return cfg, scene


def test_the_truth_is_the_priors_exemplar_in_every_view():
    """The materials prior shades its exemplars with each view's own condition images: at the true maps the render
    equals the exemplar (so the truth is a fixed point of the guidance), under every random light and offset."""
    import guidance.priors.materials as gpm
    from foundation.cameras import sample_cameras
    from guidance.priors import PriorConfig

    spec = materials.MaterialSpec("orange", "dots", "metallic", True)
    cfg, scene = _scene_with_truth(spec, texels=gpm.GT_TEXELS)
    prior = gpm.MaterialsPrior(PriorConfig(name="materials"))
    scene.render_condition = True
    index = torch.tensor([materials.catalogue().index(spec)])
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        cams = sample_cameras(cfg.cameras, 32, gen, n=2)
        out = scene.render(cams, torch.ones(2, 32, 32, 3))
        x = prior.exemplars(cams.with_condition(out.extras["control"]), index)[:, 0]
        assert (prior.encode(out.rgb) - x).abs().max() < 1e-3


def test_gradients_reach_every_map_and_cross_the_seam():
    from foundation.cameras import sample_cameras

    cfg, scene = _scene_with_truth(materials.MaterialSpec("green", "stripes", "glossy", True), texels=32)
    cams = sample_cameras(cfg.cameras, 32, torch.Generator().manual_seed(0), n=3)
    out = scene.render(cams, torch.ones(3, 32, 32, 3))
    assert out.rgb.shape == (3, 32, 32, 3) and out.alpha.min() >= 0 and out.alpha.max() <= 1
    ((out.rgb - 0.5) ** 2).sum().backward()
    for name, group in scene.param_groups().items():
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in group["params"]), name
    g = scene.color.grad[0].abs().sum(0)
    assert g[:, 0].sum() > 0 and g[:, -1].sum() > 0 and g[0].sum() > 0 and g[-1].sum() > 0


# -- one quality run through the CLI ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("material") / "run"
    assert main(["material", PROMPT, "--steps", str(STEPS), "--size", "64", "--out", str(out)]) == 0
    return out


def _read(run, name):
    return np.asarray(Image.open(run / name))


def test_run_folder_life(run):
    status = json.load(open(run / "status.json"))
    assert status["state"] == "complete" and status["step"] == STEPS
    for name in ("config.yaml", "basecolor.png", "roughness.png", "metallic.png", "normal.png", "height.png",
                 "orm.png", "material.mtlx", "material.usda", "preview.glb", "preview.png", "material.json"):
        assert (run / name).is_file(), name
    assert not [n for n in os.listdir(run) if ".tmp" in n]
    assert os.listdir(run / "ckpts")
    img = Image.open(run / "height.png")
    assert img.mode.startswith("I") and np.asarray(img).dtype == np.uint16  # 16-bit
    assert _read(run, "basecolor.png").shape == (64, 64, 3)
    orm = _read(run, "orm.png")
    assert (orm[..., 0] == 255).all()
    assert np.array_equal(orm[..., 1], _read(run, "roughness.png"))
    assert np.array_equal(orm[..., 2], _read(run, "metallic.png"))


def test_quality_against_the_known_maps(run):
    maps = {"basecolor": _read(run, "basecolor.png") / 255.0, "roughness": _read(run, "roughness.png") / 255.0,
            "metallic": _read(run, "metallic.png") / 255.0}
    ev = materials.evaluate(maps, materials.parse_prompt(PROMPT))
    # base colour clusters near the true sRGB colours, with low spread inside each (no baked shading)
    assert ev["primary_error"] < 12 and ev["white_error"] < 12, ev
    assert ev["colour_spread"] < 10, ev
    assert abs(ev["roughness_mean"] - 0.15) < 0.12 and ev["metallic_mean"] < 0.08, ev
    assert ev["frequency"] == ev["true_frequency"] == (2, 2), ev
    assert ev["seam_ratio"] < 1.5, ev  # wrapping around changes the map no more than a step inside it does
    assert json.load(open(run / "material.json"))["eval"]["frequency"] == [2, 2]


def test_normals_decode_to_unit_vectors(run):
    n = _read(run, "normal.png").astype(np.float64) / 255 * 2 - 1
    assert np.abs(np.linalg.norm(n, axis=-1) - 1).max() < 0.02
    assert (n[..., 2] > 0).all()  # tangent space: facing out


def test_materialx_document_validates(run):
    import MaterialX as mx

    from engine.material_export import validate_materialx

    doc = mx.createDocument()
    mx.readFromXmlFile(doc, str(run / "material.mtlx"))
    ok, message = validate_materialx(doc)
    assert ok, message
    shader = doc.getNode("SR_material")
    assert shader.getCategory() == "standard_surface"
    files = {n.getInput("file").getValueString() for n in doc.getNodeGraph("NG_material").getNodes("image")}
    assert files == {"basecolor.png", "roughness.png", "metallic.png", "normal.png"}
    wired = {i.getName() for i in shader.getInputs() if i.getNodeGraphString()}
    assert wired == {"base_color", "specular_roughness", "metalness", "normal"}


def test_usd_material_is_wired(run):
    from pxr import Usd, UsdShade

    stage = Usd.Stage.Open(str(run / "material.usda"))
    mat = UsdShade.Material(stage.GetPrimAtPath("/Root/Material"))
    surface = mat.ComputeSurfaceSource()[0]
    assert surface.GetIdAttr().Get() == "UsdPreviewSurface"
    for name in ("diffuseColor", "roughness", "metallic", "normal"):
        src = surface.GetInput(name).GetConnectedSources()[0]
        assert src, name
        tex = UsdShade.Shader(src[0].source.GetPrim())
        assert tex.GetInput("file").Get().path.endswith(".png")
    bound = UsdShade.MaterialBindingAPI(stage.GetPrimAtPath("/Root/Sample")).ComputeBoundMaterial()[0]
    assert bound.GetPath() == mat.GetPath()


def test_preview_glb_passes_the_khronos_validator(run):
    from engine.export.gltf import read_glb_json

    assert_valid_glb(run / "preview.glb")
    js = read_glb_json(str(run / "preview.glb"))
    assert js["samplers"][0]["wrapS"] == 10497  # REPEAT: the plane's uv runs over 2x2 tiles
    img = _read(run, "preview.png")
    assert img.shape == (256, 384, 3) and img.std() > 10


# -- resume, atomic outputs, options ---------------------------------------------------------------------------------
def _small_cfg(out, steps=4, **renderer):
    cfg = PRESETS["material"]()
    cfg.prompt, cfg.resolution, cfg.out = "a matte yellow stripes material", 32, str(out)
    cfg.renderer = type(cfg.renderer)(texels=32, relief_after=1, **renderer)
    cfg.train.steps, cfg.train.progress, cfg.train.export_texture_size = steps, False, 32
    cfg.train.checkpoint_every, cfg.train.preview_every = 2, 0
    return cfg


def test_interrupt_then_resume_equals_one_run(tmp_path):
    generate(_small_cfg(tmp_path / "whole"))
    calls = []
    run = generate(_small_cfg(tmp_path / "split"), hooks=Hooks(should_stop=lambda: calls.append(1) or len(calls) == 2))
    assert json.load(open(os.path.join(run, "status.json")))["state"] == "interrupted"
    assert not os.path.exists(os.path.join(run, "basecolor.png"))  # outputs only when the run completes
    assert main(["material", "--resume", run]) == 0
    for name in ("basecolor.png", "normal.png", "height.png"):
        assert np.array_equal(_read(tmp_path / "whole", name), _read(tmp_path / "split", name)), name


def test_outputs_are_all_or_nothing(tmp_path, monkeypatch):
    import engine.material_export as me

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(me, "write_preview_glb", broken)
    run = generate(_small_cfg(tmp_path / "r", steps=2))
    status = json.load(open(os.path.join(run, "status.json")))
    assert status["state"] == "complete" and "disk full" in status["export_error"]  # the run itself is kept
    left = set(os.listdir(run)) - {"config.yaml", "status.json", "metrics.jsonl", "ckpts", "previews"}
    assert not left, left


def test_no_tileable_and_directx_normals(tmp_path):
    generate(_small_cfg(tmp_path / "r", steps=3, tileable=False, normal_map="directx"))
    run = tmp_path / "r"
    dx, gl = _read(run, "normal.png"), _read(run, "normal_gl.png")
    assert np.array_equal(dx[..., 1], 255 - gl[..., 1]) and np.array_equal(dx[..., 0], gl[..., 0])
    assert "normal_gl.png" in (run / "material.mtlx").read_text()
    assert json.load(open(run / "material.json"))["tileable"] is False


def test_diffusers_prior_path_on_the_tiny_pipeline(tmp_path_factory, tmp_path):
    sd = tiny_sd_path(tmp_path_factory)
    out = tmp_path / "sd"
    assert main(["material", "a red checker material", "--prior", sd, "--steps", "2", "--resolution", "32",
                 "--size", "32", "--out", str(out)]) == 0
    assert json.load(open(out / "status.json"))["state"] == "complete"
    assert (out / "basecolor.png").is_file() and (out / "preview.glb").is_file()
    assert "eval" not in json.load(open(out / "material.json"))  # no ground truth off the materials world


# -- light-aware ControlNet condition ----------------------------------------------------------------------------------
def _camera_space(cams, n_world):
    """[C,3] camera-space (OpenGL) directions of a world direction, as (n + 1) / 2."""
    w2c = torch.linalg.inv(cams.c2w.float())[:, :3, :3]
    return (w2c @ torch.tensor(n_world, dtype=torch.float32) + 1) / 2


def test_scene_renders_the_dreammat_condition_for_the_plane():
    """DreamMat's 22 channels for the flat sample: in [0,1], 0 off the plane, the plane's camera-space normal (the
    learned relief's once it has one), six light renders that follow each view's own random lights."""
    from foundation.cameras import Cameras, sample_cameras

    cfg = PRESETS["material"]()
    cfg.renderer.texels = 32
    scene = cfg.renderer.build(torch.Generator().manual_seed(0))
    cams = sample_cameras(cfg.cameras, 24, torch.Generator().manual_seed(3), n=3)
    cams = Cameras.cat([cams, cams[0]])  # the same camera twice: only the lights differ
    assert "control" not in scene.render(cams, torch.ones(4, 24, 24, 3)).extras  # only when asked for
    scene.render_condition = "dreammat"
    out = scene.render(cams, torch.ones(4, 24, 24, 3))
    c = out.extras["control"]
    assert c.shape == (4, 24, 24, 22) and c.min() >= 0 and c.max() <= 1
    on = c[..., 0] > 0
    assert torch.all(c[~on] == 0) and c[..., 0][on].min() >= 0.1 - 1e-6
    a = out.alpha[..., 0]  # coverage of 2x2 rays; the condition's one ray per pixel lies between them (the
    assert torch.all(on[a == 1]) and not torch.any(on[a == 0]) and (a == 1).any()  # plane is a half-plane in view)
    for i in range(4):  # flat relief: every covered pixel has the plane's normal +Y, in camera space
        expect = _camera_space(cams[i], (0.0, 1.0, 0.0))[0]
        torch.testing.assert_close(c[i][on[i]][:, 1:4], expect.expand(int(on[i].sum()), 3), atol=1e-5, rtol=0)
    assert (c[0, ..., :4] - c[3, ..., :4]).abs().max() < 1e-6  # same camera: same depth and normals
    assert (c[0, ..., 4:] - c[3, ..., 4:]).abs().max() > 0.02  # other lights: other renders
    glossy_metal, rough_dielectric = c[..., 13:16][on], c[..., 10:13][on]
    assert (glossy_metal - rough_dielectric).abs().mean() > 0.01
    # a learned relief tilts the normals it hands over
    with torch.no_grad():
        x = torch.arange(32, dtype=torch.float32) / 32
        scene.height.copy_(3 * torch.sin(2 * torch.pi * 4 * x)[None, None, :].expand(1, 32, 32))
    scene.step.fill_(10**6)
    bumpy = scene.render(cams, torch.ones(4, 24, 24, 3)).extras["control"]
    assert (bumpy[..., 1:4] - c[..., 1:4]).abs().amax() > 0.05
    scene.eval()
    assert "control" not in scene.render(cams, torch.ones(4, 24, 24, 3)).extras  # training views only


def test_the_condition_kind_is_the_priors():
    """The loop sets the scene's condition kind from the prior's declaration; each table entry of
    CONDITION_RENDERERS is rendered by the scenes it names."""
    import guidance.priors.materials as gpm
    from engine.train import CONDITION_RENDERERS, _wire_condition
    from guidance.priors import PriorConfig
    from guidance.priors.controlnet import CONDITION_KIND, ControlNetPrior
    from renderers.material import MaterialScene
    from renderers.mesh import Mesh

    assert gpm.MaterialsPrior.condition_kind == "material" and ControlNetPrior.condition_kind == CONDITION_KIND
    scenes = {"mesh": Mesh, "material": MaterialScene}
    for kind, (_, renderers) in CONDITION_RENDERERS.items():
        assert renderers and all(kind in scenes[r].condition_kinds for r in renderers), kind
    scene = PRESETS["material"]().renderer.build(torch.Generator().manual_seed(0))
    _wire_condition(gpm.MaterialsPrior(PriorConfig(name="materials")), scene)
    assert scene.render_condition == "material"


@pytest.mark.parametrize("command", ["material", "generate"])
def test_two_steps_with_a_controlnet_see_the_planes_condition(tmp_path_factory, tmp_path, monkeypatch, command):
    """engine material --controlnet and engine generate --renderer material --prior.controlnet: the condition
    reaching the ControlNet has 22 channels in [0,1], 0 off the plane, the plane's normal (flat in 2 steps)."""
    from guidance.priors.controlnet import ControlNetPrior

    sd = tiny_sd_path(tmp_path_factory)
    cn = tiny_controlnet_path(tmp_path_factory, sd)
    seen = []
    original = ControlNetPrior.condition

    def spy(self, cams, batch):
        seen.append((cams, cams.condition.clone()))
        return original(self, cams, batch)

    monkeypatch.setattr(ControlNetPrior, "condition", spy)
    out = tmp_path / "cn"
    if command == "material":
        argv = ["material", "a red checker material", "--prior", sd, "--controlnet", cn, "--size", "32"]
    else:
        argv = ["generate", "a red checker material", "--prior", sd, "--renderer", "material", "--prior.controlnet",
                cn, "--renderer.texels", "32", "--train.no-progress", "--train.video-frames", "0",
                "--train.export-texture-size", "32"]
    assert main([*argv, "--steps", "2", "--resolution", "32", "--out", str(out)]) == 0
    assert json.load(open(out / "status.json"))["state"] == "complete"
    assert len(seen) >= 2
    for cams, c in seen:
        assert c.shape[-1] == 22 and c.shape[1:3] == (32, 32) and c.min() >= 0 and c.max() <= 1
        on = c[..., 0] > 0
        assert on.any() and torch.all(c[~on] == 0)
        for i in range(len(cams)):
            expect = _camera_space(cams[i], (0.0, 1.0, 0.0))[0]
            torch.testing.assert_close(c[i][on[i]][:, 1:4], expect.expand(int(on[i].sum()), 3), atol=1e-4, rtol=0)


def test_materials_prior_keeps_its_13_channels(tmp_path, monkeypatch):
    import guidance.priors.materials as gpm
    from renderers.material import CONDITION_CHANNELS

    seen = []
    original = gpm.MaterialsPrior.exemplars

    def spy(self, cams, index):
        seen.append(cams.condition.shape)
        return original(self, cams, index)

    monkeypatch.setattr(gpm.MaterialsPrior, "exemplars", spy)
    generate(_small_cfg(tmp_path / "r", steps=2))
    assert seen and all(s[-1] == CONDITION_CHANNELS == 13 for s in seen)


@pytest.mark.parametrize("renderer", ["nerf", "mesh"])
def test_materials_prior_on_another_renderer_names_the_material_renderer(tmp_path, capsys, renderer):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(["generate", PROMPT, "--prior", "materials", "--renderer", renderer, "--steps", "2",
                               "--out", str(out), "--train.no-progress"]))
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (the preset's note aside)
    assert e.value.code == 2 and len(err) == 1, err
    assert "materials prior needs the material renderer" in err[0] and "mesh" not in err[0], err
    assert not out.exists()


def test_controlnet_with_the_materials_world_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["material", PROMPT, "--controlnet", str(tmp_path), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "--controlnet" in err, err
    assert not out.exists()


# -- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,words", [
    (["a red plaid material"], "plaid"),
    (["weathered oak planks"], "does not know"),
    (["a red checker material", "--size", "0"], "--size"),
    (["a red checker material", "--size", "100000"], "--size"),
    (["a red checker material", "--out", "NOT_A_FOLDER/run"], "not a folder"),
    (["a red checker material", "--guidance", "nope"], "--guidance"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, argv, words):
    blocker = tmp_path / "NOT_A_FOLDER"
    blocker.write_text("a file")
    argv = [a.replace("NOT_A_FOLDER", str(blocker)) for a in argv]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        code = main(["material", *argv, *([] if "--out" in argv else ["--out", str(out)])])
        raise SystemExit(code)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert not out.exists()


# -- the app's Material tab -----------------------------------------------------------------------------------------
def test_material_tab_builds_the_cli_config():
    from apps.material_tab import MaterialInputError, build_material_config_from_form

    form = {"prompt": PROMPT, "prior": "materials world (CPU)", "guidance": "sds", "size": 256, "tileable": False,
            "normal_map": "directx", "steps": 12, "seed": 3}
    cfg = build_material_config_from_form(form)
    from engine.cli_material import build_material_config, parse
    same = build_material_config(parse([PROMPT, "--size", "256", "--no-tileable", "--normal-map",
                                        "directx", "--steps", "12", "--seed", "3"]))
    assert cfg == same
    assert cfg.prior.name == "materials" and cfg.renderer.tileable is False and cfg.train.export_texture_size == 256
    with pytest.raises(MaterialInputError, match="--size"):
        build_material_config_from_form({**form, "size": 0})
    with pytest.raises(MaterialInputError, match="empty"):
        build_material_config_from_form({**form, "prompt": " "})


def test_material_tab_is_in_the_app(tmp_path):
    pytest.importorskip("gradio")
    from apps.gradio_app import App

    app = App(output_dir=str(tmp_path))
    try:
        assert "material" in {d.api_name for d in app.demo.fns.values()}
    finally:
        app.close()
