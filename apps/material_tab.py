"""The app's Material tab (issue #16): a tileable PBR material from a prompt, as `engine material` makes it.

It holds no generation logic (style.md §4.5): the widgets become the `engine material` command's options
(``MaterialCommand``), built by that command's own ``build_material_config`` (engine.compose underneath), so the
tab and the CLI build the same GenerateConfig; the
run is engine.train.generate in a worker thread, with its progress streamed and a Stop that checkpoints.
``add_material_tab(app)`` is called inside the app's Blocks (apps/gradio_app.py).
"""

import os
import secrets
import threading
import time
import zipfile

PRIOR_WORLD = "materials world (CPU)"
PRIOR_MODEL = "diffusion model"
MAP_FILES = ("basecolor.png", "roughness.png", "metallic.png", "normal.png", "height.png", "orm.png",
             "material.mtlx", "material.usda", "material.json")


class MaterialInputError(ValueError):
    """A refused form; the message is one line for the user."""


def material_command(form: dict):
    """The `engine material` options of the form (keys: prompt, prior, model_id, guidance, size, tileable,
    normal_map, steps, seed), as the command's own dataclass (engine.cli_material.MaterialCommand)."""
    from engine.cli_material import MaterialCommand

    prompt = (form.get("prompt") or "").strip()
    if not prompt:
        raise MaterialInputError('the prompt is empty; e.g. "a glossy red checker material"')
    prior = "materials" if form.get("prior", PRIOR_WORLD) == PRIOR_WORLD else (form.get("model_id") or "").strip()
    if not prior:
        raise MaterialInputError("give a model id for the diffusion prior")
    return MaterialCommand(prompt=prompt, prior=prior, guidance=form.get("guidance") or None,
                           size=None if form.get("size") is None else int(form["size"]),
                           tileable=bool(form.get("tileable", True)), normal_map=form.get("normal_map") or None,
                           steps=int(form["steps"]) if form.get("steps") else None,
                           seed=int(form.get("seed") or 0))


def build_material_config_from_form(form: dict):
    """GenerateConfig of the form, through the material command's own builder (engine.compose underneath);
    MaterialInputError (one line) when refused."""
    from engine.cli import UsageError
    from engine.cli_material import build_material_config

    try:
        return build_material_config(material_command(form))
    except UsageError as e:
        raise MaterialInputError(str(e)) from None


def zip_maps(run_dir: str) -> str | None:
    """RUN/material_maps.zip with the maps and material documents (None before the run completes)."""
    names = [n for n in MAP_FILES if os.path.isfile(os.path.join(run_dir, n))]
    if "basecolor.png" not in names:
        return None
    path = os.path.join(run_dir, "material_maps.zip")
    tmp = f"{path}.tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for n in names:
            z.write(os.path.join(run_dir, n), n)
    os.replace(tmp, path)
    return path


def run_material(cfg, stop: threading.Event, progress: dict) -> str:
    """engine.train.generate on ``cfg`` with progress into ``progress`` and ``stop`` polled every step."""
    from engine.train import Hooks, generate

    hooks = Hooks(on_step=lambda done, total, logs=None: progress.update(step=done, total=total),
                  should_stop=stop.is_set)
    return generate(cfg, hooks=hooks)


def add_material_tab(app) -> None:
    """The Material tab's widgets and events (call inside the app's ``gr.Blocks``)."""
    import gradio as gr

    from guidance import GUIDANCES

    root = os.path.join(getattr(app, "output_dir", None) or "outputs", "material")
    stops: dict[str, threading.Event] = {}

    with gr.Tab("Material"):
        gr.Markdown("### Tileable PBR material\nBase colour, roughness, metallic, height and normal maps, a MaterialX "
                    "and a USD material, and a preview, from a prompt (`engine material`).")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Material prompt", placeholder="a glossy red checker material",
                                    elem_id="material-prompt")
                prior = gr.Radio([PRIOR_WORLD, PRIOR_MODEL], value=PRIOR_WORLD, label="Prior")
                model_id = gr.Textbox(getattr(app, "model_id", ""), label="Model id (diffusion prior)")
                guidance = gr.Dropdown(list(GUIDANCES), value="sds", label="Guidance")
                size = gr.Slider(16, 4096, value=1024, step=16, label="Map size (texels)")
                tileable = gr.Checkbox(True, label="Tileable")
                normal_map = gr.Radio(["opengl", "directx"], value="opengl", label="Normal map")
                steps = gr.Number(0, precision=0, label="Steps (0: the preset's)")
                seed = gr.Number(0, precision=0, label="Seed")
                with gr.Row():
                    go = gr.Button("Make material", variant="primary", elem_id="material-go")
                    halt = gr.Button("Stop", variant="stop")
            with gr.Column():
                status = gr.Markdown(elem_id="material-status")
                image = gr.Image(label="Preview (sphere and 2x2 tiles, three lights)", interactive=False)
                model = gr.Model3D(label="preview.glb", height=320)
                files = gr.File(label="Maps and material documents (zip)")

        def make(prompt_, prior_, model_id_, guidance_, size_, tileable_, normal_map_, steps_, seed_,
                 request: gr.Request):
            form = {"prompt": prompt_, "prior": prior_, "model_id": model_id_, "guidance": guidance_, "size": size_,
                    "tileable": tileable_, "normal_map": normal_map_, "steps": steps_, "seed": seed_}
            try:
                cfg = build_material_config_from_form(form)
            except MaterialInputError as e:
                yield f"**Refused:** {e}", None, None, None
                return
            key = getattr(request, "session_hash", None) or "anonymous"
            cfg.out = os.path.join(root, key, f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}")
            cfg.train.progress = False
            stop, progress, result = threading.Event(), {"step": 0, "total": cfg.train.steps}, {}
            stops[key] = stop

            def work():
                try:
                    result["run"] = run_material(cfg, stop, progress)
                except Exception as e:  # noqa: BLE001 - shown to the user, the worker must not die silently
                    result["error"] = str(e)

            worker = threading.Thread(target=work, daemon=True)
            worker.start()
            while worker.is_alive():
                yield f"step {progress['step']} / {progress['total']}", None, None, None
                worker.join(timeout=0.5)
            if "error" in result:
                yield f"**Failed:** {result['error']}", None, None, None
                return
            run = result["run"]
            done = os.path.isfile(os.path.join(run, "preview.png"))
            yield ((f"done: `{run}`" if done else f"stopped; resume with `engine material --resume {run}`"),
                   os.path.join(run, "preview.png") if done else None,
                   os.path.join(run, "preview.glb") if done else None, zip_maps(run))

        def halt_(request: gr.Request):
            ev = stops.get(getattr(request, "session_hash", None) or "anonymous")
            if ev is not None:
                ev.set()

        go.click(make, [prompt, prior, model_id, guidance, size, tileable, normal_map, steps, seed],
                 [status, image, model, files], api_name="material")
        halt.click(halt_, None, None, api_name="material_stop", concurrency_limit=None)


__all__ = ["add_material_tab", "material_command", "build_material_config_from_form", "zip_maps", "run_material",
           "MaterialInputError"]
