"""Issue #13, real-GPU readiness: what a CPU can show of the bugs that would crash, silently go wrong or crawl on a
CUDA machine (VSD's LoRA gradient, devices, presets, host syncs, ASD batching, checkpointed prior RNG, doctor)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from checkpoint_tools import flat_tensors, newest_state  # noqa: E402
from tiny_models import tiny_sd_path  # noqa: E402

from foundation.cameras import orbit_cameras  # noqa: E402
from guidance.priors import PriorConfig, build_prior  # noqa: E402
from guidance.prompts import PromptSet  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    return tiny_sd_path(tmp_path_factory)


@pytest.fixture
def sd(tiny_sd, tmp_path):
    """A fresh prior per test (VSD adds an adapter to its UNet)."""
    return build_prior(PriorConfig(name=tiny_sd, cache_dir=str(tmp_path / "cache")))


# ---- item 1 + 8: VSD's LoRA trains through the diffusers prior, toggled on its own layers ------------------------
def test_vsd_lora_weights_move_and_receive_gradients(sd):
    from guidance.vsd import VSDConfig

    vsd = VSDConfig(particle_lr=1e-2).build(sd, torch.Generator().manual_seed(0), 10)
    particle = vsd.particle
    lora = particle.lora
    assert lora and all(p.requires_grad for p in lora)
    before = [p.detach().clone() for p in lora]
    opt = torch.optim.Adam(vsd.param_groups()["guidance"]["params"], lr=1e-2)
    prompts = PromptSet(sd, "a red cube")
    cams = orbit_cameras(torch.tensor([0.0, 90.0]), 20.0, 2.5, 40.0, 16)
    for step in range(3):
        rgb = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(step), requires_grad=True)
        opt.zero_grad(set_to_none=True)
        vsd(rgb, prompts, cams, step).loss.backward()
        with_grad = sum(p.grad is not None for p in lora)
        assert with_grad == len(lora), f"{with_grad} of {len(lora)} LoRA tensors got a gradient"
        if step:  # at step 0 B = 0, so only B's gradient is non-zero; from then on A's is too
            assert all(bool(p.grad.abs().sum() > 0) for p in lora)
        opt.step()
    assert all(p.requires_grad for p in lora)  # the toggle never touches requires_grad
    moved = [not torch.equal(a, p.detach()) for a, p in zip(before, lora)]
    assert all(moved)
    lora_b = [p for n, p in sd.unet.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.detach().abs().sum()) > 0 for p in lora_b)  # B starts at 0 (gaussian init) and moves
    # the adapter is off outside the particle score's own calls: the prior's predictions stay pretrained
    assert all(m.disable_adapters for m in particle.layers)


def test_vsd_toggles_only_the_cached_lora_layers(sd, monkeypatch):
    from guidance.vsd import VSDConfig

    vsd = VSDConfig().build(sd, torch.Generator().manual_seed(0), 10)
    n_modules = sum(1 for _ in sd.unet.modules())
    assert 0 < len(vsd.particle.layers) < n_modules
    calls = []
    monkeypatch.setattr(type(sd.unet), "modules", lambda self: calls.append(1) or iter(()))
    x = torch.randn(1, 4, 8, 8)
    out = vsd.particle.raw(x, torch.tensor([500]), sd.embed(["a red cube"]), torch.zeros(1, 16))
    assert out.shape == x.shape and not calls  # no walk over the UNet's modules per call
    assert all(m.disable_adapters for m in vsd.particle.layers)


# ---- item 3: Cond.lerp keeps the embeddings' device ---------------------------------------------------------------
def test_cond_lerp_moves_the_weight_to_the_embeddings_device():
    from guidance.priors.base import Cond

    a = Cond({"prompt_embeds": torch.zeros(2, 3, 4, device="meta", dtype=torch.float16)})
    b = Cond({"prompt_embeds": torch.ones(2, 3, 4, device="meta", dtype=torch.float16)})
    out = a.lerp(b, torch.tensor([0.25, 0.5]))  # a CPU float32 weight, as the prompt schedule makes it
    assert out.tensors["prompt_embeds"].device.type == "meta"
    assert out.tensors["prompt_embeds"].dtype == torch.float16
    cpu = Cond({"e": torch.zeros(2, 2)}).lerp(Cond({"e": torch.ones(2, 2)}), torch.tensor([0.25, 0.5]))
    torch.testing.assert_close(cpu.tensors["e"], torch.tensor([[0.25, 0.25], [0.5, 0.5]]))


# ---- item 6 + 12: `engine texture` with every objective, device auto ------------------------------------------------
@pytest.mark.parametrize("name", ["sds", "vsd", "ism", "tsm", "asd", "csm", "csd"])
def test_texture_works_with_every_objective(name, tmp_path):
    import json

    import trimesh

    from engine.cli import main

    src = str(tmp_path / "cube.obj")
    trimesh.creation.box(extents=(1.0, 1.0, 1.0)).export(src)
    out = str(tmp_path / "out")
    rc = main(["texture", src, "a red cube", "--guidance", name, "--steps", "2", "--resolution", "16",
               "--texture-resolution", "8", "--envs", "studio", "--out", out])
    assert rc == 0
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["steps"] == 2 and report["final_loss"] is not None
    assert os.path.isfile(os.path.join(out, "textured.glb"))
    # through the generate pipeline (issue #14): a run folder of the texture preset, completed by engine.train
    assert json.load(open(os.path.join(out, "status.json")))["state"] == "complete"
    assert "guidance" in open(os.path.join(out, "config.yaml")).read()


def test_texture_guidance_config_and_device_default():
    from engine.cli_texture import parse
    from engine.texture import TextureConfig, TextureError, guidance_config

    assert parse(["m.obj", "a red cube"])[0].device == "auto"
    assert TextureConfig(mesh="m.obj", prompt="x").device == "auto"
    sds = guidance_config("sds", 0.0, shapes=True)
    assert sds.guidance_scale == 1.0 and sds.cfg_convention == "standard"
    assert guidance_config("vsd", 0.0, shapes=False).guidance_scale == 7.5  # the objective's own default
    assert guidance_config("ism", 5.0, shapes=False).guidance_scale == 5.0
    guidance_config("csd", 0.0, shapes=True)  # no CFG scale, no convention: its own defaults
    with pytest.raises(TextureError, match="does not apply to csd"):
        guidance_config("csd", 7.5, shapes=False)


# ---- item 9: the PBR LUT is uploaded once per device ----------------------------------------------------------------
def test_brdf_lut_is_uploaded_once_per_device():
    from renderers import pbr

    assert pbr.brdf_lut(device="meta") is pbr.brdf_lut(device="meta")
    assert pbr.brdf_lut() is pbr.brdf_lut(device=torch.device("cpu"))
    assert pbr.brdf_lut(device="meta").device.type == "meta"


# ---- item 13: the prior's generator is checkpointed, so resume == uninterrupted ------------------------------------
def test_resume_with_a_diffusers_prior_reproduces_the_uninterrupted_run(tiny_sd, tmp_path):
    from engine.cli import build_generate_config
    from engine.train import Hooks, generate

    def cfg(name):
        c, _ = build_generate_config(["a red cube", "--prior", tiny_sd, "--steps", "3", "--resolution", "16",
                                      "--out", str(tmp_path / name), "--train.video-frames", "0",
                                      "--train.preview-every", "0", "--train.checkpoint-every", "0",
                                      "--train.no-progress", "--train.no-export", "--prior.cache-dir",
                                      str(tmp_path / "cache"), "--device", "cpu"])
        return c

    straight = generate(cfg("straight"))
    stopped = generate(cfg("stopped"), hooks=Hooks(should_stop=lambda: True))
    state = newest_state(stopped)
    assert state["step"] == 1 and state["prior_rng"].dtype == torch.uint8
    generate(None, resume=stopped)
    a, b = newest_state(straight), newest_state(stopped)
    assert a["step"] == b["step"] == 3
    assert torch.equal(a["prior_rng"], b["prior_rng"])
    fa, fb = flat_tensors(a["scene"]), flat_tensors(b["scene"])
    assert fa.keys() == fb.keys() and fa
    for k in fa:
        assert torch.equal(fa[k], fb[k]), k


# ---- item 2: the diffusion preset depends on the prior family, the objective and the device ------------------------
@pytest.fixture(scope="session")
def tiny_if(tmp_path_factory):
    from tiny_models import tiny_if_path
    return tiny_if_path(tmp_path_factory)


def test_diffusion_preset_by_family_objective_and_device(tiny_sd, tiny_if, capsys):
    from engine.cli import build_generate_config
    from guidance.priors import prior_family

    assert (prior_family(tiny_sd), prior_family(tiny_if), prior_family("shapes-exemplar"), prior_family("shapes")) \
        == ("sd", "if", None, "sd")

    cfg, _ = build_generate_config(["a red cube", "--prior", tiny_if, "--device", "cuda"])
    assert cfg.guidance.guidance_scale == 20.0 and cfg.resolution == 64  # dreamfusion-if: CFG 20, IF renders at 64
    assert "if prior" in capsys.readouterr().err

    cfg, _ = build_generate_config(["a red cube", "--prior", tiny_sd, "--guidance", "vsd", "--device", "cuda"])
    assert cfg.resolution == 512 and cfg.guidance.guidance_scale == 7.5
    assert (cfg.renderer.levels, cfg.renderer.max_resolution, cfg.renderer.mlp_width) == (16, 2048, 64)
    err = capsys.readouterr().err
    assert "sd prior, vsd, CFG 7.5" in err and "renders 512 px" in err and "N_max 2048" in err

    cfg, _ = build_generate_config(["a red cube", "--prior", tiny_sd, "--guidance", "ism", "--device=cuda",
                                    "--resolution", "128", "--renderer.levels", "8"])
    assert cfg.resolution == 128 and cfg.renderer.levels == 8  # the user's overrides win

    cfg, _ = build_generate_config(["a red cube", "--prior", tiny_sd, "--guidance", "vsd", "--device", "cpu"])
    assert cfg.resolution == 64 and cfg.renderer.levels == 4  # CPU sizes
    assert "CPU sizes" in capsys.readouterr().err

    cfg, _ = build_generate_config(["a red cube", "--prior", tiny_sd, "--device", "cuda"])
    assert cfg.guidance.guidance_scale == 100.0 and cfg.resolution == 64  # dreamfusion-sd
    assert "sd prior, sds, CFG 100" in capsys.readouterr().err

    # CSD's weighting follows its reference configs by family: 1 - abar_t for SD (csd-sd), uniform for IF (csd-if)
    cfg, _ = build_generate_config(["a red cube", "--prior", tiny_sd, "--guidance", "csd"])
    assert cfg.guidance.weighting == "sds" and "csd-sd" in capsys.readouterr().err
    cfg, _ = build_generate_config(["a red cube", "--prior", tiny_if, "--guidance", "csd"])
    assert cfg.guidance.weighting == "uniform"
    cfg, _ = build_generate_config(["a red cube", "--prior", tiny_sd, "--guidance", "csd", "--guidance.weighting",
                                    "uniform"])
    assert cfg.guidance.weighting == "uniform"  # the user's override wins
    capsys.readouterr()

    cfg, _ = build_generate_config(["a red cube", "--prior", "shapes-exemplar"])  # the exemplar preset is untouched
    assert cfg.resolution == 64 and cfg.guidance.guidance_scale == 1.0 and not capsys.readouterr().err

    # the learned shapes prior was trained at 64 px: its folder's settings win over the GPU sizes
    cfg, _ = build_generate_config(["a red cube", "--guidance", "vsd", "--device", "cuda"])
    assert cfg.resolution == 64 and cfg.guidance.guidance_scale == 7.5
    err = capsys.readouterr().err
    assert "renders 512 px" in err and "then the settings of the prior shapes" in err and "resolution=64" in err


# ---- item 4 + 5: backends follow the device; each kernel library is probed on its own -----------------------------
def test_a_scene_on_the_cpu_gets_the_torch_backend_even_on_a_gpu_machine(monkeypatch):
    import warnings

    from renderers import kernels
    from renderers.nerf import NeRFConfig

    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kernels, "_cuda_unavailable_reason", lambda library="nerfacc": None)  # kernels all build
    assert kernels.resolve_backend("auto", device="cuda") == "cuda"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.resolve_backend("auto", device="cpu") == "torch"
        assert kernels.resolve_backend("cuda", device=torch.device("cpu")) == "torch"
    # what mesh init-from does with a NeRF run: rebuild it on the CPU (its config may even say cuda)
    nerf = NeRFConfig(backend="cuda", levels=2, max_resolution=16, occupancy_resolution=8).build(
        torch.Generator().manual_seed(0), "cpu")
    assert nerf.cfg.backend == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        kernels.resolve_backend("vulkan", device="cpu")


def test_gaussians_cuda_path_depends_on_gsplat_only(monkeypatch):
    from renderers import kernels
    from renderers.gaussians import resolve_splat_backend
    from renderers.kernels import probe as probe_mod
    from renderers.kernels import splat_cuda

    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked = []

    def fake_probe(library):
        asked.append(library)
        return probe_mod.Probe(library, library == "gsplat", 0.0, "" if library == "gsplat" else "nvcc failed")

    monkeypatch.setattr(probe_mod, "probe", fake_probe)
    kernels._cuda_unavailable_reason.cache_clear()
    splat_cuda.available.cache_clear()
    try:
        assert resolve_splat_backend("auto") == "cuda"  # nerfacc's failed build does not matter to the Gaussians
        assert "nerfacc" not in asked
        with pytest.warns(UserWarning, match="nerfacc's CUDA kernels are unusable: nvcc failed"):
            assert kernels.resolve_backend("auto", device="cuda") == "torch"
        with pytest.raises(RuntimeError, match="nvcc failed"):
            kernels.resolve_backend("cuda", device="cuda")
    finally:
        kernels._cuda_unavailable_reason.cache_clear()
        splat_cuda.available.cache_clear()
        kernels._warn_fallback.cache_clear()


def test_probe_child_success_failure_and_timeout():
    from renderers.kernels.probe import run_child

    ok, _, msg = run_child("x = 1", timeout=60)
    assert ok and msg == ""
    ok, _, msg = run_child("raise RuntimeError('the extension failed to build')", timeout=60)
    assert not ok and msg == "RuntimeError: the extension failed to build"
    ok, _, msg = run_child("import time; time.sleep(60)", timeout=1)
    assert not ok and "did not finish within 1 s" in msg


def test_probe_timeout_kills_the_whole_build(tmp_path):
    """A timed-out probe takes its build tools (ninja, nvcc: here a `sleep`) down with it."""
    import time

    from renderers.kernels.probe import run_child

    pid_file = tmp_path / "pid"
    code = (f"import subprocess, time; p = subprocess.Popen(['sleep', '60'], stdout=subprocess.DEVNULL, "
            f"stderr=subprocess.DEVNULL); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    ok, _, _ = run_child(code, timeout=5)
    assert not ok and pid_file.exists()
    pid = int(pid_file.read_text())
    for _ in range(100):  # the orphan is reaped by init shortly after the kill
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split()[2] == "Z":  # killed, waiting to be reaped
                break
        time.sleep(0.05)
    else:
        pytest.fail("the probe's grandchild survived the timeout")


def test_stale_build_locks_are_cleared(tmp_path):
    from renderers.kernels.probe import clear_stale_lock

    killed = tmp_path / "nerfacc_cuda"
    killed.mkdir()
    (killed / "lock").write_text("")
    (killed / "build.ninja").write_text("")
    now = os.path.getmtime(killed / "lock")
    assert clear_stale_lock(str(killed), max_age_s=600, now=now + 10) is None  # a young lock: a build in progress
    assert killed.exists()
    msg = clear_stale_lock(str(killed), max_age_s=600, now=now + 3600)
    assert "killed build" in msg and not killed.exists()
    built = tmp_path / "gsplat_cuda"
    built.mkdir()
    (built / "lock").write_text("")
    (built / "gsplat_cuda.so").write_text("")
    assert "stale build lock" in clear_stale_lock(str(built), max_age_s=0.0)
    assert not (built / "lock").exists() and (built / "gsplat_cuda.so").exists()
    assert clear_stale_lock(str(tmp_path / "missing")) is None


def test_probe_on_a_cpu_machine_builds_nothing(monkeypatch):
    from renderers.kernels import probe as probe_mod

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(probe_mod, "run_child", lambda *a, **k: pytest.fail("no child process without a GPU"))
    probe_mod.probe.cache_clear()
    try:
        for lib in probe_mod.LIBRARIES:
            p = probe_mod.probe(lib)
            assert not p.ok and "no CUDA GPU" in p.message
        with pytest.raises(ValueError, match="unknown kernel library"):
            probe_mod.probe("tinycudann")
    finally:
        probe_mod.probe.cache_clear()


def test_engine_doctor_reports_no_gpu_on_cpu(capsys):
    import json

    from engine.cli import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CPU report cannot be shown")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "GPU: none" in out and f"torch {torch.__version__}" in out
    assert "kernels nerfacc: unavailable" in out and "kernels gsplat: unavailable" in out
    assert "backends: nerf torch, gaussians torch, mesh torch" in out
    assert main(["doctor", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["gpu"] is None and r["torch"] == torch.__version__ and set(r["kernels"]) == {"nerfacc", "gsplat",
                                                                                           "nvdiffrast"}
    assert all(not k["ok"] for k in r["kernels"].values())


# ---- item 9: host-device syncs ---------------------------------------------------------------------------------------
class _MetaToyPrior:
    """conftest's ToyPrior on the meta device: any host read of its tensors (.item(), bool(), .cpu()) raises, so an
    objective that runs on it end to end makes no host-device sync."""

    latent = True
    steps_offset = 1
    device = torch.device("meta")

    def __init__(self):
        from guidance.priors.base import scaled_linear_alphas_cumprod
        self.alphas_cumprod = scaled_linear_alphas_cumprod().to("meta")
        self.mix = torch.ones(4, 3, device="meta")
        self.calls = 0

    def encode(self, rgb):
        import torch.nn.functional as F
        x = F.adaptive_avg_pool2d(rgb.permute(0, 3, 1, 2) * 2 - 1, 8)
        return torch.einsum("oc,bchw->bohw", self.mix, x)

    def embed(self, prompts):
        from guidance.priors.base import Cond
        return Cond({"c": torch.ones(len(prompts), 4, device="meta")})

    def predict_eps(self, x_t, t, cond, cams=None):
        self.calls += 1
        return torch.tanh(x_t * (1 + t.to(x_t.dtype) / 1000).view(-1, 1, 1, 1)) + cond.tensors["c"][:, :, None, None]


@pytest.mark.parametrize("name", ["sds", "asd", "csd"])
def test_objectives_make_no_host_read_and_log_tensors(name):
    from guidance import GUIDANCES

    prior = _MetaToyPrior()
    prompts = PromptSet(prior, "a red cube")
    cams = orbit_cameras(torch.tensor([0.0, 100.0]), torch.tensor([20.0, 70.0]), 2.5, 40.0, 16).to("meta")
    obj = GUIDANCES[name]().build(prior, torch.Generator().manual_seed(0), 10)
    out = obj(torch.rand(2, 16, 16, 3, device="meta", requires_grad=True), prompts, cams, 3)
    assert out.loss.device.type == "meta"
    assert all(isinstance(v, torch.Tensor) or isinstance(v, float) for v in out.logs.values())
    out.loss.backward()  # and no read in the backward pass either


def test_asd_makes_one_batched_prior_call(toy_prior, cams4):
    from guidance.asd import ASDConfig

    prompts = PromptSet(toy_prior, "a red cube")
    toy_prior.calls = 0
    ASDConfig().build(toy_prior, torch.Generator().manual_seed(0), 10)(torch.rand(4, 16, 16, 3), prompts, cams4, 0)
    assert toy_prior.calls == 1  # the CFG pair at t and the t+ branch in one UNet batch (ScaleDreamer)


def test_view_prompts_are_chosen_on_the_device_and_match_the_scalar_rule(toy_prior):
    from foundation.cameras import view_labels
    from guidance.prompts import VIEWS, PromptConfig, view_index

    az = torch.tensor([-179.0, -135.5, -90.0, -44.9, 0.0, 30.0, 45.0, 89.9, 90.0, 134.0, 136.0, 180.0, 10.0])
    el = torch.tensor([0.0] * 12 + [75.0])
    assert [VIEWS[i] for i in view_index(az, el).tolist()] == view_labels(az, el)
    cams = orbit_cameras(az, el, 2.5, 40.0, 8)
    discrete = PromptSet(toy_prior, "a red cube")
    got = discrete.cond(cams).tensors["c"]
    want = torch.cat([discrete.views[v].tensors["c"] for v in view_labels(az, el)])
    assert torch.equal(got, want)
    inter = PromptSet(toy_prior, "a red cube", cfg=PromptConfig(mode="interpolated"))
    got = inter.cond(cams).tensors["c"]
    want = torch.cat([inter._interpolated(float(a)).tensors["c"] for a in az])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    meta = _MetaToyPrior()
    for mode in ("discrete", "interpolated"):  # no host read of the cameras
        ps = PromptSet(meta, "a red cube", cfg=PromptConfig(mode=mode))
        assert ps.cond(cams.to("meta")).tensors["c"].shape == (len(az), 4)


def test_the_loop_reads_logs_only_on_logged_steps(tmp_path, monkeypatch):
    import json

    import engine.train as train
    from engine.cli import build_generate_config

    reads = []
    real = train._host_logs
    monkeypatch.setattr(train, "_host_logs", lambda logs: reads.append(sorted(logs)) or real(logs))
    cfg, _ = build_generate_config(["a red cube", "--steps", "6", "--resolution", "16", "--out", str(tmp_path / "r"),
                                    "--train.log-every", "3", "--train.video-frames", "0", "--train.preview-every",
                                    "0", "--train.eval-views", "0", "--train.no-progress", "--train.no-export"])
    train.generate(cfg)
    assert len(reads) == 2 and "loss" in reads[0] and "grad_norm" in reads[0]  # steps 3 and 6, not every step
    rows = [json.loads(line) for line in open(tmp_path / "r" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [3, 6] and all(isinstance(r["loss"], float) for r in rows)


def test_deferred_nan_checks_stop_the_run_with_the_last_good_checkpoint(tmp_path):
    from engine.outputs import read_status
    from engine.train import RunError, _FiniteWatch
    from guidance.priors.base import DeferredChecks

    class Prior(DeferredChecks):  # a prior that declares its deferred checks (guidance/priors/base.py)
        report = None

        def nonfinite_report(self):
            return self.report

    prior = Prior()
    watch = _FiniteWatch(torch.device("cpu"), str(tmp_path), str(tmp_path / "ckpts"), prior)
    watch.lazy = True  # as on a GPU: record without reading
    for step, v in enumerate([1.0, 2.0, float("nan"), 3.0, float("inf")]):
        watch.record(torch.tensor(v), step)
    with pytest.raises(RunError, match="the loss became nan at step 2"):
        watch.stop_if_bad()
    assert read_status(str(tmp_path))["state"] == "failed"
    ok = _FiniteWatch(torch.device("cpu"), str(tmp_path), str(tmp_path / "ckpts"), prior)
    ok.record(torch.tensor(1.0), 0)
    ok.stop_if_bad()  # finite: nothing happens
    prior.report = "the prior produced non-finite values (NaN/Inf) in the noise prediction"
    with pytest.raises(RunError, match="noise prediction; the run stopped"):
        ok.stop_if_bad()


def test_prior_nan_checks_are_deferred_device_flags(sd):
    from guidance.priors.base import PriorError

    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(PriorError, match="non-finite"):
        sd._finite("the noise prediction", x * float("nan"), "")  # a CPU prior checks at once
    sd.defer_checks = True  # as on a GPU
    assert sd._finite("the noise prediction", x, "") is x and sd.nonfinite_report() is None
    sd._finite("the noise prediction", x * float("nan"), "hint")
    sd._finite("the encoded latents", x, "")
    msg = sd.nonfinite_report()
    assert "the noise prediction" in msg and "hint" in msg
    assert sd.nonfinite_report() is None  # read once


# ---- item 11: memory -------------------------------------------------------------------------------------------------
def test_text_encoders_are_freed_once_the_prompts_are_embedded(tiny_sd, tmp_path):
    from engine.config import GenerateConfig
    from engine.train import _prepare

    cfg = GenerateConfig(prompt="a red cube")
    cfg.prior = PriorConfig(name=tiny_sd, cache_dir=str(tmp_path / "cache"))
    prior, prompts = _prepare(cfg, torch.device("cpu"))
    assert prior.text_encoder is None  # (the tokenizer, a few MB of Python, stays)
    assert prompts.plain.tensors["prompt_embeds"].shape[0] == 1
    again = prior.embed(["a blue torus"])  # a new prompt reloads them
    assert again.tensors["prompt_embeds"].shape[-1] == 32
    keep = build_prior(PriorConfig(name=tiny_sd, cache_dir=str(tmp_path / "c2"), text_encoder_offload="keep"))
    keep.embed(["a red cube"])
    keep.release_text_encoders()
    assert keep.text_encoder is not None  # an explicit "keep" is respected


def test_sdxl_vae_choices(tmp_path_factory, tiny_sd):
    from tiny_models import tiny_sdxl_path

    sdxl = tiny_sdxl_path(tmp_path_factory)
    own = build_prior(PriorConfig(name=sdxl, dtype="bfloat16"))
    assert own.vae.dtype == torch.float32 and own.unet.dtype == torch.bfloat16  # SDXL's VAE overflows in fp16
    bf16 = build_prior(PriorConfig(name=sdxl, dtype="bfloat16", vae_dtype="bfloat16"))
    assert bf16.vae.dtype == torch.bfloat16
    swapped = build_prior(PriorConfig(name=sdxl, dtype="bfloat16", vae=os.path.join(tiny_sd, "vae")))
    assert swapped.vae.dtype == torch.bfloat16  # a replacement (fp16-fix) VAE runs in the prior's dtype
    z = swapped.encode(torch.rand(1, 16, 16, 3))
    assert z.shape == (1, 4, 8, 8) and z.dtype == torch.float32
    from guidance.priors.base import PriorError
    with pytest.raises(PriorError, match="the VAE cannot be loaded"):
        build_prior(PriorConfig(name=sdxl, vae=str(tmp_path_factory.mktemp("empty"))))


def test_fp16_variant_weights_are_loaded_where_the_model_has_them(tmp_path):
    from diffusers import DiffusionPipeline
    from tiny_models import make_tiny_sd

    from guidance.priors.stable_diffusion import ModelSource

    full = make_tiny_sd(tmp_path / "full")
    half = str(tmp_path / "half")
    DiffusionPipeline.from_pretrained(full, torch_dtype=torch.float16).save_pretrained(half, variant="fp16")
    src = ModelSource.resolve(half)
    assert src.has_fp16_files("unet") is True and ModelSource.resolve(full).has_fp16_files("unet") is False
    prior = build_prior(PriorConfig(name=half, dtype="float16", cache_dir=str(tmp_path / "cache")))  # only fp16 files
    assert prior.unet.dtype == torch.float16 and prior.vae.dtype == torch.float16
    prior.embed(["a red cube"])
    from guidance.priors.base import PriorError
    with pytest.raises(PriorError, match="some files are missing"):  # without the variant: no weight files to load
        build_prior(PriorConfig(name=half, dtype="float16", fp16_variant=False))


# ---- item 7: a visual prompt's IP-Adapter must fit the prior, said before loading anything --------------------------
def test_visual_prompt_with_a_mismatched_ip_adapter_fails_before_loading(tiny_sd, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from engine.config import GenerateConfig
    from engine.train import RunError, _prepare
    from guidance.csm import CSMConfig
    from guidance.priors.visual_prompt import check_visual_prompt_prior, ip_adapter_width

    adapter = tmp_path / "ipa"
    (adapter / "models").mkdir(parents=True)
    save_file({"ip_adapter.1.to_k_ip.weight": torch.zeros(64, 1024), "image_proj.norm.weight": torch.ones(1024)},
              str(adapter / "models" / "ip-adapter_sd21.safetensors"))
    assert ip_adapter_width(str(adapter), "models", "ip-adapter_sd21.safetensors") == 1024  # from the header
    assert ip_adapter_width("h94/IP-Adapter", "models", "ip-adapter_sd15.safetensors") == 768  # from the name
    assert ip_adapter_width("nowhere/else", "models", "adapter.safetensors") is None
    png = tmp_path / "ref.png"
    from PIL import Image
    Image.new("RGB", (16, 16), (200, 30, 30)).save(png)
    guidance = CSMConfig(image=str(png), ip_adapter=str(adapter), ip_adapter_weight_name="ip-adapter_sd21.safetensors")
    cfg = GenerateConfig(prompt="a red cube", guidance=guidance)
    cfg.prior = PriorConfig(name=tiny_sd, cache_dir=str(tmp_path / "cache"))  # the tiny UNet is 32-d
    import engine.train as train
    monkeypatch.setattr(train, "build_prior", lambda *a, **k: pytest.fail("the prior must not be loaded"))
    with pytest.raises(RunError, match="is for a 1024-d cross-attention, but the prior .* has 32-d") as e:
        _prepare(cfg, torch.device("cpu"))
    assert e.value.code == 2 and "Supported: Stable Diffusion 1.x" in str(e.value)
    check_visual_prompt_prior("shapes-exemplar", guidance)  # exemplar priors take images through their own kernel


def test_visual_prompt_refuses_sdxl_before_loading(tmp_path_factory, tmp_path):
    from tiny_models import tiny_sdxl_path

    from guidance.csm import CSMConfig
    from guidance.priors.base import PriorError
    from guidance.priors.visual_prompt import check_visual_prompt_prior

    png = tmp_path / "ref.png"
    from PIL import Image
    Image.new("RGB", (16, 16), (200, 30, 30)).save(png)
    with pytest.raises(PriorError, match="does not work with the SDXL prior"):
        check_visual_prompt_prior(tiny_sdxl_path(tmp_path_factory), CSMConfig(image=str(png)))


def test_to_device_keeps_values_and_dtype():
    from engine.train import _cams_to
    from guidance.base import to_device

    x = torch.randn(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(to_device(x, "cpu"), x) and to_device(x, "cpu", torch.float16).dtype == torch.float16
    assert to_device(x, "meta").device.type == "meta"
    cams = orbit_cameras(torch.tensor([0.0, 90.0]), 20.0, 2.5, 40.0, 8)
    assert torch.equal(_cams_to(cams, torch.device("cpu")).c2w, cams.c2w)


def test_lazy_nan_check_in_the_loop_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """The loop as on a GPU (the NaN check read on logged steps and before writes): a NaN at step 4 is caught at
    step 6's log, after training on it for two steps, and no checkpoint after it is written."""
    import engine.train as train
    from engine.checkpoint import latest_checkpoint
    from engine.cli import build_generate_config
    from engine.outputs import read_status
    from guidance.base import GuidanceOutput
    from guidance.sds import SDS

    class Lazy(train._FiniteWatch):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.lazy = True

    monkeypatch.setattr(train, "_FiniteWatch", Lazy)
    real = SDS.__call__
    monkeypatch.setattr(SDS, "__call__", lambda self, rgb, prompts, cams, step, **kw: (
        lambda out: GuidanceOutput(out.loss * float("nan"), out.logs) if step == 4 else out)(
        real(self, rgb, prompts, cams, step, **kw)))
    run = str(tmp_path / "run")
    cfg, _ = build_generate_config(["a red cube", "--guidance", "sds", "--steps", "8", "--resolution", "16",
                                    "--out", run, "--train.log-every", "2", "--train.checkpoint-every", "3",
                                    "--train.preview-every", "0", "--train.video-frames", "0",
                                    "--train.no-progress", "--train.no-export"])
    with pytest.raises(train.RunError, match="the loss became nan at step 4"):
        train.generate(cfg)
    assert read_status(run)["state"] == "failed"
    assert latest_checkpoint(os.path.join(run, "ckpts")).endswith("step_000003.safetensors")
