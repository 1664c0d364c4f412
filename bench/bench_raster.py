"""CPU benchmark of the torch mesh rasteriser: forward + backward time at 64/128/256 px for 1k/5k/20k faces.

One step = rasterize → interpolate (per-vertex colour) → antialias → mean-square loss → backward to the vertex
positions. Icospheres (radius 0.6, 2.5 m away, 40° fov) with subdivisions chosen for ≈1k/5k/20k faces
(1280/5120/20480). Minimum of ``--repeats`` runs, torch.set_num_threads(--threads).

    python bench/bench_raster.py [--repeats 3] [--threads 2] [--json out.json] [--texture]

``--texture`` adds the UV-texture step of the mesh renderer on the 5k-face sphere: interpolate UVs → sample a
1024² RGB texture (bilinear at level 0, or trilinear mip-mapped at each pixel's level of detail from the analytic
uv derivatives) → loss → backward to the texture.
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


def bench_texture(res: int, mip: bool, repeats: int, tex_size: int = 1024) -> dict:
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=4, radius=0.6)
    v = torch.tensor(m.vertices, dtype=torch.float32)
    tri = torch.tensor(m.faces)
    uv = torch.stack([torch.atan2(v[:, 0], v[:, 2]) / (2 * math.pi) + 0.5, torch.acos(v[:, 1] / 0.6) / math.pi], -1)
    tex0 = torch.rand(1, tex_size, tex_size, 3, generator=torch.Generator().manual_seed(0))
    pos = _perspective(v)
    rast = R.rasterize(pos, tri, (res, res))
    best = []
    for _ in range(repeats):
        tex = tex0.clone().requires_grad_()
        t0 = time.perf_counter()
        uvs = R.interpolate(uv, rast, tri)
        da = R.interpolate_da(uv, rast, tri, R.bary_derivatives(pos, tri, rast)) if mip else None
        loss = R.texture(tex, uvs, uv_da=da).square().mean()
        loss.backward()
        best.append(time.perf_counter() - t0)
    return {"res": res, "mip": mip, "ms": round(min(best) * 1e3, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="")
    p.add_argument("--texture", action="store_true")
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
    if args.texture:
        print(f"\n{'res':>5} {'texture 1024², level 0 ms':>27} {'mip-mapped ms':>14}")
        for res in (64, 128, 256):
            a, b = bench_texture(res, False, args.repeats), bench_texture(res, True, args.repeats)
            rows += [a, b]
            print(f"{res:>5} {a['ms']:>27} {b['ms']:>14}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
