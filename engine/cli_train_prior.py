"""`engine train-prior shapes --out DIR [--seed S] [--minutes M] [...]`: train the learned shapes prior
(engine/train_prior.py) and write it as a diffusers StableDiffusionPipeline folder.

Every field of ``TrainPriorConfig`` is a flag (``--unet-steps 4000``, ``--vae-channels 32 64 64 64``), parsed from the
dataclass (defaults and checks live there only). Exit codes: 0 done, 2 bad input (one line on stderr, nothing
written), 1 unexpected failure.
"""

import os
import sys
from dataclasses import dataclass, field

from engine.cli import UsageError, parse_dataclass
from engine.train_prior import TrainPriorConfig

USAGE_ERROR = 2
WORLDS = ("shapes",)


@dataclass
class TrainPriorCommand:
    """Train the learned shapes prior and write it as a diffusers StableDiffusionPipeline folder."""

    world: str
    """The world to learn: shapes."""
    prior: TrainPriorConfig = field(default_factory=TrainPriorConfig)
    """What determines the trained prior (engine.train_prior.TrainPriorConfig; its fields are the flags)."""


def parse(argv: list[str]) -> TrainPriorCommand:
    """argv after 'train-prior' -> TrainPriorCommand; UsageError (one line) when refused, SystemExit(0) after --help.

    The command layout of engine.cli.parse_command (the world positional, the config's fields unprefixed flags),
    through its parse_dataclass directly: a refusal of TrainPriorConfig's own check keeps the field's name as the
    config spells it (``vae_crop must be ...``), which the training record (training.json) also uses."""
    cmd = parse_dataclass(TrainPriorCommand, None, argv, "engine train-prior", TrainPriorCommand.__doc__,
                          command=True)
    if cmd.world not in WORLDS:
        raise UsageError(f"unknown world {cmd.world!r}; known: {', '.join(WORLDS)}")
    if not cmd.prior.out:
        raise UsageError("--out DIR is required (the prior folder to write)")
    out = cmd.prior.out
    if os.path.exists(out) and not os.path.isfile(os.path.join(out, "model_index.json")) and os.listdir(out):
        raise UsageError(f"{out} exists and is not a prior folder; refusing to overwrite it")
    return cmd


def main(argv: list[str] | None = None) -> int:
    try:
        cmd = parse(list(sys.argv[1:] if argv is None else argv))
    except UsageError as e:
        print(f"engine train-prior: error: {e}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None
    from engine.train_prior import train_prior

    cfg = cmd.prior
    record = train_prior(cfg)
    print(f"prior folder: {cfg.out} (vae steps {record['vae_steps_run']}, unet steps {record['unet_steps_run']}, "
          f"{record['seconds_total'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
