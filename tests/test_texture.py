"""engine texture: loading and repairs, UV handling, the CLI end to end (tiny), and clear errors."""

import json
import math
import os

import numpy as np
import pytest
import torch
import trimesh

from engine.texture import TextureError, load_mesh


def _cube(path, size=2.0, uv=False, offset=(0.0, 0.0, 0.0)):
    m = trimesh.creation.box(extents=(size,) * 3)
    m.apply_translation(offset)
    if uv:
        m = m.unwrap() if hasattr(m, "unwrap") else m
    m.export(path)
    return m


def test_load_normalises_and_repairs(tmp_path):
    v = np.array([[0, 0, 0], [2, 0, 0], [0, 4, 0], [1, 1, 1], [np.nan, 0, 0], [9, 9, 9]], dtype=float)
    f = np.array([[0, 1, 2], [0, 1, 1], [0, 1, 4], [0, 2, 3]])
    path = str(tmp_path / "m.ply")
    trimesh.Trimesh(v, f, process=False).export(path)
    m = load_mesh(path)
    assert m.faces.shape == (2, 3) and np.isfinite(m.vertices).all()
    assert any("degenerate" in r for r in m.repairs) and any("unreferenced" in r for r in m.repairs)
    ext = m.vertices.max(0) - m.vertices.min(0)
    assert abs(ext.max() - 0.8) < 1e-5
    np.testing.assert_allclose(m.vertices * m.scale + m.centre, v[[0, 1, 2, 3]], atol=1e-5)


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(TextureError, match="no such file"):
        load_mesh(str(tmp_path / "missing.obj"))
    (tmp_path / "junk.obj").write_text("this is not a mesh\n")
    with pytest.raises(TextureError):
        load_mesh(str(tmp_path / "junk.obj"))
    trimesh.PointCloud(np.random.rand(10, 3)).export(str(tmp_path / "pc.ply"))
    with pytest.raises(TextureError, match="no triangles"):
        load_mesh(str(tmp_path / "pc.ply"))


def test_user_uvs_are_kept(tmp_path):
    m = trimesh.creation.box(extents=(1, 1, 1))
    uv = np.random.default_rng(0).random((len(m.vertices), 2))
    m.visual = trimesh.visual.TextureVisuals(uv=uv)
    path = str(tmp_path / "uv.obj")
    m.export(path)
    loaded = load_mesh(path)
    assert loaded.uv is not None and loaded.uv.shape == (len(loaded.vertices), 2)


def test_cli_end_to_end_tiny(tmp_path):
    from engine.cli import main

    src = str(tmp_path / "cube.obj")
    _cube(src, size=2.0, offset=(1.0, 0.5, 0.0))
    out = str(tmp_path / "out")
    rc = main(["texture", src, "a red cube", "--prior", "shapes", "--steps", "2", "--resolution", "16",
               "--texture-resolution", "16", "--envs", "studio", "--out", out])
    assert rc == 0
    for name in ("textured.glb", "albedo.png", "orm.png", "report.json", "preview_sunset.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    back = trimesh.load(os.path.join(out, "textured.glb"), force="mesh")
    assert isinstance(back.visual.material, trimesh.visual.material.PBRMaterial)
    np.testing.assert_allclose(back.bounds, [[0, -0.5, -1], [2, 1.5, 1]], atol=1e-4)  # original transform
    report = json.load(open(os.path.join(out, "report.json")))
    assert {"albedo_variation_srgb8", "relit_psnr_db", "groups"} <= set(report)


def test_cli_rejects_bad_mesh_and_prompt(tmp_path, capsys):
    from engine.cli import main

    (tmp_path / "bad.obj").write_text("v 0 0 0\n")
    assert main(["texture", str(tmp_path / "bad.obj"), "a red cube", "--steps", "1"]) == 2
    assert "error" in capsys.readouterr().err
    src = str(tmp_path / "cube.obj")
    _cube(src)
    assert main(["texture", src, "a purple teapot", "--steps", "1", "--out", str(tmp_path / "o")]) == 2


def test_texture_is_a_generate_run_with_a_validated_normal_mapped_glb(tmp_path):
    """`engine texture` runs the generate pipeline (issue #14): its folder is a run folder (config.yaml of the
    texture preset, checkpoints, status complete), its GLB passes the Khronos validator with tangents and a
    tangent-space normal map, the user's placement is restored, and `engine texture --resume` continues it."""
    from engine import runfolder
    from engine.cli import main
    from engine.export.gltf import read_glb_json
    from renderers.mesh import MeshConfig
    from tests.test_export import assert_valid_glb

    src = str(tmp_path / "cube.obj")
    _cube(src, size=0.5, offset=(0.0, 1.0, 0.0))
    out = tmp_path / "run"
    args = ["--steps", "2", "--resolution", "16", "--texture-resolution", "16", "--envs", "studio", "--out", str(out)]
    assert main(["texture", src, "a red cube", *args]) == 0
    run = runfolder.load_run(str(out))
    r = run.config.renderer
    assert isinstance(r, MeshConfig) and r.mode == "fixed" and r.mesh_path == os.path.abspath(src)
    assert r.envs == ("studio",) and r.eval_env == "sunset" and r.mesh_size == 0.8
    assert run.config.prior.name == "shapes-light" and run.state["step"] == 2
    assert json.load(open(out / "status.json"))["state"] == "complete"
    glb = out / "textured.glb"
    assert_valid_glb(glb)
    doc = read_glb_json(str(glb))
    assert "TANGENT" in doc["meshes"][0]["primitives"][0]["attributes"]
    assert "normalTexture" in doc["materials"][0]
    for name in ("albedo", "roughness", "metallic", "normal", "orm"):
        assert os.path.isfile(out / f"{name}.png"), name
    back = trimesh.load(str(glb), force="mesh")
    np.testing.assert_allclose(back.bounds, [[-0.25, 0.75, -0.25], [0.25, 1.25, 0.25]], atol=1e-4)
    # resume: two more steps of the same run, from its checkpoint, through the same pipeline
    cfg = open(out / "config.yaml").read().replace("steps: 2\n", "steps: 4\n", 1)
    (out / "config.yaml").write_text(cfg)
    assert main(["texture", "--resume", str(out)]) == 0
    assert json.load(open(out / "report.json"))["steps"] == 4
    assert_valid_glb(glb)


def test_texture_resume_refuses_other_runs(tmp_path, capsys):
    from engine.cli import main

    assert main(["texture", "--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_the_light_aware_prior_follows_each_views_lighting():
    """The mesh scene's lighting condition ([C,2]: environment index, rotation index) restricts each prior row to the
    exemplars lit like its view: the same denoiser as a prompt naming that lighting word (the old texture loop)."""
    import torch

    from foundation.cameras import orbit_cameras
    from guidance.priors import PriorConfig
    from guidance.priors.shapes import LightAwareShapesPrior, lighting_word
    from renderers.mesh import Mesh, MeshConfig
    from renderers.reference import primitive_mesh

    envs = ("studio", "sky")
    v, f = primitive_mesh("cube")
    scene = Mesh.from_arrays(MeshConfig(envs=envs, env_rotations=2), v, f, None, torch.Generator().manual_seed(0))
    scene.render_condition = "lighting"
    cams = orbit_cameras([0.0, 90.0], [20.0, 20.0], 2.5, 40.0, 16)
    scene.set_lighting("sky", math.pi)  # rotation index 1 of 2
    out = scene.render(cams, torch.ones(2, 16, 16, 3))
    assert out.extras["control"].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    prior = LightAwareShapesPrior(PriorConfig(resolution=16), envs=envs, rotations=2, shapes_subset=("cube",))
    lit = cams.with_condition(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([300, 600])
    got = prior.denoise(x_t, t, prior.embed(["a red cube"] * 2), lit)
    words = [lighting_word("sky", 1), lighting_word("studio", 0)]
    ref = prior.denoise(x_t, t, prior.embed([f"a red cube {w}" for w in words]), cams)
    torch.testing.assert_close(got, ref)
    assert (got - prior.denoise(x_t, t, prior.embed(["a red cube"] * 2), cams)).abs().max() > 1e-3


def test_build_prior_builds_the_light_aware_prior_for_the_runs_lighting():
    """``build_prior`` takes the run's context (prompt, the mesh renderer's environments x rotations): the light-aware
    prior is built for exactly those, of the prompt's shape; without lighting conditions it is a one-line error."""
    from guidance.priors import PriorConfig, PriorContext, PriorError, build_prior
    from guidance.priors.shapes import LightAwareShapesPrior

    cfg = PriorConfig(name="shapes-light", resolution=16)
    prior = build_prior(cfg, "cpu", PriorContext("a red cube", ("studio", "sky"), 2))
    assert isinstance(prior, LightAwareShapesPrior)
    assert all("cube" in tag for tag in prior.tags)  # only the prompt's shape is rendered
    assert not any(shape in tag for tag in prior.tags for shape in ("sphere", "cylinder", "cone", "torus"))
    one_rotation = build_prior(cfg, "cpu", PriorContext("a red cube", ("studio", "sky"), 1))
    assert len(one_rotation.tags) * 2 == len(prior.tags)  # exemplars per environment x rotation
    for context in (None, PriorContext("a red cube"), PriorContext("a red cube", ("studio",), 0)):
        with pytest.raises(PriorError, match="env-rotations > 0"):
            build_prior(cfg, "cpu", context)
    every_shape = build_prior(cfg, "cpu", PriorContext("a red object", ("studio",), 1))  # no shape named: all five
    assert {shape for tag in every_shape.tags for shape in tag} >= {"cube", "sphere", "cylinder", "cone", "torus"}


def test_the_texture_preset_is_a_generate_preset():
    """`engine generate --preset texture --renderer.mesh-path MESH` is the same run as `engine texture`."""
    from engine.cli import build_generate_config
    from engine.texture import TextureConfig, texture_config

    cfg, _ = build_generate_config(["a red cube", "--preset", "texture", "--renderer.mesh-path", "/m.obj"])
    via_texture = texture_config(TextureConfig(mesh="/m.obj", prompt="a red cube"), has_uv=False)
    assert cfg.renderer == via_texture.renderer and cfg.prior == via_texture.prior
    assert cfg.guidance == via_texture.guidance and cfg.cameras == via_texture.cameras
    assert cfg.renderer.mode == "fixed" and cfg.prior.name == "shapes-light" and cfg.renderer.eval_env == "sunset"


def test_a_users_uvs_come_back_in_the_glb(tmp_path):
    """A mesh with UVs is textured texel for texel and its GLB carries the same (position, uv) pairs as the file."""
    from engine.cli import main

    src = str(tmp_path / "uvcube.obj")
    trimesh.creation.box(extents=(1, 1, 1)).unwrap().export(src)
    before = trimesh.load(src, force="mesh", process=False)
    out = tmp_path / "out"
    assert main(["texture", src, "a red cube", "--steps", "1", "--resolution", "16", "--texture-resolution", "16",
                 "--envs", "studio", "--out", str(out)]) == 0
    assert json.load(open(out / "report.json"))["kept_user_uvs"] is True
    after = trimesh.load(str(out / "textured.glb"), force="mesh", process=False)

    def pairs(m):
        return {(tuple(np.round(p, 4)), tuple(np.round(t, 4))) for p, t in zip(m.vertices, m.visual.uv)}

    assert pairs(after) == pairs(before)


# -- issue #14 item 4: the command's options are TextureConfig's fields; the device follows the one rule -------------
def test_texture_options_are_parsed_from_the_dataclass():
    """Defaults live only in TextureConfig; its ranges are checked by the config itself, named as the flags."""
    import re

    from engine.cli import UsageError
    from engine.cli_texture import parse
    from engine.texture import TextureConfig

    cfg, resume = parse(["m.obj", "a red cube"])
    assert resume is None and cfg == TextureConfig(mesh="m.obj", prompt="a red cube")
    cfg, _ = parse(["m.obj", "a red cube", "--envs", "studio", "sky", "--batch", "1", "--rotations", "2",
                    "--held-out-env", "rgb", "--guidance-scale", "2.5", "--texture-resolution", "32"])
    assert (cfg.envs, cfg.batch, cfg.rotations, cfg.held_out_env) == (("studio", "sky"), 1, 2, "rgb")
    assert (cfg.guidance_scale, cfg.texture_resolution) == (2.5, 32)
    assert parse(["--resume", "runs/a"]) == (None, "runs/a") == parse(["--resume=runs/a"])
    for argv, message in ((["m.obj", "x", "--texture-resolution", "9000"], "--texture-resolution must be in 8..8192"),
                          (["m.obj", "x", "--steps", "-1"], "--steps must be in 0..1e+06"),
                          (["m.obj", "x", "--lr", "nan"], "--lr must be a finite number"),
                          (["m.obj", "x", "--resolution", "4"], "--resolution must be in 8..2048"),
                          (["m.obj", "x", "--guidance", "nope"], "unknown guidance 'nope'"),
                          (["m.obj", "x", "--envs"], "--envs needs at least one"),
                          (["m.obj"], "missing option(s): prompt"),
                          (["--resume", "runs/a", "m.obj"], "takes no MESH, PROMPT or other options"),
                          (["--resume"], "--resume needs a run folder")):
        with pytest.raises(UsageError, match=re.escape(message)):
            parse(argv)
    with pytest.raises(ValueError, match="size must be in"):  # the same check for every caller, not only the CLI
        TextureConfig(mesh="m.obj", prompt="x", size=0.0)


def test_texture_device_follows_the_one_backend_rule(tmp_path, capsys, monkeypatch):
    """An explicit cuda that cannot be met is refused by the run's own resolver (foundation/backend.py), before
    anything is written; a device name that is none of auto/cpu/cuda[:N] is refused by the run's config."""
    import torch

    from engine.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    src = str(tmp_path / "cube.obj")
    _cube(src)
    for device, message in (("cuda", "device 'cuda' was requested but CUDA cannot be used"),
                            ("tpu", "device must be auto, cpu or cuda")):
        out = tmp_path / f"out-{device}"
        assert main(["texture", src, "a red cube", "--steps", "1", "--device", device, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert not out.exists()


def test_texture_ctrl_c_keeps_a_checkpoint_and_resumes(tmp_path, capsys, monkeypatch):
    """Ctrl-C during `engine texture` is generate's: a checkpoint, status "interrupted", exit 130 and one line
    saying how to continue; `engine texture --resume RUN` then finishes the run."""
    import engine.train
    from engine.cli import main

    calls = []
    real = engine.train.sample_cameras

    def interrupted_at_step_2(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(engine.train, "sample_cameras", interrupted_at_step_2)
    src = str(tmp_path / "cube.obj")
    _cube(src)
    out = tmp_path / "out"
    assert main(["texture", src, "a red cube", "--steps", "3", "--resolution", "16", "--texture-resolution", "8",
                 "--envs", "studio", "--out", str(out)]) == 130
    assert f"continue with engine texture --resume {out}" in capsys.readouterr().err
    status = json.load(open(out / "status.json"))
    assert status["state"] == "interrupted" and status["step"] == 2 and not (out / "textured.glb").exists()
    monkeypatch.setattr(engine.train, "sample_cameras", real)
    assert main(["texture", "--resume", str(out)]) == 0
    assert json.load(open(out / "report.json"))["steps"] == 3 and (out / "textured.glb").is_file()


def _true_material(scene, colour: str, roughness: float = 0.7) -> None:
    """Set a "field" mesh scene's material to a constant (the colour's albedo, ``roughness``, metallic 0)."""
    from foundation import shapes
    from renderers.pbr import srgb_to_linear

    alb = srgb_to_linear(torch.tensor(shapes.COLOURS[colour], dtype=torch.float32) / 255.0)
    lo, hi = scene.cfg.roughness_range
    with torch.no_grad():
        scene.mlp[2].weight.zero_()
        scene.mlp[2].bias[:3] = torch.logit(alb)
        scene.mlp[2].bias[3] = math.log((roughness - lo) / (hi - roughness)) - scene._r0
        scene.mlp[2].bias[4] = -20.0 - scene._m0


def test_the_light_aware_exemplars_are_the_training_renders_of_the_true_material(tmp_path):
    """Issue #17 goal 3: the light-aware prior's exemplars come from the mesh renderer's own path, with the
    primitive placed as `engine texture` places a user's file (a torus 1 m across scaled to 0.8 m), so a training
    render of the true material on a preset view is its exemplar: the truth is a fixed point of the guidance.
    (Supersampled reference renders of the primitive at its own size differed by 0.05-0.1 on the mean of a view.)"""
    import torch.nn.functional as F

    from engine import runfolder
    from engine.texture import TextureConfig, texture_config
    from engine.train import _prior_context
    from foundation.cameras import sample_cameras
    from guidance.priors import build_prior
    from renderers.reference import primitive_mesh

    v, f = primitive_mesh("torus")
    path = str(tmp_path / "torus.obj")
    trimesh.Trimesh(v.numpy(), f.numpy(), process=False).export(path)
    cfg = texture_config(TextureConfig(mesh=path, prompt="a blue torus"), has_uv=False)
    assert _prior_context(cfg).object_size == pytest.approx(0.8)
    prior = build_prior(cfg.prior, "cpu", _prior_context(cfg))
    gen = torch.Generator().manual_seed(0)
    scene = runfolder.build_scene(cfg, gen, "cpu", restore=False)
    scene.render_condition = "lighting"
    _true_material(scene, "blue")
    checked = 0
    for _ in range(4):
        cams = sample_cameras(cfg.cameras, cfg.resolution, gen)
        out = scene.render(cams, torch.ones(len(cams), cfg.resolution, cfg.resolution, 3))
        for j, (env, rot) in enumerate(out.extras["control"].round().long().tolist()):
            on_view = (F.normalize(cams.position[j:j + 1], dim=-1) @ prior.view_dirs.T)[0] > 0.9999
            lit = prior.light_index == env * prior.rotations + rot
            blue = torch.tensor(["blue" in tag for tag in prior.tags])
            (idx,) = (on_view & lit & blue).nonzero()[:, 0].tolist()  # the training view is on the exemplar grid
            diff = out.rgb[j].permute(2, 0, 1) * 2 - 1 - prior.images[idx]
            assert diff.abs().max() < 2e-3, (cams.azimuth[j], cams.elevation[j], diff.abs().max())
            checked += 1
    assert checked == 4 * cfg.cameras.batch_size


def test_material_warmup_holds_roughness_and_metallic_then_releases_them(tmp_path):
    """``material_warmup`` steps train the albedo only; the count is in the checkpoint, so a resumed run knows."""
    from foundation.cameras import orbit_cameras
    from renderers.mesh import Mesh, MeshConfig
    from renderers.reference import primitive_mesh

    v, f = primitive_mesh("cube")
    cams = orbit_cameras([30.0], [20.0], 2.5, 40.0, 16)
    scene = Mesh.from_arrays(MeshConfig(material_warmup=2), v, f, None, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(scene.parameters(), lr=0.1)

    def step(i):
        out = scene.render(cams, torch.ones(1, 16, 16, 3))
        loss = out.rgb.mean() + out.roughness.sum() + out.metallic.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        scene.after_step(i, out)

    pts = torch.tensor([[0.4, 0.0, 0.0], [0.0, 0.4, 0.1]])
    before = scene.material_at(pts)
    for i in range(2):
        step(i)
    held = scene.material_at(pts)
    torch.testing.assert_close(held["roughness"], before["roughness"], rtol=0, atol=0)
    torch.testing.assert_close(held["metallic"], before["metallic"], rtol=0, atol=0)
    assert (held["albedo"] - before["albedo"]).abs().max() > 1e-3
    resumed = Mesh.from_arrays(MeshConfig(material_warmup=2), v, f, None, torch.Generator().manual_seed(1))
    resumed.load_state_dict(scene.state_dict())
    assert resumed._material_steps == 2 and int(resumed.material_steps) == 2
    step(2)
    assert (scene.material_at(pts)["roughness"] - held["roughness"]).abs().max() > 1e-3
    assert "material_steps" not in Mesh.from_arrays(MeshConfig(), v, f, None, torch.Generator()).state_dict()
    with pytest.raises(ValueError, match="material_warmup"):
        MeshConfig(material_warmup=-1)
