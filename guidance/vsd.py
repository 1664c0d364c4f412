"""VSD: Variational Score Distillation (ProlificDreamer, Wang et al. 2023, https://arxiv.org/abs/2305.16213,
Eq. 9 for the particle update and Eq. 10 for the particle score's own loss).

Notation (guidance-spec §2.2): z the encoded render, one t and one n per sample, x_t = alpha_t z + sigma_t n,

    eps_pre = e_u + s (e_y_vd - e_u)              pretrained prior, view-dependent prompt, standard CFG (s = 7.5)
    eps_phi = e0 + s_phi (e_c - e0)               particle score: e_c = eps_phi(x_t, t, y, c), e0 with c zeroed
    g       = w(t) (eps_pre - eps_phi),  w = 1 - abar_t                                          (Eq. 9)

and the particle score model phi learns the renders' distribution with its own diffusion loss on *detached* samples
(Eq. 10): x' = add_noise(sg(z), n', t'), t' ~ UniformInt[0, T-1], c' zeroed with probability 0.1, and
L_phi = mean((phi(x', t', y, c') - target)^2), target n' (epsilon) or alpha n' - sigma sg(z) (v-prediction).
The loss returned is surrogate(z, g) + lambda_lora L_phi: one backward pass serves both, g never reaches phi
(eps_phi is evaluated without gradient) and L_phi never reaches the scene (z is detached).

The particle score model:
- priors that declare ``LoRAHost`` (the diffusers priors): a LoRA (peft, rank 4, on to_q/to_k/to_v/to_out.0) on the
  prior's own UNet, attached and called through the prior (``attach_lora``, ``lora_output``), plus a camera MLP
  (16 -> time-embedding width) whose output is added to the UNet's time embedding, as threestudio installs it as
  ``class_embedding``. The pretrained branch runs with the adapter disabled. The UNet's native
  parameterisation (epsilon or v) is the particle loss's target, and its output is converted to epsilon.
- other priors (exemplar / shapes, analytic test priors): a small conditional U-Net built here on the
  prior's sample space (``SmallScoreNet``), with time and camera embeddings. It ignores the text: a run has one
  prompt, so y is a constant. It predicts v (well-conditioned at every t), converted to epsilon as sigma x + alpha v.
  With ``particle_base = "prior"`` the U-Net is a zero-initialised *residual* on the prior's own prediction for
  the plain prompt, eps_phi = eps_prior(x_t, t, y) + U-Net, so that, like the LoRA (whose B matrix starts at zero),
  the particle score starts as the pretrained model and only learns how the particles differ from it. The default
  "none" is the bare U-Net (starting at v = 0): on the shapes world it reaches the bar in 300 steps (a red cube
  17.8 dB / IoU 0.87) where the residual, whose VSD gradient starts at zero, does not (15.8 / 0.80).

Particles: with ``--particles N`` the training loop renders N scenes in one camera batch (renderers/particles.py);
all of them are distilled against, and train, this one particle score model.
"""

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from foundation.abilities import declares
from foundation.cameras import Cameras
from guidance.base import (
    GuidanceOutput,
    Objective,
    TimestepConfig,
    add_noise,
    attach_pixel_clip,
    check_choices,
    from_eps,
    surrogate_loss,
    to_device,
    to_eps,
    training_target,
    weight,
)
from guidance.perp_neg import PerpNegConfig, guided_eps
from guidance.priors.base import LoRAHost, Prior

PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class VSDConfig:
    """Variational Score Distillation; defaults from prolificdreamer.yaml / the official code (guidance-spec §2.2)."""

    guidance_scale: float = 7.5
    """CFG scale s of the pretrained branch, standard convention."""
    guidance_scale_lora: float = 1.0
    """s_phi: CFG of the particle score between camera and zeroed camera (1 = camera-conditioned only)."""
    particle_lr: float = 1e-4
    """Learning rate of the particle score model (LoRA + camera MLP, or the small U-Net)."""
    lora_rank: int = 4
    """LoRA rank on the diffusers UNet."""
    camera_dropout: float = 0.1
    """Probability of zeroing the camera condition in the particle loss (classifier-free training)."""
    lambda_lora: float = 1.0
    """Weight of the particle score's own loss in the returned scalar."""
    particle_width: int = 32
    """Small U-Net (priors without a UNet): channels at full resolution."""
    particle_prediction: str = "v_prediction"
    """Small U-Net parameterisation: "v_prediction" or "epsilon"."""
    particle_base: str = "none"
    """Small U-Net: "none" (the bare U-Net) or "prior" (a residual on the prior's own prediction, starting as the
    pretrained model, like the LoRA)."""
    weighting: str = "sds"
    """w(t): "sds" = 1 - abar_t, "uniform", "fantasia3d", "ism"."""
    timesteps: TimestepConfig = field(default_factory=lambda: TimestepConfig(schedule="two-stage", start=5000,
                                                                             reference_steps=25000))
    """ProlificDreamer's two time scales: t ~ U[0.02, 0.98], then U[0.02, 0.5] from step ``start`` (5000 of its
    25000-step NeRF stage: the first 20% of any run)."""
    perp_neg: PerpNegConfig = field(default_factory=PerpNegConfig)
    """Perp-Neg on the pretrained branch only (threestudio issue #135)."""
    pixel_clip: float = 0.0
    """Dreamer XL's pixel-wise clip of the image gradient (0 disables)."""
    reduction: str = "mean"
    """"mean" (threestudio MSE trick, reference) or "sum" (SpecifyGradient, official code)."""

    def __post_init__(self) -> None:
        check_choices(self)
        if self.particle_prediction not in PREDICTION_TYPES:
            raise ValueError(f"guidance.particle_prediction must be one of {PREDICTION_TYPES}")
        if self.particle_base not in ("prior", "none"):
            raise ValueError(f"guidance.particle_base must be prior or none, got {self.particle_base!r}")
        if not 0.0 <= self.camera_dropout <= 1.0:
            raise ValueError(f"guidance.camera_dropout must be in [0, 1], got {self.camera_dropout}")

    def build(self, prior: Prior, gen: torch.Generator, total_steps: int) -> "VSD":
        return VSD(self, prior, gen, total_steps)


def camera_vector(cams: Cameras) -> Tensor:
    """[B,16] camera condition: the c2w matrix flattened (threestudio's default)."""
    return cams.c2w.reshape(len(cams), 16).float()


# ---- particle score models ----------------------------------------------------------------------------------------
def timestep_features(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal features [B,dim] of integer timesteps (as in DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    a = t.float()[:, None] * freqs[None]
    return torch.cat([a.sin(), a.cos()], dim=-1)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.e = nn.Linear(emb, 2 * c_out)
        self.n2, self.c2 = nn.GroupNorm(8, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.c1(nn.functional.silu(self.n1(x)))
        scale, shift = self.e(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.n2(h) * (1 + scale) + shift
        return self.skip(x) + self.c2(nn.functional.silu(h))


class SmallScoreNet(nn.Module):
    """A small conditional U-Net eps/v-model on [B,C,h,w] (h, w divisible by 4), with time and camera embeddings.

    It works at h/2 and h/4 (a strided input convolution and a pixel-shuffle output keep the CPU cost low), with
    FiLM conditioning in every block and a zero-initialised output, so v = 0 at the start (the denoiser of a
    standard-normal data distribution).
    """

    def __init__(self, channels: int = 3, width: int = 32, cam_dim: int = 16, emb: int = 64):
        super().__init__()
        self.emb_dim = emb
        self.t_mlp = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.c_mlp = nn.Sequential(nn.Linear(cam_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        w = width
        self.inp = nn.Conv2d(channels, w, 3, stride=2, padding=1)
        self.d1 = _ResBlock(w, w, emb)
        self.down = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.mid = _ResBlock(2 * w, 2 * w, emb)
        self.u1 = _ResBlock(3 * w, w, emb)
        self.out = nn.Conv2d(w, 4 * channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor, cam: Tensor) -> Tensor:
        emb = self.t_mlp(timestep_features(t, self.emb_dim)) + self.c_mlp(cam)
        h0 = self.d1(self.inp(x), emb)
        h = self.mid(self.down(h0), emb)
        h = nn.functional.interpolate(h, size=h0.shape[-2:], mode="nearest")
        h = self.u1(torch.cat([h, h0], 1), emb)
        return nn.functional.pixel_shuffle(self.out(nn.functional.silu(h)), 2)


class SmallParticleScore(nn.Module):
    """Particle score for priors without a UNet: a SmallScoreNet in the prior's sample space, optionally as a
    residual on ``base``, the prior whose prediction (for the given cond and cameras) it starts from."""

    def __init__(self, channels: int, width: int, prediction_type: str, base: Prior | None = None):
        super().__init__()
        self.net = SmallScoreNet(channels, width)
        self.prediction_type = prediction_type
        self.base = [base] if base is not None else []  # a list: the prior is not a submodule

    def raw(self, x_t: Tensor, t: Tensor, cond, cam: Tensor, control: Tensor | None = None,
            cams: Cameras | None = None) -> Tensor:
        out = self.net(x_t.float(), t, cam)
        if self.base:
            prior = self.base[0]
            with torch.no_grad():
                eps = prior.predict_eps(x_t, t, cond, cams).float()
            out = out + from_eps(eps, x_t.float(), t, prior.alphas_cumprod, self.prediction_type)
        return out.to(x_t.dtype)

    def trainable(self) -> list[nn.Parameter]:
        return list(self.parameters())


class LoRAParticleScore(nn.Module):
    """Particle score for priors that host a LoRA (``LoRAHost``: the diffusers priors): the prior's LoRA on its own
    network plus a camera MLP whose output is added to the network's time embedding (threestudio installs it as
    ``class_embedding``). The prior switches the adapter on only inside ``lora_output``, so its own predictions
    stay pretrained; the objective never touches the network itself."""

    ADAPTER = "vsd_particle"

    def __init__(self, prior: LoRAHost, rank: int):
        super().__init__()
        self.prior = [prior]  # not a submodule: the network's frozen weights are not ours
        self.prediction_type = prior.prediction_type
        self.adapter = prior.attach_lora(self.ADAPTER, rank)
        self.lora = list(self.adapter.params)
        self.lora_params = nn.ParameterList(self.lora)
        self.layers = self.adapter.layers  # the modules it is switched in (tests check it stays off outside calls)
        emb_dim = self.adapter.time_embed_dim
        self.camera_mlp = nn.Sequential(nn.Linear(16, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.camera_mlp.to(prior.device)

    def raw(self, x_t: Tensor, t: Tensor, cond, cam: Tensor, control: Tensor | None = None,
            cams: Cameras | None = None) -> Tensor:
        """The LoRA network's raw output; the camera enters through ``cam`` [B,16]; ``control`` [B,K,H,W] (or the
        condition images ``cams`` carry): a conditioned prior's images, e.g. the ControlNet's, whose residuals steer
        this call as they steer the pretrained one (guidance/priors/controlnet.py)."""
        prior = self.prior[0]
        offset = self.camera_mlp(cam.to(prior.device))
        return prior.lora_output(self.adapter, x_t, t, cond, time_offset=offset, control=control, cams=cams)

    def trainable(self) -> list[nn.Parameter]:
        return list(self.lora) + list(self.camera_mlp.parameters())

    def state_dict(self, *args, **kwargs):  # LoRA tensors by name + the camera MLP
        out = {f"lora.{n}": p for n, p in self.adapter.state_dict().items()}
        out.update({f"camera_mlp.{k}": v for k, v in self.camera_mlp.state_dict().items()})
        return out

    def load_state_dict(self, state, strict: bool = True):
        self.adapter.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("lora.")})
        self.camera_mlp.load_state_dict({k[11:]: v for k, v in state.items() if k.startswith("camera_mlp.")})


# ---- the objective ------------------------------------------------------------------------------------------------
class VSD(Objective):
    """VSD bound to its prior; owns the particle score model (its parameters are the "guidance" group)."""

    def __init__(self, cfg: VSDConfig, prior: Prior, gen: torch.Generator, total_steps: int):
        super().__init__(cfg, prior, gen, total_steps)
        if declares(prior, LoRAHost):
            self.particle = LoRAParticleScore(prior, cfg.lora_rank)
        else:
            with torch.random.fork_rng():  # the run's generator drives initialisation
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                self.particle = SmallParticleScore(self._channels(), cfg.particle_width, cfg.particle_prediction,
                                                   prior if cfg.particle_base == "prior" else None)
            self.particle.to(prior.device)

    def _channels(self) -> int:
        with torch.no_grad():
            return int(self.prior.encode(torch.zeros(1, 8, 8, 3)).shape[1])

    # -- particle score --
    def particle_eps(self, x_t: Tensor, t: Tensor, cond, cam: Tensor, control: Tensor | None = None,
                     cams: Cameras | None = None) -> Tensor:
        """eps_phi(x_t, t, y, c) (no gradient); s_phi != 1 mixes in the zero-camera branch."""
        ac, ptype = self.prior.alphas_cumprod, self.particle.prediction_type
        with torch.no_grad():
            e_c = to_eps(self.particle.raw(x_t, t, cond, cam, control, cams), x_t, t, ac, ptype)
            if self.cfg.guidance_scale_lora == 1.0:
                return e_c
            e0 = to_eps(self.particle.raw(x_t, t, cond, torch.zeros_like(cam), control, cams), x_t, t, ac, ptype)
            return e0 + self.cfg.guidance_scale_lora * (e_c - e0)

    def particle_loss(self, z: Tensor, cond, cam: Tensor, t: Tensor | None = None, noise: Tensor | None = None,
                      keep: Tensor | None = None, control: Tensor | None = None,
                      cams: Cameras | None = None) -> Tensor:
        """L_phi on detached samples: t' ~ U[0, T-1], fresh n', camera dropped with probability camera_dropout."""
        x0 = z.detach()
        B, ac = x0.shape[0], self.prior.alphas_cumprod
        if t is None:
            t = torch.randint(0, ac.shape[0], (B,), generator=self.gen)
        t = to_device(t, x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=self.gen)
        noise = to_device(noise, x0.device, x0.dtype)
        if keep is None:
            keep = torch.rand(B, generator=self.gen) >= self.cfg.camera_dropout
        cam = cam * to_device(keep, cam.device, cam.dtype)[:, None]
        x_t = add_noise(x0, noise, t, ac)
        out = self.particle.raw(x_t, t, cond, cam, control, cams).float()
        target = training_target(x0, noise, t, ac, self.particle.prediction_type).float()
        return ((out - target) ** 2).mean()

    def param_groups(self) -> dict[str, dict]:
        return {"guidance": {"params": self.particle.trainable(), "lr": self.cfg.particle_lr}}

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.particle.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.particle.load_state_dict({k: v.to(self.prior.device) for k, v in state.items()})

    def __call__(self, rgb: Tensor, prompts, cams: Cameras, step: int, *, t: Tensor | None = None,
                 noise: Tensor | None = None, particle_t: Tensor | None = None,
                 particle_noise: Tensor | None = None, particle_keep: Tensor | None = None) -> GuidanceOutput:
        """rgb [B,H,W,3]; t, noise and the particle loss's t', n', camera-keep mask may be injected for tests."""
        cfg, prior = self.cfg, self.prior
        attach_pixel_clip(rgb, cfg.pixel_clip)
        z = prior.encode(rgb)
        B, ac = z.shape[0], prior.alphas_cumprod
        t, noise = self.draw_t_noise(z, step, t, noise)
        cam = camera_vector(cams).to(z.device)
        plain = prompts.plain.expand(B)  # the particle score uses the view-independent prompt
        with torch.no_grad():
            x_t = add_noise(z.detach(), noise, t, ac)
            eps_pre = guided_eps(prior, x_t, t, prompts, cams, cfg.guidance_scale, "standard", cfg.perp_neg)
            eps_phi = self.particle_eps(x_t, t, plain, cam, cams=cams)  # a conditioned prior reads cams' images
            g = weight(t, ac, cfg.weighting).view(-1, *([1] * (z.ndim - 1))) * (eps_pre - eps_phi)
        loss_vsd = surrogate_loss(z, g, cfg.reduction)
        loss_phi = self.particle_loss(z, plain, cam, particle_t, particle_noise, particle_keep, cams=cams)
        return GuidanceOutput(loss_vsd + cfg.lambda_lora * loss_phi,
                              {"loss_vsd": loss_vsd.detach(), "loss_lora": loss_phi.detach(),
                               "grad_norm": g.norm().detach(), "t": t.float().mean()})
