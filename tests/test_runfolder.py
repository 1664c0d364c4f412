"""One reader turns a run folder back into (config, scene, state) (engine/runfolder.py, issue #14), and a mesh's
``init_from`` is applied by the engine, once, for a new run only (engine/init_from.py)."""

import copy
import shutil

import pytest
import torch

from engine import runfolder
from engine.checkpoint import load_checkpoint, step_checkpoints
from engine.cli import main

FAST = ["--steps", "2", "--resolution", "16", "--train.video-frames", "0", "--train.eval-views", "0",
        "--train.no-progress", "--train.no-export", "--train.preview-every", "0", "--train.checkpoint-every", "1",
        "--train.keep-checkpoints", "3"]


@pytest.fixture(scope="module")
def nerf_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "nerf"
    assert main(["generate", "a red cube", *FAST, "--out", str(out)]) == 0
    return out


def test_load_run_gives_config_scene_and_state(nerf_run):
    run = runfolder.load_run(str(nerf_run))
    assert run.config.prompt == "a red cube" and run.state["step"] == 2
    assert run.checkpoint == step_checkpoints(str(nerf_run / "ckpts"))[0]
    torch.testing.assert_close(run.scene.state_dict(), run.state["scene"], rtol=0, atol=0)
    assert not run.scene.training
    older = step_checkpoints(str(nerf_run / "ckpts"))[1]  # a chosen checkpoint instead of the newest
    run1 = runfolder.load_run(str(nerf_run), checkpoint=older, scene=False)
    assert run1.state["step"] == 1 and run1.scene is None


def test_load_run_errors(tmp_path, nerf_run):
    with pytest.raises(runfolder.NotARunFolder, match="not a run folder"):
        runfolder.load_run(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(nerf_run / "config.yaml", empty / "config.yaml")
    with pytest.raises(runfolder.NoCheckpoint, match="no checkpoint"):
        runfolder.load_run(str(empty))


def test_init_from_is_applied_once_by_the_engine(tmp_path, nerf_run, monkeypatch):
    """A new mesh run hands its freshly built mesh and the source run's scene (at its newest checkpoint) to
    engine.init_from.init_from_scene; resuming and exporting the mesh run never look at the source again (it may be
    deleted), they load the mesh run's own checkpoint."""
    import engine.init_from
    from renderers.mesh import Mesh

    calls = []
    src_state = load_checkpoint(step_checkpoints(str(nerf_run / "ckpts"))[0])["scene"]

    def fake_init(mesh, scene, what="", albedo_steps=300):
        calls.append((type(mesh), what, copy.deepcopy(scene.state_dict())))
        with torch.no_grad():
            mesh.sdf.add_(0.01)

    monkeypatch.setattr(engine.init_from, "init_from_scene", fake_init)
    src = tmp_path / "src"
    shutil.copytree(nerf_run, src)
    out = tmp_path / "mesh"
    mesh_args = ["--renderer", "mesh", "--renderer.tet-resolution", "8", "--renderer.init-from", str(src)]
    assert main(["generate", "a red cube", *FAST, *mesh_args, "--out", str(out)]) == 0
    assert len(calls) == 1 and calls[0][0] is Mesh and calls[0][1] == str(src)
    torch.testing.assert_close(calls[0][2], src_state, rtol=0, atol=0)
    shutil.rmtree(src)
    assert main(["generate", "--resume", str(out)]) == 0
    run = runfolder.load_run(str(out))
    assert isinstance(run.scene, Mesh) and run.config.renderer.init_from == str(src)
    torch.testing.assert_close(run.scene.sdf, run.state["scene"]["sdf"], rtol=0, atol=0)
    assert main(["export", str(out), "--texture-size", "32"]) == 0
    assert len(calls) == 1


def test_init_from_rejects_a_mesh_run_and_an_empty_folder(tmp_path, nerf_run):
    from engine.init_from import load_source

    with pytest.raises(ValueError, match="mesh.init_from: .* is not a run folder"):
        load_source(str(tmp_path))
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(nerf_run / "config.yaml", bare / "config.yaml")
    with pytest.raises(ValueError, match="mesh.init_from: .* has no checkpoint"):
        load_source(str(bare))
