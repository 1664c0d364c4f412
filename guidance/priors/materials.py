"""The built-in materials prior: the exemplar denoiser over the materials world (foundation/materials.py), with its
exemplars rendered for each training view under that view's own lights (issue #16).

The exemplar prior (guidance/priors/exemplar.py) is the exact posterior mean of an empirical image set,

    D(x_t) = sum_i w_i x_i,   w = softmax_i( (sqrt(abar) x_t . x_i - abar |x_i|^2 / 2) / v + log pi_i ),
    v = abar sigma_d^2 + 1 - abar,  (Gaussian-mixture form with data_sigma = sigma_d; sigma_d = 0: exact exemplars)

with eps = (x_t - sqrt(abar) D) / sqrt(1 - abar) (Tweedie). Here the set is view-conditional, as the shapes prior
is through its camera kernel and the light-aware shapes prior through its lighting words: for each prior row, the
exemplars x_i are the world's materials (the ones the prompt allows; all 144 for "") shaded by
renderers/material.py's ``shade_view`` with *that row's* texture coordinates, view vectors and lights, which the
material scene hands over as condition images (``takes_condition``; they ride on the cameras). So the exemplars use
the same PBR shading under the same random lights as the render being guided, the only image matching every lit
view is the unshaded material, and shading cannot be baked into the base colour (DreamMat's lesson).

Ground-truth maps are GT_TEXELS texels per tile. Samples live in pixel space ([-1,1], [B,3,h,w]), no VAE.
"""

import torch
from torch import Tensor

from foundation import materials
from foundation.cameras import Cameras
from guidance.priors.base import Cond, ConditionedPrior, PriorError, scaled_linear_alphas_cumprod
from guidance.priors.exemplar import MASKED, PixelSpace

GT_TEXELS = 128


class MaterialsPrior(PixelSpace, ConditionedPrior):
    """Exemplar prior over the materials world, its exemplars shaded per view (see the module docstring)."""

    latent = False
    steps_offset = 0
    takes_condition = True
    condition_kind = "material"  # renderers/material.py plane_geometry's 13 channels (engine/train.py _wire_condition)
    name = "materials"

    def __init__(self, cfg, device: torch.device | str = "cpu"):
        from renderers.material import material_stack, tangent_normals
        self.device = torch.device(device)
        res = cfg.resolution or 64
        self.size = (res, res)
        if cfg.data_sigma < 0:
            raise PriorError(f"prior.data-sigma must be >= 0, got {cfg.data_sigma}")
        self.data_sigma = float(cfg.data_sigma)
        self.catalogue = materials.catalogue()
        self.alphas_cumprod = scaled_linear_alphas_cumprod().to(self.device)
        self._stacks: dict[bool, Tensor] = {}
        self._maps = [materials.ground_truth(spec, GT_TEXELS) for spec in self.catalogue]
        self._material_stack, self._tangent_normals = material_stack, tangent_normals
        self._cache: dict[str, Tensor] = {}

    def stacks(self, tileable: bool) -> Tensor:
        """[N,8,S,S] shading stacks of every material (normals from the height, periodic when tileable)."""
        if tileable not in self._stacks:
            rows = []
            for m in self._maps:
                n = self._tangent_normals(m["height"][None], None, tileable)
                rows.append(self._material_stack(m["basecolor"].permute(2, 0, 1)[None], m["roughness"][None, None],
                                                 m["metallic"][None, None], n))
            self._stacks[tileable] = torch.cat(rows).to(self.device)
        return self._stacks[tileable]

    # -- text ------------------------------------------------------------------------------------------------------
    def log_prior(self, prompt: str) -> Tensor:
        """[N] log-prior over the catalogue for one prompt: 0 for the materials it describes, MASKED otherwise."""
        if prompt not in self._cache:
            if not prompt.strip():
                lp = torch.zeros(len(self.catalogue), device=self.device)
            else:
                try:
                    spec = materials.parse_prompt(prompt)
                except ValueError as e:
                    raise PriorError(str(e)) from None
                match = torch.tensor([spec.matches(m) for m in self.catalogue], device=self.device)
                lp = torch.where(match, 0.0, MASKED)
            self._cache[prompt] = lp
        return self._cache[prompt]

    # -- exemplars ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def exemplars(self, cams: Cameras, index: Tensor) -> Tensor:
        """[B,K,3,h,w]: the materials ``index`` [K] shaded in each view of ``cams`` (by its condition images) over a
        white background, encoded."""
        from renderers import pbr
        from renderers.material import CONDITION_CHANNELS, shade_view
        cond = cams.condition
        if cond is None or cond.shape[-1] != CONDITION_CHANNELS:
            raise PriorError("the materials prior shades its exemplars in the material scene's views: use it with "
                             "--renderer material (engine material)")
        stack = self.stacks(bool(cond[0, 0, 0, 12] > 0.5))[index]
        s = max(1, cond.shape[1] // cams.height)
        lut = pbr.brdf_lut(device=self.device)
        out = []
        for b in range(len(cams)):
            rgb, cover = shade_view(stack, cond[b].to(self.device).float(), s, lut)
            a = cover[None, ..., None]
            out.append(self.encode(pbr.linear_to_srgb(rgb) * a + (1 - a)))
        return torch.stack(out)

    def denoise(self, x_t: Tensor, t: Tensor, cond: Cond, cams: Cameras) -> Tensor:
        """Posterior mean D(x_t) [B,3,h,w] over each row's view-conditional exemplars."""
        lp = cond.tensors["log_prior"].to(self.device)
        keep = (lp > MASKED / 2).any(0).nonzero()[:, 0]
        x_i = self.exemplars(cams, keep).flatten(2)  # [B,K,D]
        abar = self.alphas_cumprod[t.to(self.device)].float()[:, None]  # [B,1]
        xf = x_t.reshape(x_t.shape[0], 1, -1).float()
        v = abar * self.data_sigma ** 2 + (1 - abar)
        logits = (abar.sqrt() * (xf * x_i).sum(-1) - 0.5 * abar * x_i.square().sum(-1)) / v + lp[:, keep]
        w = torch.softmax(logits, dim=-1)
        mean = (w[..., None] * x_i).sum(1).reshape(x_t.shape)
        if not self.data_sigma:
            return mean
        a = abar.sqrt().view(-1, 1, 1, 1)
        c = a * self.data_sigma ** 2 / (a * a * self.data_sigma ** 2 + 1 - a * a)
        return (1 - a * c) * mean + c * x_t.float()

    @torch.no_grad()
    def predict_eps(self, x_t: Tensor, t: Tensor, cond: Cond, cams: Cameras | None = None) -> Tensor:
        if len(cond) != x_t.shape[0]:
            raise ValueError(f"cond has {len(cond)} rows for a batch of {x_t.shape[0]}")
        if cams is None:
            raise PriorError("the materials prior needs the cameras (with their condition images) of each row")
        abar = self.alphas_cumprod[t.to(self.device)].float().view(-1, 1, 1, 1)
        D = self.denoise(x_t, t, cond, cams)
        return ((x_t.float() - abar.sqrt() * D) / (1 - abar).sqrt()).to(x_t.dtype)


__all__ = ["MaterialsPrior", "GT_TEXELS"]
