"""Shared fixtures: seeds, a ToyPrior with a known analytic noise prediction, small cameras, offline hub settings."""

import hashlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from foundation.cameras import orbit_cameras  # noqa: E402
from guidance.priors.base import Cond, scaled_linear_alphas_cumprod  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


class ToyPrior:
    """A latent prior on [B,4,8,8] whose eps is an analytic function of (x_t, t, condition).

    encode: 8x8 average pool then a fixed 3->4 channel mix, (2 rgb - 1) first; eps(x_t, t, c) =
    tanh(x_t (1 + t / 1000)) + c[:, :, None, None], with c a fixed 4-vector per prompt.
    """

    latent = True
    steps_offset = 1
    device = torch.device("cpu")

    def __init__(self):
        self.alphas_cumprod = scaled_linear_alphas_cumprod()
        self.mix = torch.tensor([[1.0, 0.2, -0.3], [0.1, 0.9, 0.4], [-0.2, 0.3, 1.1], [0.5, -0.5, 0.25]])
        self.calls = 0

    def encode(self, rgb):
        x = F.adaptive_avg_pool2d(rgb.permute(0, 3, 1, 2) * 2 - 1, 8)
        return torch.einsum("oc,bchw->bohw", self.mix.to(x.dtype), x)

    def decode(self, x):
        rgb = torch.einsum("co,bohw->bchw", torch.linalg.pinv(self.mix).to(x.dtype), x)
        return ((rgb + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)

    @staticmethod
    def vector(prompt: str) -> torch.Tensor:
        seed = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
        return torch.randn(4, generator=torch.Generator().manual_seed(seed)) * (0.0 if prompt == "" else 0.5)

    def embed(self, prompts):
        return Cond({"c": torch.stack([self.vector(p) for p in prompts])})

    def predict_eps(self, x_t, t, cond, cams=None):
        self.calls += 1
        scale = (1 + t.to(x_t.dtype) / 1000).view(-1, 1, 1, 1)
        return torch.tanh(x_t * scale) + cond.tensors["c"].to(x_t.dtype)[:, :, None, None]


@pytest.fixture
def toy_prior():
    return ToyPrior()


@pytest.fixture
def cams4():
    """Four 32x32 orbit cameras at the four cardinal azimuths."""
    return orbit_cameras(torch.tensor([0.0, 90.0, 180.0, -90.0]), 20.0, 2.5, 40.0, 32)


@pytest.fixture(scope="session")
def shapes_prior():
    from guidance.priors import PriorConfig, build_prior
    return build_prior(PriorConfig(name="shapes-exemplar"))
