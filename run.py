"""Runs one continual-learning experiment.

    python run.py --config configs/asc_ctr.yaml [--set train.epochs=1 --set data.num_tasks=2 ...]

Writes <runs_dir>/<name>/: config.json, metrics.jsonl, results.json, acc_matrix.csv,
mf1_matrix.csv and checkpoints/ (one per finished task). Rerunning the same command resumes.
"""

import argparse
import sys

from ctr_jax.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", help="YAML experiment config (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=1 (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    # Heavy imports (jax, orbax) only once the config is known to be valid.
    from ctr_jax.data.tasks import DataError
    from ctr_jax.models.bert import BackboneError
    from ctr_jax.training.loop import run

    try:
        run(cfg)
    except (ConfigError, DataError, BackboneError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"interrupted: finished tasks are checkpointed in {cfg.run_dir}; "
            "rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
