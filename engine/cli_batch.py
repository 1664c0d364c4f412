"""`engine batch PROMPTS --out DIR [--address auto|HOST:PORT|ray://HOST:PORT] [--gpus-per-job G] [--cpus-per-job C]
[--seeds 0,1,2] [--retries 2] [--checkpoints PATH] [--dry-run] [any generate option]`: many generate runs on Ray
(engine/batch.py).

PROMPTS is a text file (one prompt a line; '#' lines are comments) or a JSONL/CSV file whose rows carry a 'prompt'
and per-job overrides (seed, guidance, renderer, steps, prior, image, preset, or any generate option such as
train.lr-scale). Exit codes: 0 all jobs complete, 1 some failed, 2 bad input (one line on stderr, before any job
starts), 130 interrupted (rerun the same command to resume).
"""

import dataclasses
import sys
import typing

USAGE_ERROR = 2
INSTALL_HINT = "Ray is not installed; install it with: pip install 'distillery[batch]' (or: pip install 'ray[default]')"
HIDDEN = ("prompts", "generate_args")
"""Fields of BatchOptions that are not batch options: the first argument, and the generate options for every job."""
DESCRIPTION = ("engine batch PROMPTS --out DIR [batch options] [generate options]. Run many prompts (x seeds) as "
               "ordinary generate runs on Ray: resume, retry, gather the results. "
               "Options not listed here are generate options applied to every job (engine generate --help).")


def _fail(msg: str) -> int:
    print(f"engine batch: error: {msg}", file=sys.stderr)
    return USAGE_ERROR


def _batch_flags() -> dict[str, bool]:
    """{--flag: takes no value} for the fields of engine.batch.BatchOptions that are batch options."""
    from engine.batch import BatchOptions

    hints = typing.get_type_hints(BatchOptions)
    return {"--" + f.name.replace("_", "-"): hints[f.name] is bool for f in dataclasses.fields(BatchOptions)
            if f.name not in HIDDEN}


def split_argv(rest: list[str]) -> tuple[list[str], list[str]]:
    """(batch option tokens, generate option tokens): the flags of BatchOptions' fields and their values go to the
    batch, everything else to every job; ``--seeds 0,1,2`` becomes the list ``--seeds 0 1 2``."""
    flags = _batch_flags()
    batch: list[str] = []
    generate: list[str] = []
    i = 0
    while i < len(rest):
        flag, eq, value = rest[i].partition("=")
        bare = flag.replace("--no-", "--", 1)
        if flag not in flags and not (flags.get(bare) and flag.startswith("--no-")):
            generate.append(rest[i])
            i += 1
            continue
        if flags.get(bare):  # a boolean: no value
            batch.append(rest[i])
            i += 1
            continue
        if not eq:
            if i + 1 >= len(rest):
                from engine.batch import BatchError
                raise BatchError(f"{flag} needs a value")
            value, i = rest[i + 1], i + 1
        if flag == "--seeds":
            seeds = [v.strip() for v in value.split(",") if v.strip()]
            from engine.batch import BatchError
            if not seeds:
                raise BatchError("--seeds is empty")
            if not all(v.lstrip("-").isdigit() for v in seeds):
                raise BatchError(f"--seeds takes comma-separated integers, got {value!r}")
            batch += [flag, *seeds]
        else:
            batch += [flag, value]
        i += 1
    return batch, generate


def parse(argv: list[str]):
    """argv after 'batch' -> (BatchOptions, or None when --help was printed). Raises BatchError on bad input.

    The batch options are the fields of engine.batch.BatchOptions (their defaults live there), parsed like every
    command's (engine.cli.parse_dataclass); the other options are generate options for every job."""
    from engine.batch import BatchError, BatchOptions
    from engine.cli import UsageError, parse_dataclass

    if not argv:
        raise BatchError("usage: engine batch PROMPTS --out DIR [options] (engine batch --help)")
    if argv[0] in ("-h", "--help"):
        try:
            parse_dataclass(BatchOptions, BatchOptions(prompts="PROMPTS", out=""), ["--help"], "engine batch",
                            DESCRIPTION, hidden=HIDDEN)
        except SystemExit:
            return None
    prompts, rest = (argv[0], argv[1:]) if not argv[0].startswith("-") else (None, argv)
    batch, generate_args = split_argv(rest)
    if prompts is None:
        raise BatchError("the first argument is the prompts file, e.g. engine batch prompts.txt --out DIR")
    if any(a in ("-h", "--help") for a in generate_args):
        raise BatchError("--help goes first: engine batch --help (engine generate --help lists the job options)")
    if "--resume" in generate_args or "--load-config" in generate_args:
        raise BatchError("--out is the batch folder; --resume/--load-config are not batch options (rerunning the "
                         "same command resumes)")
    try:
        opts = parse_dataclass(BatchOptions, BatchOptions(prompts=prompts, out=""), batch, "engine batch",
                               DESCRIPTION, hidden=HIDDEN)
    except UsageError as e:
        raise BatchError(str(e)) from None
    if not opts.out:
        raise BatchError("the following arguments are required: --out")
    return dataclasses.replace(opts, prompts=prompts, generate_args=generate_args)


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
