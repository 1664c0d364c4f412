"""The likelihood objective (guidance/elbo.py) on a tiny random SD folder loaded offline: its gradient is the
denoising loss's own (the network's Jacobian included, checked by finite differences), its SDS warm-up is SDS, and it
refuses a prior that cannot differentiate its network."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_models import tiny_sd_path  # noqa: E402

from foundation.cameras import orbit_cameras  # noqa: E402
from guidance import GUIDANCES  # noqa: E402
from guidance.base import add_noise, weight  # noqa: E402
from guidance.elbo import ELBOConfig  # noqa: E402
from guidance.priors import PriorConfig, build_prior  # noqa: E402
from guidance.prompts import PromptSet  # noqa: E402
from guidance.sds import SDSConfig  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return build_prior(PriorConfig(name=tiny_sd_path(tmp_path_factory), cache_dir=str(tmp_path_factory.mktemp("c"))))


@pytest.fixture()
def cams():
    return orbit_cameras(torch.tensor([0.0, 90.0]), torch.tensor([20.0, 20.0]), 2.5, 40.0, 64)


def _params(prior):
    for m in (prior.unet, prior.vae, prior.text_encoder):
        yield from m.parameters()


def test_registered_and_validated():
    assert GUIDANCES["elbo"] is ELBOConfig
    with pytest.raises(ValueError, match="likelihood_scale"):
        ELBOConfig(likelihood_scale=0.5)
    with pytest.raises(ValueError, match="sds_until"):
        ELBOConfig(sds_until=1.5)
    with pytest.raises(ValueError, match="weighting"):
        ELBOConfig(weighting="nope")


def test_predict_eps_grad_matches_predict_eps_and_reaches_only_the_input(sd):
    cond = sd.embed(["a red cube", ""])
    x_t = torch.randn(2, 4, 8, 8, requires_grad=True)
    t = torch.tensor([100, 700])
    eps = sd.predict_eps_grad(x_t, t, cond)
    torch.testing.assert_close(eps.detach(), sd.predict_eps(x_t, t, cond))
    assert eps.requires_grad and not sd.predict_eps(x_t, t, cond).requires_grad
    eps.square().sum().backward()
    assert x_t.grad is not None and x_t.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in _params(sd))


def test_likelihood_gradient_is_the_loss_derivative_with_the_jacobian(sd, cams):
    """A directional finite difference of the loss (fixed t and noise) equals the autograd gradient: the objective
    differentiates the denoising error itself. SDS's gradient (no Jacobian) is a different vector."""
    prompts = PromptSet(sd, "a red cube")
    obj = ELBOConfig(sds_until=0.0).build(sd, torch.Generator().manual_seed(0), 10)
    gen = torch.Generator().manual_seed(1)
    rgb = (0.3 + 0.4 * torch.rand(2, 64, 64, 3, generator=gen)).requires_grad_(True)
    t, n = torch.tensor([150, 600]), torch.randn(2, 4, 8, 8, generator=gen)
    sd.generator.manual_seed(7)  # the same VAE posterior sample in every evaluation below
    out = obj(rgb, prompts, cams, 5, t=t, noise=n)
    assert "loss_elbo" in out.logs
    (g,) = torch.autograd.grad(out.loss, rgb)
    v = g / g.norm()  # along the gradient: the largest change, well above float32 rounding of the loss
    h = 0.05
    with torch.no_grad():
        sd.generator.manual_seed(7)
        lp = obj(rgb + h * v, prompts, cams, 5, t=t, noise=n).loss
        sd.generator.manual_seed(7)
        lm = obj(rgb - h * v, prompts, cams, 5, t=t, noise=n).loss
    fd = float((lp - lm) / (2 * h))
    assert abs(fd - float((g * v).sum())) <= 0.05 * abs(fd), (fd, float(out.loss), float((g * v).sum()))
    # the loss by hand: 0.5 w(t) ||eps(x_t, t, y) - n||^2, mean over the batch
    with torch.no_grad():
        sd.generator.manual_seed(7)
        z = sd.encode(rgb)
        e = sd.predict_eps(add_noise(z, n, t, sd.alphas_cumprod), t, prompts.cond(cams))
        w = weight(t, sd.alphas_cumprod, "sds").view(-1, 1, 1, 1)
        torch.testing.assert_close(out.loss.detach(), (0.5 * w * (e - n).square()).flatten(1).sum(1).mean())
    sds = SDSConfig(guidance_scale=1.0, cfg_convention="standard").build(sd, torch.Generator(), 10)
    sd.generator.manual_seed(7)
    (g_sds,) = torch.autograd.grad(sds(rgb, prompts, cams, 5, t=t, noise=n).loss, rgb)
    cos = float(torch.nn.functional.cosine_similarity(g.flatten(), g_sds.flatten(), dim=0))
    assert cos < 0.99


def test_warm_up_is_sds_then_the_likelihood(sd, cams):
    prompts = PromptSet(sd, "a red cube")
    obj = ELBOConfig(sds_until=0.5).build(sd, torch.Generator().manual_seed(0), 10)
    assert [obj.likelihood_stage(s) for s in (0, 4, 5, 9)] == [False, False, True, True]
    rgb = torch.rand(2, 64, 64, 3, requires_grad=True)
    t, n = torch.tensor([300, 800]), torch.randn(2, 4, 8, 8)
    sd.generator.manual_seed(7)
    out = obj(rgb, prompts, cams, 4, t=t, noise=n)
    (g,) = torch.autograd.grad(out.loss, rgb)
    sd.generator.manual_seed(7)
    ref = SDSConfig(guidance_scale=7.5, cfg_convention="standard").build(sd, torch.Generator(), 10)
    (g_ref,) = torch.autograd.grad(ref(rgb, prompts, cams, 4, t=t, noise=n).loss, rgb)
    assert "loss_sds" in out.logs
    torch.testing.assert_close(g, g_ref)
    assert "loss_elbo" in obj(rgb, prompts, cams, 5, t=t, noise=n).logs


def test_likelihood_scale_is_the_cfg_distributions_elbo(sd, cams):
    prompts = PromptSet(sd, "a blue torus")
    rgb = torch.rand(2, 64, 64, 3)
    t, n = torch.tensor([200, 500]), torch.randn(2, 4, 8, 8)
    sd.generator.manual_seed(7)
    loss = ELBOConfig(sds_until=0.0, likelihood_scale=3.0).build(sd, torch.Generator(), 10)(
        rgb, prompts, cams, 0, t=t, noise=n).loss
    with torch.no_grad():
        sd.generator.manual_seed(7)
        x_t = add_noise(sd.encode(rgb), n, t, sd.alphas_cumprod)
        w = weight(t, sd.alphas_cumprod, "sds").view(-1, 1, 1, 1)

        def err(cond):
            return (0.5 * w * (sd.predict_eps(x_t, t, cond) - n).square()).flatten(1).sum(1)
        expect = (3.0 * err(prompts.cond(cams)) - 2.0 * err(prompts.uncond(2))).mean()
    torch.testing.assert_close(loss.detach(), expect)


def test_a_prior_without_input_gradients_is_refused_in_one_line(shapes_prior):
    with pytest.raises(ValueError, match="InputGradient"):
        ELBOConfig().build(shapes_prior, torch.Generator(), 10)


def test_the_presets_size_the_warm_up_like_sds():
    """The diffusion preset gives elbo's SDS warm-up SDS's CFG for the prior family (DreamFusion-SD's 100,
    threestudio convention); the learned shapes prior's folder then sets its own: 2.5 for elbo's warm-up with the NeRF,
    5 with the Gaussians (7.5 for the other objectives), standard convention."""
    from engine.compose import Choices, compose

    real = compose(Choices(prompt="a red cube", prior="some/model", guidance="elbo"), say=None).guidance
    assert isinstance(real, ELBOConfig) and (real.guidance_scale, real.cfg_convention) == (100.0, "threestudio")
    shapes = compose(Choices(prompt="a red cube", guidance="elbo"), say=None).guidance
    assert (shapes.guidance_scale, shapes.cfg_convention, shapes.likelihood_scale) == (2.5, "standard", 1.0)
    splats = compose(Choices(prompt="a red cube", guidance="elbo", renderer="gaussians"), say=None).guidance
    assert splats.guidance_scale == 5.0
