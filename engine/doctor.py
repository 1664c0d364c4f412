"""`engine doctor [--json]`: the GPU, torch / CUDA / library versions, and which CUDA kernels build here.

It reports which CUDA kernel libraries compile and run here, with how long each took (a first probe includes the JIT
build, so running the doctor once pre-builds the kernels a run would otherwise build on its first step;
renderers/kernels/probe.py).

Exit code 0 whatever it finds (it reports; a CPU-only machine is a valid machine, on which it says there is no GPU and
that every renderer uses its torch backend).
"""

import argparse
import importlib
import json
import platform
import shutil
import subprocess
import sys


def _version(module: str) -> str | None:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "installed"))
    except Exception:  # noqa: BLE001 - missing or broken: reported as absent
        return None


def _nvcc() -> str | None:
    path = shutil.which("nvcc")
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return path
    release = [ln for ln in out.splitlines() if "release" in ln]
    return release[-1].strip() if release else path


def report() -> dict:
    """The doctor's findings as a plain dict (the --json output)."""
    import torch

    from renderers.kernels.probe import LIBRARIES, probe

    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
               "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count()}
    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpu": gpu,
        "nvcc": _nvcc(),
        "libraries": {m: _version(m) for m in ("diffusers", "transformers", "peft", "gsplat", "nerfacc", "nvdiffrast")},
        "kernels": {},
    }
    for name in LIBRARIES:
        if gpu is not None and out["libraries"].get(name) is None:
            out["kernels"][name] = {"ok": False, "seconds": 0.0, "message": "not installed"}
            continue
        p = probe(name)
        out["kernels"][name] = {"ok": p.ok, "seconds": p.seconds, "message": p.message}
    ok = {k: v["ok"] for k, v in out["kernels"].items()}
    out["backends"] = {"nerf": "cuda" if ok["nerfacc"] else "torch", "gaussians": "cuda" if ok["gsplat"] else "torch",
                       "mesh": "cuda" if ok["nvdiffrast"] else "torch"}
    if gpu is None:
        out["backends_note"] = "no GPU: every renderer uses its torch backend on the CPU"
    return out


def format_report(r: dict) -> str:
    """Human-readable lines for ``report()``."""
    lines = [f"python {r['python']}, torch {r['torch']} (CUDA build: {r['torch_cuda'] or 'none'})"]
    g = r["gpu"]
    lines.append(f"GPU: {g['name']}, {g['memory_gb']} GB, compute capability {g['capability']}"
                 + (f" ({g['count']} devices)" if g["count"] > 1 else "") if g else
                 "GPU: none (torch.cuda.is_available() is False)")
    lines.append(f"nvcc: {r['nvcc'] or 'not found (the CUDA kernels cannot be compiled)'}")
    lines.append("libraries: " + ", ".join(f"{k} {v or 'missing'}" for k, v in r["libraries"].items()))
    for name, k in r["kernels"].items():
        state = f"ok in {k['seconds']:.1f} s" if k["ok"] else "unavailable"
        lines.append(f"kernels {name}: {state}" + (f" ({k['message']})" if k["message"] else ""))
    lines.append("backends: " + ", ".join(f"{k} {v}" for k, v in r["backends"].items())
                 + (f" ({r['backends_note']})" if r.get("backends_note") else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="engine doctor", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print the findings as one JSON object")
    args = p.parse_args(argv)
    r = report()
    print(json.dumps(r) if args.json else format_report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
