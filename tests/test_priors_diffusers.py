"""Diffusers priors on tiny random pipelines, loaded offline through build_prior (no weights are ever downloaded)."""

import os
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_models import make_unsupported, tiny_if_path, tiny_sd_path, tiny_sdxl_path  # noqa: E402

from guidance.base import add_noise, classifier_free_guidance, surrogate_loss, weight  # noqa: E402
from guidance.priors import PriorConfig, build_prior  # noqa: E402
from guidance.priors.base import Cond, Prior, PriorError, scaled_linear_alphas_cumprod  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    return tiny_sd_path(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_sd_v(tmp_path_factory):
    return tiny_sd_path(tmp_path_factory, prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    return tiny_sdxl_path(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_if(tmp_path_factory):
    return tiny_if_path(tmp_path_factory)


@pytest.fixture(scope="module")
def sd(tiny_sd, tmp_path_factory):
    return build_prior(PriorConfig(name=tiny_sd, cache_dir=str(tmp_path_factory.mktemp("cache"))))


def _frozen_params(prior):
    for key in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(prior, key, None)
        if module is not None:
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


# ---- text encoders: lazy loading, disk cache, offload ------------------------------------------------------------
def test_text_embeddings_are_cached_on_disk_and_skip_the_text_encoder(tiny_sd, tiny_sd_v, tmp_path):
    cfg = PriorConfig(name=tiny_sd, cache_dir=str(tmp_path))
    first = build_prior(cfg)
    assert first.text_encoder is None  # loaded lazily, on the first prompt the caches miss
    a = first.embed(["a red cube", ""])
    assert first.text_encoder is not None and len(list(tmp_path.rglob("*.safetensors"))) == 2
    second = build_prior(cfg)
    b = second.embed(["a red cube", ""])
    assert second.text_encoder is None
    torch.testing.assert_close(a.tensors["prompt_embeds"], b.tensors["prompt_embeds"], rtol=0, atol=0)
    other = build_prior(PriorConfig(name=tiny_sd_v, cache_dir=str(tmp_path)))
    other.embed(["a red cube"])  # another model never reads this model's entries
    assert other.text_encoder is not None and len(list(tmp_path.rglob("*.safetensors"))) == 3


def test_embed_cache_can_be_turned_off(tiny_sd, tmp_path):
    prior = build_prior(PriorConfig(name=tiny_sd, cache_dir=str(tmp_path), embed_cache=False))
    prior.embed(["a red cube"])
    assert not list(tmp_path.rglob("*.safetensors"))


def test_freed_text_encoder_is_reloaded_for_a_new_prompt(tiny_sd, sd, tmp_path):
    prior = build_prior(PriorConfig(name=tiny_sd, cache_dir=str(tmp_path), text_encoder_offload="free"))
    a = prior.embed(["a blue cube"])
    assert prior.text_encoder is None and prior.tokenizer is not None
    b = prior.embed(["a red torus"])
    assert prior.text_encoder is None
    torch.testing.assert_close(b.tensors["prompt_embeds"], sd.embed(["a red torus"]).tensors["prompt_embeds"])
    torch.testing.assert_close(a.tensors["prompt_embeds"], sd.embed(["a blue cube"]).tensors["prompt_embeds"])
    with pytest.raises(PriorError, match="text_encoder_offload"):
        build_prior(PriorConfig(name=tiny_sd, text_encoder_offload="gpu"))


# ---- SDXL -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sdxl(tiny_sdxl, tmp_path_factory):
    return build_prior(PriorConfig(name=tiny_sdxl, cache_dir=str(tmp_path_factory.mktemp("cache"))))


@pytest.fixture(scope="module")
def sdxl_pipe(tiny_sdxl):
    from diffusers import StableDiffusionXLPipeline
    return StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)


def test_sdxl_is_chosen_by_model_index_and_keeps_its_vae_in_fp32(tiny_sdxl, sdxl):
    from guidance.priors.sdxl import StableDiffusionXLPrior
    assert type(sdxl) is StableDiffusionXLPrior and sdxl.latent and sdxl.steps_offset == 1
    assert sdxl.scaling_factor == pytest.approx(0.13025) and sdxl.resolution == 64
    torch.testing.assert_close(sdxl.alphas_cumprod, scaled_linear_alphas_cumprod(), rtol=1e-6, atol=1e-6)
    half = build_prior(PriorConfig(name=tiny_sdxl, dtype="bfloat16", embed_cache=False))
    assert half.unet.dtype == torch.bfloat16 and half.vae.dtype == torch.float32
    rgb = torch.rand(1, 48, 48, 3, requires_grad=True)
    z = half.encode(rgb)
    assert z.shape == (1, 4, 8, 8) and z.dtype == torch.float32
    z.sum().backward()
    assert rgb.grad.abs().sum() > 0
    eps = half.predict_eps(z.detach(), torch.tensor([400]), half.embed(["a red cube"]))
    assert eps.dtype == torch.float32 and torch.isfinite(eps).all()


def test_sdxl_embeddings_match_the_pipeline_encode_prompt(sdxl, sdxl_pipe):
    pe, npe, pooled, npooled = sdxl_pipe.encode_prompt("a red cube", device=torch.device("cpu"),
                                                       do_classifier_free_guidance=True, negative_prompt=None)
    cond = sdxl.embed(["a red cube", ""])
    assert cond.tensors["prompt_embeds"].shape == (2, 77, 64) and cond.tensors["text_embeds"].shape == (2, 32)
    torch.testing.assert_close(cond.tensors["prompt_embeds"], torch.cat([pe, npe]))
    torch.testing.assert_close(cond.tensors["text_embeds"], torch.cat([pooled, npooled]))
    assert npe.abs().max() == 0  # force_zeros_for_empty_prompt: "" is zeros, not an encoded empty string
    _, npe, _, npooled = sdxl_pipe.encode_prompt("a red cube", device=torch.device("cpu"),
                                                 do_classifier_free_guidance=True, negative_prompt="blue torus")
    neg = sdxl.embed(["blue torus"])
    torch.testing.assert_close(neg.tensors["prompt_embeds"], npe)
    torch.testing.assert_close(neg.tensors["text_embeds"], npooled)


def test_sdxl_time_ids_and_noise_prediction_match_the_pipeline(sdxl, sdxl_pipe):
    proj = sdxl_pipe.text_encoder_2.config.projection_dim
    time_ids = sdxl_pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), dtype=torch.float32,
                                           text_encoder_projection_dim=proj)
    torch.testing.assert_close(sdxl.add_time_ids, time_ids)
    pe, _, pooled, _ = sdxl_pipe.encode_prompt("a photo of a cube", device=torch.device("cpu"),
                                               do_classifier_free_guidance=False)
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([150, 850])
    with torch.no_grad():
        expected = sdxl_pipe.unet(x_t, t, encoder_hidden_states=pe.expand(2, -1, -1),
                                  added_cond_kwargs={"text_embeds": pooled.expand(2, -1),
                                                     "time_ids": time_ids.expand(2, -1)}).sample
    eps = sdxl.predict_eps(x_t, t, sdxl.embed(["a photo of a cube"]).expand(2))
    torch.testing.assert_close(eps, expected)


def test_sdxl_time_ids_follow_the_prior_resolution_and_tile_the_vae(tiny_sdxl):
    prior = build_prior(PriorConfig(name=tiny_sdxl, resolution=128, embed_cache=False))
    assert prior.add_time_ids.tolist() == [[128, 128, 0, 0, 128, 128]]
    assert prior.vae.use_tiling
    rgb = torch.rand(1, 128, 128, 3, requires_grad=True)
    z = prior.encode(rgb)
    assert z.shape == (1, 4, 16, 16)
    z.sum().backward()
    assert rgb.grad.abs().sum() > 0


def test_nan_latents_or_eps_raise_loudly(tiny_sdxl):
    prior = build_prior(PriorConfig(name=tiny_sdxl, embed_cache=False))
    cond = prior.embed(["a red cube"])
    with torch.no_grad():
        prior.unet.conv_out.bias[0] = float("nan")
    with pytest.raises(PriorError, match="NaN"):
        prior.predict_eps(torch.randn(1, 4, 8, 8), torch.tensor([500]), cond)
    with torch.no_grad():
        prior.vae.encoder.conv_in.bias[0] = float("inf")
    with pytest.raises(PriorError, match="encoded latents"):
        prior.encode(torch.rand(1, 64, 64, 3))


# ---- DeepFloyd IF -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deepfloyd(tiny_if, tmp_path_factory):
    return build_prior(PriorConfig(name=tiny_if, cache_dir=str(tmp_path_factory.mktemp("cache"))))


def test_if_is_a_pixel_prior(deepfloyd):
    import torch.nn.functional as F

    from guidance.priors.deepfloyd import DeepFloydIFPrior
    assert type(deepfloyd) is DeepFloydIFPrior and deepfloyd.latent is False and deepfloyd.resolution == 16
    rgb = torch.rand(2, 32, 32, 3, requires_grad=True)
    x = deepfloyd.encode(rgb)
    expected = F.interpolate(2 * rgb.detach().permute(0, 3, 1, 2) - 1, (16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(x.detach(), expected)
    x.sum().backward()
    assert rgb.grad.abs().sum() > 0
    small = torch.rand(1, 16, 16, 3)
    torch.testing.assert_close(deepfloyd.decode(deepfloyd.encode(small)), small)


def test_if_embeddings_match_the_pipeline_and_t5_is_freed(tiny_if, deepfloyd):
    from diffusers import IFPipeline
    pipe = IFPipeline.from_pretrained(tiny_if, safety_checker=None, watermarker=None, feature_extractor=None,
                                      requires_safety_checker=False)
    pe, npe = pipe.encode_prompt("A red cube, FRONT view ", do_classifier_free_guidance=True, num_images_per_prompt=1,
                                 device=torch.device("cpu"), negative_prompt=None, clean_caption=False)
    cond = deepfloyd.embed(["A red cube, FRONT view ", ""])
    torch.testing.assert_close(cond.tensors["prompt_embeds"], torch.cat([pe, npe]))
    assert deepfloyd.text_encoder is None  # "auto" frees T5 after embedding


def test_if_eps_is_the_first_three_of_six_channels(deepfloyd):
    cond = deepfloyd.embed(["a blue torus"])
    x_t, t = torch.randn(1, 3, 16, 16), torch.tensor([321])
    with torch.no_grad():
        out = deepfloyd.unet(x_t, t, encoder_hidden_states=cond.tensors["prompt_embeds"]).sample
    assert out.shape[1] == 6
    torch.testing.assert_close(deepfloyd.predict_eps(x_t, t, cond), out[:, :3])


def test_if_missing_weights_explain_the_gated_model():
    with pytest.raises(PriorError, match="gated") as info:
        build_prior(PriorConfig(name="DeepFloyd/IF-I-XL-v1.0"))
    assert "DeepFloyd/IF-I-XL-v1.0" in str(info.value)
