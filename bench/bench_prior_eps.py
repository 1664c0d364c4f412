"""How well a prior folder's UNet predicts the noise at small timesteps (issue #12, docs/learned-prior.md session 26).

    python bench/bench_prior_eps.py [--prior guidance/priors/weights/shapes-sd] [--t 1 5 20 50 100 200]

The ISM family's DDIM inversion (LucidDreamer) first reads the prior's epsilon at t = 1; where the prediction is
off, the inversion writes the error into x_s as if it were noise. For ground-truth renders of the red cube and the
blue torus on white (4 azimuths each at 20 degrees elevation, the shapes preset's framing; posterior-mean latents)
and 4 noises, prints per t the slope <eps_pred, n> / <n, n> (1: the prediction carries all of the true noise) and
the MSE against the true noise, unconditional (the inversion's prompt). Loaded with plain diffusers.
"""

import argparse
import os
import platform

import torch

from foundation import shapes
from foundation.cameras import orbit_cameras


def renders(resolution: int = 64) -> torch.Tensor:
    """[8,3,H,W] in [-1,1]: the red cube and the blue torus from 4 azimuths at the shapes preset's framing."""
    az = torch.tensor([0.0, 90.0, 180.0, 270.0]) + 30.0
    cams = orbit_cameras(az, torch.full((4,), 20.0), torch.full((4,), 2.5), torch.full((4,), 40.0), resolution)
    imgs = [shapes.render_shape(s, cams).colourise(c) for s, c in (("cube", "red"), ("torus", "blue"))]
    return torch.cat(imgs).permute(0, 3, 1, 2) * 2 - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default=os.path.join("guidance", "priors", "weights", "shapes-sd"))
    ap.add_argument("--t", type=int, nargs="+", default=[1, 5, 20, 50, 100, 200])
    ap.add_argument("--noises", type=int, default=4)
    args = ap.parse_args()
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(args.prior, torch_dtype=torch.float32, safety_checker=None)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}")
    with torch.no_grad():
        z = pipe.vae.encode(renders()).latent_dist.mean * pipe.vae.config.scaling_factor
        ids = pipe.tokenizer([""] * len(z), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        emb = pipe.text_encoder(ids)[0]
        abar = pipe.scheduler.alphas_cumprod
        print(f"| prior | {' | '.join(f't = {t} slope / MSE' for t in args.t)} |")
        print(f"|---|{'---|' * len(args.t)}")
        cells = []
        for t in args.t:
            num = den = mse = 0.0
            for k in range(args.noises):
                n = torch.randn(z.shape, generator=torch.Generator().manual_seed(k))
                x = abar[t].sqrt() * z + (1 - abar[t]).sqrt() * n
                e = pipe.unet(x, torch.full((len(z),), t), emb).sample
                num += float((e * n).sum())
                den += float((n * n).sum())
                mse += float((e - n).square().mean()) / args.noises
            cells.append(f"{num / den:.3f} / {mse:.3f}")
        print(f"| {args.prior} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
