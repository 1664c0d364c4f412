"""`engine batch PROMPTS --out DIR [--address auto|HOST:PORT|ray://HOST:PORT] [--gpus-per-job G] [--cpus-per-job C]
[--seeds 0,1,2] [--retries 2] [--checkpoints PATH] [--dry-run] [any generate option]`: many generate runs on Ray
(engine/batch.py).

PROMPTS is a text file (one prompt a line; '#' lines are comments) or a JSONL/CSV file whose rows carry a 'prompt'
and per-job overrides (seed, guidance, renderer, steps, prior, image, preset, or any generate option such as
train.lr-scale). Exit codes: 0 all jobs complete, 1 some failed, 2 bad input (one line on stderr, before any job
starts), 130 interrupted (rerun the same command to resume).
"""

import argparse
import sys

USAGE_ERROR = 2
INSTALL_HINT = "Ray is not installed; install it with: pip install 'distillery[batch]' (or: pip install 'ray[default]')"


class _Parser(argparse.ArgumentParser):
    """argparse whose refusals raise (one line, reported by main) instead of printing usage and exiting."""

    def error(self, message: str):
        from engine.batch import BatchError
        raise BatchError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="engine batch", allow_abbrev=False,
        usage="engine batch PROMPTS --out DIR [batch options] [generate options]",
        description="Run many prompts (x seeds) as ordinary generate runs on Ray: resume, retry, gather the results. "
                    "Options not listed here are generate options applied to every job (engine generate --help).")
    p.add_argument("--out", required=True, help="the batch folder: one run folder per job, summary, gallery")
    p.add_argument("--address", default="", help="join a Ray cluster: auto, HOST:PORT or ray://HOST:PORT "
                   "(default: start a local Ray instance sized to this machine)")
    p.add_argument("--gpus-per-job", type=float, default=None, help="GPUs per job (default 1 if there are GPUs)")
    p.add_argument("--cpus-per-job", type=float, default=None,
                   help="CPUs per job, also its torch threads (default 1 for GPU jobs, else half a node's cores, 1-4)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds: every prompt runs once per seed "
                   "(a row's own seed wins)")
    p.add_argument("--retries", type=int, default=2, help="tries after the first for a job that raised or whose "
                   "worker died (default 2)")
    p.add_argument("--checkpoints", default="", help="where workers keep run folders and checkpoints for resume, "
                   "e.g. a shared mount (default: each worker's temp dir, removed when the job completes)")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and the resources asked of Ray; run nothing")
    p.add_argument("--verbose", action="store_true", help="show the workers' own output")
    return p


def _fail(msg: str) -> int:
    print(f"engine batch: error: {msg}", file=sys.stderr)
    return USAGE_ERROR


def parse(argv: list[str]):
    """argv after 'batch' -> (BatchOptions, or None when --help was printed). Raises BatchError on bad input."""
    from engine.batch import BatchError, BatchOptions

    if not argv:
        raise BatchError("usage: engine batch PROMPTS --out DIR [options] (engine batch --help)")
    if argv[0] in ("-h", "--help"):
        _parser().print_help()
        return None
    prompts, rest = (argv[0], argv[1:]) if not argv[0].startswith("-") else (None, argv)
    args, generate_args = _parser().parse_known_args(rest)
    if prompts is None:
        raise BatchError("the first argument is the prompts file, e.g. engine batch prompts.txt --out DIR")
    if any(a in ("-h", "--help") for a in generate_args):
        raise BatchError("--help goes first: engine batch --help (engine generate --help lists the job options)")
    if "--out" in generate_args or "--resume" in generate_args or "--load-config" in generate_args:
        raise BatchError("--out is the batch folder; --resume/--load-config are not batch options (rerunning the "
                         "same command resumes)")
    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise BatchError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
        if not seeds:
            raise BatchError("--seeds is empty")
    return BatchOptions(prompts=prompts, out=args.out, generate_args=generate_args, address=args.address,
                        gpus_per_job=args.gpus_per_job, cpus_per_job=args.cpus_per_job, seeds=seeds,
                        retries=args.retries, checkpoints=args.checkpoints, dry_run=args.dry_run,
                        verbose=args.verbose)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        import ray  # noqa: F401
    except ImportError:
        return _fail(INSTALL_HINT)
    from engine.batch import BatchError, run_batch

    try:
        opts = parse(argv)
        if opts is None:
            return 0
        return run_batch(opts)
    except BatchError as e:
        return _fail(str(e))


if __name__ == "__main__":
    raise SystemExit(main())
