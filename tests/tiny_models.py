"""Tiny random diffusers pipelines for offline tests: SD, SDXL and DeepFloyd-IF shaped, built and saved in seconds.

No weights are downloaded: every component is randomly initialised from a fixed seed, and the tokenizers are written
by hand (a byte-level CLIP BPE vocabulary with merges for a few words; a small T5 Unigram vocabulary). Each builder
writes a folder that ``diffusers`` and ``guidance.priors.build_prior`` load with ``HF_HUB_OFFLINE=1``.

Other tests use the ``tiny_*_path(tmp_path_factory)`` helpers from a session-scoped fixture, e.g.::

    @pytest.fixture(scope="session")
    def tiny_sd(tmp_path_factory):
        return tiny_sd_path(tmp_path_factory)
"""

import os

import torch

WORDS = ("a", "red", "cube", "photo", "of", "blue", "torus", "view", "front", "side", "back", "overhead",
         "green", "sphere", "cat")
"""Words the tiny tokenizers know as single tokens; anything else falls back to characters / bytes."""

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def clip_vocab(words=WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The hand-written CLIP BPE vocabulary of the engine's own learned prior (engine.train_prior.clip_vocabulary)
    over the tiny models' words."""
    from engine.train_prior import clip_vocabulary
    return clip_vocabulary(words)


def make_clip_tokenizer(pad_token: str = EOS, max_length: int = 77):
    """An in-memory CLIPTokenizer over ``clip_vocab()``; SD pads with <|endoftext|>, SDXL's second one with "!"."""
    from transformers import CLIPTokenizer
    vocab, merges = clip_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, unk_token=EOS, bos_token=BOS, eos_token=EOS, pad_token=pad_token,
                         model_max_length=max_length)


def _clip_text_config(vocab_size: int, hidden: int = 32, projection_dim: int = 32):
    from transformers import CLIPTextConfig
    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37, num_attention_heads=4,
                          num_hidden_layers=2, max_position_embeddings=77, projection_dim=projection_dim,
                          bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)


def _tiny_vae(scaling_factor: float = 0.18215, force_upcast: bool = False):
    """A 4-channel AutoencoderKL that downsamples by 8, like SD's."""
    from diffusers import AutoencoderKL
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                         block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=64,
                         scaling_factor=scaling_factor, force_upcast=force_upcast)


def _done(path) -> bool:
    return os.path.isfile(os.path.join(path, "model_index.json"))


def make_tiny_sd(path, prediction_type: str = "epsilon", seed: int = 0) -> str:
    """Build a tiny random StableDiffusionPipeline (UNet 32/64 channels at 8x8, VAE /8, CLIP hidden 32) in ``path``."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel
    path = str(path)
    if _done(path):
        return path
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        tokenizer = make_clip_tokenizer()
        unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                    block_out_channels=(32, 64),
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                    norm_num_groups=32, attention_head_dim=8)
        vae = _tiny_vae()
        text_encoder = CLIPTextModel(_clip_text_config(len(tokenizer)))
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                                  set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.save_pretrained(path)
    return path


def make_tiny_sdxl(path, seed: int = 0) -> str:
    """Build a tiny random StableDiffusionXLPipeline: two CLIP encoders (the second with projection), text_time UNet."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    path = str(path)
    if _done(path):
        return path
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        tokenizer, tokenizer_2 = make_clip_tokenizer(), make_clip_tokenizer(pad_token="!")
        time_dim, pooled_dim = 8, 32
        unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                    block_out_channels=(32, 64),
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                                    norm_num_groups=32, attention_head_dim=8, use_linear_projection=True,
                                    addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                                    projection_class_embeddings_input_dim=6 * time_dim + pooled_dim)
        vae = _tiny_vae(scaling_factor=0.13025, force_upcast=True)
        text_encoder = CLIPTextModel(_clip_text_config(len(tokenizer)))
        text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(len(tokenizer), projection_dim=pooled_dim))
        scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                         force_zeros_for_empty_prompt=True, add_watermarker=False)
        pipe.save_pretrained(path)
    return path


def make_t5_tokenizer():
    """An in-memory T5Tokenizer (Unigram) knowing ``WORDS`` as "▁word" pieces plus single characters as fallback."""
    from transformers import T5Tokenizer
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789,.!?'-"))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=77)


def make_tiny_if(path, seed: int = 0) -> str:
    """Build a tiny random IFPipeline (stage I): T5 encoder d_model 32, pixel UNet 3 -> 6 channels at 16x16."""
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel
    path = str(path)
    if _done(path):
        return path
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        tokenizer = make_t5_tokenizer()
        text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                               num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
        unet = UNet2DConditionModel(sample_size=16, in_channels=3, out_channels=6, layers_per_block=1,
                                    block_out_channels=(32, 64),
                                    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
                                    up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
                                    mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=32,
                                    encoder_hid_dim=32, encoder_hid_dim_type="text_proj", addition_embed_type="text",
                                    addition_embed_type_num_heads=2, attention_head_dim=8, norm_num_groups=32,
                                    resnet_time_scale_shift="scale_shift", resnet_skip_time_act=True)
        scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                                  prediction_type="epsilon", thresholding=True, dynamic_thresholding_ratio=0.95,
                                  sample_max_value=1.5, clip_sample=True)
        pipe = IFPipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler,
                          safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
        pipe.save_pretrained(path)
    return path


def make_unsupported(path) -> str:
    """A folder whose model_index.json names a pipeline class the priors do not support (nothing else in it)."""
    import json
    path = str(path)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "model_index.json"), "w") as f:
        json.dump({"_class_name": "KandinskyV22Pipeline", "_diffusers_version": "0.42.1"}, f)
    return path


def _session_folder(tmp_path_factory, name: str):
    return tmp_path_factory.getbasetemp() / "tiny_models" / name


def tiny_sd_path(tmp_path_factory, prediction_type: str = "epsilon") -> str:
    """Build (once per pytest session) and return a tiny SD folder; wrap in a session-scoped fixture."""
    return make_tiny_sd(_session_folder(tmp_path_factory, f"sd-{prediction_type}"), prediction_type)


def tiny_sdxl_path(tmp_path_factory) -> str:
    """Build (once per pytest session) and return a tiny SDXL folder."""
    return make_tiny_sdxl(_session_folder(tmp_path_factory, "sdxl"))


def tiny_if_path(tmp_path_factory) -> str:
    """Build (once per pytest session) and return a tiny DeepFloyd-IF stage-I folder."""
    return make_tiny_if(_session_folder(tmp_path_factory, "if"))


def tiny_controlnet_path(tmp_path_factory, sd_path: str) -> str:
    """Build (once per pytest session) and return a tiny random ControlNet for the tiny SD UNet at ``sd_path``:
    ControlNetModel.from_unet with DreamMat's 22 condition channels (guidance/priors/controlnet.py), its zero convs made
    random (seeded) so the residuals are not all zero, saved with save_pretrained."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    path = _session_folder(tmp_path_factory, "controlnet")
    if not (path / "config.json").exists():
        unet = UNet2DConditionModel.from_pretrained(sd_path, subfolder="unet")
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = ControlNetModel.from_unet(unet, conditioning_channels=22,
                                            conditioning_embedding_out_channels=(8, 8, 16, 16))
            with torch.no_grad():
                for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
                    conv.weight.normal_(0, 0.3)
        net.save_pretrained(path)
    return str(path)


def split_cube(half: float = 0.4):
    """A 24-vertex cube (each face its own 4 vertices, as a UV-seamed export has), two triangles per face wound
    counter-clockwise from outside, and per-vertex uv (one cell of a 3x2 grid per face): numpy (verts, faces, uvs)."""
    import numpy as np
    verts, faces, uvs = [], [], []
    for k, (axis, sign) in enumerate([(0, 1), (0, -1), (1, 1), (1, -1), (2, 1), (2, -1)]):
        a1, a2 = [i for i in range(3) if i != axis]
        base = len(verts)
        for s1, s2 in [(-1, -1), (1, -1), (1, 1), (-1, 1)]:
            p = np.zeros(3)
            p[axis], p[a1], p[a2] = sign * half, s1 * half, s2 * half
            verts.append(p)
            uvs.append([((k % 3) + 0.5 + 0.4 * s1) / 3, ((k // 3) + 0.5 - 0.4 * s2) / 2])
        faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
    verts, faces = np.array(verts), np.array(faces, dtype=np.int64)
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    flip = (fn * verts[faces].mean(1)).sum(-1) < 0
    faces[flip] = faces[flip][:, ::-1]
    return verts, faces, np.array(uvs)
