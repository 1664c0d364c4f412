"""SDS against its formula on the ToyPrior with injected t and noise (float64 reference written here)."""

import pytest
import torch

from guidance.base import TimestepConfig, add_noise, sample_timesteps, surrogate_loss, weight
from guidance.prompts import PromptConfig, PromptSet
from guidance.sds import SDSConfig


def _expected_rgb_grad(prior, rgb, prompts, cams, t, noise, scale, convention, weighting, reduction):
    z = prior.encode(rgb).double()
    abar = prior.alphas_cumprod.double()[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * z + (1 - abar).sqrt() * noise.double()
    s_t = (1 + t.double() / 1000).view(-1, 1, 1, 1)
    c_y = prompts.cond(cams).tensors["c"].double()[:, :, None, None]
    c_u = prompts.uncond(len(t)).tensors["c"].double()[:, :, None, None]
    eps_y, eps_u = torch.tanh(x_t * s_t) + c_y, torch.tanh(x_t * s_t) + c_u
    eps_hat = eps_u + scale * (eps_y - eps_u) if convention == "standard" else eps_y + scale * (eps_y - eps_u)
    w = {"sds": 1 - abar, "uniform": torch.ones_like(abar), "fantasia3d": abar.sqrt() * (1 - abar)}[weighting]
    g = w * (eps_hat - noise.double())
    g = g / rgb.shape[0] if reduction == "mean" else g
    (expected,) = torch.autograd.grad(prior.encode(rgb), rgb, grad_outputs=g.float())
    return expected


@pytest.mark.parametrize("scale,convention,weighting,reduction", [
    (7.5, "standard", "sds", "mean"), (100.0, "threestudio", "uniform", "sum"), (1.0, "standard", "fantasia3d", "mean"),
])
def test_sds_gradient_matches_formula(toy_prior, cams4, scale, convention, weighting, reduction):
    prompts = PromptSet(toy_prior, "a red cube", "ugly", PromptConfig(view_dependent=True))
    rgb = torch.rand(4, 32, 32, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    t = torch.tensor([20, 250, 600, 980])
    noise = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    sds = SDSConfig(guidance_scale=scale, cfg_convention=convention, weighting=weighting,
                    reduction=reduction).build(toy_prior, torch.Generator().manual_seed(2), 100)
    out = sds(rgb, prompts, cams4, 0, t=t, noise=noise)
    (got,) = torch.autograd.grad(out.loss, rgb)
    expected = _expected_rgb_grad(toy_prior, rgb, prompts, cams4, t, noise, scale, convention, weighting, reduction)
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4)
    assert out.logs["grad_norm"] > 0


def test_view_dependent_prompts_reach_the_prior(toy_prior, cams4):
    prompts = PromptSet(toy_prior, "a red cube", cfg=PromptConfig(view_dependent=True))
    c = prompts.cond(cams4).tensors["c"]
    assert torch.equal(c[0], toy_prior.vector("a red cube, front view"))
    assert torch.equal(c[1], toy_prior.vector("a red cube, side view"))
    assert torch.equal(c[2], toy_prior.vector("a red cube, back view"))
    flat = PromptSet(toy_prior, "a red cube", cfg=PromptConfig(view_dependent=False)).cond(cams4).tensors["c"]
    assert torch.equal(flat, toy_prior.vector("a red cube").expand(4, 4))


def test_interpolated_view_prompts(toy_prior, cams4):
    prompts = PromptSet(toy_prior, "x", cfg=PromptConfig(mode="interpolated"))
    cams = cams4[:1]
    cams.azimuth[:] = 45.0
    c = prompts.cond(cams).tensors["c"][0]
    expected = 0.5 * toy_prior.vector("x, front view") + 0.5 * toy_prior.vector("x, side view")
    assert torch.allclose(c, expected, atol=1e-6)


def test_cfg_scale_one_skips_the_unconditional_branch(toy_prior, cams4):
    prompts = PromptSet(toy_prior, "a red cube")
    sds = SDSConfig(guidance_scale=1.0, cfg_convention="standard").build(toy_prior, torch.Generator(), 10)
    toy_prior.calls = 0
    sds(torch.rand(4, 32, 32, 3), prompts, cams4, 0)
    assert toy_prior.calls == 1


def test_no_gradient_reaches_the_prior(shapes_prior, cams4):
    prompts = PromptSet(shapes_prior, "a red cube")
    rgb = torch.rand(4, 32, 32, 3, requires_grad=True)
    sds = SDSConfig(guidance_scale=3.0, cfg_convention="standard").build(shapes_prior, torch.Generator(), 10)
    out = sds(rgb, prompts, cams4, 0)
    out.loss.backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    assert not shapes_prior.images.requires_grad and shapes_prior.images.grad is None


def test_surrogate_loss_gradients():
    x = torch.randn(3, 2, requires_grad=True)
    g = torch.randn(3, 2)
    (gm,) = torch.autograd.grad(surrogate_loss(x, g, "mean"), x)
    (gs,) = torch.autograd.grad(surrogate_loss(x, g, "sum"), x)
    assert torch.allclose(gm, g / 3) and torch.allclose(gs, g)
    g[0, 0] = float("nan")
    (gn,) = torch.autograd.grad(surrogate_loss(x, g, "sum"), x)
    assert torch.isfinite(gn).all()


def test_weights_and_noise_golden_values():
    ac = torch.linspace(0.99, 0.01, 1000)
    t = torch.tensor([0, 999])
    assert torch.allclose(weight(t, ac, "sds"), torch.tensor([0.01, 0.99]))
    from guidance.priors.base import scaled_linear_alphas_cumprod
    sd = scaled_linear_alphas_cumprod()
    # guidance-spec §1.1 check values
    for tt, v in [(20, 0.981314), (500, 0.276333), (548, 0.216260), (980, 0.005844)]:
        assert sd[tt].item() == pytest.approx(v, abs=2e-6)
    x, e = torch.ones(1, 1), torch.zeros(1, 1)
    assert add_noise(x, e, torch.tensor([500]), sd).item() == pytest.approx(0.276333 ** 0.5, abs=1e-6)


def test_timestep_schedules_golden():
    gen = torch.Generator().manual_seed(0)
    t = sample_timesteps(TimestepConfig(), 0, 100, 2000, gen)
    assert t.min() >= 20 and t.max() <= 980 and t.max() >= 975 and t.min() <= 25
    two = TimestepConfig(schedule="two-stage", start=50)
    assert two.range_at(49, 100) == (0.02, 0.98) and two.range_at(50, 100) == (0.02, 0.5)
    ann = TimestepConfig(schedule="annealed", min_end=0.02, max_end=0.5, start=0, end=100)
    assert ann.range_at(50, 100) == pytest.approx((0.02, 0.74))
    sq = TimestepConfig(schedule="sqrt", min=0.3, max=0.98)
    assert sq.range_at(0, 100) == pytest.approx((0.98, 0.98)) and sq.range_at(100, 100) == pytest.approx((0.3, 0.3))
    assert sq.range_at(25, 100)[0] == pytest.approx(0.3 + 0.68 * 0.5)
    with pytest.raises(ValueError, match="unknown timestep schedule"):
        TimestepConfig(schedule="cosine")


def test_paper_schedules_scale_to_the_run_length():
    """A schedule given for the paper's run length keeps its shape at any length (issue #12: paper defaults with the
    timestep schedule scaled to the run): ProlificDreamer's drop at 5000 of 25000 steps falls at 80 of 400, and
    LucidDreamer's 1500-of-5000 warm-up ends at 120 of 400; at the paper's own length nothing changes."""
    from guidance.ism import ISMConfig, TSMConfig, interval, warmup_rate
    from guidance.vsd import VSDConfig

    vsd = VSDConfig().timesteps
    assert vsd.steps_for(400)[0] == 80 and vsd.steps_for(25000)[0] == 5000
    assert vsd.range_at(79, 400) == (0.02, 0.98) and vsd.range_at(80, 400) == (0.02, 0.5)
    ism = ISMConfig()
    assert ism.timesteps.steps_for(400)[1] == 120 and ism.timesteps.steps_for(5000)[1] == 1500
    assert warmup_rate(ism, 60, 400) == pytest.approx(0.5) and warmup_rate(ism, 120, 400) == 0.0
    assert interval(ism, warmup_rate(ism, 400, 400)) == ism.delta_t
    g = torch.Generator().manual_seed(0)
    assert int(sample_timesteps(ism.timesteps, 120, 400, 4000, g).max()) == 499
    assert int(sample_timesteps(ism.timesteps, 0, 400, 20000, g).max()) == 979
    assert TSMConfig().timesteps.steps_for(400)[1] == 120
    own = TimestepConfig(schedule="two-stage", start=50)  # reference_steps 0: the run's own steps
    assert own.steps_for(400) == (50, 400)
    with pytest.raises(ValueError, match="reference_steps must be >= 0"):
        TimestepConfig(reference_steps=-1)


class _TextPrior:
    """The condition layout of the diffusers priors ({"prompt_embeds": [N,L,D]}), one distinct row per prompt."""

    name = "text"

    def embed(self, prompts):
        from guidance.priors.base import Cond
        return Cond({"prompt_embeds": torch.stack([torch.full((3, 16), float(len(p))) for p in prompts])})


def test_camera_code_joins_the_prompt_condition_only(toy_prior, cams4):
    """``prompts.camera_code``: each camera's code is added to every token row of its prompt condition; the negative
    and null conditions stay as they are (the prior was trained so) unless ``camera_uncond`` (a prior whose
    unconditional model learned the camera); a prior without text embeddings is refused."""
    from foundation.cameras import cameras_code
    on = PromptSet(_TextPrior(), "a red cube", "ugly", PromptConfig(camera_code=True))
    off = PromptSet(_TextPrior(), "a red cube", "ugly", PromptConfig(camera_code=False))
    got, plain = on.cond(cams4).tensors["prompt_embeds"], off.cond(cams4).tensors["prompt_embeds"]
    assert torch.allclose(got, plain + cameras_code(cams4, 16)[:, None, :])
    assert not torch.allclose(got[0], got[1])
    for branch in ("uncond", "null"):
        assert torch.equal(getattr(on, branch)(4).tensors["prompt_embeds"],
                           getattr(off, branch)(4).tensors["prompt_embeds"])
    for branch in ("uncond", "null"):  # camera-free unless the prior learned its unconditional model with cameras
        assert torch.equal(getattr(on, branch)(4, cams4).tensors["prompt_embeds"],
                           getattr(off, branch)(4).tensors["prompt_embeds"])
    both = PromptSet(_TextPrior(), "a red cube", "ugly", PromptConfig(camera_code=True, camera_uncond=True))
    code = cameras_code(cams4, 16)[:, None, :]
    for branch in ("uncond", "null"):
        plain_rows = getattr(off, branch)(4).tensors["prompt_embeds"]
        assert torch.allclose(getattr(both, branch)(4, cams4).tensors["prompt_embeds"], plain_rows + code)
        assert torch.equal(getattr(both, branch)(4).tensors["prompt_embeds"], plain_rows)  # no cameras given
    with pytest.raises(ValueError, match="cameras"):
        both.uncond(3, cams4)
    with pytest.raises(ValueError, match="camera_code"):  # at construction, before a run's first step
        PromptSet(toy_prior, "a red cube", cfg=PromptConfig(camera_code=True))
    with pytest.raises(ValueError, match="needs prompts.camera_code"):
        PromptConfig(camera_uncond=True)


@pytest.mark.parametrize("objective", ["sds", "vsd", "ism", "tsm", "asd", "csm", "csd", "elbo"])
def test_every_objective_sends_each_view_its_camera_in_every_branch(objective, cams4):
    """With ``camera_code`` and ``camera_uncond`` every prior call of every objective (the conditional, negative and
    null branches, DDIM inversion, the warm-up and the likelihood stage) carries, in each row, the code of the camera
    that row's sample was rendered from."""
    from conftest import ToyPrior

    from foundation.cameras import CAMERA_CODE_FEATURES, cameras_code
    from guidance import GUIDANCES
    from guidance.priors.base import Cond, InputGradient

    class CodedToyPrior(ToyPrior, InputGradient):
        """The ToyPrior with SD's condition layout ({"prompt_embeds": [N,1,20]}, its vector first) that records
        every call's rows and cameras."""

        def __init__(self):
            super().__init__()
            self.seen = []

        def embed(self, prompts):
            rows = torch.zeros(len(prompts), 1, 20)
            rows[:, 0, :4] = torch.stack([self.vector(p) for p in prompts])
            return Cond({"prompt_embeds": rows})

        def predict_eps(self, x_t, t, cond, cams=None):
            emb = cond.tensors["prompt_embeds"][:, 0]
            self.seen.append((emb.detach(), cams))
            return super().predict_eps(x_t, t, Cond({"c": emb[:, :4]}), cams)

        def predict_eps_grad(self, x_t, t, cond, cams=None):  # the ToyPrior's eps is differentiable in x_t
            return self.predict_eps(x_t, t, cond, cams)

    prior = CodedToyPrior()
    prompts = PromptSet(prior, "a red cube", "ugly", PromptConfig(camera_code=True, camera_uncond=True))
    cams = cams4[:2]
    obj = GUIDANCES[objective]().build(prior, torch.Generator().manual_seed(0), 10)
    for step in (0, 9):
        rgb = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(step), requires_grad=True)
        obj(rgb, prompts, cams, step).loss.backward()
    assert prior.seen
    for emb, seen_cams in prior.seen:
        code = cameras_code(seen_cams, 20)
        assert torch.all(emb[:, CAMERA_CODE_FEATURES - 1] == 1)  # every row has a code ...
        assert torch.allclose(emb[:, 4:CAMERA_CODE_FEATURES], code[:, 4:CAMERA_CODE_FEATURES])  # ... its camera's
        assert {round(float(a)) % 360 for a in seen_cams.azimuth} <= {0, 90}
