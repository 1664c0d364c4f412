"""CPU benchmark of the torch mesh rasteriser: forward + backward time at 64/128/256 px for 1k/5k/20k faces.

One step = rasterize → interpolate (per-vertex colour) → antialias → mean-square loss → backward to the vertex
positions. Icospheres (radius 0.6, 2.5 m away, 40° fov) with subdivisions chosen for ≈1k/5k/20k faces
(1280/5120/20480). Minimum of ``--repeats`` runs, torch.set_num_threads(--threads).

    python bench/bench_raster.py [--repeats 3] [--threads 2] [--json out.json]
"""

import argparse
import json
import math
import time

import torch

from renderers.kernels import raster_torch as R


def _perspective(v: torch.Tensor, dist: float = 2.5, fovy: float = math.radians(40)) -> torch.Tensor:
    f = 1 / math.tan(fovy / 2)
    n, fa = 0.05, 50.0
    z = v[:, 2] - dist
    return torch.stack([f * v[:, 0], -f * v[:, 1], (fa + n) / (n - fa) * z + 2 * fa * n / (n - fa), -z], 1)


def bench(faces_sub: int, res: int, repeats: int) -> dict:
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=faces_sub, radius=0.6)
    v0 = torch.tensor(m.vertices, dtype=torch.float32)
    tri = torch.tensor(m.faces)
    topo = R.edge_topology(tri, v0.shape[0])
    col = torch.sigmoid(v0 * 3)
    times = {"forward": [], "backward": []}
    for _ in range(repeats):
        v = v0.clone().requires_grad_()
        t0 = time.perf_counter()
        pos = _perspective(v)
        rast = R.rasterize(pos, tri, (res, res))
        img = R.antialias(R.interpolate(col, rast, tri), rast, pos, tri, topo)
        loss = img.square().mean()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        times["forward"].append(t1 - t0)
        times["backward"].append(t2 - t1)
    fw, bw = min(times["forward"]), min(times["backward"])
    return {"faces": int(tri.shape[0]), "res": res, "forward_ms": round(fw * 1e3, 1), "backward_ms": round(bw * 1e3, 1),
            "total_ms": round((fw + bw) * 1e3, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'faces':>6} {'res':>5} {'fwd ms':>8} {'bwd ms':>8} {'total ms':>9}")
    for sub in (3, 4, 5):  # 1280, 5120, 20480 faces
        for res in (64, 128, 256):
            r = bench(sub, res, args.repeats)
            rows.append(r)
            print(f"{r['faces']:>6} {r['res']:>5} {r['forward_ms']:>8} {r['backward_ms']:>8} {r['total_ms']:>9}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
