"""The report's figures: each run's accuracy matrix as a heatmap, and the mean accuracy over the
tasks seen so far after each task, every method in one figure (matplotlib, imported lazily)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ctr_jax.report.labels import BENCH_LABEL, group_sort_key, method_key, method_label


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
    keys = sorted(by_group, key=group_sort_key)
    methods = sorted({m for _, _, m, _ in keys}, key=method_key)
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
                label=f"{method_label(method, variant)}"
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
