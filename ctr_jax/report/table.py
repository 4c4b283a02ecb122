"""The results table: one row per (benchmark, task count, method, --by variant) of complete runs,
as Markdown and CSV, beside the paper's figures."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

from ctr_jax.metrics import max_drop
from ctr_jax.report.labels import (
    BENCH_LABEL,
    bench_key,
    benchmark_tasks,
    fmt,
    group_sort_key,
    int_ranges,
    mean_std,
    method_label,
    runs_text,
    tasks_label,
)

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
        groups.items(), key=lambda kv: group_sort_key(kv[0])
    ):
        joint = all(r.get("protocol") == "joint" or r["method"] == "mtl" for r in rs)
        row = {"benchmark": bench, "method": method, "variant": variant, "runs": len(rs),
               "tasks": n, "benchmark_tasks": benchmark_tasks(bench)}  # fmt: skip
        for key in ("acc", "mf1", "forgetting"):
            if key == "forgetting" and joint:
                row[f"{key}_mean"] = row[f"{key}_std"] = math.nan
                continue
            mean, std = mean_std([100.0 * r["summary"][key] for r in rs])
            row[f"{key}_mean"], row[f"{key}_std"] = mean, std
        if joint:
            row["drop_mean"] = row["drop_std"] = math.nan
        else:
            row["drop_mean"], row["drop_std"] = mean_std([100.0 * max_drop(r["acc"]) for r in rs])
        paper = PAPER.get((method, bench), (math.nan, math.nan))
        row["paper_acc"], row["paper_mf1"] = paper
        row["orders"] = int_ranges([r["order"] for r in rs if isinstance(r.get("order"), int)])
        row["seeds"] = int_ranges([r["seed"] for r in rs if isinstance(r.get("seed"), int)])
        row["covers"] = runs_text(rs)
        rows.append(row)
    return rows


def to_csv(rows: Sequence[dict], cols: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if isinstance(r[c], float) and math.isnan(r[c]) else r[c] for c in cols])
    return buf.getvalue()


def markdown_table(rows: Sequence[dict], runs: Sequence[dict], after: int | None = None) -> str:
    """The results table as Markdown, one section per benchmark; after: --after-task's k."""
    out = []
    for bench in sorted({r["benchmark"] for r in rows}, key=bench_key):
        out.append(f"### {BENCH_LABEL.get(bench, bench)}\n")
        out.append("| method | tasks | runs | Acc | MF1 | FR | max drop | paper Acc | paper MF1 |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in (r for r in rows if r["benchmark"] == bench):
            paper = ["-" if math.isnan(v) else f"{v:.2f}" for v in (r["paper_acc"], r["paper_mf1"])]
            out.append(
                f"| {method_label(r['method'], r['variant'])} | {tasks_label(bench, r['tasks'])} | "
                f"{r['runs']} | "
                f"{fmt(r['acc_mean'], r['acc_std'])} | "
                f"{fmt(r['mf1_mean'], r['mf1_std'])} | "
                f"{fmt(r['forgetting_mean'], r['forgetting_std'])} | "
                f"{fmt(r['drop_mean'], r['drop_std'])} | {paper[0]} | {paper[1]} |"
            )
        out.append("")
        bench_rows = [r for r in rows if r["benchmark"] == bench]
        if len({r["covers"] for r in bench_rows}) > 1:
            # A mean over orders 1-4 beside one over 0-4 differs by the orders too; the paired
            # section compares like with like.
            counts = len({r["tasks"] for r in bench_rows}) > 1
            parts = []
            for r in bench_rows:
                name = method_label(r["method"], r["variant"])
                if counts:
                    name += f", {tasks_label(bench, r['tasks'])} tasks"
                parts.append(f"{name}: {r['covers'] or 'no order recorded'}")
            out.append("The rows are over different runs: " + "; ".join(parts) + ".\n")
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
            "drop_mean", "drop_std", "paper_acc", "paper_mf1", "orders", "seeds"]  # fmt: skip
    return to_csv(rows, cols)
