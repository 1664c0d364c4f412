"""Light-aware ControlNet guidance (guidance/priors/controlnet.py): a tiny random ControlNet matching the tiny SD UNet,
saved with save_pretrained and loaded offline; the mesh scene's 22-channel condition; residuals reach eps; no
gradient reaches the ControlNet; two CLI steps end to end."""

import json

import pytest
import torch
from tiny_models import tiny_controlnet_path, tiny_sd_path

from foundation.cameras import orbit_cameras
from guidance.priors import PriorConfig, build_prior


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return tiny_sd_path(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_controlnet(tmp_path_factory, tiny_sd):
    """A tiny random 22-channel ControlNet on the tiny SD UNet (tests/tiny_models.py)."""
    return tiny_controlnet_path(tmp_path_factory, tiny_sd)


def _with_condition(cams, seed=0):
    images = torch.rand(len(cams), cams.height, cams.width, 22, generator=torch.Generator().manual_seed(seed))
    return cams.with_condition(images)


def test_condition_images_follow_every_rebatching_of_the_cameras():
    cams = _with_condition(orbit_cameras([10.0, 70.0, 130.0], [5.0, 25.0, 0.0], 2.5, 40.0, 8))
    both = cams.cat([cams, cams])
    torch.testing.assert_close(both.condition, torch.cat([cams.condition, cams.condition]))
    torch.testing.assert_close(cams[1].condition, cams.condition[1:2])
    torch.testing.assert_close(cams[torch.tensor([2, 0])].condition, cams.condition[[2, 0]])
    assert cams.to("cpu").condition is not None and cams.with_condition(None).condition is None
    with pytest.raises(ValueError, match="with and without"):
        cams.cat([cams, cams.with_condition(None)])


def test_residuals_change_eps_and_no_gradient_reaches_the_controlnet(tiny_sd, tiny_controlnet):
    prior = build_prior(PriorConfig(name=tiny_sd, controlnet=tiny_controlnet))
    cams = _with_condition(orbit_cameras([10.0, 70.0], [5.0, 25.0], 2.5, 40.0, 32))
    cond = prior.embed(["a red cube", "a red cube"])
    rgb = torch.rand(2, 32, 32, 3, requires_grad=True)
    x = prior.encode(rgb)
    t = torch.tensor([500, 500])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x + (1 - abar).sqrt() * noise
    eps = prior.predict_eps(x_t, t, cond, cams)
    eps_plain = prior.prior.predict_eps(x_t, t, cond, cams)
    assert (eps - eps_plain).abs().max() > 1e-3  # the residuals reach the UNet
    assert prior.prior.unet_kwargs is None  # the hook is removed after the call
    prior.cross_attention_kwargs = {"scale": 1.0}  # attributes set on the wrapper reach the wrapped prior
    assert prior.prior.cross_attention_kwargs == {"scale": 1.0} and "cross_attention_kwargs" not in vars(prior)
    prior.cross_attention_kwargs = None
    loss = (x * (eps - noise).detach()).sum()  # the SDS surrogate
    loss.backward()
    assert rgb.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in prior.controlnet.parameters())
    # CFG re-batches the cameras and their condition images with them; scale 0 gives the plain prior
    both = prior.predict_eps(torch.cat([x_t, x_t]), torch.cat([t, t]), cond.__class__.cat([cond, cond]),
                             cams.cat([cams, cams]))
    torch.testing.assert_close(both[:2], eps, atol=1e-5, rtol=1e-4)
    prior.scale = 0.0
    torch.testing.assert_close(prior.predict_eps(x_t, t, cond, cams), eps_plain, atol=1e-5, rtol=1e-4)


def test_missing_condition_and_wrong_channels_are_clear_errors(tiny_sd, tiny_controlnet):
    from diffusers import ControlNetModel

    from guidance.priors.base import PriorError
    from guidance.priors.controlnet import ControlNetPrior

    prior = build_prior(PriorConfig(name=tiny_sd, controlnet=tiny_controlnet))
    cams = orbit_cameras([123.0], [-7.0], 2.5, 40.0, 32)
    x_t = torch.zeros(1, 4, 4, 4)
    with pytest.raises(ValueError, match="--renderer mesh"):
        prior.predict_eps(x_t, torch.tensor([10]), prior.embed(["a red cube"]), cams)
    three = ControlNetModel.from_config({**prior.controlnet.config, "conditioning_channels": 3})
    with pytest.raises(PriorError, match="22"):
        ControlNetPrior(prior.prior, three)
    with pytest.raises(PriorError, match="diffusers"):
        build_prior(PriorConfig(name="shapes-exemplar", controlnet=tiny_controlnet))


def test_mesh_scene_renders_the_condition_layout(tiny_sd, tiny_controlnet):
    from renderers.mesh import MeshConfig

    prior = build_prior(PriorConfig(name=tiny_sd, controlnet=tiny_controlnet))
    scene = MeshConfig(init_shape="sphere", tet_resolution=8, envs=("studio",)).build(torch.Generator().manual_seed(0))
    scene.train()
    cams = orbit_cameras([30.0], [10.0], 2.5, 40.0, 24)
    assert "control" not in scene.render(cams, torch.ones(1, 24, 24, 3)).extras  # only when asked for
    scene.render_condition = True
    out = scene.render(cams, torch.ones(1, 24, 24, 3))
    c = out.extras["control"]
    assert c.shape == (1, 24, 24, 22) and c.min() >= 0 and c.max() <= 1
    fg = out.alpha[0, ..., 0] > 0
    assert torch.all(c[0][~fg] == 0) and c[0, ..., 0][fg].min() >= 0.1 - 1e-6
    n = c[0][fg][:, 1:4] * 2 - 1
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(n.shape[0]), atol=1e-4, rtol=0)
    assert n[:, 2].mean() > 0.5  # camera-space normals face the viewer
    rough, smooth = c[0][fg][:, 7:10], c[0][fg][:, 13:16]  # dielectric r=0.5 vs metal r=0.08 differ
    assert (rough - smooth).abs().mean() > 0.01
    assert prior.condition(cams.with_condition(c), 1).shape == (1, 22, 64, 64)  # the tiny SD sees 64 px


@pytest.mark.parametrize("guidance", ["sds", "vsd"])
def test_two_cli_steps_with_a_controlnet(tiny_sd, tiny_controlnet, tmp_path, guidance):
    from engine.cli import main

    run = tmp_path / "cn"
    assert main(["generate", "a red cube", "--prior", tiny_sd, "--guidance", guidance, "--renderer", "mesh",
                 "--prior.controlnet",
                 tiny_controlnet, "--renderer.tet-resolution", "8", "--steps", "2", "--resolution", "32",
                 "--out", str(run), "--train.no-progress", "--train.video-frames", "0", "--train.no-export"]) == 0
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert rows[-1]["step"] == 2 and rows[-1]["grad_norm"] > 0


def test_vsd_lora_branch_gets_the_controlnet_residuals(tiny_sd, tiny_controlnet):
    from guidance.vsd import VSDConfig

    prior = build_prior(PriorConfig(name=tiny_sd, controlnet=tiny_controlnet))
    vsd = VSDConfig().build(prior, torch.Generator().manual_seed(0), 10)
    cams = _with_condition(orbit_cameras([10.0, 70.0], [5.0, 25.0], 2.5, 40.0, 32))
    cond = prior.embed(["a red cube", "a red cube"])
    x_t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([300, 700])
    cam = torch.zeros(2, 16)
    with_control = vsd.particle_eps(x_t, t, cond, cam, prior.condition(cams, 2))
    prior.scale = 0.0  # residuals scaled to zero = the LoRA branch without ControlNet
    torch.testing.assert_close(vsd.particle_eps(x_t, t, cond, cam, prior.condition(cams, 2)),
                               vsd.particle_eps(x_t, t, cond, cam), atol=1e-5, rtol=1e-4)
    assert (with_control - vsd.particle_eps(x_t, t, cond, cam)).abs().max() > 1e-3


def test_a_controlnet_without_the_mesh_renderer_is_refused_before_any_file(tiny_sd, tiny_controlnet, tmp_path):
    from engine.cli import main

    run = tmp_path / "nerf"
    with pytest.raises(SystemExit) as e:
        main(["generate", "a red cube", "--prior", tiny_sd, "--renderer", "nerf", "--prior.controlnet",
              tiny_controlnet, "--steps", "2", "--out", str(run), "--train.no-progress"])
    assert e.value.code == 2 and not run.exists()


def test_engine_texture_with_a_controlnet(tiny_sd, tiny_controlnet, tmp_path):
    """DreamMat's setting: a user's mesh textured with the ControlNet conditioned on its renders (2 steps)."""
    import trimesh

    from engine.cli import main

    src = str(tmp_path / "box.obj")
    trimesh.creation.box(extents=(1.0, 1.0, 1.0)).export(src)
    out = tmp_path / "tex"
    assert main(["texture", src, "a red cube", "--prior", tiny_sd, "--controlnet", tiny_controlnet, "--steps", "2",
                 "--resolution", "32", "--texture-resolution", "16", "--envs", "studio", "--out", str(out)]) == 0
    assert (out / "textured.glb").is_file() and (out / "report.json").is_file()
