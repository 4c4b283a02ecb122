"""Paper-style tables and plots from run folders.

    python -m ctr_jax.report runs/ [more folders or results.json files] --out docs/results
    python -m ctr_jax.report runs/ --by train.lr     # an ablation: one row per method and lr

Finds every results.json under the given paths, groups the runs by (benchmark, number of tasks,
method) and, with --by, by the values of the given config keys (read from each run's
config.json), and writes to --out:

    results.md / results.csv   methods x benchmarks: Acc, MF1, forgetting (FR), the max drop
                               (metrics.max_drop: the largest fall of each earlier task at any
                               later point, which FR's last row can hide), in %, mean +- std
                               over the runs of a group (orders, seeds), the number of runs and
                               of tasks ("4 of 19" for a slice: a slice and the whole benchmark
                               never share a row), and the paper's Acc / MF1 (spec §9.1);
                               the orders and seeds each row's runs include (CSV columns
                               orders, seeds; a line under the table where rows differ)
    heatmap_<run>.png          each run's accuracy matrix (row = after task, column = task)
    curve_<benchmark>.png      mean accuracy over the tasks seen so far after each task, one line
                               per method (mean over its runs), all methods in one figure;
                               where the lines are over different orders or seeds, each
                               legend entry names its own
    paired.csv (and a section of results.md)
                               --ref's method (CTR by default) against every other method over
                               the runs they share: the same task sequence, order, seed, data
                               seed, epochs and --by values. Orders and seeds move every
                               method alike, so the per-pair differences separate methods
                               that the pooled mean +- std cannot.
    paired_tasks.csv           each pair's final Acc and MF1 task by task, with each task's
                               test examples and those of its rarest class (where the runs
                               recorded them): which tasks a difference comes from

    python -m ctr_jax.report runs/ --by train.ksm_protect --ref-variant train.ksm_protect=past

pairs CTR's runs with ksm_protect=past against every other method and value (HAT, CTR with
none, ...) on the same sequence, order and seed; without --ref-variant runs pair only within
equal --by values. The paired table gives a two-sided t-test p of the differences (scipy).

Only runs that learned every task enter the table and curves; unfinished ones are listed under
the table. MTL has no forgetting (one joint phase), so its FR and max drop print as "-".

    python -m ctr_jax.report runs/a runs/b --after-task 6

compares runs as they stood after their 6th task (the top-left 6 x 6 block of each accuracy
and MF1 matrix: the same tasks, in the same order, as a run over the first 6 tasks of that
order), so long runs can be compared while they are still going. Runs that had not learned 6
tasks, and joint runs (MTL: one phase saw every task), are listed under the table instead.

Matplotlib runs with the non-interactive Agg backend, so no display is needed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ctr_jax.methods import METHODS
from ctr_jax.metrics import RESULTS_FILE
from ctr_jax.report.labels import bench_key
from ctr_jax.report.pairing import (
    PAIRED_COLS,
    PAIRED_TASK_COLS,
    matches,
    paired,
    paired_markdown,
    paired_tasks,
    variant_text,
)
from ctr_jax.report.plots import plot_curves, plot_heatmap, safe_name
from ctr_jax.report.runs import ReportError, after_task, find_results, load_runs
from ctr_jax.report.table import aggregate, csv_table, markdown_table, to_csv
from ctr_jax.tracking import setup_logging

log = logging.getLogger(__name__)


def _ref_variant(items: Sequence[str], by: Sequence[str]) -> dict[str, str]:
    """["train.ksm_protect=past"] -> {"train.ksm_protect": "past"}; each key one of --by's."""
    wanted = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ReportError(f"--ref-variant {item!r}: expected KEY=VALUE")
        if key not in by:
            raise ReportError(f"--ref-variant {item!r}: {key!r} is not one of --by {list(by)}")
        wanted[key] = value
    return wanted


def write_report(
    paths: Sequence[Path],
    out: Path,
    plots: bool = True,
    by: Sequence[str] = (),
    ref: str | None = "ctr",
    ref_variant: Sequence[str] = (),
    after: int | None = None,
) -> dict[str, Path]:
    """Writes the table (Markdown, CSV) and plots for the runs under `paths`; returns the files.

    by: dotted config keys whose values split a method's runs into separate rows and curves.
    ref: the method every other one is compared with pairwise (paired.csv and a section of
    results.md, where it shares runs with another method); None: no paired comparison.
    ref_variant: "key=value" of --by keys: the reference is `ref`'s runs with those values,
    paired across those keys with every other method and value (``pairing._pair_groups``).
    after: compare every run as it stood after this many tasks (``after_task``).
    """
    if ref is not None and ref not in METHODS:
        raise ReportError(f"--ref {ref!r} is not a method (one of {sorted(METHODS)})")
    wanted = _ref_variant(ref_variant, by) if ref_variant else None
    runs = load_runs(find_results(paths), by)
    if not runs:
        raise ReportError(f"no {RESULTS_FILE} under {[str(p) for p in paths]}")
    if after is not None:
        runs = after_task(runs, after)
    names = [r["name"] for r in runs]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise ReportError(f"several runs share the name(s) {dup}: report them separately")
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(runs)
    files = {"md": out / "results.md", "csv": out / "results.csv"}
    md = markdown_table(rows, runs, after)
    if wanted is not None and ref is not None:
        refs = [r for r in runs if r["complete"] and r["method"] == ref]
        if not any(matches(r["variant"], wanted) for r in refs):
            text = variant_text(wanted)
            raise ReportError(f"--ref-variant {text}: no complete {ref} run has it")
    pairs = paired(runs, ref, wanted) if ref is not None else []
    if pairs:
        md += "\n" + paired_markdown(pairs)
        files["paired"] = out / "paired.csv"
        files["paired"].write_text(to_csv(pairs, PAIRED_COLS), encoding="utf-8")
        files["paired_tasks"] = out / "paired_tasks.csv"
        files["paired_tasks"].write_text(
            to_csv(paired_tasks(runs, ref, wanted), PAIRED_TASK_COLS), encoding="utf-8"
        )
    else:
        for stale in ("paired.csv", "paired_tasks.csv"):  # from an earlier report into `out`
            (out / stale).unlink(missing_ok=True)
    files["md"].write_text(md, encoding="utf-8")
    files["csv"].write_text(csv_table(rows), encoding="utf-8")
    if plots:
        import matplotlib

        matplotlib.use("Agg")
        for r in runs:
            files[f"heatmap:{r['name']}"] = p = out / f"heatmap_{safe_name(r['name'])}.png"
            plot_heatmap(r, p)
        for bench in sorted({r["benchmark"] for r in runs if r["complete"]}, key=bench_key):
            files[f"curve:{bench}"] = p = out / f"curve_{safe_name(bench)}.png"
            plot_curves(runs, bench, p)
    log.info("report of %d runs written to %s", len(runs), out)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ctr_jax.report",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run folders or results.json files")
    parser.add_argument("--out", type=Path, default=Path("docs/results"), help="output folder")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument(
        "--by", nargs="+", default=[], metavar="KEY",
        help="config keys (e.g. train.lr) whose values split a method's runs into separate rows",
    )  # fmt: skip
    parser.add_argument(
        "--ref", default="ctr", metavar="METHOD",
        help="method compared pairwise with every other one over the runs they share "
             "(same sequence, order, seed, epochs); 'none': no paired comparison",
    )  # fmt: skip
    parser.add_argument(
        "--ref-variant", nargs="+", default=[], metavar="KEY=VALUE",
        help="the reference is --ref's runs with these --by values, paired with every other "
             "method and value (e.g. train.ksm_protect=past against HAT and against =none)",
    )  # fmt: skip
    parser.add_argument(
        "--after-task", type=int, default=None, metavar="K",
        help="compare every run as it stood after its K-th task (runs still going included)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    setup_logging("INFO")
    try:
        files = write_report(
            args.paths, args.out, plots=not args.no_plots, by=args.by,
            ref=None if args.ref == "none" else args.ref, ref_variant=args.ref_variant,
            after=args.after_task,
        )  # fmt: skip
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((args.out / "results.md").read_text(encoding="utf-8"))
    print(f"wrote {len(files)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
