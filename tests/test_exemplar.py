"""The exemplar prior's denoiser against a brute-force float64 computation, and the shapes world."""

import math

import pytest
import torch

from foundation import shapes
from foundation.cameras import orbit_cameras
from guidance.priors.base import PriorError
from guidance.priors.exemplar import ExemplarPrior


def _tiny_prior(kappa=5.0, data_sigma=0.0):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 4, 4, generator=g) * 2 - 1
    dirs = torch.randn(6, 3, generator=g)
    tags = [("red", "cube"), ("red", "ball"), ("blue", "cube"), ("blue", "ball"), ("red", "cube"), ("blue", "cube")]
    return (ExemplarPrior(images, dirs, tags, kappa=kappa, data_sigma=data_sigma), images.double(),
            torch.nn.functional.normalize(dirs.double()))


@pytest.mark.parametrize("t_val", [5, 300, 900])
def test_gaussian_mixture_denoiser_is_tweedies_formula(t_val):
    """data_sigma > 0: the denoiser equals Tweedie's E[x0|x_t] = (x_t + (1-abar) grad log p_t(x_t)) / sqrt(abar), with
    p_t = sum_i pi_i N(sqrt(abar) x_i, (abar sd^2 + 1 - abar) I) written out in float64, differentiated by autograd."""
    sd, kappa = 0.4, 5.0
    prior, X, dirs = _tiny_prior(kappa, sd)
    cams = orbit_cameras(torch.tensor([30.0, -120.0]), torch.tensor([10.0, 35.0]), 2.0, 40.0, 4)
    x_t = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    D = prior.denoise(x_t, torch.tensor([t_val, t_val]), prior.embed(["a red cube", ""]), cams).double()
    abar = prior.alphas_cumprod[t_val].double()
    var = abar * sd ** 2 + 1 - abar
    for b, allowed in enumerate([[0, 4], list(range(6))]):
        cam = cams.position[b].double() / cams.position[b].double().norm()
        x = x_t[b].double().clone().requires_grad_(True)
        log_p = torch.logsumexp(torch.stack([
            -((x - abar.sqrt() * X[i]) ** 2).sum() / (2 * var) + kappa * (cam @ dirs[i]) for i in allowed]), 0)
        (score,) = torch.autograd.grad(log_p, x)
        tweedie = (x.detach() + (1 - abar) * score) / abar.sqrt()
        torch.testing.assert_close(D[b], tweedie, atol=2e-4, rtol=1e-4)


def test_gaussian_mixture_denoiser_gives_back_its_input_below_data_sigma():
    prior, _, _ = _tiny_prior(kappa=0.0, data_sigma=0.5)
    x0 = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1  # not an exemplar
    t = torch.tensor([2])
    D = prior.denoise(x0 * prior.alphas_cumprod[2].sqrt(), t, prior.embed([""]))
    torch.testing.assert_close(D, x0, atol=0.02, rtol=0)  # nearest-exemplar snapping would be ~0.5 away
    assert (D - prior.images).flatten(1).abs().amax(1).min() > 0.1


@pytest.mark.parametrize("t_val", [5, 300, 900])
def test_denoiser_matches_brute_force(t_val):
    prior, X, dirs = _tiny_prior()
    cams = orbit_cameras(torch.tensor([30.0, -120.0]), torch.tensor([10.0, 35.0]), 2.0, 40.0, 4)
    t = torch.tensor([t_val, t_val])
    x_t = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    cond = prior.embed(["a red cube", ""])
    eps = prior.predict_eps(x_t, t, cond, cams).double()

    abar = prior.alphas_cumprod[t_val].double()
    expected = []
    for b, allowed in enumerate([[0, 4], list(range(6))]):
        cam = cams.position[b].double()
        cam = cam / cam.norm()
        logits = torch.tensor([
            -((x_t[b].double() - abar.sqrt() * X[i]) ** 2).sum() / (2 * (1 - abar)) + 5.0 * (cam @ dirs[i])
            if i in allowed else -math.inf for i in range(6)])
        w = torch.softmax(logits, 0)
        D = (w[:, None, None, None] * X).sum(0)
        expected.append((x_t[b].double() - abar.sqrt() * D) / (1 - abar).sqrt())
    assert torch.allclose(eps, torch.stack(expected), atol=2e-4, rtol=1e-4)


def test_low_noise_denoiser_returns_the_nearest_exemplar():
    prior, X, _ = _tiny_prior(kappa=0.0)
    x_t = prior.images[2:3] * prior.alphas_cumprod[10].sqrt()
    D = prior.denoise(x_t, torch.tensor([10]), prior.embed([""]))
    assert torch.allclose(D, prior.images[2:3], atol=1e-4)


def test_vocabulary_errors():
    prior, _, _ = _tiny_prior()
    with pytest.raises(PriorError, match="Vocabulary: ball, blue, cube, red"):
        prior.embed(["a purple dog"])
    with pytest.raises(PriorError, match="no exemplar"):
        prior.log_prior("a red blue ball")
    assert prior.embed(["cubes"]).tensors["log_prior"].eq(0).sum() == 4  # plural, any colour


def test_save_and_load_folder(tmp_path):
    from guidance.priors import PriorConfig, build_prior
    prior, _, _ = _tiny_prior()
    prior.save(str(tmp_path / "ex"))
    back = build_prior(PriorConfig(name=str(tmp_path / "ex"), kappa=5.0))
    assert isinstance(back, ExemplarPrior)
    assert torch.equal(back.images, prior.images) and back.tags == prior.tags


def test_shapes_prior_prompts(shapes_prior):
    lp = shapes_prior.embed(["a red cube", "a DSLR photo of a blue torus", "a cube", ""]).tensors["log_prior"]
    n_views = lp.shape[1] // 30
    assert (lp[0] == 0).sum() == n_views
    assert (lp[1] == 0).sum() == n_views
    assert (lp[2] == 0).sum() == 6 * n_views  # any colour
    assert (lp[3] == 0).all()
    with pytest.raises(PriorError, match="Vocabulary: colours red"):
        shapes_prior.embed(["a purple dog"])
    with pytest.raises(PriorError, match="one colour and one shape"):
        shapes_prior.embed(["a red blue cube"])


def test_shapes_prior_exemplar_matches_ground_truth(shapes_prior):
    """An exemplar is exactly the ground-truth render of its camera."""
    idx = shapes_prior.tags.index(frozenset({"red", "cube"}))
    from guidance.priors.shapes import exemplar_cameras
    cams = exemplar_cameras(64)[:3]
    rgb, _ = shapes.render_ground_truth("cube", "red", cams)
    ex = shapes_prior.decode(shapes_prior.images[idx:idx + 3])
    assert (ex - rgb).abs().max() < 2e-3  # float16 cache


def test_shapes_geometry_is_canonical():
    p = torch.tensor([[0.39, 0.39, 0.39], [0.41, 0.0, 0.0]])
    assert shapes.inside("cube", p).tolist() == [True, False]
    assert shapes.inside("sphere", torch.tensor([[0.0, 0.49, 0.0], [0.0, 0.51, 0.0]])).tolist() == [True, False]
    assert shapes.inside("cylinder", torch.tensor([[0.39, 0.39, 0.0], [0.0, 0.41, 0.0]])).tolist() == [True, False]
    # cone: apex up at y=0.45, base radius 0.45 at y=-0.45
    assert shapes.inside("cone", torch.tensor([[0.0, 0.44, 0.0], [0.44, -0.44, 0.0], [0.3, 0.2, 0.0]])).tolist() == \
        [True, True, False]
    assert shapes.inside("torus", torch.tensor([[0.35, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.49]])).tolist() == \
        [True, False, True]
    # exact distances
    assert shapes.sdf("cube", torch.tensor([[1.0, 0.0, 0.0]])).item() == pytest.approx(0.6)
    assert shapes.sdf("torus", torch.tensor([[0.0, 0.0, 0.0]])).item() == pytest.approx(0.2)


def test_ground_truth_silhouette_area():
    """A sphere of radius 0.5 seen from 2.5 m covers the analytic fraction of the image."""
    cams = orbit_cameras(torch.tensor([0.0]), 0.0, 2.5, 40.0, 64)
    _, alpha = shapes.render_ground_truth("sphere", "white", cams)
    half_angle = math.asin(0.5 / 2.5)
    radius_px = math.tan(half_angle) / math.tan(math.radians(20)) * 32
    assert alpha.sum().item() == pytest.approx(math.pi * radius_px ** 2, rel=0.03)
    assert shapes.psnr(alpha, alpha) > 100 and shapes.mask_iou(alpha, alpha) == 1.0
