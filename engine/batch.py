"""`engine batch`: many ordinary generate runs, spread over a Ray cluster (or a local Ray instance).

Each job is one prompt x seed, configured exactly as `engine generate` would configure it (engine.compose, the
shared options parsed by engine/cli.py) and run by ``engine.train.generate``. Ray does the scheduling: every job is a
Ray task asking for ``--cpus-per-job`` / ``--gpus-per-job``; Ray retries a task that raised or whose worker died
(``max_retries`` with ``retry_exceptions``), and a small ``Ledger`` actor counts attempts and running jobs for the
progress bar.

No shared filesystem is assumed. A worker runs its job in a private folder on its own disk (or under the user's
``--checkpoints`` path, e.g. a shared mount) whose name is stable per batch and job, so a retried or rerun job finds
its checkpoints there and resumes. When the run completes the worker sends the run folder back through Ray (every
file except ckpts/) and the driver writes it to DIR/<job>/ in one rename; DIR/<job>/batch.json records where and how
the job ran. Rerunning the same command skips jobs whose DIR/<job>/status.json says complete.

Layout of DIR:
    DIR/<slug>-seed<S>/     one run folder per job (config.yaml, status.json, export/, turntable.mp4, eval.json ...)
    DIR/summary.csv, .json  one row per job (engine/batch_report.py)
    DIR/index.html          static gallery; DIR/contact_sheet.png
"""

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field

from engine.config import GenerateConfig, component_names, slug

# Keys a prompts-file row may carry besides generate's dotted options (e.g. "train.lr-scale", "guidance.image").
ROW_SHORTCUTS = ("prompt", "seed", "guidance", "renderer", "steps", "prior", "image", "preset")
# Input files a job reads; the driver checks them and ships their bytes, since workers may not see its disk.
INPUT_FILES = (("guidance", "image"), ("renderer", "mesh_path"), ("renderer", "init_path"))
# Files of a run folder that stay on the worker (resume state), never sent back.
STAYS_ON_WORKER = ("ckpts",)


class BatchError(ValueError):
    """Refused batch input; the message is one line for the user (exit code 2, before any job starts)."""


@dataclass
class Job:
    """One generate run of the batch."""

    row: int
    """1-based data row of the prompts file (its line for text/JSONL files; header excluded for CSV)."""
    prompt: str
    seed: int
    cfg: GenerateConfig
    name: str = ""
    """Run folder under DIR: ``<prompt slug>-seed<S>``, made unique in file order."""
    inputs: dict = field(default_factory=dict)
    """{"guidance.image": (path, bytes)}: input files shipped to the worker."""


# -- reading the prompts file ---------------------------------------------------------------------------------------
def read_rows(path: str) -> list[tuple[int, dict]]:
    """[(row number, {key: value})] from a text (one prompt a line), JSONL or CSV file. Raises BatchError."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise BatchError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise BatchError(f"{path} is not UTF-8 text") from None
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(path, text)
    elif ext == ".csv":
        rows = _csv_rows(path, text)
    else:
        rows = [(i, {"prompt": line.strip()}) for i, line in enumerate(text.splitlines(), 1)
                if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise BatchError(f"{path} holds no prompts (one prompt a line, or JSONL/CSV rows with a 'prompt')")
    return rows


def _jsonl_rows(path: str, text: str) -> list[tuple[int, dict]]:
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise BatchError(f"{path} row {i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise BatchError(f"{path} row {i}: expected a JSON object, got {type(row).__name__}")
        rows.append((i, row))
    return rows


def _csv_rows(path: str, text: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "prompt" not in [h.strip() for h in reader.fieldnames]:
        raise BatchError(f"{path}: the CSV header needs a 'prompt' column (got {reader.fieldnames or 'none'})")
    rows = []
    for i, row in enumerate(reader, 1):
        if None in row:
            raise BatchError(f"{path} row {i}: more cells than header columns")
        cells = {k.strip(): v.strip() for k, v in row.items() if v is not None and v.strip() != ""}
        if cells:
            rows.append((i, cells))
    return rows


def row_arguments(row: dict, where: str) -> tuple[dict, dict]:
    """(named choices, dotted overrides) of one row: the shortcuts (guidance, renderer, steps, prior, image, preset;
    seed is an override) and any generate option such as ``train.lr-scale``. Raises BatchError naming ``where``."""
    fields = set(GenerateConfig.__dataclass_fields__)
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BatchError(f"{where}: no prompt")
    choices: dict = {"prompt": prompt.strip()}
    overrides: dict = {}
    for key, value in row.items():
        key = str(key).strip()
        if key == "prompt" or value is None:
            continue
        if key in ("seed", "steps"):  # the seed is a typed override, the step count a named choice
            try:
                (overrides if key == "seed" else choices)[key] = int(value)
            except (TypeError, ValueError):
                raise BatchError(f"{where}: {key} must be an integer, got {value!r}") from None
            continue
        if key in ROW_SHORTCUTS:
            if not isinstance(value, str):
                raise BatchError(f"{where}: {key} must be a name, got {value!r}")
            choices[key] = value
            continue
        if key.split(".")[0].replace("-", "_") not in fields:
            raise BatchError(f"{where}: unknown override key {key!r} (use {', '.join(ROW_SHORTCUTS)}, or a generate "
                             f"option such as train.lr-scale or guidance.guidance-scale)")
        overrides[key] = value
    return choices, overrides


def _build_config(generate_args: list[str], choices: dict, overrides: dict, where: str,
                  prompt_errors: bool = True) -> GenerateConfig | None:
    """The job's config through engine.compose, as `engine generate` builds it: the shared options' choices with
    the row's shortcuts over them, the shared typed options, then the row's overrides. Refusals are BatchError
    (with ``prompt_errors`` off, a refused prompt is left to its row: None)."""
    import dataclasses

    from engine.cli import split_generate_argv, typed_overrides
    from engine.compose import ConfigError, PromptError, compose

    try:
        shared, rest, _, _ = split_generate_argv(generate_args)
        if shared.prompt is not None:  # split_generate_argv read a stray first word as the prompt
            raise ConfigError(f"unexpected argument {shared.prompt!r} among the generate options")
        return compose(dataclasses.replace(shared, **choices), overrides, parse=typed_overrides(rest), say=None)
    except PromptError as e:
        if prompt_errors:
            raise BatchError(f"{where}: {e}") from None
        return None
    except ConfigError as e:
        raise BatchError(f"{where}: {e}") from None


def _input_files(cfg: GenerateConfig, where: str) -> dict:
    """{"section.field": (path, bytes)} of the job's input files; a missing one is a BatchError."""
    found = {}
    for section, name in INPUT_FILES:
        path = getattr(getattr(cfg, section), name, "")
        if not path:
            continue
        if not os.path.isfile(path):
            raise BatchError(f"{where}: {section}.{name}: no such file {path}")
        with open(path, "rb") as f:
            found[f"{section}.{name}"] = (path, f.read())
    return found


def make_jobs(path: str, generate_args: list[str], seeds: list[int] | None) -> list[Job]:
    """Every job of the batch, each config built and checked. Raises BatchError (naming the row) on bad input."""
    rows = read_rows(path)
    first_prompt = rows[0][1].get("prompt")
    if isinstance(first_prompt, str) and first_prompt.strip():  # errors in the shared options, named as such
        _build_config(generate_args, {"prompt": first_prompt.strip()}, {}, "generate options", prompt_errors=False)
    jobs: list[Job] = []
    for row, data in rows:
        where = f"{path} row {row}"
        choices, overrides = row_arguments(data, where)
        row_seed = overrides.pop("seed", None)
        for seed in [row_seed] if row_seed is not None else (seeds or [None]):
            seeded = {**overrides, "seed": seed} if seed is not None else overrides
            cfg = _build_config(generate_args, choices, seeded, where)  # a prompt the prior's world lacks: refused
            cfg.train.progress = False  # the batch draws one bar for all jobs
            cfg.out = ""
            jobs.append(Job(row, cfg.prompt, cfg.seed, cfg, inputs=_input_files(cfg, where)))
    _name_jobs(jobs)
    return jobs


def _name_jobs(jobs: list[Job]) -> None:
    seen: dict[str, int] = {}
    for job in jobs:
        base = f"{slug(job.prompt, 40)}-seed{job.seed}"
        seen[base] = seen.get(base, 0) + 1
        job.name = base if seen[base] == 1 else f"{base}-{seen[base]}"


def fingerprint(cfg: GenerateConfig) -> str:
    """A config's identity for resume: everything but where it was written and whether it drew a bar."""
    from engine.config import to_dict
    d = to_dict(cfg)
    d["out"] = ""
    d["train"].pop("progress", None)
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


# -- the worker side (runs inside a Ray task) -----------------------------------------------------------------------
class Ledger:
    """Attempts and running jobs, reported by the tasks themselves (a Ray actor; used by the progress bar)."""

    def __init__(self):
        self.attempts: dict[str, int] = {}
        self.running: dict[str, dict] = {}

    def started(self, name: str, host: str, pid: int) -> int:
        self.attempts[name] = self.attempts.get(name, 0) + 1
        self.running[name] = {"host": host, "pid": pid}
        return self.attempts[name]

    def finished(self, name: str) -> None:
        self.running.pop(name, None)

    def snapshot(self) -> dict:
        return {"attempts": dict(self.attempts), "running": dict(self.running)}


def _count_attempt(run_dir: str) -> int:
    """This attempt's number on this worker's disk (``<run>.attempts``, read and written under the job's lock).

    The Ledger's count is sent without waiting, so a worker killed early can take its report with it; the file
    survives the kill, and the driver records the larger of the two."""
    path = f"{run_dir}.attempts"
    try:
        with open(path) as f:
            n = int(f.read().strip() or 0) + 1
    except (OSError, ValueError):
        n = 1
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(n))
    os.replace(tmp, path)
    return n


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def worker_run_dir(root: str, batch_key: str, name: str) -> str:
    """The job's private run folder on the worker: stable, so a retry or a rerun finds its checkpoints."""
    root = root or os.path.join(tempfile.gettempdir(), "distillery-batch")
    return os.path.join(root, batch_key, name)


def _reset_peak_memory(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets the process's peak RSS (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def _peak_memory_mb(device) -> tuple[float | None, str]:
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_allocated"
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "rss"
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_process"


def _prepare_run(run_dir: str, cfg: GenerateConfig) -> tuple[str | None, int]:
    """('resume' | 'complete' | None, checkpoint step) for the private folder; a stale or foreign one is removed."""
    from engine.checkpoint import latest_checkpoint
    from engine.config import load_config
    from engine.outputs import read_status
    if not os.path.isfile(os.path.join(run_dir, "config.yaml")):
        shutil.rmtree(run_dir, ignore_errors=True)
        return None, 0
    try:
        same = fingerprint(load_config(os.path.join(run_dir, "config.yaml"))) == fingerprint(cfg)
    except ValueError:
        same = False
    status = read_status(run_dir)
    if same and status.get("state") == "complete":
        return "complete", int(status.get("step", 0))
    ckpt = latest_checkpoint(os.path.join(run_dir, "ckpts")) if same else None
    if ckpt is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        return None, 0
    return "resume", int(re.search(r"step_(\d+)", os.path.basename(ckpt)).group(1))


def _pack(run_dir: str) -> dict[str, bytes]:
    """Every file of the run folder except the worker-side resume state, as {relative path: bytes}."""
    files = {}
    for base, dirs, names in os.walk(run_dir):
        rel_base = os.path.relpath(base, run_dir)
        if rel_base == ".":
            dirs[:] = [d for d in dirs if d not in STAYS_ON_WORKER]
        for n in names:
            if n.endswith(".tmp") or ".tmp." in n:
                continue
            rel = os.path.normpath(os.path.join(rel_base, n))
            with open(os.path.join(base, n), "rb") as f:
                files[rel] = f.read()
    return files


def _localise_inputs(cfg: GenerateConfig, run_dir: str, inputs: dict) -> dict[str, bytes]:
    """Point the config's input-file fields at copies in RUN.inputs/ (beside the run folder, which generate wants
    new or empty); returns {local path: bytes} to write."""
    local_inputs = {}
    for key, (path, data) in inputs.items():
        local = os.path.join(f"{run_dir}.inputs", key.replace(".", "_") + "_" + os.path.basename(path))
        section, fld = key.split(".")
        setattr(getattr(cfg, section), fld, local)
        local_inputs[local] = data
    return local_inputs


def run_job(spec: dict, ledger=None) -> dict:
    """One job, on a worker: run (or resume) generate in the private folder, then return its files and facts.

    ``spec``: name, cfg, batch_key, checkpoints (root, "" = worker temp dir), cpus, inputs. Raises what generate
    raises, so that Ray retries it.
    """
    import fcntl  # POSIX workers

    import ray
    import torch

    from engine.train import generate, resolve_device

    name, cfg = spec["name"], spec["cfg"]
    host = socket.gethostname()
    if ledger is not None:  # not waited on: a task blocked in ray.get lends its CPUs to another task
        ledger.started.remote(name, host, os.getpid())
    run_dir = worker_run_dir(spec["checkpoints"], spec["batch_key"], name)
    lock = None
    try:
        os.makedirs(os.path.dirname(run_dir), exist_ok=True)
        lock = open(f"{run_dir}.lock", "w")
        # A worker of a dead driver may still be running this job for a moment: wait for it (the lock goes with
        # its process) rather than share the folder.
        fcntl.flock(lock, fcntl.LOCK_EX)
        attempt = _count_attempt(run_dir)
        torch.set_num_threads(max(1, int(spec.get("cpus") or 1)))
        local_inputs = _localise_inputs(cfg, run_dir, spec.get("inputs", {}))
        state, from_step = _prepare_run(run_dir, cfg)
        for local, data in local_inputs.items():
            os.makedirs(os.path.dirname(local), exist_ok=True)
            with open(local, "wb") as f:
                f.write(data)
        device = resolve_device(cfg.device)
        _reset_peak_memory(device)
        t0 = time.perf_counter()
        if state is None:
            cfg.out = run_dir
            generate(cfg)
        elif state == "resume":
            generate(None, resume=run_dir)
        seconds = time.perf_counter() - t0
        peak, peak_kind = _peak_memory_mb(device)
        files = _pack(run_dir)
        facts = {"host": host, "node_id": ray.get_runtime_context().get_node_id(), "worker_dir": run_dir,
                 "resumed_from": from_step if state == "resume" else 0,
                 "seconds": round(seconds, 2), "peak_mem_mb": None if peak is None else round(peak, 1),
                 "peak_mem_kind": peak_kind, "device": str(device), "attempt": attempt}
        if not spec["checkpoints"]:  # the worker's temp copy is done with; a user-given path keeps the checkpoints
            shutil.rmtree(run_dir, ignore_errors=True)
            _remove(f"{run_dir}.attempts")
            shutil.rmtree(f"{run_dir}.inputs", ignore_errors=True)
        return {"files": files, "facts": facts}
    finally:
        if lock is not None:
            lock.close()
        if ledger is not None:
            ledger.finished.remote(name)


# -- the driver -----------------------------------------------------------------------------------------------------
@dataclass
class BatchOptions:
    """Everything `engine batch` takes besides the generate options."""

    prompts: str
    """The prompts file: one prompt a line, or JSONL/CSV rows with a 'prompt' and per-job overrides."""
    out: str
    """The batch folder: one run folder per job, summary, gallery (required)."""
    generate_args: list[str] = field(default_factory=list)
    """Generate options applied to every job (engine generate --help)."""
    address: str = ""
    """"" starts a local Ray instance sized to this machine; "auto", HOST:PORT or ray://HOST:PORT joins a cluster."""
    gpus_per_job: float | None = None
    """None: 1 when the cluster has GPUs, else 0."""
    cpus_per_job: float | None = None
    """None: 1 for GPU jobs; for CPU jobs, half a node's cores (1 to 4), so that jobs do not thrash the cores."""
    seeds: list[int] | None = None
    """Every prompt runs once per seed (a row's own seed wins); on the command line, comma-separated: 0,1,2."""
    retries: int = 2
    """Tries after the first for a job that raised or whose worker died."""
    checkpoints: str = ""
    """Where workers keep their run folders and checkpoints ("" = each worker's temp dir)."""
    dry_run: bool = False
    """Print the jobs and the resources asked of Ray; run nothing."""
    verbose: bool = False
    """Forward the workers' output to this terminal."""

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise BatchError(f"--retries must be >= 0, got {self.retries}")
        for flag, v in (("--gpus-per-job", self.gpus_per_job), ("--cpus-per-job", self.cpus_per_job)):
            if v is not None and v < 0:
                raise BatchError(f"{flag} must be >= 0, got {v}")


def batch_key(out: str) -> str:
    """Names this batch's private folders on the workers (same DIR from the same driver host: same key)."""
    return hashlib.sha1(f"{socket.gethostname()}:{os.path.abspath(out)}".encode()).hexdigest()[:12]


def job_states(jobs: list[Job], out: str) -> dict[str, str]:
    """{job name: complete | failed | interrupted | running | new} from DIR. A complete run folder with another
    config is refused (BatchError), so that nothing is silently overwritten or mistaken for this job's result."""
    from engine.config import load_config
    from engine.outputs import read_status
    states = {}
    for job in jobs:
        run = os.path.join(out, job.name)
        state = read_status(run).get("state", "new") if os.path.isdir(run) else "new"
        if state == "complete":
            try:
                same = fingerprint(load_config(os.path.join(run, "config.yaml"))) == fingerprint(job.cfg)
            except ValueError:
                same = False
            if not same:
                raise BatchError(f"{run} holds a complete run with another config than row {job.row} asks for; "
                                 f"move it away or use another --out")
        states[job.name] = state
    return states


def check_address(address: str, timeout: float = 5.0) -> None:
    """Refuse an unreachable HOST:PORT or ray://HOST:PORT quickly (ray.init would wait much longer)."""
    if address in ("", "auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise BatchError(f"--address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise BatchError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); start one with "
                         f"`ray start --head` or check --address") from None


def _ray_log_level(verbose: bool) -> int:
    import logging
    return logging.INFO if verbose else logging.ERROR


def connect(address: str, verbose: bool) -> bool:
    """Join the cluster at ``address``, or start a local Ray instance sized to this machine. True if started here
    (then the caller shuts it down); False when Ray was already initialised in this process (tests, notebooks)."""
    import ray
    if ray.is_initialized():
        return False
    check_address(address)
    if address and address != "local":
        try:
            ray.init(address=address, log_to_driver=verbose, logging_level=_ray_log_level(verbose))
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise BatchError(f"cannot join the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
        return True
    import torch
    ray.init(num_cpus=os.cpu_count() or 1, num_gpus=torch.cuda.device_count(), include_dashboard=False,
             object_store_memory=512 * 2**20, log_to_driver=verbose, logging_level=_ray_log_level(verbose))
    return True


def job_resources(opts: BatchOptions, nodes: list[dict]) -> tuple[float, float]:
    """(CPUs, GPUs) per job, from the options or sized to the largest node; refused when no node can hold one."""
    node_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    node_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    gpus = opts.gpus_per_job if opts.gpus_per_job is not None else (1 if node_gpus >= 1 else 0)
    if opts.cpus_per_job is not None:
        cpus = opts.cpus_per_job
    else:
        cpus = 1 if gpus else max(1, min(4, int(node_cpus) // 2))
    if nodes and (cpus > node_cpus or gpus > node_gpus):
        raise BatchError(f"no node can run a job asking for {cpus:g} CPU(s) and {gpus:g} GPU(s) (the largest node "
                         f"has {node_cpus:g} CPU(s), {node_gpus:g} GPU(s)); lower --cpus-per-job/--gpus-per-job")
    return cpus, gpus


def local_nodes() -> list[dict]:
    """This machine as the one node a local Ray instance would have (for --dry-run without a cluster)."""
    import torch
    return [{"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}]


def cluster_nodes() -> list[dict]:
    import ray
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def dry_run_lines(jobs: list[Job], states: dict[str, str], cpus: float, gpus: float, nodes: list[dict],
                  where: str) -> list[str]:
    """What --dry-run prints: one line per job, then the resources Ray would be asked for."""
    lines = []
    action = {"complete": "skip (complete)", "new": "run", "failed": "run again (failed)"}
    for job in jobs:
        guidance, renderer = component_names(job.cfg)
        state = action.get(states[job.name], f"resume ({states[job.name]})")
        lines.append(f"{job.name}: row {job.row}, seed {job.seed}, {guidance}/{renderer}, prior {job.cfg.prior.name}, "
                     f"{job.cfg.train.steps} steps: {state}  [{job.prompt}]")
    todo = sum(states[j.name] != "complete" for j in jobs)
    per_node = [min(n.get("CPU", 0) // cpus if cpus else float("inf"),
                    n.get("GPU", 0) // gpus if gpus else float("inf")) for n in nodes]
    at_once = int(sum(p for p in per_node if p != float("inf"))) if any(p != float("inf") for p in per_node) else 0
    lines.append(f"{len(jobs)} job(s), {todo} to run; each asks Ray for {cpus:g} CPU(s) and {gpus:g} GPU(s): "
                 f"{at_once or 'unbounded'} at once on {where}")
    return lines


def _error_text(e: BaseException) -> str:
    """One line for a job's final error: the task's own exception when Ray wraps one."""
    cause = getattr(e, "cause", None)
    err = cause if isinstance(cause, BaseException) else e
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _restore_config(run_dir: str, job: Job) -> None:
    """config.yaml as the driver configured the job: no worker paths (out, local copies of input files)."""
    from engine.config import load_config, save_config
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        save_config(job.cfg, path)
        return
    cfg = load_config(path)
    cfg.out = ""
    for key, (original, _) in job.inputs.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, original)
    save_config(cfg, path)


def _install(out: str, job: Job, files: dict[str, bytes], record: dict) -> str:
    """Write a job's run folder under DIR in one rename, replacing an earlier failed or partial record."""
    from engine.batch_report import make_poster
    final = os.path.join(out, job.name)
    tmp = os.path.join(out, f".{job.name}.incoming")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for rel, data in files.items():
        path = os.path.normpath(os.path.join(tmp, rel))
        if not path.startswith(tmp + os.sep):
            raise ValueError(f"refusing a file outside the run folder: {rel}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    _restore_config(tmp, job)
    make_poster(tmp)
    with open(os.path.join(tmp, "batch.json"), "w") as f:
        json.dump(record, f, indent=2)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _record(job: Job, **facts) -> dict:
    return {"name": job.name, "row": job.row, "prompt": job.prompt, "seed": job.seed, **facts}


def _record_failure(out: str, job: Job, error: str, attempts: int) -> None:
    from engine.outputs import set_status
    files = {}
    _install(out, job, files, _record(job, state="failed", error=error, attempts=attempts))
    set_status(os.path.join(out, job.name), "failed", 0, error)


def _job_line(job: Job, record: dict, out: str) -> str:
    if record.get("state") == "failed":
        return f"failed   {job.name} after {record.get('attempts', '?')} attempt(s): {record.get('error')}"
    from engine.outputs import read_status
    status = read_status(os.path.join(out, job.name))
    ev = status.get("eval") or {}
    score = f", PSNR {ev['psnr']:.2f} dB, IoU {ev['iou']:.3f}" if "psnr" in ev else ""
    resumed = f", resumed from step {record['resumed_from']}" if record.get("resumed_from") else ""
    return (f"complete {job.name}: {status.get('step', '?')} steps in {record.get('seconds', 0):.1f} s on "
            f"{record.get('host')}{resumed}{score}")


def run_batch(opts: BatchOptions, echo=print) -> int:
    """The whole batch: check every job, then run the unfinished ones on Ray; returns the exit code
    (0: all complete, 1: some failed, 130: interrupted). Bad input raises BatchError before any job starts."""
    from engine.batch_report import write_report
    jobs = make_jobs(opts.prompts, opts.generate_args, opts.seeds)
    if os.path.exists(opts.out) and not os.path.isdir(opts.out):
        raise BatchError(f"--out {opts.out} exists and is not a folder")
    states = job_states(jobs, opts.out)
    if opts.dry_run:
        nodes = local_nodes()
        cpus, gpus = job_resources(opts, [] if opts.address else nodes)
        where = f"this machine ({nodes[0]['CPU']} CPUs, {nodes[0]['GPU']} GPUs)" if not opts.address else \
            f"the cluster at {opts.address} (not contacted; its size decides the defaults)"
        for line in dry_run_lines(jobs, states, cpus, gpus, [] if opts.address else nodes, where):
            echo(line)
        return 0
    if all(s == "complete" for s in states.values()):
        write_report(opts.out, jobs)
        echo(f"all {len(jobs)} job(s) are complete in {opts.out}; nothing to run")
        return 0
    check_address(opts.address)
    os.makedirs(opts.out, exist_ok=True)
    started = connect(opts.address, opts.verbose)
    try:
        cpus, gpus = job_resources(opts, cluster_nodes())
        code = _run_jobs(opts, jobs, states, cpus, gpus, echo)
    finally:
        write_report(opts.out, jobs)
        if started:
            import ray
            ray.shutdown()
    echo(f"summary: {os.path.join(opts.out, 'summary.csv')}; gallery: {os.path.join(opts.out, 'index.html')}")
    return code


def _run_jobs(opts: BatchOptions, jobs: list[Job], states: dict, cpus: float, gpus: float, echo) -> int:
    """Submit the unfinished jobs as Ray tasks and gather them as they finish (progress bar + one line each)."""
    import ray
    from tqdm import tqdm

    todo = [j for j in jobs if states[j.name] != "complete"]
    ledger = ray.remote(Ledger).options(num_cpus=0).remote()
    task = ray.remote(run_job)
    key = batch_key(opts.out)
    refs = {}
    for job in todo:
        spec = {"name": job.name, "cfg": job.cfg, "batch_key": key, "checkpoints": opts.checkpoints, "cpus": cpus,
                "inputs": job.inputs}
        ref = task.options(num_cpus=cpus, num_gpus=gpus, max_retries=opts.retries, retry_exceptions=True,
                           name=f"distillery-batch:{job.name}").remote(spec, ledger)
        refs[ref] = job
    done, failed = len(jobs) - len(todo), 0
    bar = tqdm(total=len(jobs), initial=done, desc="batch", unit="job", dynamic_ncols=True)
    bar.set_postfix(done=done, failed=0, running=0)
    try:
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=2.0)
            snap = ray.get(ledger.snapshot.remote())
            for ref in ready:
                job = refs.pop(ref)
                try:
                    result = ray.get(ref)
                    facts = dict(result["facts"])
                    attempts = max(snap["attempts"].get(job.name, 1), facts.pop("attempt", 1))
                    record = _record(job, state="complete", attempts=attempts, **facts)
                    _install(opts.out, job, result["files"], record)
                    done += 1
                except ray.exceptions.RayError as e:
                    record = _record(job, state="failed", error=_error_text(e),
                                     attempts=snap["attempts"].get(job.name, opts.retries + 1))
                    _record_failure(opts.out, job, record["error"], record["attempts"])
                    failed += 1
                bar.update(1)
                with tqdm.external_write_mode():
                    echo(_job_line(job, record, opts.out))
            running = len([n for n in snap["running"] if n in {j.name for j in refs.values()}])
            bar.set_postfix(done=done, failed=failed, running=running)
    except KeyboardInterrupt:
        # ray.cancel raises KeyboardInterrupt inside each running task: generate saves a checkpoint and marks its
        # private run interrupted, so rerunning the same command resumes it.
        for ref in refs:
            ray.cancel(ref)
        ray.wait(list(refs), num_returns=len(refs), timeout=30.0)
        bar.close()
        echo(f"interrupted: {len(refs)} job(s) unfinished; rerun the same command to resume them")
        return 130
    bar.close()
    echo(f"{done} complete, {failed} failed of {len(jobs)} job(s)")
    return 1 if failed else 0
