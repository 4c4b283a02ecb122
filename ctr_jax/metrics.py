"""Continual-learning metrics over the accuracy matrix, and the results file of one run.

Everything here is pure numpy on the host and never mutates its inputs (Mammoth's `forgetting()`
does; ours must not). Values are fractions in [0, 1]; reports multiply by 100.

The accuracy matrix A (and the macro-F1 matrix F, same layout) is filled by the task loop (spec §6):

    A[t, u] = accuracy on task u's test set after learning task t,  u <= t   A: [T, T]
    A[t, u] = NaN for u > t (not learned yet), and whole rows are NaN for tasks not learned yet.

Summary numbers (spec §6, §8), for a T x T matrix of learned tasks:

    acc          mean_u A[T-1, u]                          final accuracy ("Acc")
    mf1          mean_u F[T-1, u]                          final macro-F1 ("MF1")
    forward_acc  mean_u A[u, u]                            accuracy right after learning u
    forgetting   FR  = mean_{u<T-1} (A[u, u] - A[T-1, u])  0 for T == 1; < 0 = backward transfer
    bwt          BWT = mean_{u<T-1} (A[T-1, u] - A[u, u]) = -FR

`max_drop` (not in the summary; the report computes it from the matrix, so older run folders
get it too) = mean_{u<T-1} max_{t>u} (A[u, u] - A[t, u]): the largest fall of each earlier task
below its accuracy right after learning it, at any later point. FR sees the last row only, so a
task that collapses mid-sequence and recovers later counts as not forgotten; max_drop >= FR.

`macro_f1` follows sklearn's `f1_score(average="macro")` with the default zero_division=0: the
labels are the sorted union of y_true and y_pred, per-label F1 = 2 tp / (2 tp + fp + fn), mean.

Files (written atomically: temp file in the same directory, then `os.replace`):

    results.json     {"method", "benchmark", "order", "seed", "backbone", "tasks", "acc",
                      "mf1", "summary", **extra}; acc/mf1 are T x T nested lists with null for
                      NaN and above the diagonal; summary comes from the k x k block of the k
                      tasks learned so far (plus "tasks_learned": k).
    acc_matrix.csv   header "after\\task", *tasks; one row per task: task name, then the values
    mf1_matrix.csv   (empty cell for null)

Legend: T tasks, N test examples.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_FILE = "results.json"
ACC_CSV = "acc_matrix.csv"
MF1_CSV = "mf1_matrix.csv"
_CSV_CORNER = "after\\task"  # top-left cell: rows = task just learned, columns = task evaluated
_CORE_KEYS = ("method", "benchmark", "order", "seed", "backbone", "tasks", "acc", "mf1", "summary")


# --------------------------------------------------------------------------- per-task scores


def _labels_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validates and flattens a (y_true, y_pred) pair without copying the callers' arrays."""
    t, p = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in size: {t.shape[0]} vs {p.shape[0]}")
    if t.size == 0:
        raise ValueError("empty y_true / y_pred")
    return t, p


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of correct predictions. y_true, y_pred: [N] int labels -> float in [0, 1]."""
    t, p = _labels_pair(y_true, y_pred)
    return float(np.mean(t == p))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 as sklearn `f1_score(average="macro")`, zero_division=0.

    y_true, y_pred: [N] labels -> float in [0, 1]. Labels = sorted union of both arrays, so a label
    that is only predicted counts with F1 = 0, as does a true label that is never predicted.
    """
    t, p = _labels_pair(y_true, y_pred)
    labels = np.union1d(t, p)  # [C], sorted
    is_t = t[None, :] == labels[:, None]  # [C, N]
    is_p = p[None, :] == labels[:, None]  # [C, N]
    tp = np.sum(is_t & is_p, axis=1)  # [C]
    fp = np.sum(~is_t & is_p, axis=1)  # [C]
    fn = np.sum(is_t & ~is_p, axis=1)  # [C]
    # 2tp / (2tp + fp + fn) == 2PR / (P + R), and is 0 wherever sklearn's zero_division=0 gives 0.
    # The denominator is never 0: every label occurs in y_true or y_pred.
    f1 = 2.0 * tp / (2.0 * tp + fp + fn)  # [C]
    return float(np.mean(f1))


def one_class(y_true: np.ndarray, y_pred: np.ndarray) -> int | None:
    """The class every prediction names, when the predictions name one class only while y_true
    holds more than one (a model that ignores its input); else None. y_true, y_pred: [N]."""
    t, p = _labels_pair(y_true, y_pred)
    if np.unique(t).size > 1 and np.all(p == p[0]):
        return int(p[0])
    return None


# --------------------------------------------------------------------------- matrix summaries


def _square(matrix: np.ndarray, name: str) -> np.ndarray:
    """Float copy of a [T, T] matrix whose lower triangle (diagonal included) is finite."""
    m = np.array(matrix, dtype=np.float64)  # copy: callers' arrays are never touched
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square [T, T] matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m[np.tril_indices(m.shape[0])])):
        raise ValueError(f"{name} has NaN/inf on or below the diagonal: {m.tolist()}")
    return m


def forgetting_rate(acc: np.ndarray) -> float:
    """FR = mean_{u<T-1} (A[u, u] - A[T-1, u]) over acc: [T, T]; 0.0 for T == 1 (spec §6)."""
    a = _square(acc, "acc")
    last = a.shape[0] - 1
    if last == 0:
        return 0.0
    return float(np.mean(np.diag(a)[:last] - a[last, :last]))


def backward_transfer(acc: np.ndarray) -> float:
    """BWT = mean_{u<T-1} (A[T-1, u] - A[u, u]) = -FR over acc: [T, T]; 0.0 for T == 1."""
    a = _square(acc, "acc")
    last = a.shape[0] - 1
    if last == 0:
        return 0.0
    return float(np.mean(a[last, :last] - np.diag(a)[:last]))


def max_drop(acc: np.ndarray) -> float:
    """mean_{u<T-1} max_{t>u} (A[u, u] - A[t, u]) over acc: [T, T]; 0.0 for T == 1."""
    a = _square(acc, "acc")
    last = a.shape[0] - 1
    if last == 0:
        return 0.0
    return float(np.mean([a[u, u] - a[u + 1 :, u].min() for u in range(last)]))


def summarize(acc: np.ndarray, mf1: np.ndarray) -> dict[str, float]:
    """Headline numbers of a run. acc, mf1: [T, T] (all T tasks learned) -> dict of floats.

    Keys: acc, mf1 (means of the last rows), forgetting (FR), bwt (-FR), forward_acc (mean of the
    diagonal of acc).
    """
    a, f = _square(acc, "acc"), _square(mf1, "mf1")
    if a.shape != f.shape:
        raise ValueError(f"acc and mf1 differ in shape: {a.shape} vs {f.shape}")
    return {
        "acc": float(np.mean(a[-1])),
        "mf1": float(np.mean(f[-1])),
        "forgetting": forgetting_rate(a),
        "bwt": backward_transfer(a),
        "forward_acc": float(np.mean(np.diag(a))),
    }


# --------------------------------------------------------------------------- results files


def _num_learned(m: np.ndarray, name: str) -> int:
    """Number k of learned tasks: rows 0..k-1 have a finite diagonal, rows k.. are NaN."""
    finite_diag = np.isfinite(np.diag(m))  # [T]
    k = int(np.sum(finite_diag))
    if not np.all(finite_diag[:k]) or np.any(np.isfinite(m[k:])):
        raise ValueError(
            f"{name}: learned rows must be a prefix (finite diagonal) followed by all-NaN rows; "
            f"got {m.tolist()}"
        )
    return k


def _to_nested(m: np.ndarray) -> list[list[float | None]]:
    """[T, T] -> nested lists; None for NaN and for every entry above the diagonal."""
    n = m.shape[0]
    return [
        [None if j > i or not math.isfinite(m[i, j]) else float(m[i, j]) for j in range(n)]
        for i in range(n)
    ]


def _from_nested(rows: list[list[float | None]]) -> np.ndarray:
    """Nested lists with None -> float64 array with NaN."""
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64)


def _csv_text(tasks: Sequence[str], rows: list[list[float | None]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([_CSV_CORNER, *tasks])
    for name, row in zip(tasks, rows, strict=True):
        writer.writerow([name, *("" if v is None else repr(v) for v in row)])
    return buf.getvalue()


def _atomic_write_text(path: Path, text: str) -> None:
    """Writes `text` to `path` so that readers see either the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file owner-only (0600); results are meant to be shared like any
        # other file the user writes, so give it the permissions the umask allows.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(
    run_dir: Path,
    *,
    method: str,
    benchmark: str,
    order: int | str,
    seed: int,
    backbone: str,
    tasks: Sequence[str],
    acc: np.ndarray,
    mf1: np.ndarray,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Writes results.json, acc_matrix.csv and mf1_matrix.csv under run_dir; returns the JSON path.

    acc, mf1: [T, T] with T = len(tasks); rows of tasks not learned yet are all NaN, so this can be
    called after every task. `summary` is computed from the k x k top-left block of the k learned
    tasks (None values while k == 0) and also records `tasks_learned` = k. `extra` keys are merged
    into the top level and may not shadow the core keys.
    """
    run_dir = Path(run_dir)
    tasks = [str(t) for t in tasks]
    a = np.array(acc, dtype=np.float64)  # [T, T], copy
    f = np.array(mf1, dtype=np.float64)  # [T, T], copy
    expected = (len(tasks), len(tasks))
    if a.shape != expected or f.shape != expected:
        raise ValueError(f"acc {a.shape} / mf1 {f.shape} must both be {expected} (len(tasks))")
    k = _num_learned(a, "acc")
    if _num_learned(f, "mf1") != k:
        raise ValueError("acc and mf1 disagree on the number of learned tasks")
    if k > 0:
        summary: dict[str, Any] = summarize(a[:k, :k], f[:k, :k])
    else:
        summary = dict.fromkeys(("acc", "mf1", "forgetting", "bwt", "forward_acc"))
    summary["tasks_learned"] = k

    extra = dict(extra or {})
    if clash := sorted(set(extra) & set(_CORE_KEYS)):
        raise ValueError(f"extra keys shadow core results keys: {clash}")
    acc_rows, mf1_rows = _to_nested(a), _to_nested(f)
    record = {
        "method": method,
        "benchmark": benchmark,
        "order": order,
        "seed": seed,
        "backbone": backbone,
        "tasks": tasks,
        "acc": acc_rows,
        "mf1": mf1_rows,
        "summary": summary,
        **extra,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: a stray NaN in `extra` fails loudly instead of writing invalid JSON.
    path = run_dir / RESULTS_FILE
    _atomic_write_text(path, json.dumps(record, indent=2, allow_nan=False) + "\n")
    _atomic_write_text(run_dir / ACC_CSV, _csv_text(tasks, acc_rows))
    _atomic_write_text(run_dir / MF1_CSV, _csv_text(tasks, mf1_rows))
    return path


def read_results(path: Path) -> dict[str, Any]:
    """Reads a results.json (or the run directory holding it).

    Returns the stored dict with acc and mf1 as float64 [T, T] arrays (NaN for null) and None
    summary values as NaN.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    record = json.loads(path.read_text(encoding="utf-8"))
    record["acc"] = _from_nested(record["acc"])
    record["mf1"] = _from_nested(record["mf1"])
    record["summary"] = {k: np.nan if v is None else v for k, v in record["summary"].items()}
    return record
