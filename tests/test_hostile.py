"""Issue #18: the CLI and its files under a hostile or careless user. Every case here is a row of docs/reliability.md:
one plain line on stderr and exit code 2 for bad input (before any run folder exists), nothing lost when a run or an
export is killed or the disk fills up, and no path through the app's free-form fields to the server's files."""

import os
import signal
import subprocess
import sys
import time

import pytest

from engine.cli import main
from engine.config import BOUNDS, load_config, save_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--steps", "2", "--resolution", "16", "--train.video-frames", "0", "--train.eval-views", "0",
        "--train.no-progress", "--train.no-export", "--train.preview-every", "0"]


def _one_line(capsys, code, argv):
    """Run `engine ARGV`, expect exit ``code`` and exactly one 'engine...: error:' line, the last (no traceback, no
    box); before it only the one line of what the presets chose, for a run that had started."""
    with pytest.raises(SystemExit) as e:
        rc = main(argv)
        raise SystemExit(rc)
    err = capsys.readouterr().err
    assert e.value.code == code, (e.value.code, err)
    lines = err.splitlines()
    assert err.endswith("\n") and " error: " in lines[-1] and "Traceback" not in err, err
    assert all(" error: " not in line and line.startswith("engine: ") for line in lines[:-1]) and len(lines) <= 2, err
    assert not any(ch in err for ch in "│╭╰─"), err
    return lines[-1]


def _saved_run(tmp_path, name="run", extra=()):
    """A finished two-step run folder (its config.yaml and checkpoint are then damaged by the tests)."""
    out = tmp_path / name
    assert main(["generate", "a red cube", *FAST, "--train.checkpoint-every", "1", "--train.keep-checkpoints", "3",
                 "--out", str(out), *extra]) == 0
    return out


# -- item 7: corrupted configs on --resume and --load-config ----------------------------------------------------------
CORRUPT_CONFIGS = {
    "invalid YAML": ("prompt: [unclosed\n", "not valid YAML"),
    "unknown key": ("prompt: a red cube\nwarp_drive: 9\n", "unknown key"),
    "wrong type": ("prompt: a red cube\nresolution: big\n", "resolution: expected an integer"),
    "empty": ("", "expected a mapping"),
    "a list": ("- 1\n- 2\n", "expected a mapping"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not text"),
    "a dict as the prompt": ("prompt: {a: 1}\n", "prompt: expected a string"),
    "billion laughs": ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                       "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nprompt: a red cube\n"
                       "renderer: {name: mesh, envs: [*c, *c, *c, *c, *c, *c, *c, *c, *c]}\n",
                       "envs[0]: expected a string"),
    "alias bomb in a list field": ("renderer: {name: mesh, envs: &c [[x, x], [x, x]]}\n", "expected a string"),
    "a wrong type deep inside": ("guidance: {name: sds, guidance_scale: [1, 2]}\n", "expected a number"),
    "an unknown component": ("renderer: {name: voxels}\n", "renderer.name must be one of"),
    "a seed too large": ("seed: 9223372036854775808\n", "seed must be in"),
    "a resolution too large": ("resolution: 100000\n", "resolution must be in"),
    "a non-finite float": ("train: {lr_scale: .nan}\n", "finite"),
}


@pytest.mark.parametrize("case", list(CORRUPT_CONFIGS))
def test_a_corrupted_config_is_one_line(case, tmp_path, capsys):
    text, message = CORRUPT_CONFIGS[case]
    path = tmp_path / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    err = _one_line(capsys, 2, ["generate", "--load-config", str(path), "--out", str(tmp_path / "new")])
    assert message in err, err
    assert not (tmp_path / "new").exists()
    # the same file as a run folder's config.yaml on --resume
    run = tmp_path / "run"
    (run / "ckpts").mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_bytes(path.read_bytes())
    err = _one_line(capsys, 2, ["generate", "--resume", str(run)])
    assert message in err, err


def test_a_huge_config_file_is_refused(tmp_path, capsys):
    path = tmp_path / "huge.yaml"
    path.write_text("prompt: a red cube\n" + "#" * (2 << 20) + "\n")
    assert "larger than" in _one_line(capsys, 2, ["generate", "--load-config", str(path)])


def test_a_saved_config_loads_back_equal(tmp_path):
    from engine.cli import build_generate_config

    cfg, _ = build_generate_config(["a red cube", "--renderer", "mesh", "--seed", str(2**63 - 1),
                                    "--regularizers", "sdf", "0.5", "--cameras.fovy", "30", "50"])
    save_config(cfg, str(tmp_path / "c.yaml"))
    assert load_config(str(tmp_path / "c.yaml")) == cfg


# -- item 7: command-line values out of bounds, files that are not what they claim -------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--seed", str(2**63)], "seed must be in"),
    (["--seed", "-1"], "seed must be in"),
    (["--resolution", "100000"], "resolution must be in"),
    (["--train.keep-checkpoints", "5000"], "keep-checkpoints must be in"),
    (["--guidance.guidance-scale", "inf"], "finite"),
    (["--guidance.guidance-scale", "1e300"], "out of range"),
    (["--renderer.backend", "nope"], "backend must be one of"),
])
def test_values_out_of_bounds_are_one_line_before_any_run_folder(argv, message, tmp_path, capsys):
    err = _one_line(capsys, 2, ["generate", "a red cube", *argv, "--out", str(tmp_path / "run")])
    assert message in err, err
    assert not (tmp_path / "run").exists()


def test_bounds_are_declared_once_and_cover_the_issue_cases():
    assert BOUNDS["seed"] == (0, 2**63 - 1) and BOUNDS["resolution"][1] < 100000
    from apps.gradio_app import APP_BOUNDS
    assert APP_BOUNDS["train.keep_checkpoints"] == (1, 2)  # the app keeps two at most, whatever it is sent


def test_a_truncated_image_prompt_is_one_line(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "ref.png")
    data = (tmp_path / "ref.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    err = _one_line(capsys, 2, ["generate", "a red cube", "--image", str(tmp_path / "cut.png"),
                                "--out", str(tmp_path / "run")])
    assert "cut.png" in err
    assert not (tmp_path / "run").exists()


def test_out_must_be_a_new_or_empty_writable_folder(tmp_path, capsys):
    (tmp_path / "a_file").write_text("mine")
    assert "is a file" in _one_line(capsys, 2, ["generate", "a red cube", "--out", str(tmp_path / "a_file")])
    assert "is a file" in _one_line(capsys, 2, ["generate", "a red cube", "--out", str(tmp_path / "a_file" / "x")])
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "status.json").write_text('{"mine": true}')
    (foreign / "ckpts").mkdir()
    assert "not a run folder" in _one_line(capsys, 2, ["generate", "a red cube", "--out", str(foreign)])
    assert (foreign / "status.json").read_text() == '{"mine": true}'
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            assert "not writable" in _one_line(capsys, 2, ["generate", "a red cube", "--out", str(ro / "run")])
        finally:
            ro.chmod(0o755)


# -- item 8: every command's option errors are one plain line ---------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["export"], ["export", "/no/such/run"], ["export", "x", "--faces", "many"], ["export", "x", "--bogus"],
    ["texture"], ["texture", "m.obj"], ["texture", "m.obj", "a red cube", "--steps", "x"],
    ["app", "--port", "x"], ["app", "--bogus"], ["app", "--max-queue", "0"],
    ["nonsense"],
])
def test_every_command_refuses_bad_options_in_one_line(argv, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and "error" in err and "Traceback" not in err, err


def test_texture_out_a_file_is_one_line(tmp_path, capsys):
    import trimesh

    trimesh.creation.box().export(tmp_path / "box.obj")
    (tmp_path / "taken").write_text("mine")
    err = _one_line(capsys, 2, ["texture", str(tmp_path / "box.obj"), "a red cube", "--steps", "1",
                                "--out", str(tmp_path / "taken")])
    assert "cannot write" in err and (tmp_path / "taken").read_text() == "mine"


# -- item 9: small items ----------------------------------------------------------------------------------------------
def test_faces_zero_is_refused(tmp_path, capsys):
    run = tmp_path / "run"  # the options are checked before the run folder is read
    assert "--faces" in _one_line(capsys, 2, ["export", str(run), "--faces", "0"])
    assert "--texture-size" in _one_line(capsys, 2, ["export", str(run), "--texture-size", "100000"])


def test_ctrl_c_before_the_run_folder_exists_claims_nothing(tmp_path, capsys, monkeypatch):
    import engine.train

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.train, "_prepare", interrupted)
    assert main(["generate", "a red cube", "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert "checkpoint was saved" not in err and "nothing to resume" in err
    assert not (tmp_path / "run").exists()


def test_the_shapes_cache_loads_tensors_only():
    import inspect

    from guidance.priors import shapes
    src = inspect.getsource(shapes)
    assert "torch.load(" in src and src.count("torch.load(") == src.count("weights_only=True")


def test_pyproject_torch_floor_unpickles_nothing_by_default():
    import tomllib

    deps = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]["dependencies"]
    torch_dep = next(d for d in deps if d.replace(" ", "").startswith("torch>="))
    assert tuple(int(x) for x in torch_dep.split(">=")[1].split(",")[0].split(".")[:2]) >= (2, 6)


def test_obj_material_paths_cannot_leave_the_mesh_folder(tmp_path):
    """An OBJ whose mtllib climbs out of its folder (``../../``) loads its geometry only, whatever trimesh's version:
    the loaders pass a resolver that serves file names inside the mesh's own folder and nothing else."""
    from engine.texture import FolderResolver, load_mesh

    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "stolen.mtl").write_text("newmtl m\nKd 1 0 0\nmap_Kd stolen.png\n")
    up = tmp_path / "a" / "b"
    up.mkdir(parents=True)
    (up / "mesh.obj").write_text("mtllib ../../secret/stolen.mtl\nusemtl m\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    res = FolderResolver(str(up))
    with pytest.raises(FileNotFoundError):
        res.get("../../secret/stolen.mtl")
    assert len(load_mesh(str(up / "mesh.obj")).faces) == 1
    (up / "ok.mtl").write_text("newmtl m\nKd 1 0 0\n")
    assert res.get("ok.mtl").startswith(b"newmtl")


def test_two_runs_of_one_prompt_in_the_same_second_get_distinct_folders(tmp_path, monkeypatch):
    """Run folders carry a random suffix, are created with exist_ok=False, and a clash picks another name."""
    import engine.train
    from engine.cli import build_generate_config
    from engine.config import default_run_dir

    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-000000")
    assert default_run_dir("a red cube") != default_run_dir("a red cube")
    names = iter([str(tmp_path / "same"), str(tmp_path / "same"), str(tmp_path / "other")])
    monkeypatch.setattr(engine.train, "default_run_dir", lambda prompt: next(names))
    cfg, _ = build_generate_config(["a red cube", *FAST])
    first, second = engine.train.generate(cfg), engine.train.generate(cfg)
    assert (first, second) == (str(tmp_path / "same"), str(tmp_path / "other"))


# -- item 6: a truncated newest checkpoint falls back to the one before --------------------------------------------
def _truncate(path, keep=0.5):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)])


def test_resume_and_export_fall_back_to_the_newest_intact_checkpoint(tmp_path, capsys):
    from engine.checkpoint import step_checkpoints
    from engine.outputs import read_status

    run = _saved_run(tmp_path, extra=["--steps", "3"])
    newest = step_checkpoints(str(run / "ckpts"))[0]
    assert newest.endswith("step_000003.safetensors")
    _truncate(newest)
    capsys.readouterr()
    assert main(["export", str(run), "--texture-size", "32", "--resolution", "16", "--format", "obj"]) == 0
    assert "skipped 1 unreadable" in capsys.readouterr().err
    assert (run / "export" / "model.obj").stat().st_size > 0
    (run / "status.json").unlink()
    assert main(["generate", "--resume", str(run)]) == 0
    assert "skipped 1 unreadable" in capsys.readouterr().err
    assert read_status(str(run))["state"] == "complete"
    for p in step_checkpoints(str(run / "ckpts")):
        _truncate(p)
    err = _one_line(capsys, 2, ["generate", "--resume", str(run)])
    assert "no readable checkpoint" in err


# -- items 4 and 5: nothing lost on a kill, a full disk, SIGTERM ---------------------------------------------
def _enospc(*a, **k):
    raise OSError(28, "No space left on device")


def test_a_full_disk_at_the_first_checkpoint_keeps_the_run_folder_and_says_so(tmp_path, capsys, monkeypatch):
    import engine.train
    from engine.outputs import read_status

    monkeypatch.setattr(engine.train, "save_checkpoint", _enospc)
    out = tmp_path / "run"
    err = _one_line(capsys, 1, ["generate", "a red cube", *FAST, "--train.checkpoint-every", "1", "--out", str(out)])
    assert "No space left on device" in err and "the run stopped" in err
    status = read_status(str(out))
    assert status["state"] == "failed" and "No space left" in status["message"]
    assert (out / "config.yaml").is_file()  # the folder is kept


def test_ctrl_c_when_the_checkpoint_cannot_be_written_says_so(tmp_path, capsys, monkeypatch):
    import engine.train
    from engine.outputs import read_status
    from engine.train import Hooks, generate

    monkeypatch.setattr(engine.train, "save_checkpoint", _enospc)
    from engine.cli import build_generate_config
    cfg, _ = build_generate_config(["a red cube", *FAST, "--out", str(tmp_path / "run")])

    def stop(done, total, logs):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as e:
        generate(cfg, hooks=Hooks(on_step=stop))
    assert not getattr(e.value, "run_dir", None)  # the CLI will not claim a checkpoint was saved
    assert "could not be written" in e.value.note
    status = read_status(str(tmp_path / "run"))
    assert status["state"] == "interrupted" and "could not be written" in status["message"]


def test_an_export_that_fails_midway_leaves_the_previous_files_whole(tmp_path, capsys, monkeypatch):
    import engine.export.gltf as gltf

    run = _saved_run(tmp_path)
    args = ["export", str(run), "--texture-size", "32", "--resolution", "16"]
    assert main(args) == 0
    glb, report = run / "export" / "model.glb", run / "export" / "model_export.json"
    before = glb.read_bytes(), report.read_bytes()
    real_pack = gltf.struct.pack
    calls = []

    def full_disk_midway(*a):  # the disk fills after the GLB header was written
        calls.append(1)
        if len(calls) > 2:
            raise OSError(28, "No space left on device")
        return real_pack(*a)

    monkeypatch.setattr(gltf.struct, "pack", full_disk_midway)
    capsys.readouterr()
    err = _one_line(capsys, 1, args)
    assert "No space left" in err
    assert (glb.read_bytes(), report.read_bytes()) == before
    assert not [p for p in os.listdir(run / "export") if ".tmp" in p]


def test_atomic_write_keeps_the_old_file_when_the_writer_dies(tmp_path):
    from engine.outputs import atomic_path, atomic_write

    target = tmp_path / "model.json"
    target.write_text("good")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(str(target)) as f:
            f.write("half")
            raise KeyboardInterrupt
    assert target.read_text() == "good" and os.listdir(tmp_path) == ["model.json"]
    with atomic_path(str(target)) as tmp:
        assert tmp.endswith(".json") and os.path.dirname(tmp) == str(tmp_path)
        open(tmp, "w").write("new")
    assert target.read_text() == "new"


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    """A real `engine generate` process gets SIGTERM mid-run: it saves a checkpoint, marks the run interrupted,
    exits 143 with one line, and --resume finishes the run."""
    import json

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "engine.cli", "generate", "a red cube", *FAST, "--steps", "100000",
           "--train.checkpoint-every", "0", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            try:
                if json.loads((out / "status.json").read_text())["state"] == "running":
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "checkpoint was saved" in err and "Traceback" not in err
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "interrupted" and status["step"] >= 0
    assert any(n.startswith("step_") for n in os.listdir(out / "ckpts"))


# -- item 1: the UV unwrap cannot crash or hang the process ------------------------------------------------------------
def _check_atlas(vertices, faces, vmap, nf, uv):
    import numpy as np

    assert nf.shape[1] == 3 and nf.min() >= 0 and nf.max() < len(vmap) == len(uv)
    assert uv.min() >= 0 and uv.max() <= 1 and vmap.max() < len(vertices)
    # every output triangle is an input triangle (same corner positions, same count)
    a = np.sort(np.asarray(vertices)[vmap][nf].reshape(len(nf), -1), axis=1)
    b = np.sort(np.asarray(vertices)[np.asarray(faces)].reshape(len(faces), -1), axis=1)
    assert len(a) == len(b) and np.allclose(np.sort(a, axis=0), np.sort(b, axis=0))


def test_the_82k_icosphere_that_crashed_xatlas_is_unwrapped(monkeypatch):
    """xatlas segfaults on this mesh; unwrap_safe unwraps it in blocks, and when made to try the whole mesh first
    (BLOCK_FACES raised), it survives the real segfault of its child and falls back to the blocks."""
    import numpy as np
    import trimesh

    import engine.atlas

    m = trimesh.creation.icosphere(subdivisions=6)  # 81,920 faces
    v, f = np.asarray(m.vertices), np.asarray(m.faces)
    vmap, nf, uv, how = engine.atlas.unwrap_safe(v, f)
    assert how == "xatlas in 2 blocks"
    _check_atlas(v, f, vmap, nf, uv)
    monkeypatch.setattr(engine.atlas, "BLOCK_FACES", 10**9)
    vmap, nf, uv, how = engine.atlas.unwrap_safe(v, f)
    assert how.startswith("xatlas in 2 blocks") and "failed (exit -" in how, how
    _check_atlas(v, f, vmap, nf, uv)


def test_a_crashing_or_hanging_unwrap_falls_back(monkeypatch):
    """A child that crashes (a segfault) or runs past its time limit (a hang) leads to the fallbacks."""
    import numpy as np
    import trimesh

    import engine.atlas as atlas

    m = trimesh.creation.icosphere(subdivisions=2)
    v, f = np.asarray(m.vertices), np.asarray(m.faces)
    vmap, nf, uv, how = atlas.unwrap_safe(v, f, timeout_s=1e-3)  # every xatlas attempt "hangs"
    assert how.startswith("one cell per triangle") and "ran past" in how
    _check_atlas(v, f, vmap, nf, uv)
    calls = []

    def crash_whole_mesh(vertices, faces, parts, *a):
        calls.append(parts)
        return (None, "xatlas failed (exit -11)") if parts == 1 else real(vertices, faces, parts, *a)

    real = atlas._run_child
    monkeypatch.setattr(atlas, "_run_child", crash_whole_mesh)
    vmap, nf, uv, how = atlas.unwrap_safe(v, f)
    assert calls == [1, 2] and "2 blocks" in how and "exit -11" in how
    _check_atlas(v, f, vmap, nf, uv)


def test_preclean_merges_duplicates_and_drops_degenerate_faces():
    import numpy as np

    from engine.atlas import preclean

    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0], [5, 5, 5]], float)  # vertex 3 repeats 1; 4 unused
    f = np.array([[0, 1, 2], [0, 3, 2], [0, 1, 3], [2, 1, 0]])  # a duplicate, a degenerate, a flipped duplicate
    nv, nf, vmap = preclean(v, f)
    assert len(nv) == 3 and len(nf) == 1 and np.allclose(v[vmap], nv)


def test_texture_cli_refuses_a_mesh_over_the_unwrap_limit(tmp_path, capsys, monkeypatch):
    import trimesh

    import engine.atlas

    monkeypatch.setattr(engine.atlas, "MAX_UNWRAP_FACES", 100)
    trimesh.creation.icosphere(subdivisions=2).export(tmp_path / "ball.ply")  # 320 faces, no UVs
    err = _one_line(capsys, 2, ["texture", str(tmp_path / "ball.ply"), "a red sphere", "--steps", "1",
                                "--out", str(tmp_path / "out")])
    assert "unwrapping is limited to 100" in err
