"""How the report names, orders and prints what it groups: benchmarks, methods, --by variants,
and mean +- std cells."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from ctr_jax.config import key_applies
from ctr_jax.data.benchmarks import task_order
from ctr_jax.methods import METHODS

BENCHMARKS = ("asc", "dsc_small", "dsc_full", "20news")
BENCH_LABEL = {"asc": "ASC", "dsc_small": "DSC small", "dsc_full": "DSC full", "20news": "20News"}


def benchmark_tasks(bench: str) -> int | None:
    """How many tasks the whole benchmark has (ASC 19, DSC and 20News 10); None if unknown
    (a custom stream). The paper's figures are over all of them."""
    return len(task_order(bench, 0)) if bench in BENCHMARKS else None


def tasks_label(bench: str, n: int) -> str:
    """The tasks column: "19" (the whole benchmark), "4 of 19" (a slice), "n" (custom)."""
    full = benchmark_tasks(bench)
    return f"{n} of {full}" if full is not None and n != full else str(n)


def group_sort_key(key: tuple[str, int, str, str]) -> tuple:
    """Benchmarks in their order, whole-benchmark rows before slices, then methods, variants."""
    bench, n, method, variant = key
    return bench_key(bench), -n, method_key(method), variant_key(variant)


def mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else math.nan


def method_key(method: str) -> tuple[int, str]:
    order = {m: i for i, m in enumerate(METHODS)}
    return order.get(method, len(order)), method


def variant_key(variant: str) -> tuple:
    """Sort key of a --by variant ("k=3.0, j=0.02") that orders numbers by value, not as text
    (3.0 before 10.0)."""
    parts = re.split(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)", variant)
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts))


def bench_key(b: str) -> int:
    return BENCHMARKS.index(b) if b in BENCHMARKS else len(BENCHMARKS)


def fmt_p(p: float) -> str:
    return "-" if math.isnan(p) else f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


def fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def method_label(method: str, variant: str = "") -> str:
    """ "CTR (train.lr=0.001)": the method's name and its --by values, less those of keys that
    scale a module the method lacks (HAT has no knowledge-sharing module: its run shares
    ksm_lr_scale's default row, and pairs with CTR's at that value, but is not labelled by it)."""
    label = METHODS[method].label if method in METHODS else method
    shown = ", ".join(
        part for part in variant.split(", ") if part and key_applies(method, part.split("=")[0])
    )
    return f"{label} ({shown})" if shown else label


def int_ranges(values: Sequence[int]) -> str:
    """[0, 1, 2, 4] -> "0-2, 4"."""
    xs, out = sorted(set(values)), []
    for x in xs:
        if out and x == out[-1][1] + 1:
            out[-1][1] = x
        else:
            out.append([x, x])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)


def runs_text(runs: Sequence[dict]) -> str:
    """ "orders 1-4, seed 0": which orders and seeds a curve's runs cover."""
    parts = []
    for field, name in (("order", "order"), ("seed", "seed")):
        values = [r[field] for r in runs if isinstance(r.get(field), int)]
        if values:
            plural = "s" if len(set(values)) > 1 else ""
            parts.append(f"{name}{plural} {int_ranges(values)}")
    return ", ".join(parts)
