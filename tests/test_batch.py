"""`engine batch` on a local Ray instance started here (2 CPUs, shared by the module): complete batches with GLBs and
a summary, resume after the driver is killed, retries then a recorded failure, per-row overrides, the
no-shared-filesystem transfer, and the refusals that come before any job starts.

Jobs are tiny runs on the built-in shapes prior (mesh renderer at tet resolution 12, a 32 px prior, 4 steps at 24 px,
frames, 32² export textures) so that a job takes seconds; the batch machinery is what is under test.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import ray
import yaml

from engine.batch import BatchOptions, batch_key, run_batch, worker_run_dir
from engine.checkpoint import latest_checkpoint
from engine.cli import main

TINY = ["--renderer", "mesh", "--renderer.tet-resolution", "12", "--renderer.texture-resolution", "32",
        "--prior.resolution", "32", "--steps", "4", "--resolution", "24", "--train.video-frames", "4",
        "--train.video-resolution", "24", "--train.eval-views", "2", "--train.export-texture-size", "32",
        "--train.preview-every", "0"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local Ray instance for the module; its workers' temp dir is a folder of its own (their private disk)."""
    worker_tmp = tmp_path_factory.mktemp("worker_tmp")
    env = {"TMPDIR": str(worker_tmp), "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, log_to_driver=False,
             runtime_env={"env_vars": env})
    yield {"worker_tmp": str(worker_tmp), "address": ray.get_runtime_context().gcs_address}
    ray.shutdown()


def _summary(out):
    with open(os.path.join(out, "summary.csv")) as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    with open(os.path.join(out, "summary.json")) as f:
        assert {r["name"] for r in json.load(f)["jobs"]} == set(rows)
    return rows


@pytest.fixture(scope="module")
def three_prompts(cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("three")
    prompts = base / "prompts.txt"
    prompts.write_text("a red cube\n# a comment line\n\na blue sphere\na yellow torus\n")
    out = str(base / "out")
    lines = []
    code = run_batch(BatchOptions(prompts=str(prompts), out=out, generate_args=TINY), echo=lines.append)
    return {"code": code, "out": out, "lines": lines}


def test_three_prompts_complete_with_glbs_and_a_summary(three_prompts):
    out = three_prompts["out"]
    assert three_prompts["code"] == 0, three_prompts["lines"]
    rows = _summary(out)
    assert set(rows) == {"a-red-cube-seed0", "a-blue-sphere-seed0", "a-yellow-torus-seed0"}
    assert [rows[n]["row"] for n in ("a-red-cube-seed0", "a-blue-sphere-seed0", "a-yellow-torus-seed0")] == \
        ["1", "4", "5"]  # the file's lines, comments and blanks counted
    for name, r in rows.items():
        assert r["state"] == "complete" and r["steps"] == "4" and r["target_steps"] == "4", r
        assert (r["guidance"], r["renderer"], r["prior"], r["seed"], r["attempts"]) == \
            ("elbo", "mesh", "shapes", "0", "1")  # the shipped prior's recommended objective
        assert float(r["seconds"]) > 0 and float(r["it_per_s"]) > 0 and float(r["peak_mem_mb"]) > 100
        assert 0 < float(r["iou"]) <= 1 and float(r["psnr"]) > 5
        assert r["glb"] == f"{name}/export/model.glb"
        glb = os.path.join(out, r["glb"])
        with open(glb, "rb") as f:
            assert f.read(4) == b"glTF" and os.path.getsize(glb) > 1000
        status = json.load(open(os.path.join(out, name, "status.json")))
        assert status["state"] == "complete" and status["eval"]["psnr"] == pytest.approx(float(r["psnr"]), abs=1e-3)
        assert os.path.isfile(os.path.join(out, r["turntable"])) and os.path.isfile(os.path.join(out, r["poster"]))
        cfg = yaml.safe_load(open(os.path.join(out, name, "config.yaml")))
        assert cfg["prompt"] == r["prompt"] and cfg["out"] == ""
    page = open(os.path.join(out, "index.html")).read()
    for name, r in rows.items():
        assert r["prompt"] in page and f'href="{name}/export/model.glb"' in page and f"{name}/turntable.mp4" in page
    from PIL import Image
    with Image.open(os.path.join(out, "contact_sheet.png")) as sheet:
        assert sheet.size[0] == 3 * 160 and sheet.size[1] > 160
    assert sum(line.startswith("complete ") for line in three_prompts["lines"]) == 3


def test_no_shared_filesystem_workers_send_their_runs_back(three_prompts, cluster):
    """Workers ran in private folders under their own temp dir (never under DIR); every job's export and records
    still reached DIR through Ray, the checkpoints stayed behind, and the temp copies were cleaned up."""
    out = three_prompts["out"]
    for name in _summary(out):
        rec = json.load(open(os.path.join(out, name, "batch.json")))
        worker_dir = rec["worker_dir"]
        assert worker_dir == os.path.join(cluster["worker_tmp"], "distillery-batch", batch_key(out), name)
        assert not os.path.realpath(worker_dir).startswith(os.path.realpath(out))
        assert not os.path.exists(worker_dir)  # the default temp copy is removed once sent
        assert not os.path.exists(os.path.join(out, name, "ckpts"))  # resume state never travels
        for f in ("export/model.glb", "export/model_textures/albedo.png", "turntable.mp4", "eval.json",
                  "status.json", "config.yaml", "metrics.jsonl"):
            assert os.path.getsize(os.path.join(out, name, f)) > 0, f
    assert not [p for p in os.listdir(out) if p.endswith(".incoming")]


def test_kill_the_driver_and_rerun_skips_finished_jobs_and_resumes_the_interrupted_one(cluster, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a red cube"}) + "\n"
                       + json.dumps({"prompt": "a blue cube", "steps": 12}) + "\n")
    out, ckpts = str(tmp_path / "out"), str(tmp_path / "ckpts")
    job_args = [*TINY, "--train.no-export", "--train.checkpoint-every", "4"]
    args = [str(prompts), "--out", out, "--checkpoints", ckpts, "--cpus-per-job", "2", *job_args]
    driver = subprocess.Popen([sys.executable, "-m", "engine.cli", "batch", *args, "--address", cluster["address"]],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    first = os.path.join(out, "a-red-cube-seed0")
    second_ckpts = os.path.join(worker_run_dir(ckpts, batch_key(out), "a-blue-cube-seed0"), "ckpts")
    deadline = time.time() + 150
    try:
        while time.time() < deadline and driver.poll() is None:
            if os.path.isfile(os.path.join(first, "status.json")) and latest_checkpoint(second_ckpts) is not None:
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the driver ended before it could be killed"
        assert latest_checkpoint(second_ckpts), "no whole checkpoint of the second job appeared in time"
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    before = {f: (os.stat(os.path.join(first, f)).st_mtime_ns, open(os.path.join(first, f), "rb").read())
              for f in ("status.json", "config.yaml", "turntable.mp4", "batch.json", "metrics.jsonl")}
    assert json.loads(before["status.json"][1])["state"] == "complete"
    time.sleep(1.0)  # let Ray reap the dead driver's task before the rerun asks for the CPUs
    code = run_batch(BatchOptions(prompts=str(prompts), out=out, checkpoints=ckpts, cpus_per_job=2,
                                  generate_args=job_args), echo=lambda s: None)
    assert code == 0
    after = {f: (os.stat(os.path.join(first, f)).st_mtime_ns, open(os.path.join(first, f), "rb").read())
             for f in before}
    assert after == before  # the finished job was not redone
    rows = _summary(out)
    second = rows["a-blue-cube-seed0"]
    assert second["state"] == "complete" and second["steps"] == "12"
    assert int(second["resumed_from"]) >= 4, second  # from its checkpoint, not from step 0
    metrics = [json.loads(line) for line in open(os.path.join(out, "a-blue-cube-seed0", "metrics.jsonl"))]
    assert metrics[-1]["step"] == 12


def _kill_task_worker(task_name: str) -> int | None:
    """SIGKILL the worker process running the Ray task ``task_name`` (Ray titles a busy worker after its task)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if task_name in cmdline:
            os.kill(int(pid), signal.SIGKILL)
            return int(pid)
    return None


def test_a_worker_killed_mid_job_is_rescheduled_and_resumes(cluster, tmp_path):
    """Node loss: the job's worker process dies (SIGKILL) after a checkpoint; Ray reschedules the task, which
    resumes from the checkpoint under --checkpoints, and the batch completes."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    out, ckpts = str(tmp_path / "out"), str(tmp_path / "ckpts")
    opts = BatchOptions(prompts=str(prompts), out=out, checkpoints=ckpts, retries=1, cpus_per_job=2,
                        generate_args=[*TINY, "--steps", "40", "--train.no-export", "--train.checkpoint-every", "4"])
    result = {}
    batch = threading.Thread(target=lambda: result.update(code=run_batch(opts, echo=lambda s: None)))
    batch.start()
    ckpt_dir = os.path.join(worker_run_dir(ckpts, batch_key(out), "a-red-cube-seed0"), "ckpts")
    killed, deadline = None, time.time() + 150
    while killed is None and time.time() < deadline and batch.is_alive():
        if latest_checkpoint(ckpt_dir) is not None:  # a whole one: a listed file may still be a checkpoint's .tmp
            killed = _kill_task_worker("distillery-batch:a-red-cube-seed0")
        time.sleep(0.1)
    batch.join(timeout=200)
    assert killed is not None, "the job's worker was not found while it ran"
    assert result.get("code") == 0
    row = _summary(out)["a-red-cube-seed0"]
    assert row["state"] == "complete" and row["steps"] == "40" and row["attempts"] == "2", row
    assert int(row["resumed_from"]) >= 4, row


@pytest.fixture(scope="module")
def mixed_batch(cluster, tmp_path_factory):
    """A CSV batch: one row with overrides that runs, one made to fail on its worker (its prior is a model folder
    that no worker has, as when a node lacks the weights)."""
    base = tmp_path_factory.mktemp("mixed")
    prompts = base / "prompts.csv"
    prompts.write_text("prompt,seed,steps,guidance.guidance-scale,resolution,prior\n"
                       "a red cube,7,3,2.5,16,\n"
                       f"a green cone,,,,,{base / 'no-such-model'}\n")
    out = str(base / "out")
    lines = []
    code = run_batch(BatchOptions(prompts=str(prompts), out=out, retries=1, generate_args=[*TINY, "--train.no-export"]),
                     echo=lines.append)
    return {"code": code, "out": out, "lines": lines}


def test_a_failing_job_is_retried_then_reported_failed_while_the_others_finish(mixed_batch):
    out = mixed_batch["out"]
    assert mixed_batch["code"] == 1
    rows = _summary(out)
    ok, bad = rows["a-red-cube-seed7"], rows["a-green-cone-seed0"]
    assert ok["state"] == "complete" and ok["attempts"] == "1"
    assert bad["state"] == "failed" and bad["attempts"] == "2"  # --retries 1: tried twice
    assert bad["error"].startswith("RunError: ") and "no-such-model" in bad["error"]
    assert json.load(open(os.path.join(out, "a-green-cone-seed0", "status.json")))["state"] == "failed"
    page = open(os.path.join(out, "index.html")).read()
    assert "Not complete" in page and "a green cone" in page and "no-such-model" in page
    assert any(line.startswith("failed   a-green-cone-seed0 after 2 attempt(s)") for line in mixed_batch["lines"])


def test_per_row_overrides_reach_the_run_config(mixed_batch):
    out = mixed_batch["out"]
    cfg = yaml.safe_load(open(os.path.join(out, "a-red-cube-seed7", "config.yaml")))
    assert cfg["seed"] == 7 and cfg["train"]["steps"] == 3 and cfg["resolution"] == 16
    assert cfg["guidance"]["name"] == "elbo" and cfg["guidance"]["guidance_scale"] == 2.5
    assert cfg["renderer"]["name"] == "mesh" and cfg["renderer"]["tet_resolution"] == 12  # shared options too
    assert cfg["prior"]["name"] == "shapes"  # an empty CSV cell leaves the default
    failed = yaml.safe_load(open(os.path.join(out, "a-green-cone-seed0", "config.yaml")))
    assert failed["prior"]["name"].endswith("no-such-model") and failed["seed"] == 0 and failed["train"]["steps"] == 4


@pytest.mark.parametrize("content, expected", [
    ("", "holds no prompts"),
    ('{"prompt": "a red cube", "colour": "red"}\n', "row 1: unknown override key 'colour'"),
    ('{"prompt": "a red cube"}\n{"prompt": "a blue cube", "steps": -3}\n', "row 2: train.steps must be >= 0"),
    ('{"prompt": "a red cube", "guidance.guidance-scale": "abc"}\n', "row 1: --guidance.guidance-scale"),
    ('{"prompt": "a hamburger"}\n', "row 1: the shapes prior knows no word"),
])
def test_bad_input_is_refused_before_any_job_starts(tmp_path, capsys, content, expected):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(content)
    assert main(["batch", str(prompts), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_unreachable_address_and_dry_run(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\na blue sphere\n")
    assert main(["batch", str(prompts), "--out", str(tmp_path / "out"), "--address", "127.0.0.1:9"]) == 2
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in capsys.readouterr().err
    assert main(["batch", str(prompts), "--out", str(tmp_path / "out"), "--dry-run", "--seeds", "0,1",
                 "--cpus-per-job", "1", "--steps", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines[:4]] == ["a-red-cube-seed0", "a-red-cube-seed1", "a-blue-sphere-seed0",
                                                      "a-blue-sphere-seed1"]
    assert "5 steps: run" in lines[0]
    assert "4 job(s), 4 to run; each asks Ray for 1 CPU(s) and 0 GPU(s)" in lines[4]
    assert not (tmp_path / "out").exists()


def test_without_ray_batch_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    assert main(["batch", str(tmp_path / "p.txt"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'distillery[batch]'" in err and len(err.strip().splitlines()) == 1


def test_input_files_are_checked_and_shipped_and_run_names_are_stable(tmp_path):
    """A row's image is read on the driver (workers may not see its disk) and a missing one is refused with its
    row; names are <slug>-seed<S>, made unique in file order."""
    from PIL import Image

    from engine.batch import BatchError, component_names, make_jobs
    image = tmp_path / "ref.png"
    Image.new("RGB", (8, 8), "red").save(image)
    prompts = tmp_path / "p.jsonl"
    row = json.dumps({"prompt": "a red cube", "image": str(image)})
    prompts.write_text(f"{row}\n{row}\n")
    jobs = make_jobs(str(prompts), ["--steps", "3"], [0, 1])
    assert [j.name for j in jobs] == ["a-red-cube-seed0", "a-red-cube-seed1", "a-red-cube-seed0-2",
                                      "a-red-cube-seed1-2"]
    assert jobs[0].inputs == {"guidance.image": (str(image), image.read_bytes())}
    assert component_names(jobs[0].cfg)[0] == "csm" and jobs[3].cfg.train.steps == 3 and jobs[3].row == 2
    prompts.write_text(json.dumps({"prompt": "a red cube", "image": str(tmp_path / "gone.png")}) + "\n")
    with pytest.raises(BatchError, match=r"p\.jsonl row 1: .*gone\.png.*no such file"):
        make_jobs(str(prompts), [], None)
