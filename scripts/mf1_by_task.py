"""Splits the MF1 difference between two runs into the tasks with a tiny rarest test class and
the rest.

    python scripts/mf1_by_task.py REF_RUN RUN [RUN ...] [--data ROOT] [--rarest 2]

For each RUN: the difference RUN - REF_RUN of the final mean MF1 (% points), the part of it
from the tasks whose rarest test class has at most --rarest examples, the part from the other
tasks, and the difference on each tiny task (points of that task's own MF1). Why: on ASC one
flipped prediction on Bing CanonS100 (one negative test example in 22) moves that task's MF1
by about 50 points and the 19-task mean by 2.7.

The test counts come from the runs' results.json (`test_support`, recorded since session 34)
or, for older runs, from the benchmark data under --data (default: $CTR_JAX_DATA_ROOT).
The runs must have learned the same tasks (any order).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from ctr_jax.data.benchmarks import load_benchmark
from ctr_jax.metrics import read_results


def final_mf1(run: dict) -> dict[str, float]:
    """Task name -> MF1 after the last task, in %."""
    return dict(zip(run["tasks"], 100.0 * run["mf1"][-1], strict=True))


def rarest_counts(run: dict, data: Path | None) -> dict[str, int]:
    """Task name -> test examples of its rarest class."""
    if support := run.get("test_support"):
        return {t: min(s.values()) for t, s in zip(run["tasks"], support, strict=True)}
    if data is None:
        raise SystemExit(f"{run['name']}: no test_support in results.json; pass --data ROOT")
    tasks = load_benchmark(run["benchmark"], data, run["order"], seed=run.get("data_seed") or 0)
    return {
        t.name: int(np.bincount([e.label for e in t.test], minlength=t.num_classes).min())
        for t in tasks
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("ref", type=Path, help="reference run folder")
    p.add_argument("runs", type=Path, nargs="+", help="run folders compared with it")
    p.add_argument("--data", type=Path, default=os.environ.get("CTR_JAX_DATA_ROOT"))
    p.add_argument("--rarest", type=int, default=2, help="a tiny task's rarest class has <= this")
    args = p.parse_args(argv)
    ref = read_results(args.ref)
    ref["name"] = args.ref.name
    rarest = rarest_counts(ref, args.data)
    tiny = sorted(t for t, n in rarest.items() if n <= args.rarest)
    print(f"reference {args.ref.name}; tiny tasks (rarest test class <= {args.rarest}): "
          + ", ".join(f"{t} ({rarest[t]})" for t in tiny))  # fmt: skip
    print("run | MF1 diff | from the tiny tasks | from the others | per tiny task")
    h = final_mf1(ref)
    for path in args.runs:
        c = final_mf1(read_results(path))
        if set(c) != set(h):
            print(f"error: {path} learned other tasks than {args.ref}", file=sys.stderr)
            return 2
        d = {t: (c[t] - h[t]) / len(c) for t in c}
        total, small = sum(d.values()), sum(d[t] for t in tiny)
        print(f"{path.name} | {total:+.2f} | {small:+.2f} | {total - small:+.2f} | "
              + ", ".join(f"{t} {c[t] - h[t]:+.0f}" for t in tiny))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
