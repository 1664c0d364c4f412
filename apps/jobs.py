"""Job queue of the web app: one running job per device, a FIFO of waiting jobs, per-session folders, clean stop.

The app holds no generation logic: a job is a ``GenerateConfig`` (built by engine.compose, as the CLI's) handed to
``engine.train.generate`` with ``Hooks`` (or a ``TextureConfig`` handed to ``engine.texture.texture_mesh``); when
the run ends (complete, or stopped with a checkpoint), its files are exported with ``engine.export``'s public
functions when that module exists. Everything else here is bookkeeping:
queue positions, progress numbers, zips of the exported files, and deleting sessions nobody has used for a while.

Layout: ``ROOT/<session token>/<job id>/run/`` is the engine's run folder, ``.../downloads/`` holds the zips and
``ROOT/<session token>/uploads/`` the checked uploads. Session tokens are random and never taken from the user, so
a session can only reach its own files. ROOT and every session folder are private (0700); ROOT is locked by one app
at a time, and the session folders an earlier app left behind are deleted when the next one starts.

Isolation (issue #18): by default every job runs in its own worker process (multiprocessing "spawn"), which sends
its progress back through a pipe. A job that crashes (a segfault in native code), hangs past ``Limits.job_timeout_s``
or ignores Stop for ``Limits.stop_grace_s`` ends that process only: the job fails with a message and the app keeps
serving every other session.
"""

import dataclasses
import fcntl
import importlib.util
import logging
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import threading
import time
import traceback
import zipfile
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger("distillery.app")

QUEUED, RUNNING, EXPORTING, DONE, STOPPED, FAILED = "queued", "running", "exporting", "done", "stopped", "failed"
FINAL = (DONE, STOPPED, FAILED)


class QueueFull(Exception):
    """The waiting line is at its limit."""


# -- uploads --------------------------------------------------------------------------------------------------------
IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".webp")
MESH_TYPES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")


@dataclass
class Limits:
    """What the app accepts and keeps."""

    max_image_bytes: int = 16 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_mesh_bytes: int = 64 * 2**20
    max_mesh_faces: int = 500_000
    max_queue: int = 16
    """Waiting jobs at most (over all sessions); more are refused with a message."""
    max_queue_per_client: int = 4
    """Waiting jobs at most per client address (over all its sessions): one client cannot fill the queue."""
    session_ttl_s: float = 3600.0
    """A session's folder is deleted this long after its last use (no job running)."""
    job_timeout_s: float = 6 * 3600.0
    """A job running longer is stopped (then ended): a hang in native code cannot hold a device for ever."""
    stop_grace_s: float = 60.0
    """After Stop (or the app's shutdown), how long a job's worker gets to save before it is ended."""


class UploadError(ValueError):
    """An upload the app cannot use; the message is shown to the user."""


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _check_upload(path: str | None, kinds: tuple[str, ...], max_bytes: int, what: str) -> str:
    if not path or not os.path.isfile(path):
        raise UploadError(f"no {what} was received; upload the file again")
    ext = os.path.splitext(path)[1].lower()
    if ext not in kinds:
        raise UploadError(f"{os.path.basename(path)}: unsupported {what} type {ext or '(none)'}; "
                          f"use {', '.join(kinds)}")
    size = os.path.getsize(path)
    if size > max_bytes:
        raise UploadError(f"{os.path.basename(path)} is {_size(size)}; the {what} limit is {_size(max_bytes)}")
    if size == 0:
        raise UploadError(f"{os.path.basename(path)} is empty")
    return ext


def check_image(path: str | None, limits: Limits) -> str:
    """Validate an uploaded image without decoding its pixels; returns a one-line summary. UploadError if unusable."""
    _check_upload(path, IMAGE_TYPES, limits.max_image_bytes, "image")
    from PIL import Image
    try:
        with Image.open(path) as im:
            (w, h), fmt = im.size, im.format
            if w * h > limits.max_image_pixels:
                raise UploadError(f"{os.path.basename(path)} is {w}x{h} pixels; the limit is "
                                  f"{limits.max_image_pixels:,} pixels; resize it first")
            im.verify()
    except UploadError:
        raise
    except Exception as e:  # UnidentifiedImageError, truncated data, decompression bombs
        raise UploadError(f"{os.path.basename(path)} cannot be read as an image ({type(e).__name__})") from None
    return f"image {w}x{h} {fmt}"


def check_mesh(path: str | None, limits: Limits) -> str:
    """Validate an uploaded mesh by loading it with trimesh; returns a summary. UploadError if unusable."""
    ext = _check_upload(path, MESH_TYPES, limits.max_mesh_bytes, "mesh")
    from foundation.meshio import load_trimesh
    try:
        mesh = load_trimesh(path, ext[1:], force="mesh")
    except Exception as e:  # trimesh raises many kinds on malformed files
        raise UploadError(f"{os.path.basename(path)} cannot be loaded as a mesh ({type(e).__name__})") from None
    faces = len(getattr(mesh, "faces", ()))
    if faces == 0:
        raise UploadError(f"{os.path.basename(path)} holds no triangles")
    if faces > limits.max_mesh_faces:
        raise UploadError(f"{os.path.basename(path)} has {faces:,} faces; the limit is {limits.max_mesh_faces:,}")
    return f"mesh {len(mesh.vertices):,} vertices, {faces:,} faces"


def keep_upload(src: str, folder: str, stem: str) -> str:
    """Copy a checked upload into the session's own folder (uploads live in gradio's shared cache)."""
    os.makedirs(folder, exist_ok=True)
    dst = os.path.join(folder, f"{stem}{os.path.splitext(src)[1].lower()}")
    shutil.copyfile(src, dst)
    return dst


# -- jobs -----------------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One generation request and what it has produced so far."""

    id: str
    session: "Session"
    cfg: object  # engine.config.GenerateConfig, or engine.texture.TextureConfig for kind "texture"
    folder: str
    kind: str = "generate"
    """"generate" (engine.train.generate) or "texture" (engine.texture.texture_mesh)."""
    export: dict = field(default_factory=dict)
    """Options for engine.export.ExportOptions (texture_size, resolution)."""
    state: str = QUEUED
    device: str = ""
    step: int = 0
    total: int = 0
    it_per_s: float = 0.0
    eta_s: float | None = None
    preview: str | None = None
    message: str = ""
    files: dict = field(default_factory=dict)
    """Kind -> path: video, glb, obj_zip, textures_zip, usdz, ply, eval."""
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    version: int = 0
    """Bumped on every change, so watchers only redraw when something moved."""

    @property
    def run_dir(self) -> str:
        return os.path.join(self.folder, "run")

    @property
    def done(self) -> bool:
        return self.state in FINAL

    def update(self, **kw) -> None:
        for k, v in kw.items():
            setattr(self, k, v)
        self.version += 1


@dataclass
class Session:
    """One browser tab (or gradio_client): a random token naming its folder, its jobs, its last use."""

    key: str
    token: str
    folder: str
    jobs: list = field(default_factory=list)
    last_seen: float = field(default_factory=time.time)
    client: str = ""
    """The address the session was opened from; the same session hash from another address is refused."""

    @property
    def active(self) -> Job | None:
        return next((j for j in reversed(self.jobs) if not j.done), None)

    @property
    def latest(self) -> Job | None:
        return self.jobs[-1] if self.jobs else None


def default_devices() -> list[str]:
    import torch
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(n)] or ["cpu"]


class SessionError(ValueError):
    """A request that does not belong to the session it names; the message is shown to the user."""


class RootInUse(RuntimeError):
    """Another app serves from the same output folder."""


TOKEN = re.compile(r"[0-9a-f]{32}")


def _private_dir(path: str) -> None:
    """mkdir with mode 0700 (and make an existing one 0700): session files are nobody else's business."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


class JobManager:
    """A FIFO of jobs served by one worker thread per device; sessions and their folders; periodic clean-up.

    ``isolate``: run each job in its own worker process (the default with the built-in runners; a custom
    ``runner`` runs in the worker thread unless ``isolate=True``, and must then be importable by module name)."""

    def __init__(self, root: str, devices: list[str] | None = None, limits: Limits | None = None, runner=None,
                 cleanup_every_s: float | None = None, isolate: bool | None = None):
        self.root = os.path.abspath(root)
        _private_dir(self.root)
        if os.stat(self.root).st_uid != os.getuid():
            raise RootInUse(f"{self.root} belongs to another user; choose another --output-dir")
        self._lock = open(os.path.join(self.root, ".app.lock"), "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise RootInUse(f"another app is serving from {self.root}; choose another --output-dir") from None
        self.removed_at_start = self._remove_leftovers()
        self.devices = devices or default_devices()
        self.limits = limits or Limits()
        self.isolate = runner is None if isolate is None else isolate
        self.runner = runner or run_job
        self.sessions: dict[str, Session] = {}
        self.waiting: deque[Job] = deque()
        self.running: dict[str, Job] = {}
        self.cv = threading.Condition()
        self.closed = False
        self.threads = [threading.Thread(target=self._work, args=(d,), name=f"job-worker-{d}", daemon=True)
                        for d in self.devices]
        every = cleanup_every_s or max(5.0, min(300.0, self.limits.session_ttl_s / 4))
        self.threads.append(threading.Thread(target=self._janitor, args=(every,), name="job-janitor", daemon=True))
        for t in self.threads:
            t.start()

    def _remove_leftovers(self) -> list[str]:
        """Session folders of an earlier app on this root (nobody can reach them: sessions live in memory)."""
        removed = []
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            if TOKEN.fullmatch(name) and os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        if removed:
            log.info("removed %d session folder(s) left by an earlier app in %s", len(removed), self.root)
        return removed

    # sessions
    def session(self, key: str, client: str = "") -> Session:
        """The session of a gradio session hash, created on first use; touching it keeps it alive. The session is
        bound to the client address that opened it: the same hash sent from another address is refused
        (SessionError), so knowing a hash is not enough to reach a session's jobs and files."""
        with self.cv:
            s = self.sessions.get(key)
            if s is not None and s.client != client:
                raise SessionError("this session belongs to another client; reload the page")
            if s is None:
                token = secrets.token_hex(16)
                s = Session(key, token, os.path.join(self.root, token), client=client)
                _private_dir(s.folder)
                self.sessions[key] = s
            s.last_seen = time.time()
            return s

    def new_job_folder(self, session: Session) -> tuple[str, str]:
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        folder = os.path.join(session.folder, job_id)
        _private_dir(session.folder)  # the janitor may have removed an idle session's folder meanwhile
        os.makedirs(folder, mode=0o700)
        return job_id, folder

    # queue
    def submit(self, session: Session, cfg, job_id: str, folder: str, export: dict | None = None,
               kind: str = "generate") -> Job:
        with self.cv:
            if len(self.waiting) >= self.limits.max_queue:
                raise QueueFull(f"the queue is full ({self.limits.max_queue} jobs waiting); try again in a while")
            mine = sum(1 for j in self.waiting if j.session.client == session.client)
            if mine >= self.limits.max_queue_per_client:
                raise QueueFull(f"you already have {mine} jobs waiting (the limit per client is "
                                f"{self.limits.max_queue_per_client}); wait for them to start")
            cfg = dataclasses.replace(cfg, out=os.path.join(folder, "run"))
            steps = cfg.train.steps if hasattr(cfg, "train") else cfg.steps
            job = Job(job_id, session, cfg, folder, kind, export or {}, total=steps)
            session.jobs.append(job)
            session.last_seen = time.time()
            self.waiting.append(job)
            self.cv.notify_all()
            return job

    def position(self, job: Job) -> int:
        """1-based place in the waiting line; 0 when not waiting."""
        with self.cv:
            for i, j in enumerate(self.waiting):
                if j is job:
                    return i + 1
        return 0

    def stop(self, job: Job) -> None:
        """Ask a job to stop: a waiting job leaves the line; a running one stops after its current step."""
        with self.cv:
            job.stop_event.set()
            if job in self.waiting:
                self.waiting.remove(job)
                job.update(state=STOPPED, message="stopped before it started", finished=time.time())
            self.cv.notify_all()

    def _work(self, device: str) -> None:
        while True:
            with self.cv:
                while not self.waiting and not self.closed:
                    self.cv.wait()
                if self.closed:
                    return
                job = self.waiting.popleft()
                self.running[device] = job
                job.update(state=RUNNING, device=device, started=time.time(), message="loading the prior")
            try:
                runner = self.runner if job.kind == "generate" else RUNNERS[job.kind]
                if self.isolate:
                    run_isolated(job, device, runner, self.limits)
                else:
                    runner(job, device)
            except BaseException as e:  # noqa: BLE001 - a job's failure must never take the worker down
                log.error("job %s crashed:\n%s", job.id, traceback.format_exc())
                job.update(state=FAILED, message=f"internal error: {type(e).__name__}: {e}")
            finally:
                with self.cv:
                    self.running.pop(device, None)
                    if not job.done:
                        job.update(state=FAILED, message=job.message or "the job ended without a result")
                    job.finished = job.finished or time.time()
                    job.session.last_seen = time.time()
                    self.cv.notify_all()

    # clean-up
    def cleanup(self, now: float | None = None) -> list[str]:
        """Delete the folders of sessions idle longer than the TTL with no job waiting or running."""
        now = now or time.time()
        removed = []
        with self.cv:
            for key, s in list(self.sessions.items()):
                if s.active is None and now - s.last_seen > self.limits.session_ttl_s:
                    del self.sessions[key]
                    removed.append(s.folder)
        for folder in removed:
            shutil.rmtree(folder, ignore_errors=True)
        return removed

    def end_session(self, key: str) -> None:
        """The tab closed: stop its jobs; its folder goes at the next clean-up after they end."""
        with self.cv:
            s = self.sessions.get(key)
        if s is not None:
            for j in list(s.jobs):
                if not j.done:
                    self.stop(j)
            s.last_seen = 0.0

    def _janitor(self, every: float) -> None:
        while not self.closed:
            time.sleep(every)
            try:
                self.cleanup()
            except Exception:  # noqa: BLE001
                log.error("clean-up failed:\n%s", traceback.format_exc())

    def close(self, wait: bool = True) -> None:
        """Refuse new work, stop the running jobs and (``wait``) give their workers the time to save a checkpoint
        (up to ``Limits.stop_grace_s``, after which they are ended)."""
        with self.cv:
            self.closed = True
            for j in list(self.waiting):
                j.update(state=STOPPED, message="the app shut down", finished=time.time())
            self.waiting.clear()
            running = list(self.running.values())
            for j in running:
                j.stop_event.set()
            self.cv.notify_all()
        if wait:
            deadline = time.time() + self.limits.stop_grace_s + 15
            for t in self.threads[:len(self.devices)]:
                t.join(max(0.0, deadline - time.time()))
        if self._lock is not None and not self._lock.closed:
            self._lock.close()  # releases the root for the next app


# -- a job in its own worker process ---------------------------------------------------------------------------------
_FROM_WORKER = ("state", "step", "total", "it_per_s", "eta_s", "preview", "message", "files", "finished")


class _WorkerJob:
    """The job as a runner sees it inside the worker process: its fields, and ``update`` sent to the app."""

    def __init__(self, fields: dict, conn, stop_event):
        self.__dict__.update(fields)
        self._conn, self.stop_event = conn, stop_event

    run_dir = Job.run_dir
    done = Job.done

    def update(self, **kw) -> None:
        for k, v in kw.items():
            setattr(self, k, v)
        self._conn.send({k: v for k, v in kw.items() if k in _FROM_WORKER})


def _worker_main(runner, fields: dict, device: str, conn, stop_event) -> None:
    """Entry point of a job's worker process. Ctrl-C at the terminal goes to the app, which asks the worker to stop
    (so it is ignored here); SIGTERM is handled like Ctrl-C by the engine (a checkpoint is saved)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from engine.train import sigterm_as_interrupt

    job = _WorkerJob(fields, conn, stop_event)
    job.update(state=RUNNING)  # "started": the app's clock for the time limit starts now
    try:
        with sigterm_as_interrupt():
            runner(job, device)
    except KeyboardInterrupt:
        job.update(state=STOPPED, message=f"ended at step {job.step} (time limit or shutdown); its checkpoint "
                                          f"was kept", finished=time.time())
    except BaseException as e:  # noqa: BLE001 - reported to the app, which keeps serving
        log.error("job %s failed:\n%s", fields.get("id"), traceback.format_exc())
        job.update(state=FAILED, message=f"internal error: {type(e).__name__}: {e}", finished=time.time())
    finally:
        conn.close()


STARTUP_S = 300.0


def run_isolated(job: Job, device: str, runner, limits: Limits) -> None:
    """Run ``runner(job, device)`` in a worker process and mirror its updates onto ``job``; a crash, a hang past
    ``limits.job_timeout_s`` or a Stop ignored for ``limits.stop_grace_s`` ends the process and fails (or stops)
    the job with a message."""
    ctx = multiprocessing.get_context("spawn")  # never fork a threaded server
    recv, send = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    fields = {k: getattr(job, k) for k in ("id", "cfg", "folder", "kind", "export", "state", "device", "step",
                                           "total", "preview", "message", "files")}
    proc = ctx.Process(target=_worker_main, args=(runner, fields, device, send, stop), name=f"job-{job.id}",
                       daemon=True)
    proc.start()
    send.close()
    # the time limit counts from the worker's first message (its imports can take a while on a busy machine), with
    # STARTUP_S more allowed before it, so a worker stuck before it starts is ended too
    started, stop_at, timed_out, signalled, heard = time.time() + STARTUP_S, None, False, 0, False
    while True:
        try:
            # take every update waiting, then always go on to the checks below: a worker that reports each step
            # faster than the poll would otherwise keep a Stop (or the time limit) from ever reaching it
            waited = 0.2
            while recv.poll(waited):
                update = recv.recv()
                if not heard:
                    heard, started = True, time.time()
                job.update(**update)
                waited = 0
        except (EOFError, OSError):
            pass  # the worker is gone (its end of the pipe closed)
        if not proc.is_alive():
            break
        now = time.time()
        if not timed_out and now - started > limits.job_timeout_s:
            timed_out = True
            job.stop_event.set()
        if job.stop_event.is_set() and stop_at is None:
            stop.set()
            stop_at = now
        if stop_at is not None and now - stop_at > limits.stop_grace_s and signalled < 2:
            (proc.terminate if signalled == 0 else proc.kill)()  # SIGTERM saves a checkpoint; SIGKILL if stuck
            signalled += 1
            stop_at = now - limits.stop_grace_s + 5  # 5 s between SIGTERM and SIGKILL
    proc.join(10)
    recv.close()
    if job.done:
        return
    code = proc.exitcode
    if timed_out:
        msg = f"the job ran past the app's time limit ({limits.job_timeout_s / 60:g} min) and was ended"
    elif code is not None and code < 0 and -code != signal.SIGTERM and -code != signal.SIGKILL:
        msg = (f"the job's worker crashed ({signal.Signals(-code).name}) and was cleaned up; the app is fine. "
               f"The input may trigger a bug in a native library: try another one")
    elif job.stop_event.is_set():
        job.update(state=STOPPED, message="stopped; the worker did not answer in time and was ended",
                   finished=time.time())
        return
    else:
        msg = f"the job's worker ended without a result (exit code {code})"
    log.error("job %s: %s", job.id, msg)
    job.update(state=FAILED, message=msg, finished=time.time())


# -- running one job ------------------------------------------------------------------------------------------------
def progress_hook(job: Job):
    """on_step(done, total, logs) that records step, it/s and ETA (it/s counts from the first finished step, so
    loading the prior is not averaged in)."""
    t0 = [None, 0]

    def on_step(done: int, total: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        if t0[0] is None:
            t0[0], t0[1] = now, done
        rate = (done - t0[1]) / (now - t0[0]) if now > t0[0] and done > t0[1] else 0.0
        eta = (total - done) / rate if rate > 0 else None
        job.update(step=done, total=total, it_per_s=rate, eta_s=eta, message="")

    return on_step


def run_job(job: Job, device: str) -> None:
    """engine.train.generate with progress hooks, then the exports; every outcome ends in a final state."""
    from engine.outputs import read_status
    from engine.train import Hooks, RunError, generate

    cfg = dataclasses.replace(job.cfg, device=device)
    hooks = Hooks(on_step=progress_hook(job), should_stop=job.stop_event.is_set,
                  on_preview=lambda path: job.update(preview=path))
    try:
        run_dir = generate(cfg, hooks=hooks)
    except RunError as e:
        job.update(state=FAILED, message=str(e))
        return
    status = read_status(run_dir)
    stopped = status.get("state") == "interrupted"
    job.update(state=EXPORTING, step=status.get("step", job.step), eta_s=None, message="exporting")
    note = export_outputs(job)
    collect_files(job)
    msg = f"stopped at step {job.step}; kept what was made so far" if stopped else status.get("message", "")
    job.update(state=STOPPED if stopped else DONE, message="; ".join(m for m in (msg, note) if m),
               finished=time.time())


def export_outputs(job: Job) -> str:
    """Export the run's newest checkpoint with engine.export (GLB, OBJ, USDZ; PLY for Gaussians); '' or a note."""
    if importlib.util.find_spec("engine.export") is None:
        return "mesh export is not available in this version (engine.export is missing)"
    from engine import export as ex

    try:
        scene, _ = ex.load_run_scene(job.run_dir, job.device or "cpu")
        formats = list(ex.default_formats(scene)) + ["obj"]
        if importlib.util.find_spec("pxr") is not None:
            formats.append("usdz")
        opts = ex.ExportOptions(name="model", **job.export)
        ex.export_run(job.run_dir, formats, None, opts, scene=scene)
    except Exception as e:  # noqa: BLE001 - a failed export keeps the run and its video
        log.error("export of %s failed:\n%s", job.run_dir, traceback.format_exc())
        return f"export failed ({type(e).__name__}: {e})"
    return ""


def _zip(path: str, members: list[tuple[str, str]]) -> str:
    tmp = f"{path}.tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for src, arc in members:
            z.write(src, arc)
    os.replace(tmp, path)
    return path


def collect_files(job: Job) -> dict:
    """The downloadable files the run folder contains, with zips for the OBJ and the loose textures."""
    run, exp = job.run_dir, os.path.join(job.run_dir, "export")
    downloads = os.path.join(job.folder, "downloads")
    os.makedirs(downloads, exist_ok=True)
    files = {}

    def have(*parts):
        p = os.path.join(*parts)
        return p if os.path.isfile(p) else None

    files["video"] = have(run, "turntable.mp4")
    files["eval"] = have(run, "eval.json")
    files["glb"] = have(exp, "model.glb")
    files["usdz"] = have(exp, "model.usdz")
    files["ply"] = have(exp, "model_splats.ply")
    tex_dir = os.path.join(exp, "model_textures")
    textures = (sorted(f for f in os.listdir(tex_dir) if f.endswith(".png") and not f.startswith("."))  # no temps
                if os.path.isdir(tex_dir) else [])
    if textures:
        files["textures_zip"] = _zip(os.path.join(downloads, "model_textures.zip"),
                                     [(os.path.join(tex_dir, t), f"model_textures/{t}") for t in textures])
    if have(exp, "model.obj"):
        members = [(os.path.join(exp, "model.obj"), "model.obj")]
        if have(exp, "model.mtl"):
            members.append((os.path.join(exp, "model.mtl"), "model.mtl"))
        members += [(os.path.join(tex_dir, t), f"model_textures/{t}") for t in textures]
        files["obj_zip"] = _zip(os.path.join(downloads, "model_obj.zip"), members)
    job.update(files={k: v for k, v in files.items() if v})
    return job.files


def run_texture_job(job: Job, device: str) -> None:
    """engine.texture.texture_mesh on the user's mesh, with progress. Stop ends the run as generate's does (a
    checkpoint, status "interrupted"), and the textured mesh and maps of the step it stopped at are kept."""
    from engine.texture import texture_mesh
    from engine.train import Hooks, RunError

    cfg = dataclasses.replace(job.cfg, device=device)
    hooks = Hooks(on_step=progress_hook(job), should_stop=job.stop_event.is_set)
    try:
        report = texture_mesh(cfg, hooks=hooks)
    except (ValueError, RunError) as e:  # TextureError, PriorError and the run's own failures: user-facing messages
        job.update(state=FAILED, message=str(e), finished=time.time())
        return
    out = job.run_dir
    previews = sorted(f for f in os.listdir(out) if f.startswith("preview_") and f.endswith(".png"))
    textures = [f for f in ("albedo.png", "roughness.png", "metallic.png", "normal.png", "orm.png")
                if os.path.isfile(os.path.join(out, f))]
    files = {"glb": report.get("glb") if os.path.isfile(report.get("glb", "")) else None}
    if textures:
        downloads = os.path.join(job.folder, "downloads")
        os.makedirs(downloads, exist_ok=True)
        files["textures_zip"] = _zip(os.path.join(downloads, "textures.zip"),
                                     [(os.path.join(out, t), f"textures/{t}") for t in textures])
    job.update(files={k: v for k, v in files.items() if v},
               preview=os.path.join(out, previews[-1]) if previews else job.preview)
    if report.get("complete", True):
        job.update(state=DONE, message="", finished=time.time())
        return
    kept = " and ".join(what for what, key in (("the textured mesh", "glb"), ("its maps", "textures_zip"))
                        if key in job.files)
    job.update(state=STOPPED, step=report["steps"], eta_s=None, finished=time.time(),
               message=f"stopped at step {report['steps']}; kept its checkpoint" + (f", {kept} of that step"
                                                                                    if kept else ""))


RUNNERS = {"texture": run_texture_job}
