"""The paired comparison: the reference method's runs against every other method's on the same
task sequence, order, seed, data seed and epochs; per pair and per task."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np

from ctr_jax.report.labels import (
    BENCH_LABEL,
    bench_key,
    fmt,
    fmt_p,
    group_sort_key,
    mean_std,
    method_label,
    tasks_label,
)


def _pair_key(r: dict, held: Sequence[str] | None = None) -> tuple:
    """What two runs must share to be compared pairwise: the task sequence, order, seed, data
    seed (where it changes the data), epochs setting and --by variant (with `held`, only the
    variant's values of those keys)."""
    variant = r.get("variant", "")
    if held is not None:
        variant = ", ".join(f"{k}={v}" for k, v in parse_variant(variant).items() if k in held)
    return (r["benchmark"], tuple(r["tasks"]), r.get("order"), r.get("seed"),
            r.get("data_seed"), json.dumps(r.get("epochs")), variant)  # fmt: skip


def parse_variant(variant: str) -> dict[str, str]:
    """ "train.lr=0.001, train.ksm_protect=past" -> {"train.lr": "0.001", ...}."""
    return dict(part.split("=", 1) for part in variant.split(", ") if "=" in part)


def _same_value(a: str, b: str) -> bool:
    """Config values as --by prints them and as a user types them: 1e-3 is 0.001."""
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def matches(variant: str, wanted: dict[str, str]) -> bool:
    have = parse_variant(variant)
    return all(k in have and _same_value(have[k], v) for k, v in wanted.items())


def variant_text(variant: dict[str, str] | None) -> str:
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
        held = {k for r in runs for k in parse_variant(r.get("variant", ""))} - set(ref_variant)
    by_key: dict[tuple, dict[tuple[str, str], list[dict]]] = {}
    for r in runs:
        if r["complete"]:
            side = (r["method"], r.get("variant", "") if held is not None else "")
            by_key.setdefault(_pair_key(r, held), {}).setdefault(side, []).append(r)
    groups: dict[tuple[str, int, str, str], dict] = {}
    for key, sides in by_key.items():
        ref_sides = {(m, v) for m, v in sides
                     if m == ref and (ref_variant is None or matches(v, ref_variant))}  # fmt: skip
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
    return dict(sorted(groups.items(), key=lambda kv: group_sort_key(kv[0])))


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
    ref_label = variant_text(ref_variant)
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
                row[f"d_{key}_mean"], row[f"d_{key}_std"] = mean_std(d)
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
    ref_label = variant_text(ref_variant)
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
    for bench in sorted({r["benchmark"] for r in rows}, key=bench_key):
        rs = [r for r in rows if r["benchmark"] == bench]
        ref, ref_full = method_label(rs[0]["ref"]), method_label(rs[0]["ref"], rs[0]["ref_variant"])
        out.append(f"### {BENCH_LABEL.get(bench, bench)}: {ref_full} against each method, "
                   "paired\n")  # fmt: skip
        out.append(f"| method | tasks | pairs | {ref} - method: Acc | MF1 | FR | p: Acc | MF1 | "
                   f"{ref} ahead / level / behind: Acc | MF1 |")  # fmt: skip
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in rs:
            out.append(
                f"| {method_label(r['method'], r['variant'])} | {tasks_label(bench, r['tasks'])} | "
                f"{r['pairs']} | "
                f"{fmt(r['d_acc_mean'], r['d_acc_std'])} | "
                f"{fmt(r['d_mf1_mean'], r['d_mf1_std'])} | "
                f"{fmt(r['d_forgetting_mean'], r['d_forgetting_std'])} | "
                f"{fmt_p(r['p_acc'])} | {fmt_p(r['p_mf1'])} | "
                f"{r['acc_ahead']} / {r['acc_level']} / {r['acc_behind']} | "
                f"{r['mf1_ahead']} / {r['mf1_level']} / {r['mf1_behind']} |"
            )
        out.append("")
        if amb := [r for r in rs if r["ambiguous"]]:
            out.append("Left out as ambiguous (two runs of one method on the same sequence, "
                       "order, seed and epochs): "
                       + ", ".join(f"{method_label(r['method'], r['variant'])}: {r['ambiguous']}"
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
