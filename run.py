"""Runs one continual-learning experiment, or a sweep over task orders and seeds.

    python run.py --config configs/asc_ctr.yaml [--set train.epochs=1 --set data.num_tasks=2 ...]
    python run.py --config configs/asc_ncl.yaml --orders 0 1 2 3 4 --seeds 0 1
    python run.py --config configs/asc_ctr.yaml configs/asc_hat.yaml --orders 0 1 2 --jobs 3

Writes <runs_dir>/<name>/ (a sweep: <name>_o<order>_s<seed>/ per run): config.json,
metrics.jsonl, results.json, acc_matrix.csv, mf1_matrix.csv and checkpoints/ (one per finished
task). Rerunning the same command resumes. Several configs run one after another (the same
--set, --orders and --seeds apply to each); --jobs N runs N of the sweep's runs at once, each
in its own process logging to <run_dir>/log.txt (for an accelerator one run leaves mostly idle).
Tables and plots: python -m ctr_jax.report --help.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from ctr_jax.config import ConfigError, ExperimentConfig, load_config
from ctr_jax.runtime import (
    DETERMINISTIC_FLAG,
    apply_xla_defaults,
    limit_malloc_arenas,
    set_xla_flag,
)
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


def _plan(args: argparse.Namespace) -> list[tuple[str | None, ExperimentConfig]]:
    """(config file, run config) of every run the command asks for, in order.

    Raises ConfigError for a bad config, a bad --jobs, or two runs sharing a run folder.
    """
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    runs = []
    for path in args.config:
        cfg = load_config(path, args.overrides)
        runs += [(path, c) for c in expand(cfg, args.orders, args.seeds)]
    seen: dict[Path, str | None] = {}
    for path, c in runs:
        if c.run_dir in seen:
            raise ConfigError(
                f"{path} and {seen[c.run_dir]} both write the run folder {c.run_dir} "
                "(give each config its own name)"
            )
        seen[c.run_dir] = path
    if args.jobs > 1 and any(c.parallel.distributed for _, c in runs):
        raise ConfigError("--jobs: a parallel.distributed run spans processes already")
    return runs


def _run_parallel(args: argparse.Namespace, runs) -> int:
    """Each run as `run.py --config FILE [--set ...] [--orders o --seeds s]` in a child process,
    args.jobs at a time (``ctr_jax.launch``). Returns 0 if every run succeeded."""
    from ctr_jax.launch import Job, Terminated, run_jobs, summary_line
    from ctr_jax.tracking import setup_logging

    setup_logging(runs[0][1].log_level)
    log = logging.getLogger("ctr_jax.sweep")
    sweep = bool(args.orders or args.seeds)
    jobs = []
    for path, c in runs:
        argv = [] if path is None else ["--config", path]
        argv += [a for o in args.overrides for a in ("--set", o)]
        if sweep:  # the same expansion, restricted to this run: the same name and run folder
            argv += ["--orders", str(c.data.order), "--seeds", str(c.seed)]
        jobs.append(Job(c.name, c.run_dir, tuple(argv)))
    log.info("%d runs, %d at a time", len(jobs), args.jobs)
    try:
        outcomes = run_jobs(jobs, args.jobs, [sys.executable, str(Path(__file__).resolve())])
    except KeyboardInterrupt:
        print("interrupted: finished tasks are checkpointed in every run folder; "
              "rerun the same command to resume", file=sys.stderr)  # fmt: skip
        return 130
    except Terminated:
        print("terminated: the runs were stopped; each keeps its finished tasks, and rerunning "
              "the same command resumes them", file=sys.stderr)  # fmt: skip
        return 143
    for o in outcomes:
        status = "ok" if o.returncode == 0 else f"exit code {o.returncode}"
        log.info("%-32s %-12s %s", o.job.name, status, summary_line(o.job.run_dir))
    failed = [o.job.name for o in outcomes if o.returncode != 0]
    if failed:
        print(f"error: {len(failed)} of {len(outcomes)} runs failed: {', '.join(failed)} "
              "(their log.txt says why)", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    limit_malloc_arenas()
    xla_added = apply_xla_defaults()  # before jax starts a backend
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--config", nargs="+", default=[None], help="YAML experiment config(s) (see configs/)"
    )
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
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="run this many of the sweep's runs at once, one process each (default 1)",
    )
    args = parser.parse_args(argv)
    try:
        runs = _plan(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    configs = [c for _, c in runs]
    cfg = configs[0]
    if any(c.train.deterministic for c in configs) and set_xla_flag(*DETERMINISTIC_FLAG):
        xla_added.append("--{}={}".format(*DETERMINISTIC_FLAG))
    if args.jobs > 1 and len(runs) > 1:
        return _run_parallel(args, runs)
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
