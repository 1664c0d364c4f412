"""The web front end (`engine app`): type a prompt, watch it form, stop it, view it in 3D, download it.

It holds no generation logic (style.md §4.5): the widgets are turned into the `engine generate` command line and
parsed by the CLI's own ``build_generate_config``, so the app and the CLI build the same typed ``GenerateConfig``;
jobs run ``engine.train.generate`` in apps/jobs.py (one per device, FIFO, clean stop) and their files come from the
run folder and ``engine.export``. Each browser session gets its own folder, deleted after ``session_ttl_s`` idle.
"""

import contextlib
import html
import importlib.util
import io
import json
import os
import re
import secrets
import shlex
import tempfile
import threading
import time

from apps.jobs import (
    DONE,
    EXPORTING,
    FAILED,
    IMAGE_TYPES,
    MESH_TYPES,
    QUEUED,
    RUNNING,
    STOPPED,
    JobManager,
    Limits,
    QueueFull,
    UploadError,
    check_image,
    check_mesh,
    keep_upload,
)

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
PRIOR_SHAPES, PRIOR_MODEL = "shapes (built-in, runs on a CPU)", "diffusion model (hub id or folder)"
INPUT_KEYS = ("prompt", "negative_prompt", "guidance", "renderer", "prior", "model_id", "steps", "seed",
              "randomize_seed", "cfg_scale", "resolution", "image", "lr_scale", "preview_every", "video_frames",
              "texture_size", "mesh_resolution", "overrides")
OUTPUTS = ("status", "preview", "video", "glb", "obj_zip", "textures_zip", "usdz", "ply",
           "seed", "details")
DOWNLOADS = (("glb", "GLB"), ("obj_zip", "OBJ (zip)"), ("textures_zip", "Textures (zip)"), ("usdz", "USDZ"),
             ("ply", "PLY (Gaussians)"))
# Overrides that would reach the file system or replace a widget are refused in the free-form field.
_REFUSED_KEYS = ("out", "resume", "load-config", "help", "device", "prior", "preset", "prompt", "negative-prompt",
                 "steps", "seed")
_REFUSED_PARTS = ("dir", "path", "file", "image", "adapter", "cache", "config")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_BUILD_LOCK = threading.Lock()


class InputError(ValueError):
    """Bad input from the form; the message is shown to the user."""


# -- widgets -> the CLI's GenerateConfig -------------------------------------------------------------------------------
def build_config(argv: list[str]):
    """GenerateConfig from `engine generate` argv via the CLI's own parser; InputError with its message if refused."""
    from engine.cli import build_generate_config

    buf = io.StringIO()
    with _BUILD_LOCK, contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
        try:
            cfg, _ = build_generate_config(argv)
            return cfg
        except SystemExit:
            pass
    text = _ANSI.sub("", buf.getvalue())
    lines = [ln.strip(" │|-─╭╮╰╯") for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and "--help" not in ln and "helptext" not in ln.lower()]
    lines = [ln for i, ln in enumerate(lines) if not any(ln in other for other in lines[i + 1:])]
    msg = " ".join(lines).replace("engine: error: ", "") or "the settings were refused"
    raise InputError(msg)


def check_overrides(text: str) -> list[str]:
    """Free-form typed overrides (`--guidance.lora-lr 1e-4`), minus anything that names a file or a widget."""
    try:
        tokens = shlex.split(text or "")
    except ValueError as e:
        raise InputError(f"advanced overrides: {e}") from None
    for tok in tokens:
        if not tok.startswith("--"):
            continue
        key = tok[2:].split("=", 1)[0].replace("_", "-")
        parts = key.split(".")
        if key in _REFUSED_KEYS or any(p in _REFUSED_KEYS[:5] for p in parts) or \
                any(bad in key for bad in _REFUSED_PARTS):
            raise InputError(f"advanced overrides: {tok.split('=')[0]} cannot be set here (it names a file, a "
                             f"device or a field that has its own control)")
    return tokens


def check_model_id(name: str, allow_local: bool) -> str:
    name = (name or "").strip()
    if not name:
        raise InputError("the model id is empty; give a hub id such as " + DEFAULT_MODEL)
    if allow_local:
        return name
    local = name.startswith(("/", ".", "~")) or ".." in name or os.path.exists(name)
    if local or not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name):
        raise InputError(f"{name!r} is not a hub id (organisation/name); local model folders are disabled "
                         f"(start the app with --allow-local-models)")
    return name


def form_argv(form: dict, allow_local_models: bool = False) -> list[str]:
    """The `engine generate` argv equivalent to the form (keys as in ``App.inputs``)."""
    prompt = (form.get("prompt") or "").strip()
    if not prompt:
        raise InputError('the prompt is empty; describe the object, e.g. "a red cube"')
    guidance, renderer = form["guidance"], form["renderer"]
    prior = "shapes" if form["prior"] == PRIOR_SHAPES else check_model_id(form.get("model_id"), allow_local_models)
    # as typed on the command line: the prompt first (argparse reads a token with a space as positional)
    argv = [f"--prompt={prompt}" if prompt.startswith("-") and " " not in prompt else prompt,
            f"--negative-prompt={form.get('negative_prompt') or ''}",
            f"--guidance={guidance}", f"--renderer={renderer}", f"--prior={prior}",
            f"--steps={int(form['steps'])}", f"--seed={int(form['seed'])}", f"--resolution={int(form['resolution'])}"]
    from guidance import GUIDANCES
    fields = {f.replace("_", "-") for f in GUIDANCES[guidance].__dataclass_fields__}
    if form.get("cfg_scale") is not None and "guidance-scale" in fields:
        argv.append(f"--guidance.guidance-scale={float(form['cfg_scale'])}")
    every = int(form.get("preview_every") or 0) or max(1, int(form["steps"]) // 10)
    argv += [f"--train.preview-every={every}", "--train.no-progress", "--train.no-export"]
    if form.get("lr_scale") is not None:
        argv.append(f"--train.lr-scale={float(form['lr_scale'])}")
    if form.get("video_frames") is not None:
        argv.append(f"--train.video-frames={int(form['video_frames'])}")
    if form.get("image"):
        if guidance != "csm":
            raise InputError("an image prompt is used by the csm guidance; choose csm or remove the image")
        argv.append(f"--guidance.image={form['image']}")
    return argv + check_overrides(form.get("overrides") or "")


def component_defaults(guidance: str, prior_kind: str, model_id: str) -> dict:
    """Steps and CFG scale the CLI would use for these choices (its presets), for the form's sliders."""
    prior = "shapes" if prior_kind == PRIOR_SHAPES else (model_id or DEFAULT_MODEL)
    cfg = build_config(["--prompt=x", f"--guidance={guidance}", f"--prior={prior}"])
    return {"steps": cfg.train.steps, "cfg_scale": getattr(cfg.guidance, "guidance_scale", None),
            "resolution": cfg.resolution}


def texture_available() -> bool:
    return importlib.util.find_spec("engine.texture") is not None


def texture_argv(form: dict, mesh_path: str, allow_local_models: bool = False) -> list[str]:
    """The `engine texture MESH PROMPT` argv equivalent to the form."""
    prompt = (form.get("prompt") or "").strip()
    if not prompt:
        raise InputError('the prompt is empty; describe the surface, e.g. "a red cube"')
    prior = "shapes" if form["prior"] == PRIOR_SHAPES else check_model_id(form.get("model_id"), allow_local_models)
    return [mesh_path, prompt, f"--prior={prior}", f"--guidance={form['guidance']}",
            f"--guidance-scale={float(form.get('cfg_scale') or 0.0)}", f"--steps={int(form['steps'])}",
            f"--resolution={int(form['resolution'])}", f"--seed={int(form['seed'])}",
            f"--texture-resolution={int(form.get('texture_size') or 128)}"]


def build_texture_config(argv: list[str]):
    """TextureConfig from `engine texture` argv via that command's own parser; InputError if refused."""
    import dataclasses

    from engine.cli_texture import _parser
    from engine.texture import TextureConfig
    from guidance import GUIDANCES

    buf = io.StringIO()
    with _BUILD_LOCK, contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
        try:
            args = vars(_parser().parse_args(argv))
        except SystemExit:
            raise InputError(buf.getvalue().strip().splitlines()[-1] if buf.getvalue().strip()
                             else "the texture settings were refused") from None
    if args["guidance"] not in GUIDANCES:
        raise InputError(f"unknown guidance {args['guidance']!r}")
    names = {f.name for f in dataclasses.fields(TextureConfig)}
    return TextureConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items() if k in names})


def model_available(model_id: str) -> bool:
    """Whether a diffusers model is on this machine (a folder, or in the hub cache) and a GPU can run it."""
    try:
        import torch
        if not torch.cuda.is_available():
            return False
        if os.path.isfile(os.path.join(model_id, "model_index.json")):
            return True
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(model_id, "model_index.json"), str)
    except Exception:  # noqa: BLE001 - any doubt means "use the shapes prior"
        return False


# -- rendering job state ----------------------------------------------------------------------------------------------
def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


TITLES = {"error": "Not started", QUEUED: "Queued", RUNNING: "Generating", EXPORTING: "Exporting", DONE: "Done",
          STOPPED: "Stopped", FAILED: "Failed"}


def status_html(state: str, step: int = 0, total: int = 0, it_per_s: float = 0.0, eta_s: float | None = None,
                message: str = "", position: int = 0, running_elsewhere: int = 0) -> str:
    """The status box: state, a progress bar with step / it/s / ETA, the queue position, and any message."""
    title = TITLES.get(state, state or "Ready")
    if state == QUEUED:
        detail = f"position {position} in the queue" + (f" ({running_elsewhere} job(s) running)"
                                                         if running_elsewhere else "")
    elif total:
        detail = f"step {step}/{total} · {it_per_s:.2f} it/s · ETA {_clock(eta_s)}"
    else:
        detail = ""
    bar = f'<progress id="job-progress" value="{step}" max="{max(total, 1)}"></progress>' if total else ""
    cls = "job-error" if state in (FAILED, "error") else "job-message"
    msg = f'<div class="{cls}">{html.escape(message)}</div>' if message else ""
    return (f'<div id="job-status" data-state="{html.escape(state or "idle")}" data-step="{step}" '
            f'data-total="{total}"><b>{html.escape(title)}</b> <span class="job-detail">{html.escape(detail)}'
            f"</span>{bar}{msg}</div>")


def error_html(message: str) -> str:
    return status_html("error", message=message)


# -- the app ------------------------------------------------------------------------------------------------------
class App:
    """Builds the Blocks and owns the JobManager; ``launch`` serves it on 127.0.0.1 unless told otherwise."""

    def __init__(self, output_dir: str | None = None, limits: Limits | None = None, devices: list[str] | None = None,
                 model_id: str = DEFAULT_MODEL, allow_local_models: bool = False, poll_s: float = 0.3,
                 form_defaults: dict | None = None):
        self.limits = limits or Limits()
        self.output_dir = output_dir or os.path.join(tempfile.gettempdir(), "distillery-app")
        self.manager = JobManager(self.output_dir, devices, self.limits)
        self.model_id, self.allow_local_models, self.poll_s = model_id, allow_local_models, poll_s
        self.default_steps = (form_defaults or {}).get("steps")
        self.form_defaults = form_defaults or {}
        self.demo = self._build()

    # event handlers
    def _session(self, request):
        return self.manager.session(getattr(request, "session_hash", None) or "anonymous")

    def _outputs(self, job=None, seed=None, error: str = "", **status) -> tuple:
        """One value per OUTPUTS entry."""
        import gradio as gr

        if job is None:
            html_ = error_html(error) if error else status_html(status.get("state", ""), message=status.get("msg", ""))
            buttons = [gr.DownloadButton(value=None, interactive=False) for _ in DOWNLOADS]
            return (html_, None, None, *buttons, seed if seed is not None else gr.skip(), None)
        f = job.files
        pos = self.manager.position(job) if job.state == QUEUED else 0
        html_ = status_html(job.state, job.step, job.total, job.it_per_s, job.eta_s, job.message, pos,
                            len(self.manager.running))
        buttons = [gr.DownloadButton(value=f.get(k), interactive=k in f) for k, _ in DOWNLOADS]
        details = {"job": job.id, "state": job.state, "prompt": job.cfg.prompt, "seed": job.cfg.seed,
                   "step": job.step, "steps": job.total, "device": job.device, "message": job.message}
        if f.get("eval"):
            with open(f["eval"]) as fh:
                details["eval"] = json.load(fh)
        return (html_, job.preview, f.get("video"), *buttons, job.cfg.seed, details)

    def viewers(self, request=None) -> tuple:
        """The 3D viewers' values (GLB; Gaussians PLY when there is one) for the session's finished job.

        They are set once, after the streaming event ends: a Model3D whose value arrives twice in quick succession
        (a generator's last yield, then its completion) can be left without its canvas."""
        import gradio as gr

        job = self._session(request).latest
        f = job.files if job is not None and job.done else {}
        return f.get("glb"), gr.update(value=f.get("ply"), visible="ply" in f)

    def generate(self, *values, request=None, mesh: str | None = None, texture: bool = False):
        """Check the form, queue the job, then stream its progress until it ends (a generator).

        ``texture``: texture the uploaded ``mesh`` with engine.texture instead of generating from scratch."""
        form = dict(zip(self.input_keys, values))
        session = self._session(request)
        seed = secrets.randbelow(2**31) if form.get("randomize_seed") else int(form.get("seed") or 0)
        form["seed"] = seed
        try:
            if session.active is not None:
                raise InputError("this session already has a job queued or running; stop it first")
            if texture:
                summary = check_mesh(mesh, self.limits)
                if not texture_available():
                    raise InputError(f"the mesh is fine ({summary}), but texturing your own mesh is not available "
                                     f"in this version yet (engine.texture is missing)")
            if form.get("image"):
                check_image(form["image"], self.limits)
            job_id, folder = self.manager.new_job_folder(session)
            uploads = os.path.join(folder, "uploads")
            if texture:
                mesh = keep_upload(mesh, uploads, "mesh")
                cfg = build_texture_config(texture_argv(form, mesh, self.allow_local_models))
                job = self.manager.submit(session, cfg, job_id, folder, kind="texture")
            else:
                if form.get("image"):
                    form["image"] = keep_upload(form["image"], uploads, "image_prompt")
                cfg = build_config(form_argv(form, self.allow_local_models))
                export = {"texture_size": int(form.get("texture_size") or 512),
                          "resolution": int(form.get("mesh_resolution") or 128)}
                job = self.manager.submit(session, cfg, job_id, folder, export)
        except (InputError, UploadError, QueueFull) as e:
            yield self._outputs(None, seed=seed, error=str(e))
            return
        last = None
        while True:
            seen = (job.version, self.manager.position(job) if job.state == QUEUED else 0)
            if seen != last:
                last = seen
                out = self._outputs(job)
                if job.done:
                    yield out
                    return
                yield out
            time.sleep(self.poll_s)

    def stop(self, request=None) -> str:
        session = self._session(request)
        job = session.active
        if job is None:
            return "Nothing to stop."
        self.manager.stop(job)
        return "Stopping after the current step; what was made so far is kept."

    def check_image_upload(self, path):
        if not path:
            return ""
        try:
            return f"✔ {check_image(path, self.limits)}; used with the csm guidance."
        except UploadError as e:
            return f"✖ {e}"

    def check_mesh_upload(self, path):
        if not path:
            return ""
        try:
            summary = check_mesh(path, self.limits)
        except UploadError as e:
            return f"✖ {e}"
        if not texture_available():
            return f"✔ {summary}. Texturing your own mesh is not available in this version yet."
        return f"✔ {summary}. Press Texture mesh: the prompt, prior, guidance, steps and seed above are used."

    def defaults(self, guidance, prior_kind, model_id):
        import gradio as gr
        try:
            d = component_defaults(guidance, prior_kind, model_id)
        except InputError:
            return gr.skip(), gr.skip()
        cfg = d["cfg_scale"]
        steps = self.default_steps or d["steps"]
        return (gr.update(value=steps),
                gr.update(value=cfg, interactive=True) if cfg is not None else gr.update(interactive=False))

    # layout
    def _build(self):
        import gradio as gr

        from guidance import GUIDANCES
        from renderers import RENDERERS

        have_model = model_available(self.model_id)
        prior0 = PRIOR_MODEL if have_model else PRIOR_SHAPES
        d = component_defaults("sds", prior0, self.model_id)
        steps0 = self.default_steps or d["steps"]
        gr_inputs = {}

        def dv(key, default):
            return self.form_defaults.get(key, default)
        with gr.Blocks(title="Distillery", delete_cache=(600, max(600, int(self.limits.session_ttl_s)))) as demo:
            gr.Markdown("# Distillery: text to 3D\nType a prompt, watch it form, stop it when you like, then view "
                        "and download it. Keep this tab open while the job runs.")
            with gr.Row():
                with gr.Column(scale=1):
                    gr_inputs["prompt"] = gr.Textbox(label="Prompt", placeholder="a red cube", elem_id="prompt")
                    gr_inputs["negative_prompt"] = gr.Textbox(label="Negative prompt", elem_id="negative-prompt")
                    with gr.Row():
                        gr_inputs["guidance"] = gr.Dropdown(list(GUIDANCES), value="sds", label="Guidance")
                        gr_inputs["renderer"] = gr.Dropdown(list(RENDERERS), value=next(iter(RENDERERS)),
                                                            label="Renderer")
                    gr_inputs["prior"] = gr.Radio([PRIOR_SHAPES, PRIOR_MODEL], value=prior0, label="Prior")
                    gr_inputs["model_id"] = gr.Textbox(self.model_id, label="Model id (diffusion prior)")
                    gr_inputs["steps"] = gr.Slider(1, 20000, value=dv("steps", steps0), step=1, label="Steps",
                                                   elem_id="steps")
                    with gr.Row():
                        gr_inputs["seed"] = gr.Number(0, label="Seed", precision=0, elem_id="seed")
                        gr_inputs["randomize_seed"] = gr.Checkbox(dv("randomize_seed", True), label="Randomize seed")
                    gr_inputs["cfg_scale"] = gr.Slider(0, 200, value=d["cfg_scale"] or 0, step=0.5,
                                                       label="CFG scale")
                    gr_inputs["resolution"] = gr.Slider(16, 512, value=dv("resolution", d["resolution"]), step=8,
                                                        label="Render resolution")
                    with gr.Accordion("Image prompt (csm guidance)", open=False):
                        gr_inputs["image"] = gr.File(label="Reference image", file_types=list(IMAGE_TYPES),
                                                    type="filepath")
                        image_msg = gr.Markdown(elem_id="image-message")
                    with gr.Accordion("Texture your own mesh", open=False):
                        mesh = gr.File(label="Mesh", file_types=list(MESH_TYPES), type="filepath")
                        texture_btn = gr.Button("Texture mesh")
                        mesh_msg = gr.Markdown(elem_id="mesh-message")
                    with gr.Accordion("Advanced settings", open=False):
                        gr_inputs["lr_scale"] = gr.Number(dv("lr_scale", 1.0), label="Learning-rate scale")
                        gr_inputs["preview_every"] = gr.Number(dv("preview_every", 0), precision=0,
                                                               label="Preview every N steps (0: steps/10)")
                        gr_inputs["video_frames"] = gr.Number(dv("video_frames", 48), label="Turntable frames",
                                                              precision=0)
                        gr_inputs["texture_size"] = gr.Number(dv("texture_size", 512), label="Texture size",
                                                              precision=0)
                        gr_inputs["mesh_resolution"] = gr.Number(dv("mesh_resolution", 128), precision=0,
                                                                 label="Export marching-cubes grid")
                        gr_inputs["overrides"] = gr.Textbox(label="Typed overrides (as on the command line)",
                                                            placeholder="--cameras.elevation 0 30")
                    with gr.Row():
                        run_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                        stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                    stop_msg = gr.Markdown(elem_id="stop-message")
                with gr.Column(scale=1):
                    status = gr.HTML(status_html(""), elem_id="status")
                    preview = gr.Image(label="Preview (four views, refreshed while it runs)", interactive=False,
                                       elem_id="preview", height=170)
                    video = gr.Video(label="Turntable", autoplay=True, loop=True, interactive=False, height=260)
                    model = gr.Model3D(label="3D model (GLB)", elem_id="model3d", height=360)
                    splats = gr.Model3D(label="Gaussians (PLY)", visible=False)
                    with gr.Row():
                        downloads = [gr.DownloadButton(label, interactive=False, elem_id=f"dl-{key}", size="sm")
                                     for key, label in DOWNLOADS]
                    with gr.Accordion("Run details", open=False):
                        seed_used = gr.Number(label="Seed used", precision=0, interactive=False)
                        details = gr.JSON(label="Job")
            self.input_keys = list(gr_inputs)
            assert self.input_keys == list(INPUT_KEYS), self.input_keys
            outputs = [status, preview, video, *downloads, seed_used, details]
            limit = self.limits.max_queue + len(self.manager.devices)

            def generate(prompt, negative_prompt, guidance, renderer, prior, model_id, steps, seed, randomize_seed,
                         cfg_scale, resolution, image, lr_scale, preview_every, video_frames, texture_size,
                         mesh_resolution, overrides, request: gr.Request):
                form = dict(locals())
                del form["request"]
                yield from self.generate(*(form[k] for k in self.input_keys), request=request)

            def stop(request: gr.Request):
                return self.stop(request=request)

            def texture(prompt, negative_prompt, guidance, renderer, prior, model_id, steps, seed, randomize_seed,
                        cfg_scale, resolution, image, lr_scale, preview_every, video_frames, texture_size,
                        mesh_resolution, overrides, mesh_path, request: gr.Request):
                form = dict(locals())
                del form["request"], form["mesh_path"]
                yield from self.generate(*(form[k] for k in self.input_keys), request=request, mesh=mesh_path,
                                         texture=True)

            def viewers(request: gr.Request):
                return self.viewers(request=request)

            def clear():
                return None, gr.update(value=None, visible=False)

            run_btn.click(clear, None, [model, splats], queue=False, api_name=False).then(
                generate, list(gr_inputs.values()), outputs, api_name="generate", concurrency_limit=limit,
                concurrency_id="watch").then(viewers, None, [model, splats], api_name=False)
            stop_btn.click(stop, None, stop_msg, api_name="stop", concurrency_limit=None)
            texture_btn.click(clear, None, [model, splats], queue=False, api_name=False).then(
                texture, [*gr_inputs.values(), mesh], outputs, api_name="texture", concurrency_limit=limit,
                concurrency_id="watch").then(viewers, None, [model, splats], api_name=False)
            mesh.change(self.check_mesh_upload, mesh, mesh_msg, api_name="check_mesh", concurrency_limit=None)
            gr_inputs["image"].change(self.check_image_upload, gr_inputs["image"], image_msg, api_name="check_image",
                                      concurrency_limit=None)
            for w in (gr_inputs["guidance"], gr_inputs["prior"]):
                w.change(self.defaults, [gr_inputs["guidance"], gr_inputs["prior"], gr_inputs["model_id"]],
                         [gr_inputs["steps"], gr_inputs["cfg_scale"]], api_name=False)

            def unload(request: gr.Request):
                self.manager.end_session(request.session_hash)

            demo.unload(unload)
            from apps.material_tab import add_material_tab  # issue #16: the Material tab
            add_material_tab(self)
        demo.queue(max_size=2 * limit, default_concurrency_limit=limit)
        return demo

    def launch(self, host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True, **kw):
        max_bytes = max(self.limits.max_image_bytes, self.limits.max_mesh_bytes)
        css = "#job-status progress{width:100%;height:14px} .job-error{color:#c0392b;font-weight:600}"
        return self.demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                                ssr_mode=False, max_file_size=max_bytes + 2**20, show_error=True, css=css,
                                quiet=True, **kw)

    def close(self) -> None:
        self.manager.close()
        self.demo.close()
