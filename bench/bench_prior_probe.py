"""Probes of a shapes-world prior folder that need no 3D run (issue #17; docs/learned-prior.md, session 27).

    python bench/bench_prior_probe.py framing     [--prior FOLDER]
    python bench/bench_prior_probe.py brightness  [--prior FOLDER] [--scales 0.7 0.85 1 1.15 1.3]
    python bench/bench_prior_probe.py encoder-fit [--prior FOLDER] [--colours green red blue yellow]
    python bench/bench_prior_probe.py run-likelihood --runs RUN [RUN ...] [--prior FOLDER]
    python bench/bench_prior_probe.py run-colour  --runs RUN [RUN ...] [--prior FOLDER] [--scales 0.7 0.8 0.9 1 1.1]
    python bench/bench_prior_probe.py colour-sds  [--prior FOLDER] [--shape cube] [--colours green red]
                                                  [--start 0.5 0.5 0.5] [--cfg 7.5] [--steps 300]
                                                  [--t-range 20 980] [--objective sds|elbo]
    python bench/bench_prior_probe.py size        [--prior FOLDER] [--shape cube] [--mesh GLB] [--scale 1.25]
                                                  [--cfg 7.5] [--steps 300] [--t-range 20 980] [--objective sds|elbo]
                                                  [--weighting sds|uniform] [--profile 0.9 0.95 1 1.05 1.1 1.2]
                                                  [--camera-code]
    python bench/bench_prior_probe.py vae-colour  [--prior FOLDER]
    python bench/bench_prior_probe.py yaw         [--prior FOLDER] [--shape cube] [--mesh GLB] [--yaws 0 10 20 30 45]

- ``framing``: which camera distance the prior finds most likely for the true red cube, blue torus and green cone
  (the engine's shapes preset otherwise: elevation 20, fov 40, 12 azimuths). Likelihood proxy: the conditional
  denoising MSE E_t,n ||eps(z_t, t, y) - n||^2 over 20 timesteps (t = 25, 75, ..., 975) and fixed noises, the
  simple-weighted ELBO of DDPM (Ho et al. 2020, Eq. 14). The minimum says at what framing the prior's "a red cube"
  is most at home; a NeRF that comes out larger than the truth at the engine's distance is not explained by a
  prior that prefers larger cubes when this minimum is at that distance.
- ``brightness``: the same likelihood proxy at the engine's framing over the true albedo scaled by each factor: is
  an object the 3D runs make too bright one the prior itself finds more likely brighter (its model), or is the
  excess SDS's (mode seeking, CFG)?
- ``run-likelihood``: the same likelihood proxy for what 3D runs made: each run folder's scene rendered from the
  probe's 12 views (the engine's framing, elevation 20) against the true object's renders for the run's prompt, the
  truth with its albedo scaled by 0.9, and the background alone. A run whose renders score far above the truth did
  not reach the likelihood's optimum, whatever its objective's fixed point is.
- ``run-colour``: the same likelihood proxy for each run's renders (12 views at elevation 20) with the foreground's
  colour scaled by each of ``--scales`` (a gain on the albedo under the key light, over the same white): the gain
  the prior finds likeliest for what the run made. Would a calibration of a finished run's colour by the prior's
  likelihood bring it to the truth? (Session 37: no; it would darken the NeRF demo cube, already right.)
- ``encoder-fit``: can gradients through the VAE encoder alone take a cube's albedo to a world colour? Minimise
  ||E(x(a)) - E(x_true)||^2 over the albedo a (3 numbers; 4 views, the key-light shading of the world) with Adam
  from grey starts. This is the path SDS's gradient takes from latent to pixels (J_E^T); an encoder trained only on
  the world's six colours may map greys into one colour's basin, and then no latent target moves the albedo out.
- ``colour-sds``: SDS (DreamFusion Eq. 3, w(t) = 1 - abar_t, CFG) on the albedo alone, with the true shape, views
  and shading: the colour a 3D run would reach if its geometry were exact. Starts from ``--start``. With
  ``--objective elbo`` it descends the conditional denoising error itself, through the UNet (guidance/elbo.py): where
  the likelihood, rather than SDS's fixed point, puts the colour. The last columns are the final colour's luminance
  ratio and chromaticity distance against the truth (the fidelity bench's goal-2 measures). On the shipped prior,
  elbo, 900 steps from grey: the red cube 0.905, the green cube 0.91 (600 steps), the green cone 0.81, the same with
  t in [20, 500] or [20, 250] (docs/benchmarks.md, session 43): the likelihood puts the albedo 9-19% darker than the
  truth, the cone's most.
- ``vae-colour``: how the autoencoder carries each object's colour. The relative latent change of the true object's
  12 views when its albedo is scaled by 0.85 or 1.15 (how far, in the latent space the UNet models, a 15% brightness
  error lies), and the mean foreground of a round trip D(E(x)) against x's. On the shipped VAE (session 43) a 15%
  change moves the red cube's latent 7.4% and the green cube's 4.5%, the red cone's 6.0% and the green cone's 3.8%
  (the blue torus's 3.6%): a latent-space error of the UNet costs green about 1.6 times the brightness it costs
  red. The decoder brightens green (the cone's foreground (22, 153, 52) against (22, 120, 45)).
- ``size``: the same descent on one number, the scale of a shape with its true albedo under the world's key light
  (the engine's mesh scene as it trains with ``light="shapes"``: antialiased, so the silhouette carries the
  gradient): the true primitive by default, or ``--mesh`` (e.g. a run's exported model.glb) scaled about the
  origin. Does the objective
  bring a too-large shape back to the truth's size, and does that hold for the shapes runs actually make?
  ``--profile S ...`` prints instead the likelihood proxy of ``framing`` (12 views at elevation 20) of the shape at
  each scale: how sharply the prior itself tells sizes apart, for the exact shape and for a run's; with
  ``--camera-code`` each view's camera code joins the prompt (a prior trained with ``--camera-code``).
- ``yaw``: the likelihood proxy of the true shape (or ``--mesh``) turned about the vertical by each of ``--yaws``,
  with the plain prompt and with the camera code: can the prior tell which way a cube faces? The shipped prior
  cannot (0 and 45 degrees score alike, session 35), so a 3D run on it settles into the yaw average, a drum.

Loaded with plain diffusers; CPU; one thread is enough (about a minute per colour).
"""

import argparse
import math
import os
import platform

import torch

from foundation import shapes
from foundation.cameras import orbit_cameras

DEFAULT_PRIOR = os.path.join("guidance", "priors", "weights", "shapes-sd")
COLOUR_OF = {"cube": "red", "torus": "blue", "cone": "green", "sphere": "yellow", "cylinder": "orange"}


def _views(n: int, distance: float = 2.5, resolution: int = 64):
    az = torch.arange(n, dtype=torch.float32) * (360.0 / n) + 15.0
    return orbit_cameras(az, torch.full((n,), 20.0), torch.full((n,), distance), torch.full((n,), 40.0), resolution)


def _albedo_image(render, albedo: torch.Tensor) -> torch.Tensor:
    """[C,3,H,W] in [0,1]: the world's shading times ``albedo`` [3], on white (foundation.shapes colourise)."""
    cov, sh = render.coverage[:, None], render.shaded[:, None]
    return sh * albedo[None, :, None, None] + (1 - cov)


def _embed(pipe, prompts: list[str]) -> torch.Tensor:
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def _latent(pipe, x01: torch.Tensor) -> torch.Tensor:
    return pipe.vae.encode(x01 * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor


@torch.no_grad()
def _denoising_error(pipe, z: torch.Tensor, emb: torch.Tensor) -> float:
    """E_t,n ||eps(z_t, t, y) - n||^2 over t = 25, 75, ..., 975 and one fixed noise per t (DDPM's simple ELBO)."""
    abar = pipe.scheduler.alphas_cumprod
    ts = list(range(25, 1000, 50))
    tot = 0.0
    for k, t in enumerate(ts):
        n = torch.randn(z.shape, generator=torch.Generator().manual_seed(k))
        zt = abar[t].sqrt() * z + (1 - abar[t]).sqrt() * n
        tot += float((pipe.unet(zt, torch.full((z.shape[0],), t), emb).sample - n).square().mean())
    return tot / len(ts)


def framing(pipe, distances: list[float]) -> None:
    print(f"| prompt | {' | '.join(f'{d:g} m' for d in distances)} | most likely |")
    print(f"|---|{'---|' * len(distances)}---|")
    for shape, colour in (("cube", "red"), ("torus", "blue"), ("cone", "green")):
        emb = _embed(pipe, [f"a {colour} {shape}"] * 12)
        row = []
        for d in distances:
            z = _latent(pipe, shapes.render_shape(shape, _views(12, d)).colourise(colour).permute(0, 3, 1, 2))
            row.append(_denoising_error(pipe, z, emb))
        best = distances[min(range(len(row)), key=row.__getitem__)]
        print(f"| a {colour} {shape} | {' | '.join(f'{v:.4f}' for v in row)} | {best:g} m |", flush=True)


def brightness(pipe, scales: list[float]) -> None:
    """The same denoising error as ``framing``, at the engine's framing, for the true shape with its albedo scaled by
    each of ``scales`` (clamped to 1): where the prior's likelihood puts each object's brightness."""
    print(f"| prompt | {' | '.join(f'x{k:g}' for k in scales)} | most likely |")
    print(f"|---|{'---|' * len(scales)}---|")
    for shape, colour in (("cube", "red"), ("torus", "blue"), ("cone", "green")):
        emb = _embed(pipe, [f"a {colour} {shape}"] * 12)
        render = shapes.render_shape(shape, _views(12))
        true = torch.tensor(shapes.COLOURS[colour], dtype=torch.float32) / 255.0
        row = []
        for k in scales:
            row.append(_denoising_error(pipe, _latent(pipe, _albedo_image(render, (true * k).clamp(0, 1))), emb))
        best = scales[min(range(len(row)), key=row.__getitem__)]
        print(f"| a {colour} {shape} | {' | '.join(f'{v:.4f}' for v in row)} | x{best:g} |", flush=True)


def run_likelihood(pipe, runs: list[str]) -> None:
    from engine import runfolder
    from renderers.base import scenes_of

    cams = _views(12)
    print("| run | prompt | run's renders | truth | truth, albedo x0.9 | white |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        cfg = runfolder.read_config(run)
        colour, shape = shapes.parse_prompt(cfg.prompt)
        if shape is None or colour is None:
            raise SystemExit(f"{run}: the prompt {cfg.prompt!r} names no shapes-world colour and shape")
        emb = _embed(pipe, [cfg.prompt] * 12)
        scene = scenes_of(runfolder.load_run(run).scene)[0].eval()
        with torch.no_grad():
            rgb = scene.render(cams, torch.ones(3)).rgb.permute(0, 3, 1, 2).clamp(0, 1)
        ref = shapes.render_shape(shape, cams)
        true = torch.tensor(shapes.COLOURS[colour], dtype=torch.float32) / 255.0
        cells = [_denoising_error(pipe, _latent(pipe, x), emb)
                 for x in (rgb, _albedo_image(ref, true), _albedo_image(ref, true * 0.9), torch.ones_like(rgb))]
        print(f"| {run} | {cfg.prompt} | {' | '.join(f'{v:.4f}' for v in cells)} |", flush=True)


def run_colour(pipe, runs: list[str], scales: list[float]) -> None:
    """``run-colour`` (module docstring): one row per run, the denoising error at each foreground gain."""
    from engine import runfolder
    from renderers.base import scenes_of

    cams = _views(12)
    print(f"| run | prompt | {' | '.join(f'x{k:g}' for k in scales)} | likeliest |")
    print(f"|---|---|{'---|' * len(scales)}---|")
    for run in runs:
        cfg = runfolder.read_config(run)
        emb = _embed(pipe, [cfg.prompt] * 12)
        scene = scenes_of(runfolder.load_run(run).scene)[0].eval()
        with torch.no_grad():
            out = scene.render(cams, torch.ones(3))
        rgb, alpha = out.rgb.permute(0, 3, 1, 2).clamp(0, 1), out.alpha.permute(0, 3, 1, 2)
        fg = rgb - (1 - alpha)  # the premultiplied foreground over the white background
        row = [_denoising_error(pipe, _latent(pipe, (fg * k + (1 - alpha)).clamp(0, 1)), emb) for k in scales]
        best = scales[min(range(len(row)), key=row.__getitem__)]
        print(f"| {run} | {cfg.prompt} | {' | '.join(f'{v:.4f}' for v in row)} | x{best:g} |", flush=True)


def encoder_fit(pipe, colours: list[str], starts: list[tuple[float, float, float]], steps: int = 300) -> None:
    vae = pipe.vae.requires_grad_(False)
    render = shapes.render_shape("cube", _views(4))
    print(f"| colour (true sRGB) | {' | '.join(f'from {tuple(round(v * 255) for v in s)}' for s in starts)} |")
    print(f"|---|{'---|' * len(starts)}")
    for colour in colours:
        true = torch.tensor(shapes.COLOURS[colour], dtype=torch.float32) / 255.0
        with torch.no_grad():
            target = vae.encode(_albedo_image(render, true) * 2 - 1).latent_dist.mean
        cells = []
        for start in starts:
            logit = torch.logit(torch.tensor(start)).requires_grad_(True)
            opt = torch.optim.Adam([logit], lr=0.02)
            for _ in range(steps):
                z = vae.encode(_albedo_image(render, torch.sigmoid(logit)) * 2 - 1).latent_dist.mean
                loss = (z - target).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            cells.append(str(tuple(round(float(v) * 255) for v in torch.sigmoid(logit.detach()))))
        print(f"| {colour} {tuple(shapes.COLOURS[colour])} | {' | '.join(cells)} |", flush=True)


def colour_error(srgb01, colour: str) -> tuple[float, float]:
    """(luminance ratio, chromaticity distance) of an sRGB colour in [0,1] against a world colour: the fidelity
    bench's goal-2 measures (engine/export/fidelity.py ``albedo_error``)."""
    import numpy as np

    from engine.export.fidelity import albedo_error, srgb_to_linear
    return albedo_error(srgb_to_linear(np.asarray(srgb01, dtype=np.float64)), colour)


VAE_PAIRS = (("cube", "red"), ("torus", "blue"), ("cone", "green"), ("cube", "green"), ("cone", "red"))


@torch.no_grad()
def vae_colour(pipe, pairs=VAE_PAIRS, gain: float = 0.15) -> list[dict]:
    """``vae-colour`` (module docstring): per (shape, colour), the relative latent change |E(x') - E(x)| / |E(x)|
    of the true object's 12 views when its albedo is scaled by 1 -/+ ``gain``, and the mean of the fully covered
    foreground pixels after a round trip D(E(x)) against x's (sRGB 0-255). Prints and returns the rows."""
    cams = _views(12)
    print(f"| object | latent change x{1 - gain:g} | x{1 + gain:g} | round trip foreground | input foreground |")
    print("|---|---|---|---|---|")
    rows = []
    for shape, colour in pairs:
        render = shapes.render_shape(shape, cams)
        albedo = torch.tensor(shapes.COLOURS[colour], dtype=torch.float32) / 255.0
        x = _albedo_image(render, albedo)
        z = _latent(pipe, x)
        change = [float((_latent(pipe, _albedo_image(render, (albedo * k).clamp(0, 1))) - z).norm() / z.norm())
                  for k in (1 - gain, 1 + gain)]
        back = ((pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
        full = (render.coverage[:, None] > 0.99).float()
        mean = [tuple(float(v) for v in (img * full).sum((0, 2, 3)) / full.sum() * 255) for img in (back, x)]
        rows.append({"shape": shape, "colour": colour, "latent_change": change, "round_trip": mean[0],
                     "input": mean[1]})
        print(f"| a {colour} {shape} | {change[0]:.4f} | {change[1]:.4f} | {tuple(round(v) for v in mean[0])} | "
              f"{tuple(round(v) for v in mean[1])} |", flush=True)
    return rows


def colour_sds(pipe, shape: str, colours: list[str], start: tuple[float, float, float], cfg: float, steps: int,
               batch: int = 4, t_range: tuple[int, int] = (20, 980), objective: str = "sds"
               ) -> dict[str, tuple[float, float, float]]:
    """``colour-sds`` (module docstring): prints one row per colour and returns each colour's final albedo (sRGB in
    [0,1])."""
    for p in [*pipe.unet.parameters(), *pipe.vae.parameters(), *pipe.text_encoder.parameters()]:
        p.requires_grad_(False)
    abar = pipe.scheduler.alphas_cumprod
    render = shapes.render_shape(shape, _views(12))
    emb_u = _embed(pipe, [""])
    print(f"| prompt | from | {' | '.join(f'step {s}' for s in range(0, steps + 1, 100))} | true | luminance | "
          "chromaticity |")
    print(f"|---|---|{'---|' * (steps // 100 + 1)}---|---|---|")
    final = {}
    for colour in colours:
        emb_y = _embed(pipe, [f"a {colour} {shape}"])
        g = torch.Generator().manual_seed(0)
        logit = torch.logit(torch.tensor(start)).requires_grad_(True)
        opt = torch.optim.Adam([logit], lr=0.02)
        seen = []
        for step in range(steps + 1):
            if step % 100 == 0:
                seen.append(str(tuple(round(float(v) * 255) for v in torch.sigmoid(logit.detach()))))
            if step == steps:
                break
            v = torch.randint(0, 12, (batch,), generator=g)
            cov, sh = render.coverage[v][:, None], render.shaded[v][:, None]
            z = _latent(pipe, sh * torch.sigmoid(logit)[None, :, None, None] + (1 - cov))
            t = torch.randint(t_range[0], t_range[1] + 1, (batch,), generator=g)
            n = torch.randn(z.shape, generator=g)
            a = abar[t][:, None, None, None]
            zt = a.sqrt() * z + (1 - a).sqrt() * n
            if objective == "elbo":
                loss = (pipe.unet(zt, t, emb_y.expand(batch, -1, -1)).sample - n).square().sum() / batch
            else:
                with torch.no_grad():
                    e = pipe.unet(torch.cat([zt, zt]), torch.cat([t, t]),
                                  torch.cat([emb_u.expand(batch, -1, -1), emb_y.expand(batch, -1, -1)])).sample
                    eu, ey = e.chunk(2)
                    grad = (1 - a) * (eu + cfg * (ey - eu) - n)
                loss = (grad * z).sum() / batch
            opt.zero_grad()
            loss.backward()
            opt.step()
        final[colour] = tuple(float(v) for v in torch.sigmoid(logit.detach()))
        lum, chroma = colour_error(final[colour], colour)
        print(f"| a {colour} {shape} | {tuple(round(v * 255) for v in start)} | {' | '.join(seen)} | "
              f"{tuple(shapes.COLOURS[colour])} | {lum:.3f} | {chroma:.3f} |", flush=True)
    return final


def _key_lit_scene(v: torch.Tensor, f: torch.Tensor, colour: str):
    """The mesh (v [V,3], f [F,3]) as the engine's mesh scene with the world's ``colour`` as its albedo everywhere,
    rendering as it trains under ``light="shapes"`` (the world's key light, antialiased silhouettes); move it by
    assigning ``scene.vertices`` (differentiable)."""
    from renderers import pbr
    from renderers.mesh import Mesh, MeshConfig

    scene = Mesh.from_arrays(MeshConfig(light="shapes"), v, f, None, torch.Generator().manual_seed(0))
    lin = pbr.srgb_to_linear(torch.tensor(shapes.COLOURS[colour], dtype=torch.float32) / 255.0)
    with torch.no_grad():  # the material field's last layer: no weights, the albedo's logit as bias
        scene.mlp[2].weight.zero_()
        scene.mlp[2].bias[:3] = torch.logit(lin)
    scene.requires_grad_(False)
    return scene.train()


def _render(scene, cams) -> torch.Tensor:
    """[C,3,H,W] in [0,1] on white."""
    return scene.render(cams, torch.ones(len(cams), cams.height, cams.width, 3)).rgb.permute(0, 3, 1, 2)


def _coded(emb: torch.Tensor, cams) -> torch.Tensor:
    """The prompt embeddings with each view's camera code added (a camera-conditioned prior's condition,
    guidance/prompts.py ``PromptConfig.camera_code``)."""
    from foundation.cameras import cameras_code
    return emb + cameras_code(cams, emb.shape[-1])[:, None, :]


def size_profile(pipe, shape: str, colour: str, mesh: str | None, scales: list[float],
                 camera_code: bool = False) -> list[float]:
    """The denoising error (``_denoising_error``) of the key-lit shape (or ``mesh``) at each scale; printed as a row.
    ``camera_code``: the condition carries each view's camera code."""
    v, f = _probe_mesh(shape, mesh)
    scene, cams = _key_lit_scene(v, f, colour), _views(12)
    emb = _embed(pipe, [f"a {colour} {shape}"] * 12)
    if camera_code:
        emb = _coded(emb, cams)
    row = []
    with torch.no_grad():
        for k in scales:
            scene.vertices = v * k
            row.append(_denoising_error(pipe, _latent(pipe, _render(scene, cams)), emb))
    cells = " | ".join(f"x{k:g} {e:.4f}" for k, e in zip(scales, row, strict=True))
    print(f"| {mesh or 'the true ' + shape} | {cells} | x{scales[min(range(len(row)), key=row.__getitem__)]:g} |",
          flush=True)
    return row


def yaw_profile(pipe, shape: str, colour: str, mesh: str | None, yaws: list[float]) -> list[tuple[float, float]]:
    """Does the prior know which way the shape faces? The denoising error of the key-lit shape (or ``mesh``) turned
    about the vertical by each yaw (degrees), 12 views at elevation 20, with the plain prompt and with each view's
    camera code added (meaningful for a prior trained with ``--camera-code``); one row per yaw, lower is likelier.
    Returns the (plain, coded) errors per yaw."""
    v, f = _probe_mesh(shape, mesh)
    scene, cams = _key_lit_scene(v, f, colour), _views(12)
    emb = _embed(pipe, [f"a {colour} {shape}"] * 12)
    print("| yaw | plain prompt | prompt + camera code |\n|---|---|---|")
    rows = []
    with torch.no_grad():
        for yaw in yaws:
            c, s_ = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
            rot = torch.tensor([[c, 0.0, s_], [0.0, 1.0, 0.0], [-s_, 0.0, c]])
            scene.vertices = v @ rot.T
            z = _latent(pipe, _render(scene, cams))
            plain, coded = _denoising_error(pipe, z, emb), _denoising_error(pipe, z, _coded(emb, cams))
            print(f"| {yaw:g} | {plain:.4f} | {coded:.4f} |", flush=True)
            rows.append((plain, coded))
    return rows


def _probe_mesh(shape: str, mesh: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(vertices [V,3] float32, faces [F,3] long) of ``mesh`` (any file trimesh reads) or of the true primitive."""
    if mesh:
        import trimesh

        m = trimesh.load(mesh, force="mesh")
        return torch.tensor(m.vertices, dtype=torch.float32), torch.tensor(m.faces, dtype=torch.long)
    from renderers.reference import primitive_mesh

    v, f = primitive_mesh(shape)
    return v.float(), f.long()


def size(pipe, shape: str, colour: str, mesh: str | None, scale: float, cfg: float, steps: int, batch: int = 2,
         t_range: tuple[int, int] = (20, 980), objective: str = "elbo", weighting: str = "sds") -> list[float]:
    """Adam (lr 0.01) on log(scale) of the shape under ``objective`` with w(t) ``weighting`` ("sds": 1 - abar_t, as
    guidance/elbo.py's default; "uniform": DDPM's simple loss, what ``framing`` measures); prints and returns the
    scale every 50 steps."""
    from foundation.cameras import orbit_cameras

    for p in [*pipe.unet.parameters(), *pipe.vae.parameters(), *pipe.text_encoder.parameters()]:
        p.requires_grad_(False)
    v0, f = _probe_mesh(shape, mesh)
    scene = _key_lit_scene(v0, f, colour)
    abar = pipe.scheduler.alphas_cumprod
    emb_y, emb_u = _embed(pipe, [f"a {colour} {shape}"]), _embed(pipe, [""])
    g = torch.Generator().manual_seed(0)
    log_s = torch.tensor(math.log(scale), requires_grad=True)
    opt = torch.optim.Adam([log_s], lr=0.01)
    seen = []
    for step in range(steps + 1):
        if step % 50 == 0:
            seen.append(float(log_s.detach().exp()))
            print(f"step {step}: scale {seen[-1]:.3f}", flush=True)
        if step == steps:
            break
        az, el = torch.rand(batch, generator=g) * 360 - 180, torch.rand(batch, generator=g) * 40
        scene.vertices = v0 * log_s.exp()
        z = _latent(pipe, _render(scene, orbit_cameras(az, el, 2.5, 40.0, 64)))
        t = torch.randint(t_range[0], t_range[1] + 1, (batch,), generator=g)
        n = torch.randn(z.shape, generator=g)
        a = abar[t][:, None, None, None]
        zt = a.sqrt() * z + (1 - a).sqrt() * n
        w = 1 - a if weighting == "sds" else torch.ones_like(a)
        if objective == "elbo":  # guidance/elbo.py's loss
            loss = 0.5 * (w * (pipe.unet(zt, t, emb_y.expand(batch, -1, -1)).sample - n).square()).sum() / batch
        else:
            with torch.no_grad():
                emb = torch.cat([emb_u.expand(batch, -1, -1), emb_y.expand(batch, -1, -1)])
                eu, ey = pipe.unet(torch.cat([zt, zt]), torch.cat([t, t]), emb).sample.chunk(2)
                grad = w * (eu + cfg * (ey - eu) - n)
            loss = (grad * z).sum() / batch
        opt.zero_grad()
        loss.backward()
        opt.step()
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe", choices=["framing", "brightness", "run-likelihood", "run-colour", "encoder-fit", "yaw",
                                      "colour-sds", "size", "vae-colour"])
    ap.add_argument("--runs", nargs="+", default=[], help="run-likelihood, run-colour: run folders")
    ap.add_argument("--prior", default=DEFAULT_PRIOR)
    ap.add_argument("--distances", type=float, nargs="+", default=[2.0, 2.2, 2.3, 2.4, 2.5, 2.6, 2.7, 2.8])
    ap.add_argument("--colours", nargs="+", default=None)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.7, 0.85, 1.0, 1.15, 1.3],
                    help="brightness: albedo scales; run-colour: foreground gains")
    ap.add_argument("--shape", default="cube", choices=list(shapes.SHAPES))
    ap.add_argument("--start", type=float, nargs=3, default=[0.5, 0.5, 0.5])
    ap.add_argument("--mesh", default=None, help="size: a mesh file to scale instead of the true primitive")
    ap.add_argument("--scale", type=float, default=1.25, help="size: the starting scale")
    ap.add_argument("--weighting", choices=["sds", "uniform"], default="sds", help="size: w(t) of the loss")
    ap.add_argument("--profile", type=float, nargs="+", default=None,
                    help="size: print the likelihood proxy at these scales instead of descending")
    ap.add_argument("--yaws", type=float, nargs="+", default=[0.0, 10.0, 20.0, 30.0, 45.0],
                    help="yaw: the turns of the shape about the vertical, degrees")
    ap.add_argument("--camera-code", action="store_true",
                    help="size --profile: add each view's camera code to the prompt (a --camera-code prior)")
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--t-range", type=int, nargs=2, default=[20, 980], help="colour-sds: timesteps drawn from here")
    ap.add_argument("--objective", choices=["sds", "elbo"], default="sds",
                    help="colour-sds: 'sds' (no UNet Jacobian, CFG) or 'elbo' (the conditional denoising error "
                         "itself, differentiated through the UNet: the likelihood the brightness probe measures)")
    args = ap.parse_args()
    if not 0 <= args.t_range[0] <= args.t_range[1] <= 999:
        ap.error(f"--t-range needs 0 <= low <= high <= 999, got {args.t_range}")
    for c in args.colours or []:
        if c not in shapes.COLOURS:
            ap.error(f"unknown colour {c!r}; the shapes world has {', '.join(shapes.COLOURS)}")
    if not 0.0 < min(args.start) <= max(args.start) < 1.0:
        ap.error("--start needs three albedo values strictly between 0 and 1")
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(args.prior, torch_dtype=torch.float32, safety_checker=None)
    print(f"prior {args.prior}; machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.probe == "framing":
        framing(pipe, args.distances)
    elif args.probe == "brightness":
        brightness(pipe, args.scales)
    elif args.probe == "run-likelihood":
        if not args.runs:
            ap.error("run-likelihood needs --runs RUN [RUN ...]")
        run_likelihood(pipe, args.runs)
    elif args.probe == "run-colour":
        if not args.runs:
            ap.error("run-colour needs --runs RUN [RUN ...]")
        run_colour(pipe, args.runs, args.scales)
    elif args.probe == "encoder-fit":
        encoder_fit(pipe, args.colours or ["green", "red", "blue", "yellow"],
                    [(0.5, 0.5, 0.5), (0.8, 0.8, 0.8), (0.25, 0.25, 0.25)], args.steps)
    elif args.probe == "size":
        colour = (args.colours or [COLOUR_OF[args.shape]])[0]
        if args.profile:
            size_profile(pipe, args.shape, colour, args.mesh, args.profile, args.camera_code)
        else:
            size(pipe, args.shape, colour, args.mesh, args.scale, args.cfg, args.steps, t_range=tuple(args.t_range),
                 objective=args.objective, weighting=args.weighting)
    elif args.probe == "vae-colour":
        vae_colour(pipe)
    elif args.probe == "yaw":
        yaw_profile(pipe, args.shape, (args.colours or [COLOUR_OF[args.shape]])[0], args.mesh, args.yaws)
    else:
        colour_sds(pipe, args.shape, args.colours or ["green", "red"], tuple(args.start), args.cfg, args.steps,
                   t_range=tuple(args.t_range), objective=args.objective)


if __name__ == "__main__":
    main()
