"""The report's figures: each run's accuracy matrix as a heatmap, and the mean accuracy over the
tasks seen so far after each task, every method in one figure (matplotlib, imported lazily)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ctr_jax.report.labels import (
    BENCH_LABEL,
    group_sort_key,
    method_key,
    method_label,
    runs_text,
)


def seen_task_curve(acc: np.ndarray) -> np.ndarray:
    """[T] mean accuracy over tasks 0..t after learning task t, from acc [T, T] (in %)."""
    return np.array([100.0 * np.nanmean(acc[t, : t + 1]) for t in range(acc.shape[0])])


def safe_name(name: str) -> str:
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
        f"{method_label(run['method'])} on {BENCH_LABEL.get(run['benchmark'], run['benchmark'])} "
        f"({run['name']})\nAcc {100 * s['acc']:.2f}  MF1 {100 * s['mf1']:.2f}",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, label="test accuracy (%)")
    fig.tight_layout()
    # "tight": a long run name makes the title wider than a small matrix's figure.
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def curve_lines(runs: Sequence[dict], bench: str) -> list[dict]:
    """The curves of `bench`'s figure, in legend order: one per (task count, method, variant)
    of complete runs, with "key", "runs", "curve" ([T] mean over its runs of
    ``seen_task_curve``, in %) and "label".

    A label names its run count; where the curves' runs do not cover the same orders and seeds
    (a variant run on fewer orders than the others), each label also names its orders and seeds,
    since a mean over orders 1-4 and one over orders 0-4 differ by the orders as well as by
    the method."""
    groups: dict[tuple[str, int, str, str], list[dict]] = {}
    for r in runs:
        if r["complete"] and r["benchmark"] == bench:
            key = (bench, len(r["tasks"]), r["method"], r.get("variant", ""))
            groups.setdefault(key, []).append(r)
    keys = sorted(groups, key=group_sort_key)
    several_counts = len({n for _, n, _, _ in keys}) > 1
    covered = {runs_text(groups[k]) for k in keys}
    lines = []
    for key in keys:
        _, n_tasks, method, variant = key
        rs = groups[key]
        label = method_label(method, variant)
        if several_counts:
            label += f" ({n_tasks} tasks)"
        label += f": {len(rs)} run{'s' if len(rs) > 1 else ''}"
        if len(covered) > 1:
            label += f" ({runs_text(rs)})"
        curve = np.stack([seen_task_curve(r["acc"]) for r in rs]).mean(0)
        lines.append({"key": key, "runs": rs, "curve": curve, "label": label})
    return lines


def plot_curves(runs: Sequence[dict], bench: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    lines = curve_lines(runs, bench)
    # One colour per method; a method's variants (--by) and task counts share it and differ
    # in line style, so an ablation reads as families of curves. MTL, the reference, starts
    # from dashed. Runs over different numbers of tasks get separate curves.
    methods = sorted({line["key"][2] for line in lines}, key=method_key)
    styles = ["-", "--", ":", "-."]
    seen: dict[str, int] = {}
    for line in lines:
        method = line["key"][2]
        x = np.arange(1, len(line["curve"]) + 1)
        i = seen[method] = seen.get(method, -1) + 1
        style = styles[(i + (method == "mtl")) % len(styles)]
        ax.plot(x, line["curve"], style, marker="os^Dv<>p"[i % 8], ms=3,
                color=f"C{methods.index(method) % 10}", label=line["label"])  # fmt: skip
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
