"""Diffusers priors on tiny random pipelines, loaded offline through build_prior (no weights are ever downloaded)."""

import os
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from guidance.base import add_noise, classifier_free_guidance, surrogate_loss, weight  # noqa: E402
from guidance.priors import PriorConfig, build_prior  # noqa: E402
from guidance.priors.base import Cond, Prior, PriorError, scaled_linear_alphas_cumprod  # noqa: E402
from tiny_models import make_unsupported, tiny_sd_path  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    return tiny_sd_path(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_sd_v(tmp_path_factory):
    return tiny_sd_path(tmp_path_factory, prediction_type="v_prediction")


@pytest.fixture(scope="module")
def sd(tiny_sd, tmp_path_factory):
    return build_prior(PriorConfig(name=tiny_sd, cache_dir=str(tmp_path_factory.mktemp("cache"))))


def _frozen_params(prior):
    for module in (prior.unet, prior.vae, prior.text_encoder):
        yield from module.parameters()


def test_loads_offline_with_schedule_from_scheduler_config(sd):
    assert isinstance(sd, Prior)
    assert sd.latent is True and sd.steps_offset == 1 and sd.prediction_type == "epsilon"
    assert sd.alphas_cumprod.dtype == torch.float32 and sd.alphas_cumprod.device == sd.device
    torch.testing.assert_close(sd.alphas_cumprod, scaled_linear_alphas_cumprod(), rtol=1e-6, atol=1e-6)
    assert sd.resolution == 64 and sd.dtype == torch.float32
    assert all(not p.requires_grad for p in _frozen_params(sd))


def test_encode_resizes_and_has_gradient_to_the_image(sd):
    rgb = torch.rand(2, 40, 40, 3, requires_grad=True)
    z = sd.encode(rgb)
    assert z.shape == (2, 4, 8, 8) and z.dtype == torch.float32
    z.square().sum().backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    assert all(p.grad is None for p in _frozen_params(sd))


def test_encode_sample_uses_the_prior_generator_and_mode_is_deterministic(tiny_sd, sd):
    rgb = torch.rand(1, 64, 64, 3)
    sd.generator.manual_seed(3)
    a = sd.encode(rgb)
    b = sd.encode(rgb)
    sd.generator.manual_seed(3)
    torch.testing.assert_close(sd.encode(rgb), a)
    assert not torch.equal(a, b)
    mode = build_prior(PriorConfig(name=tiny_sd, vae_sample=False))
    torch.testing.assert_close(mode.encode(rgb), mode.encode(rgb))
    mean = mode.vae.encode(rgb.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean * mode.vae.config.scaling_factor
    torch.testing.assert_close(mode.encode(rgb), mean)


def test_decode_returns_channels_last_images_in_unit_range(sd):
    img = sd.decode(torch.randn(2, 4, 8, 8))
    assert img.shape == (2, 64, 64, 3) and img.min() >= 0 and img.max() <= 1 and not img.requires_grad


def test_predict_eps_shape_dtype_and_no_graph(sd):
    cond = sd.embed(["a red cube", ""])
    x_t = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    eps = sd.predict_eps(x_t, torch.tensor([20, 980]), cond)
    assert eps.shape == (2, 4, 8, 8) and eps.dtype == torch.float64 and not eps.requires_grad
    # a scalar timestep is broadcast over the batch
    torch.testing.assert_close(sd.predict_eps(x_t, torch.tensor(500), cond),
                               sd.predict_eps(x_t, torch.tensor([500, 500]), cond))
    with pytest.raises(ValueError, match="rows"):
        sd.predict_eps(x_t, torch.tensor([20, 980]), cond[:1])


def test_predict_eps_casts_to_the_unet_dtype_and_back(tiny_sd):
    prior = build_prior(PriorConfig(name=tiny_sd, dtype="bfloat16"))
    assert prior.unet.dtype == torch.bfloat16
    cond = prior.embed(["a blue torus"])
    assert cond.tensors["prompt_embeds"].dtype == torch.bfloat16
    eps = prior.predict_eps(torch.randn(1, 4, 8, 8), torch.tensor([300]), cond)
    assert eps.dtype == torch.float32 and torch.isfinite(eps).all()


def test_v_prediction_is_converted_to_epsilon(tiny_sd_v):
    prior = build_prior(PriorConfig(name=tiny_sd_v))
    assert prior.prediction_type == "v_prediction"
    cond = prior.embed(["a photo of a cube", "a red torus"])
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    with torch.no_grad():
        v = prior.unet(x_t, t, encoder_hidden_states=cond.tensors["prompt_embeds"]).sample
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = (1 - abar).sqrt() * x_t + abar.sqrt() * v
    torch.testing.assert_close(prior.predict_eps(x_t, t, cond), expected)


def test_embed_is_cached_per_prompt(sd):
    calls = []
    handle = sd.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        one = sd.embed(["a green sphere, side view"])
        again = sd.embed(["a green sphere, side view"])
        assert one.tensors["prompt_embeds"] is again.tensors["prompt_embeds"]
        both = sd.embed(["a cat, back view", "a green sphere, side view", "a green sphere, side view"])
        assert len(calls) == 2  # only the new prompt was encoded, in one batch
    finally:
        handle.remove()
    assert isinstance(both, Cond) and both.tensors["prompt_embeds"].shape == (3, 77, 32)
    torch.testing.assert_close(both.tensors["prompt_embeds"][1:2], one.tensors["prompt_embeds"])
    assert not torch.equal(both.tensors["prompt_embeds"][0], both.tensors["prompt_embeds"][1])
    assert not one.tensors["prompt_embeds"].requires_grad


def test_prompt_set_builds_on_the_prior(sd):
    from guidance.prompts import PromptSet
    prompts = PromptSet(sd, "a red cube", negative="blue")
    assert prompts.plain.tensors["prompt_embeds"].shape == (1, 77, 32)
    assert not torch.equal(prompts.uncond(1).tensors["prompt_embeds"], prompts.null(1).tensors["prompt_embeds"])


def test_image_embeds_in_the_cond_are_passed_as_added_cond_kwargs(sd):
    cond = Cond({"prompt_embeds": torch.zeros(1, 77, 32), "image_embeds": torch.ones(1, 4, 32)})
    added = sd._added_cond(cond, torch.zeros(1, 4, 8, 8))
    assert list(added) == ["image_embeds"] and torch.equal(added["image_embeds"][0], torch.ones(1, 4, 32))


def test_uncached_hub_id_fails_fast_with_a_clear_message():
    start = time.perf_counter()
    with pytest.raises(PriorError) as info:
        build_prior(PriorConfig(name="stabilityai/stable-diffusion-2-1-base"))
    assert time.perf_counter() - start < 5
    msg = str(info.value)
    assert "stabilityai/stable-diffusion-2-1-base" in msg and "huggingface-cli download" in msg
    assert info.value.__suppress_context__ and info.value.__traceback__ is not None


def test_unsupported_pipeline_class_lists_the_supported_ones(tmp_path):
    with pytest.raises(PriorError, match="KandinskyV22Pipeline") as info:
        build_prior(PriorConfig(name=make_unsupported(tmp_path / "kandinsky")))
    for cls in ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "IFPipeline"):
        assert cls in str(info.value)


def test_folder_without_model_index_and_missing_folder(tmp_path):
    with pytest.raises(PriorError, match="model_index.json"):
        build_prior(PriorConfig(name=str(tmp_path)))
    with pytest.raises(PriorError, match="no such model folder"):
        build_prior(PriorConfig(name=str(tmp_path / "nope" / "deeper")))


def test_folder_with_missing_weights_names_the_model(tiny_sd, tmp_path):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(PriorError, match="broken"):
        build_prior(PriorConfig(name=str(broken)))


def test_one_sds_step_by_hand_changes_the_image(sd):
    image = torch.nn.Parameter(torch.full((1, 64, 64, 3), 0.5))
    opt = torch.optim.Adam([image], lr=0.05)
    y, u = sd.embed(["a red cube"]), sd.embed([""])
    z = sd.encode(image)
    t = torch.tensor([600])
    noise = torch.randn_like(z)
    x_t = add_noise(z.detach(), noise, t, sd.alphas_cumprod)
    eps = sd.predict_eps(torch.cat([x_t, x_t]), torch.cat([t, t]), Cond.cat([y, u]))
    eps_hat = classifier_free_guidance(eps[1:], eps[:1], 7.5)
    grad = weight(t, sd.alphas_cumprod).view(-1, 1, 1, 1) * (eps_hat - noise)
    loss = surrogate_loss(z, grad)
    loss.backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    before = image.detach().clone()
    opt.step()
    assert not torch.equal(before, image.detach())
    assert all(p.grad is None for p in _frozen_params(sd))
