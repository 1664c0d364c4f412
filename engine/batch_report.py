"""The results of `engine batch`: DIR/summary.csv and .json, DIR/index.html (a static gallery that opens from disk)
and DIR/contact_sheet.png, all rebuilt from the run folders under DIR so that a rerun reports every job."""

import csv
import glob
import html
import json
import os

from engine.outputs import read_status, write_json

COLUMNS = ("name", "row", "prompt", "seed", "guidance", "renderer", "prior", "state", "steps", "target_steps",
           "seconds", "it_per_s", "peak_mem_mb", "peak_mem_kind", "psnr", "iou", "attempts", "resumed_from", "host",
           "error", "run_dir", "glb", "usdz", "ply", "turntable", "poster")
EXPORTS = {"glb": "model.glb", "usdz": "model.usdz", "ply": "model_splats.ply"}
TILE = 160


def make_poster(run_dir: str) -> str | None:
    """RUN/poster.png: the turntable's first frame, else the first view of the newest preview; None if neither."""
    import numpy as np
    from PIL import Image
    img = None
    video = os.path.join(run_dir, "turntable.mp4")
    if os.path.isfile(video):
        import imageio.v2 as imageio
        try:
            with imageio.get_reader(video) as r:
                img = Image.fromarray(np.asarray(r.get_data(0)))
        except (OSError, ValueError, IndexError, RuntimeError):
            img = None
    previews = sorted(glob.glob(os.path.join(run_dir, "previews", "step_*.png")))
    if img is None and previews:
        with Image.open(previews[-1]) as p:
            img = p.convert("RGB").crop((0, 0, p.height, p.height))  # four square views side by side: the first
    if img is None:
        return None
    path = os.path.join(run_dir, "poster.png")
    img.save(path)
    return path


def _last_metrics(run_dir: str) -> dict:
    last = {}
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            for line in f:
                if line.strip():
                    last = json.loads(line)
    except (OSError, ValueError):
        pass
    return last


def job_row(out: str, job) -> dict:
    """One summary row: the job's config, its status, what the worker reported (batch.json) and its files."""
    from engine.config import component_names
    run = os.path.join(out, job.name)
    status = read_status(run)
    try:
        with open(os.path.join(run, "batch.json")) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        rec = {}
    guidance, renderer = component_names(job.cfg)
    ev = status.get("eval") or {}
    state = status.get("state") or ("pending" if not os.path.isdir(run) else "unknown")
    row = {"name": job.name, "row": job.row, "prompt": job.prompt, "seed": job.seed, "guidance": guidance,
           "renderer": renderer, "prior": job.cfg.prior.name, "state": state, "steps": status.get("step"),
           "target_steps": job.cfg.train.steps, "seconds": rec.get("seconds"),
           "it_per_s": _round(_last_metrics(run).get("it_per_s")), "peak_mem_mb": rec.get("peak_mem_mb"),
           "peak_mem_kind": rec.get("peak_mem_kind"), "psnr": _round(ev.get("psnr")), "iou": _round(ev.get("iou")),
           "attempts": rec.get("attempts"), "resumed_from": rec.get("resumed_from"), "host": rec.get("host"),
           "error": rec.get("error") or (status.get("message") if state == "failed" else None),
           "run_dir": job.name}
    for kind, fname in EXPORTS.items():
        row[kind] = f"{job.name}/export/{fname}" if os.path.isfile(os.path.join(run, "export", fname)) else None
    for kind, fname in (("turntable", "turntable.mp4"), ("poster", "poster.png")):
        row[kind] = f"{job.name}/{fname}" if os.path.isfile(os.path.join(run, fname)) else None
    return row


def _round(v, nd: int = 4):
    return round(v, nd) if isinstance(v, (int, float)) else v


def write_report(out: str, jobs: list) -> list[dict]:
    """summary.csv, summary.json, index.html and contact_sheet.png under ``out``; returns the rows."""
    if not os.path.isdir(out):
        return []
    rows = [job_row(out, job) for job in jobs]
    tmp = os.path.join(out, "summary.csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows({k: ("" if r[k] is None else r[k]) for k in COLUMNS} for r in rows)
    os.replace(tmp, os.path.join(out, "summary.csv"))
    counts = {s: sum(r["state"] == s for r in rows) for s in sorted({r["state"] for r in rows})}
    write_json(os.path.join(out, "summary.json"), {"jobs": rows, "counts": counts})
    _write_html(out, rows, counts)
    contact_sheet(out, rows)
    return rows


def _card(r: dict) -> str:
    e = html.escape
    media = ""
    if r["turntable"]:
        poster = f' poster="{e(r["poster"])}"' if r["poster"] else ""
        media = f'<video src="{e(r["turntable"])}"{poster} autoplay loop muted playsinline></video>'
    elif r["poster"]:
        media = f'<img src="{e(r["poster"])}" alt="">'
    links = " ".join(f'<a href="{e(r[k])}">{k.upper()}</a>' for k in EXPORTS if r[k])
    score = f"PSNR {r['psnr']:.2f} dB · IoU {r['iou']:.3f}<br>" if r["psnr"] is not None else ""
    secs = f"{r['seconds']:.0f} s · " if isinstance(r["seconds"], (int, float)) else ""
    return (f'<div class="card">{media}<p><b>{e(r["prompt"])}</b><br>seed {r["seed"]} · {e(r["guidance"])} · '
            f'{e(r["renderer"])}<br>{secs}{r["steps"]} steps<br>{score}{links} '
            f'<a href="{e(r["run_dir"])}/">folder</a></p></div>')


def _write_html(out: str, rows: list[dict], counts: dict) -> None:
    e = html.escape
    ok = [r for r in rows if r["state"] == "complete"]
    other = [r for r in rows if r["state"] != "complete"]
    problems = "".join(f"<tr><td>{e(r['name'])}</td><td>{e(r['prompt'])}</td><td>{e(r['state'])}</td>"
                       f"<td>{e(str(r['error'] or ''))}</td></tr>" for r in other)
    table = (f"<h2>Not complete</h2><table><tr><th>job</th><th>prompt</th><th>state</th><th>error</th></tr>"
             f"{problems}</table>") if other else ""
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Distillery batch</title>
<style>body{{font-family:sans-serif;margin:1em}} .grid{{display:flex;flex-wrap:wrap;gap:12px}}
.card{{width:220px;border:1px solid #ccc;padding:6px}} .card video,.card img{{width:100%;background:#eee}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px;text-align:left}}</style></head>
<body><h1>Distillery batch</h1><p>{len(rows)} job(s): {e(summary)}.
<a href="summary.csv">summary.csv</a> · <a href="summary.json">summary.json</a> ·
<a href="contact_sheet.png">contact sheet</a></p>
<div class="grid">{''.join(_card(r) for r in ok)}</div>
{table}
</body></html>
"""
    tmp = os.path.join(out, "index.html.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, os.path.join(out, "index.html"))


def contact_sheet(out: str, rows: list[dict], columns: int = 6) -> str | None:
    """DIR/contact_sheet.png: one captioned tile per job (its poster; failed and pending jobs as grey tiles)."""
    from PIL import Image, ImageDraw
    if not rows:
        return None
    cols = min(columns, len(rows))
    n_rows = (len(rows) + cols - 1) // cols
    caption = 28
    sheet = Image.new("RGB", (cols * TILE, n_rows * (TILE + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, r in enumerate(rows):
        x, y = (i % cols) * TILE, (i // cols) * (TILE + caption)
        if r["poster"]:
            with Image.open(os.path.join(out, r["poster"])) as p:
                sheet.paste(p.convert("RGB").resize((TILE, TILE)), (x, y))
        else:
            draw.rectangle((x, y, x + TILE - 1, y + TILE - 1), fill=(90, 90, 90))
            draw.text((x + 8, y + TILE // 2), r["state"], fill="white")
        draw.text((x + 4, y + TILE + 2), r["prompt"][:26], fill="black")
        draw.text((x + 4, y + TILE + 14), f"seed {r['seed']} {r['state']}", fill=(80, 80, 80))
    path = os.path.join(out, "contact_sheet.png")
    sheet.save(path + ".tmp.png")
    os.replace(path + ".tmp.png", path)
    return path
