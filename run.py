"""Runs one continual-learning experiment, or a sweep over task orders and seeds.

    python run.py --config configs/asc_ctr.yaml [--set train.epochs=1 --set data.num_tasks=2 ...]
    python run.py --config configs/asc_ncl.yaml --orders 0 1 2 3 4 --seeds 0 1

Writes <runs_dir>/<name>/ (a sweep: <name>_o<order>_s<seed>/ per run): config.json,
metrics.jsonl, results.json, acc_matrix.csv, mf1_matrix.csv and checkpoints/ (one per finished
task). Rerunning the same command resumes. Tables and plots: python -m ctr_jax.report --help.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from ctr_jax.config import ConfigError, load_config
from ctr_jax.runtime import apply_xla_defaults, limit_malloc_arenas
from ctr_jax.sweep import expand


def _enable_compilation_cache() -> None:
    """Keeps compiled steps on disk, so a resume, a sweep's next run or another method with the
    same shapes skips XLA compilation (minutes per run on a CPU). JAX_COMPILATION_CACHE_DIR
    chooses the folder (default ~/.cache/ctr_jax/xla); CTR_JAX_NO_COMPILE_CACHE=1 turns it off."""
    if os.environ.get("CTR_JAX_NO_COMPILE_CACHE") == "1":
        return
    import jax

    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update(
            "jax_compilation_cache_dir", str(Path.home() / ".cache" / "ctr_jax" / "xla")
        )


def main(argv: list[str] | None = None) -> int:
    limit_malloc_arenas()
    xla_added = apply_xla_defaults()  # before jax starts a backend
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
    parser.add_argument("--orders", type=int, nargs="+", help="sweep: task orders (0..4)")
    parser.add_argument("--seeds", type=int, nargs="+", help="sweep: seeds")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        configs = expand(cfg, args.orders, args.seeds)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    # Heavy imports (jax, orbax) only once the config is known to be valid.
    _enable_compilation_cache()
    from ctr_jax.data.tasks import DataError
    from ctr_jax.models.bert import BackboneError
    from ctr_jax.tracking import setup_logging
    from ctr_jax.training.loop import run

    setup_logging(cfg.log_level)
    if xla_added:
        logging.getLogger("ctr_jax").info("XLA_FLAGS defaults added: %s", " ".join(xla_added))
    try:
        for i, c in enumerate(configs):
            if len(configs) > 1:
                logging.getLogger("ctr_jax.sweep").info("sweep run %d/%d: %s", i + 1,
                                                         len(configs), c.name)  # fmt: skip
            cfg = c
            run(c)
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
