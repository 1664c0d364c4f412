"""Declared abilities (issue #14 step 3): scenes and priors say what they can do, the main paths check the declaration
once with a clear error, objectives never reach into a prior's network, and regulariser weights are typed.
"""

import ast
import pathlib

import pytest
import torch

from engine.config import GenerateConfig, check_config, load_config, save_config
from foundation.abilities import declares
from foundation.cameras import orbit_cameras
from renderers import RENDERERS
from renderers.base import (
    AlbedoField,
    ConditionRenderer,
    DensityField,
    GaussianSplats,
    MeshSource,
    OptionalNormals,
    OwnOptimizer,
    PBRMaterial,
    Relightable,
    SceneGroup,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory):
    from tiny_models import tiny_sd_path

    return tiny_sd_path(tmp_path_factory)


def _small(name: str):
    """A small scene of each renderer (CPU, seconds)."""
    overrides = {"nerf": {}, "gaussians": {"num_points": 64}, "mesh": {"tet_resolution": 8},
                 "material": {"texels": 16}}[name]
    return RENDERERS[name](**overrides).build(torch.Generator().manual_seed(0), "cpu")


# -- what each scene declares ------------------------------------------------------------------------------------------
DECLARED = {
    "nerf": {DensityField, AlbedoField, OptionalNormals},
    "gaussians": {DensityField, AlbedoField, GaussianSplats, OwnOptimizer},
    "mesh": {MeshSource, PBRMaterial, AlbedoField, Relightable, ConditionRenderer},
    "material": {ConditionRenderer},
}
ALL = {AlbedoField, DensityField, MeshSource, PBRMaterial, GaussianSplats, Relightable, OwnOptimizer,
       ConditionRenderer, SceneGroup, OptionalNormals}


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_each_scene_declares_exactly_its_abilities(name):
    scene = _small(name)
    assert {a for a in ALL if declares(scene, a)} == DECLARED[name]
    if declares(scene, DensityField):
        assert scene.field_kind in ("density", "opacity") and scene.bound > 0


def test_particles_are_a_scene_group_and_forward_the_optimiser():
    from renderers.particles import Particles

    group = Particles([_small("gaussians"), _small("nerf")])
    assert declares(group, SceneGroup, OwnOptimizer) and not declares(group, DensityField)


def test_a_method_of_the_same_name_is_not_a_declaration():
    """The check is nominal: an object that merely has ``query_density`` is no DensityField, and export says so."""
    from engine.export import ExportError, export_scene

    class Undeclared:
        def query_density(self, x):
            return torch.ones(x.shape[0])

        def query_albedo(self, x):
            return torch.ones(x.shape[0], 3)

    assert not declares(Undeclared(), DensityField)
    with pytest.raises(ExportError, match="neither a mesh .MeshSource. nor a density field"):
        export_scene(Undeclared(), ["glb"], {"glb": "unused.glb"})


def test_a_declared_ability_must_be_implemented():
    class Broken(DensityField):  # declares the field but forgets query_density
        def query_albedo(self, x):
            return x

    with pytest.raises(TypeError, match="query_density"):
        Broken()


def test_ply_of_a_scene_without_splats_is_one_clear_error(tmp_path):
    from engine.export import ExportError, write_ply

    with pytest.raises(ExportError, match=r"ply is the Gaussian-splat format; this run's scene \(NeRF\) has no splats"):
        write_ply(str(tmp_path / "x.ply"), _small("nerf"), "y")
    assert not (tmp_path / "x.ply").exists()


def test_default_formats_follow_the_declarations():
    from engine.export import default_formats
    from renderers.particles import Particles

    assert default_formats(_small("nerf")) == ["glb"]
    assert default_formats(_small("gaussians")) == ["glb", "ply"]
    assert default_formats(Particles([_small("gaussians")])) == ["glb", "ply"]


def test_a_conditioned_prior_refuses_a_scene_that_renders_no_condition():
    from engine.train import RunError, _wire_condition
    from guidance.priors.base import ConditionedPrior

    class Prior(ConditionedPrior):
        condition_kind = "dreammat"

    with pytest.raises(RunError, match="needs the mesh or material renderer") as e:
        _wire_condition(Prior(), _small("nerf"))
    assert e.value.code == 2
    mesh = _small("mesh")
    _wire_condition(Prior(), mesh)
    assert mesh.render_condition == "dreammat"


def test_mesh_init_from_needs_a_density_field():
    from engine.init_from import init_from_scene

    with pytest.raises(ValueError, match="is not a density field"):
        init_from_scene(_small("mesh"), _small("material"), "a material run")


def _our_classes(packages):
    import importlib
    import inspect
    import pkgutil

    seen = {}
    for pkg in packages:
        mod = importlib.import_module(pkg)
        for info in pkgutil.iter_modules(mod.__path__, pkg + "."):
            m = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(m, inspect.isclass):
                if cls.__module__ == m.__name__ and not getattr(cls, "_is_protocol", False):
                    seen[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return seen


def test_every_class_with_an_ability_member_declares_it():
    """A scene or prior class that carries an ability's member must declare the ability: otherwise the main paths,
    which check declarations only, would silently skip it (e.g. a new conditioned prior never wired)."""
    from guidance.priors import base as pb
    from renderers import base as rb

    needs = {"query_density": rb.DensityField, "query_albedo": rb.AlbedoField, "export_mesh": rb.MeshSource,
             "query_material": rb.PBRMaterial, "export_tensors": rb.GaussianSplats, "relightable": rb.Relightable,
             "attach_optimizer": rb.OwnOptimizer, "condition_kinds": rb.ConditionRenderer,
             "release_text_encoders": pb.TextEncoderRelease, "nonfinite_report": pb.DeferredChecks,
             "attach_lora": pb.LoRAHost, "lora_output": pb.LoRAHost, "unet_residuals": pb.UNetResiduals,
             "condition_kind": pb.ConditionedPrior, "takes_condition": pb.ConditionedPrior,
             "load_ip_adapter": pb.ImageAdapterHost}
    missing = [f"{name} has {member} but does not declare {ability.__name__}"
               for name, cls in _our_classes(["renderers", "guidance.priors"]).items()
               for member, ability in needs.items() if member in dir(cls) and ability not in cls.__mro__]
    assert missing == []


# -- the prior side ------------------------------------------------------------------------------------------------
def test_priors_declare_their_abilities(tiny_sd_folder):
    from guidance.priors import PriorConfig, build_prior
    from guidance.priors.base import (
        ConditionedPrior,
        DeferredChecks,
        ExemplarImages,
        ImageAdapterHost,
        LoRAHost,
        OwnGenerator,
        TextEncoderRelease,
        UNetResiduals,
    )

    sd = build_prior(PriorConfig(name=tiny_sd_folder))
    assert declares(sd, TextEncoderRelease, DeferredChecks, OwnGenerator, LoRAHost, UNetResiduals, ImageAdapterHost)
    assert not declares(sd, ConditionedPrior, ExemplarImages)
    shapes = build_prior(PriorConfig(name="shapes-exemplar"))
    assert declares(shapes, ExemplarImages) and not declares(shapes, LoRAHost, TextEncoderRelease)
    materials = build_prior(PriorConfig(name="materials"))
    assert declares(materials, ConditionedPrior) and not declares(materials, ExemplarImages)


def test_vsd_particle_score_goes_through_the_prior(tiny_sd_folder):
    """The LoRA branch is the prior's ``lora_output``: at B = 0 (LoRA's zero init) and a zero camera MLP it equals the
    pretrained UNet's raw output, and with the adapter on it gets a gradient, which ``predict_eps`` never sees."""
    from guidance.priors import PriorConfig, build_prior
    from guidance.vsd import VSDConfig

    sd = build_prior(PriorConfig(name=tiny_sd_folder))
    vsd = VSDConfig().build(sd, torch.Generator().manual_seed(0), 4)
    with torch.no_grad():
        for p in vsd.particle.camera_mlp.parameters():
            p.zero_()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([100, 700])
    cond = sd.embed(["a red cube", "a red cube"])
    raw = vsd.particle.raw(x, t, cond, torch.randn(2, 16))
    eps = sd.predict_eps(x, t, cond)
    torch.testing.assert_close(raw, eps, atol=1e-5, rtol=1e-4)  # epsilon-prediction prior, LoRA B = 0
    raw.square().sum().backward()
    assert all(p.grad is not None for p in vsd.particle.lora)


# -- no capability probing on the main paths --------------------------------------------------------------------------
CAPABILITIES = {
    # scenes
    "query_density", "query_albedo", "query_material", "export_mesh", "export_tensors", "export_finished",
    "field_kind", "aabb", "bound", "relightable", "uv_material", "attach_optimizer", "scenes", "condition_kinds",
    "render_condition", "regularizer_weights", "render", "eval", "train", "training", "to", "parameters",
    # priors and objectives
    "unet", "_added_cond", "unet_kwargs", "images", "tags", "text_encoder", "release_text_encoders",
    "nonfinite_report", "generator", "takes_condition", "condition_kind", "prior", "state_dict", "image_encoder",
}
REMAINING = {
    ("engine/texture.py", "takes_condition"):
        "the texture command's own loop, replaced by the generate pipeline (issue #14 step 2, another branch)",
    ("apps/jobs.py", "train"):
        "tells a GenerateConfig (cfg.train.steps) from the material command's config (cfg.steps): a config's shape, "
        "not a scene's or a prior's ability",
}
"""Probes of a capability name that remain, with why."""


def _probes():
    found = set()
    for pkg in ("engine", "renderers", "guidance", "apps", "foundation"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id in ("hasattr", "getattr") and len(node.args) >= 2
                        and isinstance(node.args[1], ast.Constant) and node.args[1].value in CAPABILITIES):
                    found.add((str(path.relative_to(ROOT)), node.args[1].value))
    return found


def test_no_hasattr_or_getattr_probe_for_a_capability():
    probes = _probes()
    assert probes - set(REMAINING) == set(), sorted(probes - set(REMAINING))


NETWORK = {"unet", "_added_cond", "unet_kwargs", "_unet_output", "vae", "text_encoder", "tokenizer",
           "scheduler_config"}
"""A diffusers prior's internals: its networks and hooks."""


def _attributes(paths, names):
    return [f"{p.name}:{node.lineno} .{node.attr}" for p in paths
            for node in ast.walk(ast.parse(p.read_text(), str(p))) if isinstance(node, ast.Attribute)
            and node.attr in names]


def test_objectives_and_wrappers_never_touch_the_prior_network():
    """The objectives (guidance/*.py) and the prior wrappers (ControlNet, visual prompt) reach a prior only through
    the Prior protocol and its declared abilities (LoRAHost, UNetResiduals, ImageAdapterHost, ...)."""
    objectives = sorted((ROOT / "guidance").glob("*.py"))
    assert _attributes(objectives, NETWORK | {"controlnet"}) == []
    wrappers = [ROOT / "guidance" / "priors" / f for f in ("controlnet.py", "visual_prompt.py")]
    assert _attributes(wrappers, NETWORK) == []


# -- typed regulariser weights --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_every_term_and_default_weight_is_declared(name):
    """A scene's regulariser terms and default weights use only the names its config declares (REGULARIZERS)."""
    overrides = {"mesh": {"tet_resolution": 8, "normal_perturbation": True}}.get(name, {})
    cfg = RENDERERS[name](**overrides)
    scene = cfg.build(torch.Generator().manual_seed(0), "cpu")
    cams = orbit_cameras(torch.tensor([0.0, 90.0]), 20.0, 2.5, 40.0, 16)
    out = scene.render(cams, torch.ones(2, 16, 16, 3))
    declared = set(type(cfg).REGULARIZERS)
    assert set(scene.regularizers(out, 0)) <= declared
    assert set(scene.regularizer_weights) <= declared


def test_a_misspelt_regulariser_is_refused_on_the_command_line(tmp_path, capsys):
    from engine.cli import main

    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(["generate", "a red cube", "--regularizers", "sparsty", "1", "--out",
                               str(tmp_path / "run")]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert ("'sparsty' is not a term of the nerf renderer (its terms: orient, sparsity, opaque, distortion, "
            "albedo_smooth)") in err
    assert not (tmp_path / "run").exists()


def test_a_misspelt_regulariser_is_refused_in_a_config_file_and_on_resume(tmp_path):
    from engine.train import RunError, generate
    from renderers.mesh import MeshConfig

    cfg = GenerateConfig(prompt="a red cube", renderer=MeshConfig(), regularizers={"sdf": 0.5})
    check_config(cfg)  # a real term passes
    save_config(cfg, str(tmp_path / "ok.yaml"))
    assert load_config(str(tmp_path / "ok.yaml")).regularizers == {"sdf": 0.5}
    text = (tmp_path / "ok.yaml").read_text().replace("sdf: 0.5", "lambda_sdf: 0.5")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(text)
    with pytest.raises(ValueError, match="'lambda_sdf' is not a term of the mesh renderer"):
        load_config(str(tmp_path / "run" / "config.yaml"))
    with pytest.raises(RunError, match="'lambda_sdf' is not a term of the mesh renderer") as e:
        generate(GenerateConfig(), resume=str(tmp_path / "run"))
    assert e.value.code == 2


def test_a_declared_weight_is_taken():
    from engine.cli import build_generate_config

    cfg, _ = build_generate_config(["a red cube", "--renderer", "gaussians", "--regularizers", "opacity", "0.5"])
    assert cfg.regularizers == {"opacity": 0.5}


def test_vsd_lora_state_round_trips_through_the_prior(tiny_sd_folder):
    """A checkpoint's particle state (LoRA tensors by UNet name, camera MLP) loads into a fresh prior's adapter."""
    from guidance.priors import PriorConfig, build_prior
    from guidance.vsd import VSDConfig

    a = VSDConfig().build(build_prior(PriorConfig(name=tiny_sd_folder)), torch.Generator().manual_seed(0), 4)
    with torch.no_grad():
        for p in a.particle.trainable():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    state = a.state_dict()
    assert sum(k.startswith("lora.") for k in state) == len(a.particle.lora) > 0
    b = VSDConfig().build(build_prior(PriorConfig(name=tiny_sd_folder)), torch.Generator().manual_seed(1), 4)
    b.load_state_dict(state)
    assert all(torch.equal(v, state[k]) for k, v in b.state_dict().items())
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([400])
    cond, cam = a.prior.embed(["a red cube"]), torch.randn(1, 16)
    with torch.no_grad():
        torch.testing.assert_close(a.particle.raw(x, t, cond, cam), b.particle.raw(x, t, cond, cam))


def test_evaluation_renders_skip_normals_they_do_not_use():
    """render_views keeps colour and alpha only: a NeRF (OptionalNormals) then skips its density-gradient normals,
    with the very same image, and gets them back afterwards."""
    from engine.outputs import render_views
    from foundation.cameras import orbit_cameras

    nerf = _small("nerf")
    cams = orbit_cameras([0.0, 120.0], [20.0, 20.0], 2.5, 40.0, 24)
    bg = torch.ones(3)
    nerf.eval()
    with torch.no_grad():
        full = nerf.render(cams, bg.view(1, 1, 1, 3).expand(2, 24, 24, 3))
    assert full.normal is not None  # an eval render gives its normal map
    seen = []
    render = nerf.render

    def spy(c, b):
        out = render(c, b)
        seen.append(out.normal)
        return out

    nerf.render = spy
    rgb, alpha = render_views(nerf, cams, bg)
    assert seen and all(n is None for n in seen)
    assert torch.allclose(rgb, full.rgb, atol=1e-6) and torch.allclose(alpha, full.alpha, atol=1e-6)
    assert nerf.eval_normals
