"""`engine batch` on one machine: wall time for N prompts with 1 worker versus 2 workers, and Ray's overhead per job.

    python bench/bench_batch.py [--n 4] [--steps 10] [--cpus 2] [--workers 1,2] [--out /tmp/bench_batch]

One local Ray instance with ``--cpus`` CPUs first runs two warm-up jobs side by side (so that two worker processes
have imported torch and the engine), then runs the same N shapes-prior jobs (mesh renderer, small settings, with
turntable, evaluation and GLB export) twice, each time into a fresh folder:
- 1 worker:  --cpus-per-job = cpus (one job at a time; torch gets every core);
- 2 workers: --cpus-per-job = cpus / 2 (two jobs at once; half the cores each).
Per configuration it reports the batch's wall time, the sum of the jobs' own seconds (measured inside the workers,
generate() only), and the overhead per job: (wall - sum of job seconds / concurrency) / N, which is everything that
is not generate: Ray scheduling, worker start-up and imports, sending the run folder back, the driver's writing,
summary and gallery. It also times a bare Ray task round trip (mean of 50 empty tasks), Ray's own share.
Prints a markdown table for docs/benchmarks.md.
"""

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

PROMPTS = ["a red cube", "a blue sphere", "a green cone", "a yellow torus", "a white cylinder", "an orange cube",
           "a red sphere", "a blue cone"]


def _job_args(steps: int) -> list[str]:
    return ["--renderer", "mesh", "--renderer.tet-resolution", "16", "--renderer.texture-resolution", "64",
            "--prior.resolution", "32", "--steps", str(steps), "--resolution", "32", "--train.video-frames", "12",
            "--train.video-resolution", "64", "--train.eval-views", "4", "--train.export-texture-size", "64",
            "--train.preview-every", "0", "--train.checkpoint-every", "0"]


def _run(prompts_file: str, out: str, cpus_per_job: float, steps: int) -> dict:
    from engine.batch import BatchOptions, run_batch
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    code = run_batch(BatchOptions(prompts=prompts_file, out=out, cpus_per_job=cpus_per_job,
                                  generate_args=_job_args(steps)), echo=lambda s: None)
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"the batch into {out} did not complete (exit {code})")
    with open(os.path.join(out, "summary.json")) as f:
        jobs = json.load(f)["jobs"]
    return {"wall": wall, "job_seconds": sum(j["seconds"] for j in jobs), "n": len(jobs)}


def _bare_task_ms(n: int = 50) -> float:
    import ray

    @ray.remote(num_cpus=1)
    def nothing():
        return None

    ray.get([nothing.remote() for _ in range(4)])  # warm the workers
    t0 = time.perf_counter()
    for _ in range(n):
        ray.get(nothing.remote())
    return (time.perf_counter() - t0) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4, help="number of prompts (jobs)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray instance")
    ap.add_argument("--workers", default="1,2", help="configurations to time: jobs at once (cpus-per-job = cpus/W)")
    ap.add_argument("--out", default="/tmp/bench_batch")
    args = ap.parse_args()
    import ray

    os.makedirs(args.out, exist_ok=True)
    prompts_file = os.path.join(args.out, "prompts.txt")
    with open(prompts_file, "w") as f:
        f.write("\n".join((PROMPTS * 4)[:args.n]) + "\n")
    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
    init_s = time.perf_counter() - t0
    rows = []
    try:
        bare_ms = _bare_task_ms()
        warm_file = os.path.join(args.out, "warm.txt")
        with open(warm_file, "w") as f:
            f.write("a red cube\na blue cube\n")
        # two jobs at once start (and warm) two worker processes: both timed configurations then start warm
        warm = _run(warm_file, os.path.join(args.out, "warm"), max(args.cpus // 2, 1), args.steps)
        for workers in [int(w) for w in args.workers.split(",")]:
            r = _run(prompts_file, os.path.join(args.out, f"w{workers}"), args.cpus / workers, args.steps)
            overhead = (r["wall"] - r["job_seconds"] / workers) / r["n"]
            rows.append((workers, args.cpus / workers, r, overhead))
    finally:
        ray.shutdown()
    print(f"cold start (2 jobs on 2 new workers, not in the table): {warm['wall']:.1f} s wall, "
          f"{warm['job_seconds']:.1f} s of job time")
    print(f"local Ray start: {init_s:.1f} s; bare Ray task round trip: {bare_ms:.1f} ms; "
          f"{args.n} jobs of {args.steps} steps; load average at the end: {os.getloadavg()[0]:.1f}")
    print("| workers | CPUs per job | wall (s) | sum of job seconds | overhead per job (s) |")
    print("|---|---|---|---|---|")
    for workers, cpus, r, overhead in rows:
        print(f"| {workers} | {cpus:g} | {r['wall']:.1f} | {r['job_seconds']:.1f} | {overhead:.1f} |")
    if len(rows) == 2:
        print(f"speed-up of {rows[1][0]} workers over {rows[0][0]}: {rows[0][2]['wall'] / rows[1][2]['wall']:.2f}x")


if __name__ == "__main__":
    main()
