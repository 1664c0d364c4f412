"""The web front end (`engine app`): type a prompt, watch it form, stop it, view it in 3D, download it.

It holds no generation logic (style.md §4.5): the widgets map directly to ``engine.compose`` (named choices plus
dotted overrides), the one builder the CLI also uses, so the app and the CLI build the same typed ``GenerateConfig``;
jobs run ``engine.train.generate`` in apps/jobs.py (one per device, FIFO, clean stop) and their files come from the
run folder and ``engine.export``. Each browser session gets its own folder, deleted after ``session_ttl_s`` idle.
"""

import dataclasses
import html
import importlib.util
import json
import os
import re
import secrets
import shlex
import tempfile
import time
import typing

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
    SessionError,
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
# The free-form overrides field takes an allow-list (issue #18): the numeric and true/false fields of these sections
# (never a string, so never a path or a module name), plus the few train.* fields below; widgets own the rest.
OVERRIDE_SECTIONS = ("cameras", "prompts", "background", "guidance", "renderer")
OVERRIDE_TRAIN = ("train.lr-scale", "train.log-every", "train.eval-views", "train.eval-every")
# The app's limits, tighter than engine.config.BOUNDS (which still applies): what one shared machine can afford.
APP_BOUNDS: dict[str, tuple[float, float]] = {
    "resolution": (16, 512), "particles": (1, 4), "train.steps": (1, 20000), "train.keep_checkpoints": (1, 2),
    "train.video_frames": (0, 240), "train.video_resolution": (16, 512), "train.eval_views": (0, 16),
    "train.export_texture_size": (8, 2048), "cameras.batch_size": (1, 8),
    "renderer.samples_per_ray": (1, 512), "renderer.importance_samples": (0, 256),
    "renderer.log2_hashmap_size": (8, 20), "renderer.max_resolution": (1, 2048),
    "renderer.occupancy_resolution": (4, 256), "renderer.num_points": (1, 200_000),
    "renderer.max_gaussians": (1, 200_000), "renderer.tet_resolution": (4, 128),
    "renderer.texture_resolution": (8, 2048), "renderer.env_height": (4, 256), "renderer.mlp_width": (1, 256),
}
APP_EXPORT_BOUNDS = {"texture_size": (8, 2048), "resolution": (16, 256)}
APP_TEXTURE_BOUNDS = {"steps": (1, 20000), "resolution": (16, 512), "texture_resolution": (8, 2048)}


def check_app_bounds(values: dict, bounds: dict, what: str) -> None:
    """InputError unless every value named in ``bounds`` is a finite number inside its range."""
    for key, (lo, hi) in bounds.items():
        v = values.get(key)
        if not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise InputError(f"{what} {key.replace('_', ' ')} must be in {lo}..{hi}, got {v}")


class InputError(ValueError):
    """Bad input from the form; the message is shown to the user."""


# -- widgets -> engine.compose ----------------------------------------------------------------------------------------
def build_config(choices, overrides: dict | None = None):
    """GenerateConfig of named choices and dotted overrides through engine.compose (the CLI's own rules and checks,
    with the app's tighter APP_BOUNDS); InputError with its one-line message if refused."""
    from engine.compose import ConfigError, compose

    try:
        return compose(choices, overrides, bounds=APP_BOUNDS)
    except ConfigError as e:
        raise InputError(str(e)) from None


def _flag(path: str) -> str:
    return path.replace("_", "-")


def _field_flags(cls, prefix: str, numeric_only: bool) -> set[str]:
    """The tyro flags of a config class's fields, recursively (``--no-X`` too for booleans); numeric_only keeps
    bool, int, float and tuples or optionals of them (a string can name a file, a model or a module)."""
    flags: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t, path = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(t):
            flags |= _field_flags(t, f"{path}.", numeric_only)
            continue
        leaves = [a for a in (typing.get_args(t) or (t,)) if a not in (type(None), Ellipsis)]
        if numeric_only and not all(a in (bool, int, float) for a in leaves):
            continue
        flags.add(_flag(path))
        if t is bool:
            head, _, last = path.rpartition(".")
            flags.add(_flag(f"{head}.no-{last}" if head else f"no-{last}"))
    return flags


def allowed_overrides(guidance: str = "sds", renderer: str = "nerf") -> set[str]:
    """The override flags (without --) the app takes for these components: OVERRIDE_SECTIONS' numeric and boolean
    fields and OVERRIDE_TRAIN."""
    from engine.config import GenerateConfig
    from guidance import GUIDANCES
    from renderers import RENDERERS

    classes = {"guidance": GUIDANCES.get(guidance), "renderer": RENDERERS.get(renderer)}
    hints = typing.get_type_hints(GenerateConfig)
    flags = set(OVERRIDE_TRAIN)
    for section in OVERRIDE_SECTIONS:
        cls = classes.get(section) or hints[section]
        if dataclasses.is_dataclass(cls):
            flags |= _field_flags(cls, f"{section}.", numeric_only=True)
    return flags


def _known_flags() -> set[str]:
    """Every flag `engine generate` knows, for any component (to tell "not here" from "no such option")."""
    from engine.config import GenerateConfig
    from guidance import GUIDANCES
    from renderers import RENDERERS

    flags = _field_flags(GenerateConfig, "", numeric_only=False)
    for section, registry in (("guidance", GUIDANCES), ("renderer", RENDERERS)):
        for cls in registry.values():
            flags |= _field_flags(cls, f"{section}.", numeric_only=False)
    return flags | {"guidance", "renderer", "preset", "prior", "steps", "image", "resume", "load-config", "help"}


def check_overrides(text: str, guidance: str = "sds", renderer: str = "nerf") -> list[str]:
    """Free-form typed overrides (`--cameras.elevation 0 30`), checked against the allow-list (allowed_overrides):
    anything else, and any option-like token that is not a number, is refused with a message."""
    from engine.compose import is_number

    try:
        tokens = shlex.split(text or "")
    except ValueError as e:
        raise InputError(f"advanced overrides: {e}") from None
    allowed = allowed_overrides(guidance, renderer)
    for tok in tokens:
        if not tok.startswith("-") or is_number(tok):
            continue
        key = tok.lstrip("-").split("=", 1)[0].replace("_", "-")
        if key in allowed and tok.startswith("--"):
            continue
        if key in _known_flags() or key == "h":
            raise InputError(f"advanced overrides: {tok.split('=')[0]} cannot be set here (only numeric and on/off "
                             f"fields of {', '.join(OVERRIDE_SECTIONS)} and {', '.join(OVERRIDE_TRAIN)}; files, "
                             f"devices and the fields with their own control are not)")
        raise InputError(f"advanced overrides: Unrecognized option {tok.split('=')[0]} (see engine generate "
                         f"--help for the fields)")
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


def form_request(form: dict, allow_local_models: bool = False):
    """(engine.compose.Choices, dotted overrides) of the form (keys as in ``App.inputs``): the widgets map to
    compose's choices and fields directly; the free-form overrides field is checked against its allow-list."""
    from engine.compose import Choices, flag_overrides
    from guidance import GUIDANCES

    prompt = (form.get("prompt") or "").strip()
    if not prompt:
        raise InputError('the prompt is empty; describe the object, e.g. "a red cube"')
    guidance, renderer = form["guidance"], form["renderer"]
    prior = "shapes" if form["prior"] == PRIOR_SHAPES else check_model_id(form.get("model_id"), allow_local_models)
    choices = Choices(prompt=prompt, guidance=guidance, renderer=renderer, prior=prior, steps=int(form["steps"]))
    overrides = {"negative_prompt": form.get("negative_prompt") or "", "seed": int(form["seed"]),
                 "resolution": int(form["resolution"])}
    if form.get("cfg_scale") is not None and "guidance_scale" in GUIDANCES[guidance].__dataclass_fields__:
        overrides["guidance.guidance_scale"] = float(form["cfg_scale"])
    every = int(form.get("preview_every") or 0) or max(1, int(form["steps"]) // 10)
    overrides.update({"train.preview_every": every, "train.progress": False, "train.export": False})
    if form.get("lr_scale") is not None:
        overrides["train.lr_scale"] = float(form["lr_scale"])
    if form.get("video_frames") is not None:
        overrides["train.video_frames"] = int(form["video_frames"])
    if form.get("image"):
        if guidance != "csm":
            raise InputError("an image prompt is used by the csm guidance; choose csm or remove the image")
        choices.image = form["image"]
    tokens = check_overrides(form.get("overrides") or "", guidance, renderer)
    try:  # after the widgets: a field typed here wins, as it would later on a command line
        overrides.update(flag_overrides(tokens))
    except ValueError as e:
        raise InputError(f"advanced overrides: {e}") from None
    return choices, overrides


def form_config(form: dict, allow_local_models: bool = False):
    """The GenerateConfig of the form (form_request through engine.compose); InputError if refused."""
    return build_config(*form_request(form, allow_local_models))


def component_defaults(guidance: str, prior_kind: str, model_id: str, renderer: str | None = None) -> dict:
    """Steps and CFG scale the CLI would use for these choices (its presets and the prior folder's settings, which
    may depend on the renderer), for the form's sliders."""
    from engine.compose import Choices

    prior = "shapes" if prior_kind == PRIOR_SHAPES else (model_id or DEFAULT_MODEL)
    cfg = build_config(Choices(prompt="a cube", guidance=guidance, prior=prior, renderer=renderer))
    return {"steps": cfg.train.steps, "cfg_scale": getattr(cfg.guidance, "guidance_scale", None),
            "resolution": cfg.resolution}


def texture_available() -> bool:
    return importlib.util.find_spec("engine.texture") is not None


def texture_form_config(form: dict, mesh_path: str, allow_local_models: bool = False):
    """The engine.texture.TextureConfig of the form (keys as in ``App.inputs``) and the uploaded mesh: the widgets
    map to its fields directly, checked by the config itself (the CLI's ranges) and by APP_TEXTURE_BOUNDS; the CFG
    scale is passed only to objectives that have one. InputError (one line) if refused."""
    from engine.texture import TextureConfig, check_texture_config
    from guidance import GUIDANCES

    prompt = (form.get("prompt") or "").strip()
    if not prompt:
        raise InputError('the prompt is empty; describe the surface, e.g. "a red cube"')
    # texturing on the shapes world takes its light-aware prior (engine/texture.py: "shapes" there means it)
    prior = "shapes" if form["prior"] == PRIOR_SHAPES else check_model_id(form.get("model_id"), allow_local_models)
    guidance = form["guidance"]
    if guidance not in GUIDANCES:
        raise InputError(f"unknown guidance {guidance!r}")
    has_scale = "guidance_scale" in GUIDANCES[guidance].__dataclass_fields__
    try:
        cfg = TextureConfig(mesh=mesh_path, prompt=prompt, prior=prior, guidance=guidance,
                            guidance_scale=float(form.get("cfg_scale") or 0.0) if has_scale else 0.0,
                            steps=int(form["steps"]), resolution=int(form["resolution"]), seed=int(form["seed"]),
                            texture_resolution=int(form.get("texture_size") or 128))
        check_texture_config(cfg, APP_TEXTURE_BOUNDS)
    except ValueError as e:
        raise InputError(str(e)) from None
    return cfg


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
        """The caller's session, bound to its client address (SessionError for a hash sent from elsewhere)."""
        client = getattr(getattr(request, "client", None), "host", None) or ""
        return self.manager.session(getattr(request, "session_hash", None) or "anonymous", client)

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

        try:
            job = self._session(request).latest
        except SessionError:
            job = None
        f = job.files if job is not None and job.done else {}
        return f.get("glb"), gr.update(value=f.get("ply"), visible="ply" in f)

    def generate(self, *values, request=None, mesh: str | None = None, texture: bool = False):
        """Check the form, queue the job, then stream its progress until it ends (a generator).

        ``texture``: texture the uploaded ``mesh`` with engine.texture instead of generating from scratch."""
        form = dict(zip(self.input_keys, values))
        try:
            seed = secrets.randbelow(2**31) if form.get("randomize_seed") else int(form.get("seed") or 0)
        except (TypeError, ValueError, OverflowError):
            seed = 0
        form["seed"] = seed
        try:
            session = self._session(request)
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
                cfg = texture_form_config(form, mesh, self.allow_local_models)
                job = self.manager.submit(session, cfg, job_id, folder, kind="texture")
            else:
                if form.get("image"):
                    form["image"] = keep_upload(form["image"], uploads, "image_prompt")
                cfg = form_config(form, self.allow_local_models)
                export = {"texture_size": int(form.get("texture_size") or 512),
                          "resolution": int(form.get("mesh_resolution") or 128)}
                check_app_bounds(export, APP_EXPORT_BOUNDS, "export")
                job = self.manager.submit(session, cfg, job_id, folder, export)
        except (InputError, UploadError, QueueFull, SessionError) as e:
            yield self._outputs(None, seed=seed, error=str(e))
            return
        except (TypeError, ValueError, OverflowError) as e:  # an API client's non-numbers in numeric fields
            yield self._outputs(None, seed=seed, error=f"a form value is not a usable number ({e})")
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
        try:
            session = self._session(request)
        except SessionError as e:
            return str(e)
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

    def defaults(self, guidance, prior_kind, model_id, renderer=None):
        import gradio as gr
        try:
            d = component_defaults(guidance, prior_kind, model_id, renderer)
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
        from guidance.priors import prior_objective
        # the objective a run on the built-in prior gets when none is named (its folder's recommendation), else SDS
        guidance0 = (prior_objective("shapes") if prior0 == PRIOR_SHAPES else None) or "sds"
        d = component_defaults(guidance0, prior0, self.model_id)
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
                        gr_inputs["guidance"] = gr.Dropdown(list(GUIDANCES), value=guidance0, label="Guidance")
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
            for w in (gr_inputs["guidance"], gr_inputs["prior"], gr_inputs["renderer"]):
                w.change(self.defaults, [gr_inputs["guidance"], gr_inputs["prior"], gr_inputs["model_id"],
                                         gr_inputs["renderer"]],
                         [gr_inputs["steps"], gr_inputs["cfg_scale"]], api_name=False)

            def unload(request: gr.Request):
                try:
                    self._session(request)  # only the session's own client ends it
                except SessionError:
                    return
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
