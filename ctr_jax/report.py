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
                               never share a row), and the paper's Acc / MF1 (spec §9.1)
    heatmap_<run>.png          each run's accuracy matrix (row = after task, column = task)
    curve_<benchmark>.png      mean accuracy over the tasks seen so far after each task, one line
                               per method (mean over its runs), all methods in one figure
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
import csv
import io
import json
import logging
import math
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ctr_jax.config import ExperimentConfig, data_seed_used, key_applies, with_legacy_values
from ctr_jax.data.benchmarks import task_order
from ctr_jax.methods import METHODS
from ctr_jax.metrics import RESULTS_FILE, max_drop, read_results, summarize
from ctr_jax.tracking import setup_logging

log = logging.getLogger(__name__)

BENCHMARKS = ("asc", "dsc_small", "dsc_full", "20news")
BENCH_LABEL = {"asc": "ASC", "dsc_small": "DSC small", "dsc_full": "DSC full", "20news": "20News"}
# Spec §9.1 (bert-base, 5-order means; the paper's "DSC" is DSC full), as (Acc, MF1) in %.
# Rows: CTR and B-CL are "BERT"; HAT, NCL, ONE "Adapter-BERT"; MTL "BERT" (the only MTL row).
PAPER: dict[tuple[str, str], tuple[float, float]] = {
    ("ctr", "asc"): (89.47, 83.62), ("ctr", "dsc_full"): (89.31, 88.75),
    ("ctr", "20news"): (95.25, 95.23),
    ("bcl", "asc"): (88.29, 81.40), ("bcl", "dsc_full"): (79.76, 76.51),
    ("bcl", "20news"): (95.07, 95.04),
    ("hat", "asc"): (86.14, 78.52), ("hat", "dsc_full"): (88.00, 87.26),
    ("hat", "20news"): (95.22, 95.21),
    ("ncl", "asc"): (54.03, 44.81), ("ncl", "dsc_full"): (64.94, 63.40),
    ("ncl", "20news"): (68.29, 61.70),
    ("one", "asc"): (85.96, 78.07), ("one", "dsc_full"): (88.30, 87.31),
    ("one", "20news"): (96.20, 96.19),
    ("mtl", "asc"): (91.91, 88.11), ("mtl", "dsc_full"): (89.77, 89.28),
    ("mtl", "20news"): (96.77, 96.77),
    # DSC small: spec §9.2, a second-hand source not checked against the paper's PDF, with
    # Acc only and only these two methods.
    ("ctr", "dsc_small"): (84.34, math.nan), ("bcl", "dsc_small"): (82.01, math.nan),
}  # fmt: skip


def benchmark_tasks(bench: str) -> int | None:
    """How many tasks the whole benchmark has (ASC 19, DSC and 20News 10); None if unknown
    (a custom stream). The paper's figures are over all of them."""
    return len(task_order(bench, 0)) if bench in BENCHMARKS else None


def tasks_label(bench: str, n: int) -> str:
    """The tasks column: "19" (the whole benchmark), "4 of 19" (a slice), "n" (custom)."""
    full = benchmark_tasks(bench)
    return f"{n} of {full}" if full is not None and n != full else str(n)


def _group_sort_key(key: tuple[str, int, str, str]) -> tuple:
    """Benchmarks in their order, whole-benchmark rows before slices, then methods, variants."""
    bench, n, method, variant = key
    return _bench_key(bench), -n, _method_key(method), _variant_key(variant)


class ReportError(ValueError):
    """Bad input to the report; the message names the file at fault."""


def find_results(paths: Iterable[Path]) -> list[Path]:
    """Every results.json at or under `paths` (a file, a run folder, or a folder of runs)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(p.rglob(RESULTS_FILE))
        else:
            raise ReportError(f"{p}: no such file or folder")
    return sorted(set(found))


def _lookup(node: object, key: str) -> object:
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def _config_value(config_file: Path, key: str) -> object:
    """The value of dotted config key `key` (e.g. "train.lr") in a run's config.json.

    A key the saved config lacks but ctr-jax knows was added after the run was made: the run
    used its default (or its ``LEGACY_VALUES`` value), as a resume reads it."""
    try:
        node = with_legacy_values(json.loads(config_file.read_text(encoding="utf-8"))["config"])
    except (OSError, ValueError, KeyError) as e:
        raise ReportError(f"{config_file}: no readable run config for --by ({e})") from e
    try:
        return _lookup(node, key)
    except KeyError:
        pass
    try:
        return _lookup(ExperimentConfig().to_dict(), key)
    except KeyError:
        raise ReportError(f"{config_file}: no config key {key!r} (--by)") from None


# Config keys whose value "auto" the run resolves and records in results.json under this field:
# --by shows what the run did ("model.pooling=mean"), so an "auto" run and one that asked for
# that value explicitly share a row, as they share the computation.
RESOLVED_IN_RESULTS: dict[str, str] = {"model.pooling": "pooling"}


# Config keys whose null stands for a setting of its own: --by names it ("train.epochs=paper",
# the paper's epochs per benchmark) rather than "None".
NULL_MEANS: dict[str, str] = {"train.epochs": "paper"}


def _variant_value(run: dict, config_file: Path, key: str) -> object:
    value = _config_value(config_file, key)
    if value is None and key in NULL_MEANS:
        return NULL_MEANS[key]
    field = RESOLVED_IN_RESULTS.get(key)
    if value == "auto" and field is not None and run.get(field) is not None:
        return run[field]
    return value


def _legacy_data_seed(run: dict, config_file: Path) -> int | None:
    """results.json's "data_seed" for a run made before it was written: the seed where the
    data depended on it (DSC small, 20News, a max_train_examples subsample), else None."""
    max_train = None
    if config_file.exists():
        max_train = _config_value(config_file, "data.max_train_examples")
    return run.get("seed") if data_seed_used(run["benchmark"], max_train) else None


def load_runs(files: Sequence[Path], by: Sequence[str] = ()) -> list[dict]:
    """read_results of each file plus "path", "name", "complete" (every task learned) and
    "variant": "key=value" of each --by key, comma-joined ("" without --by); a key in
    RESOLVED_IN_RESULTS set to "auto" shows the value the run resolved it to."""
    runs = []
    for f in files:
        try:
            r = read_results(f)
        except (OSError, ValueError, KeyError) as e:
            raise ReportError(f"{f}: not a results file ({e})") from e
        for key in ("method", "benchmark", "tasks", "acc", "mf1", "summary"):
            if key not in r:
                raise ReportError(f"{f}: results file lacks {key!r}")
        r["path"] = f
        r["name"] = r.get("name") or f.parent.name
        r["complete"] = r["summary"].get("tasks_learned") == len(r["tasks"])
        cfg_file = f.parent / "config.json"
        r["variant"] = ", ".join(f"{k}={_variant_value(r, cfg_file, k)}" for k in by)
        if "data_seed" not in r:  # a run from before data.seed: its seed picked its data
            r["data_seed"] = _legacy_data_seed(r, cfg_file)
        runs.append(r)
    return runs


def after_task(runs: Sequence[dict], k: int) -> list[dict]:
    """Each run as it stood after its k-th task (k >= 1): tasks, test_support and the [T, T]
    matrices cut to the first k (acc[:k, :k]), the summary recomputed from that block: what
    the run had measured by then (task t's training sees nothing of the tasks after it, so it
    compares with a run over the first k tasks of the same order, whose random initial values
    may differ). A run that had not learned k tasks is kept unchanged but marked not
    complete, and a joint run (MTL, whose one phase saw every task) too; "left_out" says why
    (the table lists them)."""
    if k < 1:
        raise ReportError(f"--after-task {k}: must be at least 1")
    out = []
    for r in runs:
        learned = r["summary"].get("tasks_learned")
        if r.get("protocol") == "joint" or r["method"] == "mtl":
            out.append(
                {**r, "complete": False, "left_out": "joint training: no state after a task"}
            )
            continue
        if not isinstance(learned, int) or learned < k:
            out.append({**r, "complete": False,
                        "left_out": f"{learned} of {len(r['tasks'])} tasks learned"})  # fmt: skip
            continue
        acc, mf1 = r["acc"][:k, :k], r["mf1"][:k, :k]
        cut = {**r, "tasks": list(r["tasks"][:k]), "acc": acc, "mf1": mf1, "complete": True,
               "summary": {**summarize(acc, mf1), "tasks_learned": k}}  # fmt: skip
        if r.get("test_support"):
            cut["test_support"] = list(r["test_support"][:k])
        out.append(cut)
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else math.nan


def _method_key(method: str) -> tuple[int, str]:
    order = {m: i for i, m in enumerate(METHODS)}
    return order.get(method, len(order)), method


def _variant_key(variant: str) -> tuple:
    """Sort key of a --by variant ("k=3.0, j=0.02") that orders numbers by value, not as text
    (3.0 before 10.0)."""
    parts = re.split(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)", variant)
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts))


def aggregate(runs: Sequence[dict]) -> list[dict]:
    """One row per (benchmark, task count, method, variant) of complete runs: means and stds
    in %, paper figures. Runs over different numbers of tasks (a 4-task slice and the whole
    benchmark) never share a row: their means are not comparable."""
    groups: dict[tuple[str, int, str, str], list[dict]] = {}
    for r in runs:
        if r["complete"]:
            key = (r["benchmark"], len(r["tasks"]), r["method"], r.get("variant", ""))
            groups.setdefault(key, []).append(r)
    rows = []
    for (bench, n, method, variant), rs in sorted(
        groups.items(), key=lambda kv: _group_sort_key(kv[0])
    ):
        joint = all(r.get("protocol") == "joint" or r["method"] == "mtl" for r in rs)
        row = {"benchmark": bench, "method": method, "variant": variant, "runs": len(rs),
               "tasks": n, "benchmark_tasks": benchmark_tasks(bench)}  # fmt: skip
        for key in ("acc", "mf1", "forgetting"):
            if key == "forgetting" and joint:
                row[f"{key}_mean"] = row[f"{key}_std"] = math.nan
                continue
            mean, std = _mean_std([100.0 * r["summary"][key] for r in rs])
            row[f"{key}_mean"], row[f"{key}_std"] = mean, std
        if joint:
            row["drop_mean"] = row["drop_std"] = math.nan
        else:
            row["drop_mean"], row["drop_std"] = _mean_std([100.0 * max_drop(r["acc"]) for r in rs])
        paper = PAPER.get((method, bench), (math.nan, math.nan))
        row["paper_acc"], row["paper_mf1"] = paper
        rows.append(row)
    return rows


def _pair_key(r: dict, held: Sequence[str] | None = None) -> tuple:
    """What two runs must share to be compared pairwise: the task sequence, order, seed, data
    seed (where it changes the data), epochs setting and --by variant (with `held`, only the
    variant's values of those keys)."""
    variant = r.get("variant", "")
    if held is not None:
        variant = ", ".join(f"{k}={v}" for k, v in _parse_variant(variant).items() if k in held)
    return (r["benchmark"], tuple(r["tasks"]), r.get("order"), r.get("seed"),
            r.get("data_seed"), json.dumps(r.get("epochs")), variant)  # fmt: skip


def _parse_variant(variant: str) -> dict[str, str]:
    """ "train.lr=0.001, train.ksm_protect=past" -> {"train.lr": "0.001", ...}."""
    return dict(part.split("=", 1) for part in variant.split(", ") if "=" in part)


def _same_value(a: str, b: str) -> bool:
    """Config values as --by prints them and as a user types them: 1e-3 is 0.001."""
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def _matches(variant: str, wanted: dict[str, str]) -> bool:
    have = _parse_variant(variant)
    return all(k in have and _same_value(have[k], v) for k, v in wanted.items())


def _variant_text(variant: dict[str, str] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (variant or {}).items())


def _pair_groups(
    runs: Sequence[dict], ref: str, ref_variant: dict[str, str] | None = None
) -> dict[tuple[str, int, str, str], dict]:
    """(benchmark, task count, method, variant) -> {"pairs": [(ref run, method run)],
    "ambiguous": keys left out because one side has two complete runs}.

    Without `ref_variant`, runs pair only with runs of equal --by values. With it ({key: value}
    of --by keys), the reference is `ref`'s runs with those values, and it pairs with every
    other (method, variant), `ref`'s other values of those keys included, across those keys
    (the other --by keys still held equal): CTR with ksm_protect=past against HAT, whose runs
    carry the key's default."""
    held = None
    if ref_variant is not None:
        held = {k for r in runs for k in _parse_variant(r.get("variant", ""))} - set(ref_variant)
    by_key: dict[tuple, dict[tuple[str, str], list[dict]]] = {}
    for r in runs:
        if r["complete"]:
            side = (r["method"], r.get("variant", "") if held is not None else "")
            by_key.setdefault(_pair_key(r, held), {}).setdefault(side, []).append(r)
    groups: dict[tuple[str, int, str, str], dict] = {}
    for key, sides in by_key.items():
        ref_sides = {(m, v) for m, v in sides
                     if m == ref and (ref_variant is None or _matches(v, ref_variant))}  # fmt: skip
        refs = [r for side in sorted(ref_sides) for r in sides[side]]
        if not refs:
            continue
        for (method, variant), rs in sides.items():
            if (method, variant) in ref_sides:
                continue
            group = (key[0], len(key[1]), method, variant if held is not None else key[-1])
            g = groups.setdefault(group, {"pairs": [], "ambiguous": 0})
            if len(rs) > 1 or len(refs) > 1:
                g["ambiguous"] += 1
            else:
                g["pairs"].append((refs[0], rs[0]))
    return dict(sorted(groups.items(), key=lambda kv: _group_sort_key(kv[0])))


def _t_test_p(d: Sequence[float]) -> float:
    """Two-sided p of a one-sample t-test of the paired differences against 0 (NaN under two
    pairs or when every difference is the same: the test is then undefined). Five pairs over
    orders are few and the test assumes normal differences: a guide, not a verdict."""
    if len(d) < 2 or np.ptp(d) == 0:
        return math.nan
    from scipy import stats  # only here: a second of import time the rest never needs

    return float(stats.ttest_1samp(d, 0.0).pvalue)


def paired(
    runs: Sequence[dict], ref: str = "ctr", ref_variant: dict[str, str] | None = None
) -> list[dict]:
    """One row per (benchmark, task count, method, variant) that shares complete runs with
    method `ref` (with `ref_variant`, its runs with those --by values; ``_pair_groups``):
    the differences ref - method in Acc, MF1 and forgetting (% points; mean and sample std
    over the pairs), their t-test p in Acc and MF1, and in how many pairs ref is ahead, level
    or behind in Acc and MF1.

    A key (``_pair_key``) with two complete runs of one method is ambiguous and left out;
    "ambiguous" counts such keys. Forgetting is NaN where either side trained jointly (MTL)."""
    rows = []
    ref_label = _variant_text(ref_variant)
    for (bench, n, method, variant), g in _pair_groups(runs, ref, ref_variant).items():
        pairs = g["pairs"]
        row = {"benchmark": bench, "ref": ref, "ref_variant": ref_label, "method": method,
               "variant": variant, "tasks": n, "pairs": len(pairs),
               "ambiguous": g["ambiguous"]}  # fmt: skip
        joint = any(r.get("protocol") == "joint" or r["method"] == "mtl" for p in pairs for r in p)
        for key in ("acc", "mf1", "forgetting"):
            d = [100.0 * (a["summary"][key] - b["summary"][key]) for a, b in pairs]
            if not d or (key == "forgetting" and joint):
                row[f"d_{key}_mean"] = row[f"d_{key}_std"] = math.nan
            else:
                row[f"d_{key}_mean"], row[f"d_{key}_std"] = _mean_std(d)
            if key != "forgetting":
                row[f"p_{key}"] = _t_test_p(d)
                # Compared at the precision the table prints: a 1e-12 float difference is level.
                rounded = [round(x, 2) for x in d]
                row[f"{key}_ahead"] = sum(x > 0 for x in rounded)
                row[f"{key}_level"] = sum(x == 0 for x in rounded)
                row[f"{key}_behind"] = sum(x < 0 for x in rounded)
        rows.append(row)
    return rows


def paired_tasks(
    runs: Sequence[dict], ref: str = "ctr", ref_variant: dict[str, str] | None = None
) -> list[dict]:
    """Where each pair's difference comes from: one row per pair of ``paired`` and task, with
    both runs' final Acc and MF1 on the task (the last row of the matrices, in %), ref - method,
    and the task's test examples (``test_n``) and those of its rarest class (``test_rarest``)
    where a results.json records them (``test_support``; NaN for runs from before it did).

    Why: the mean MF1 over ASC's 19 tasks moves by 2.7 points when one prediction flips on a
    task with a single test example of a class, so a difference between two runs is worth
    reading task by task before it is read as a difference between methods."""
    rows = []
    ref_label = _variant_text(ref_variant)
    for (bench, _, method, variant), g in _pair_groups(runs, ref, ref_variant).items():
        for a, b in g["pairs"]:
            support = a.get("test_support") or b.get("test_support")
            for j, task in enumerate(a["tasks"]):
                counts = list(support[j].values()) if support else []
                row = {"benchmark": bench, "ref": ref, "ref_variant": ref_label,
                       "method": method, "variant": variant, "order": a.get("order"),
                       "seed": a.get("seed"), "task": task,
                       "test_n": sum(counts) if counts else math.nan,
                       "test_rarest": min(counts) if counts else math.nan}  # fmt: skip
                for key in ("acc", "mf1"):
                    x, y = 100.0 * a[key][-1, j], 100.0 * b[key][-1, j]
                    row[f"{key}_ref"], row[f"{key}_method"], row[f"d_{key}"] = x, y, x - y
                rows.append(row)
    return rows


PAIRED_TASK_COLS = ["benchmark", "ref", "ref_variant", "method", "variant", "order", "seed",
                    "task", "test_n", "test_rarest", "acc_ref", "acc_method", "d_acc", "mf1_ref",
                    "mf1_method", "d_mf1"]  # fmt: skip


PAIRED_COLS = ["benchmark", "ref", "ref_variant", "method", "variant", "tasks", "pairs",
               "ambiguous", "d_acc_mean", "d_acc_std", "d_mf1_mean", "d_mf1_std",
               "d_forgetting_mean", "d_forgetting_std", "p_acc", "p_mf1", "acc_ahead",
               "acc_level", "acc_behind", "mf1_ahead", "mf1_level", "mf1_behind"]  # fmt: skip


def paired_markdown(rows: Sequence[dict]) -> str:
    """The paired comparison as Markdown, one section per benchmark ("" without rows)."""
    out = []
    for bench in sorted({r["benchmark"] for r in rows}, key=_bench_key):
        rs = [r for r in rows if r["benchmark"] == bench]
        ref, ref_full = _label(rs[0]["ref"]), _label(rs[0]["ref"], rs[0]["ref_variant"])
        out.append(f"### {BENCH_LABEL.get(bench, bench)}: {ref_full} against each method, "
                   "paired\n")  # fmt: skip
        out.append(f"| method | tasks | pairs | {ref} - method: Acc | MF1 | FR | p: Acc | MF1 | "
                   f"{ref} ahead / level / behind: Acc | MF1 |")  # fmt: skip
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in rs:
            out.append(
                f"| {_label(r['method'], r['variant'])} | {tasks_label(bench, r['tasks'])} | "
                f"{r['pairs']} | "
                f"{_fmt(r['d_acc_mean'], r['d_acc_std'])} | "
                f"{_fmt(r['d_mf1_mean'], r['d_mf1_std'])} | "
                f"{_fmt(r['d_forgetting_mean'], r['d_forgetting_std'])} | "
                f"{_fmt_p(r['p_acc'])} | {_fmt_p(r['p_mf1'])} | "
                f"{r['acc_ahead']} / {r['acc_level']} / {r['acc_behind']} | "
                f"{r['mf1_ahead']} / {r['mf1_level']} / {r['mf1_behind']} |"
            )
        out.append("")
        if amb := [r for r in rs if r["ambiguous"]]:
            out.append("Left out as ambiguous (two runs of one method on the same sequence, "
                       "order, seed and epochs): "
                       + ", ".join(f"{_label(r['method'], r['variant'])}: {r['ambiguous']}"
                                   for r in amb) + ".\n")  # fmt: skip
    if out:
        out.append(
            "A pair is two complete runs on the same task sequence, order, seed, data seed (DSC "
            "small, 20News) and epochs (and --by values, less those --ref-variant names). "
            "Differences in % points, mean ± sample std over the pairs; a positive Acc / MF1 "
            "difference means the reference is higher, a negative FR difference that it forgets "
            "less. p: two-sided one-sample t-test of the differences against 0 (a guide at a "
            "handful of pairs; '-' under two pairs). Ahead / level / behind compare each pair at "
            "two decimals."
        )
    return "\n".join(out) + "\n" if out else ""


def _csv(rows: Sequence[dict], cols: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if isinstance(r[c], float) and math.isnan(r[c]) else r[c] for c in cols])
    return buf.getvalue()


def _bench_key(b: str) -> int:
    return BENCHMARKS.index(b) if b in BENCHMARKS else len(BENCHMARKS)


def _fmt_p(p: float) -> str:
    return "-" if math.isnan(p) else f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def _label(method: str, variant: str = "") -> str:
    """ "CTR (train.lr=0.001)": the method's name and its --by values, less those of keys that
    scale a module the method lacks (HAT has no knowledge-sharing module: its run shares
    ksm_lr_scale's default row, and pairs with CTR's at that value, but is not labelled by it)."""
    label = METHODS[method].label if method in METHODS else method
    shown = ", ".join(
        part for part in variant.split(", ") if part and key_applies(method, part.split("=")[0])
    )
    return f"{label} ({shown})" if shown else label


def markdown_table(rows: Sequence[dict], runs: Sequence[dict], after: int | None = None) -> str:
    """The results table as Markdown, one section per benchmark; after: --after-task's k."""
    out = []
    for bench in sorted({r["benchmark"] for r in rows}, key=_bench_key):
        out.append(f"### {BENCH_LABEL.get(bench, bench)}\n")
        out.append("| method | tasks | runs | Acc | MF1 | FR | max drop | paper Acc | paper MF1 |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in (r for r in rows if r["benchmark"] == bench):
            paper = ["-" if math.isnan(v) else f"{v:.2f}" for v in (r["paper_acc"], r["paper_mf1"])]
            out.append(
                f"| {_label(r['method'], r['variant'])} | {tasks_label(bench, r['tasks'])} | "
                f"{r['runs']} | "
                f"{_fmt(r['acc_mean'], r['acc_std'])} | "
                f"{_fmt(r['mf1_mean'], r['mf1_std'])} | "
                f"{_fmt(r['forgetting_mean'], r['forgetting_std'])} | "
                f"{_fmt(r['drop_mean'], r['drop_std'])} | {paper[0]} | {paper[1]} |"
            )
        out.append("")
    unfinished = [r for r in runs if not r["complete"]]
    if unfinished:
        out.append(
            "Unfinished runs (not in the table):"
            if after is None
            else f"Runs without a state after task {after} (not in the table):"
        )
        for r in unfinished:
            why = r.get("left_out") or (
                f"{r['summary'].get('tasks_learned')} of {len(r['tasks'])} tasks"
            )
            out.append(f"- {r['name']} ({r['method']}, {r['benchmark']}): {why}")
        out.append("")
    if after is not None:
        out.append(
            f"Every run as it stood after its task {after} (--after-task): the top-left "
            f"{after} x {after} block of its matrices, so Acc, MF1 and FR are over its first "
            f"{after} tasks."
        )
    out.append(
        "Acc, MF1: mean over the tasks after the last one (%); FR: forgetting rate (spec §6, "
        "% points: the fall from right after learning a task to the end); max drop: the "
        "largest fall of each earlier task at any later point, averaged over the tasks (% "
        "points; a task that collapses and recovers counts here, not in FR); mean ± sample "
        'std over runs (orders, seeds) with the same number of tasks; tasks: "4 of 19" is a '
        "run over the first 4 tasks of each order. Paper: spec §9.1 (bert-base, all tasks, 5 "
        "orders)"
        + (
            "; DSC small: spec §9.2 (Acc only, CTR and B-CL only, second-hand)."
            if any(r["benchmark"] == "dsc_small" for r in rows)
            else "."
        )
    )
    return "\n".join(out) + "\n"


def csv_table(rows: Sequence[dict]) -> str:
    cols = ["benchmark", "method", "variant", "tasks", "benchmark_tasks", "runs",
            "acc_mean", "acc_std", "mf1_mean", "mf1_std", "forgetting_mean", "forgetting_std",
            "drop_mean", "drop_std", "paper_acc", "paper_mf1"]  # fmt: skip
    return _csv(rows, cols)


def seen_task_curve(acc: np.ndarray) -> np.ndarray:
    """[T] mean accuracy over tasks 0..t after learning task t, from acc [T, T] (in %)."""
    return np.array([100.0 * np.nanmean(acc[t, : t + 1]) for t in range(acc.shape[0])])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_heatmap(run: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    acc = 100.0 * run["acc"]
    T = acc.shape[0]
    fig, ax = plt.subplots(figsize=(2.0 + 0.45 * T, 1.5 + 0.4 * T))
    im = ax.imshow(np.ma.masked_invalid(acc), vmin=0, vmax=100, cmap="viridis")
    ticks = [f"{i}" for i in range(T)]
    ax.set_xticks(range(T), ticks)
    ax.set_yticks(range(T), ticks)
    ax.set_xlabel("task evaluated")
    ax.set_ylabel("after learning task")
    if T <= 20:
        for i in range(T):
            for j in range(i + 1):
                if np.isfinite(acc[i, j]):
                    color = "black" if acc[i, j] > 60 else "white"
                    ax.text(j, i, f"{acc[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color=color)  # fmt: skip
    s = run["summary"]
    ax.set_title(
        f"{_label(run['method'])} on {BENCH_LABEL.get(run['benchmark'], run['benchmark'])} "
        f"({run['name']})\nAcc {100 * s['acc']:.2f}  MF1 {100 * s['mf1']:.2f}",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, label="test accuracy (%)")
    fig.tight_layout()
    # "tight": a long run name makes the title wider than a small matrix's figure.
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(runs: Sequence[dict], bench: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    by_group: dict[tuple[str, int, str, str], list[np.ndarray]] = {}
    for r in runs:
        if r["complete"] and r["benchmark"] == bench:
            key = (bench, len(r["tasks"]), r["method"], r.get("variant", ""))
            by_group.setdefault(key, []).append(seen_task_curve(r["acc"]))
    # One colour per method; a method's variants (--by) and task counts share it and differ
    # in line style, so an ablation reads as families of curves. MTL, the reference, starts
    # from dashed. Runs over different numbers of tasks get separate curves.
    keys = sorted(by_group, key=_group_sort_key)
    methods = sorted({m for _, _, m, _ in keys}, key=_method_key)
    several_counts = len({n for _, n, _, _ in keys}) > 1
    styles = ["-", "--", ":", "-."]
    seen: dict[str, int] = {}
    for key in keys:
        _, n_tasks, method, variant = key
        curves = np.stack(by_group[key])
        x = np.arange(1, curves.shape[1] + 1)
        i = seen[method] = seen.get(method, -1) + 1
        style = styles[(i + (method == "mtl")) % len(styles)]
        n = len(curves)
        ax.plot(x, curves.mean(0), style, marker="os^Dv<>p"[i % 8], ms=3,
                color=f"C{methods.index(method) % 10}",
                label=f"{_label(method, variant)}"
                      f"{f' ({n_tasks} tasks)' if several_counts else ''}: "
                      f"{n} run{'s' if n > 1 else ''}")  # fmt: skip
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("tasks learned")
    ax.set_ylabel("mean test accuracy over seen tasks (%)")
    ax.set_title(f"{BENCH_LABEL.get(bench, bench)}: accuracy over the tasks seen so far")
    ax.grid(alpha=0.3)
    labels = ax.get_legend_handles_labels()[1]
    if len(labels) > 4 or max(map(len, labels), default=0) > 50:
        # Many or long entries (an ablation's --by variants) would cover the curves: put the
        # legend right of the axes (under them it ran over the x label once it had 10 rows);
        # bbox_inches="tight" grows the figure to hold it.
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


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
    paired across those keys with every other method and value (``_pair_groups``).
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
        if not any(_matches(r["variant"], wanted) for r in refs):
            text = _variant_text(wanted)
            raise ReportError(f"--ref-variant {text}: no complete {ref} run has it")
    pairs = paired(runs, ref, wanted) if ref is not None else []
    if pairs:
        md += "\n" + paired_markdown(pairs)
        files["paired"] = out / "paired.csv"
        files["paired"].write_text(_csv(pairs, PAIRED_COLS), encoding="utf-8")
        files["paired_tasks"] = out / "paired_tasks.csv"
        files["paired_tasks"].write_text(
            _csv(paired_tasks(runs, ref, wanted), PAIRED_TASK_COLS), encoding="utf-8"
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
            files[f"heatmap:{r['name']}"] = p = out / f"heatmap_{_safe(r['name'])}.png"
            plot_heatmap(r, p)
        for bench in sorted({r["benchmark"] for r in runs if r["complete"]}, key=_bench_key):
            files[f"curve:{bench}"] = p = out / f"curve_{_safe(bench)}.png"
            plot_curves(runs, bench, p)
    log.info("report of %d runs written to %s", len(runs), out)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
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
