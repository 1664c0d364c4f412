"""`engine train-prior shapes --out DIR [--seed S] [--minutes M] [...]`: train the learned shapes prior
(engine/train_prior.py) and write it as a diffusers StableDiffusionPipeline folder.

Every field of ``TrainPriorConfig`` is a flag (``--unet-steps 4000``, ``--vae-channels 32 64 64 64``). Exit codes:
0 done, 2 bad input (one line on stderr, nothing written), 1 unexpected failure.
"""

import argparse
import dataclasses
import os
import sys

USAGE_ERROR = 2
WORLDS = ("shapes",)


def _parser() -> argparse.ArgumentParser:
    from engine.train_prior import TrainPriorConfig

    p = argparse.ArgumentParser(prog="engine train-prior", description=__doc__.split("\n\n")[0].split(": ", 1)[-1])
    p.add_argument("world", help="the world to learn: shapes")
    defaults = TrainPriorConfig()
    for f in dataclasses.fields(TrainPriorConfig):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        elif isinstance(value, tuple):
            p.add_argument(flag, type=int, nargs="+", default=value, metavar="N")
        else:
            p.add_argument(flag, type=type(value), default=value, required=f.name == "out")
    return p



def main(argv: list[str] | None = None) -> int:
    from engine.train_prior import TrainPriorConfig, train_prior

    p = _parser()

    def refuse(message: str) -> None:
        print(f"engine train-prior: error: {message}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)

    p.error = refuse  # one plain line, exit code 2
    args = vars(p.parse_args(argv))
    world = args.pop("world")
    if world not in WORLDS:
        refuse(f"unknown world {world!r}; known: {', '.join(WORLDS)}")
    for k, v in args.items():
        if isinstance(v, list):
            args[k] = tuple(v)
    try:
        cfg = TrainPriorConfig(**args)
    except ValueError as e:
        refuse(str(e))
    if os.path.exists(cfg.out) and not os.path.isfile(os.path.join(cfg.out, "model_index.json")) and \
            os.listdir(cfg.out):
        refuse(f"{cfg.out} exists and is not a prior folder; refusing to overwrite it")
    record = train_prior(cfg)
    print(f"prior folder: {cfg.out} (vae steps {record['vae_steps_run']}, unet steps {record['unet_steps_run']}, "
          f"{record['seconds_total'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
