"""Run tracking: stdlib logging for humans, a JSON-lines file for machines.

Nothing in ctr_jax calls print(). Progress lines go through `logging` (configured once by
`setup_logging`), numbers go to `<run_dir>/metrics.jsonl` through a `MetricWriter`:

    {"kind": "train_epoch", "task": 0, "epoch": 1, "loss": 0.41}
    {"kind": "eval", "task": 1, "eval_task": 0, "acc": 0.87, "mf1": 0.85}
    {"kind": "task_end", "task": 1, "seconds": 812.4, "peak_rss_mb": 1893.0, ...}

One JSON object per line, always with a "kind"; the other fields are scalars chosen by the
caller. numpy / jax scalars (0-d arrays) become Python int / float / bool; lists, tuples and
dicts of scalars are converted element-wise; arrays with ndim > 0 are rejected (call .tolist()
explicitly if a vector really belongs in the log). NaN / inf are written as Python's json does
(NaN, Infinity), so a diverging loss stays visible; `json.loads` reads them back.

Every write is flushed, and the file is opened in append mode, so a resumed run continues the
same file. Tests use `NullWriter`, which has the same interface and does nothing (Levanter's
noop tracker).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ctr_jax.closing import Closing

METRICS_FILE = "metrics.jsonl"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_HANDLER_NAME = "ctr_jax.stderr"  # marks our handler so setup_logging never adds it twice


def setup_logging(level: str = "INFO") -> None:
    """Sends root-logger records at `level` and above to stderr in LOG_FORMAT. Idempotent.

    Calling it again only changes the level; it never stacks a second handler. A bare stderr
    handler left on the root by `logging.basicConfig()` (absl does this) is replaced by ours.
    """
    root = logging.getLogger()
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown logging level {level!r}")
    for h in list(root.handlers):
        # absl (imported by orbax/chex) calls logging.basicConfig() when it logs before flags are
        # parsed, which leaves a bare stderr StreamHandler on the root: every line would print
        # twice, once without our format. Drop exactly that kind of handler; keep file handlers
        # and pytest's capture handlers.
        is_bare_stderr = type(h) is logging.StreamHandler and h.stream in (
            sys.stderr,
            sys.__stderr__,
        )
        if is_bare_stderr and h.get_name() != _HANDLER_NAME:
            root.removeHandler(h)
    if not any(h.get_name() == _HANDLER_NAME for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(numeric)
    # jax logs its (expected) failure to find a TPU at INFO on every CPU start.
    logging.getLogger("jax._src.xla_bridge").setLevel(max(numeric, logging.WARNING))


def _to_json_value(value: Any, name: str) -> Any:
    """numpy / jax scalars -> Python scalars; containers converted element-wise."""
    if isinstance(value, np.generic):  # before the float check: np.float64 subclasses float
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_to_json_value(v, name) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json_value(v, f"{name}.{k}") for k, v in value.items()}
    if hasattr(value, "__array__"):  # jax arrays, 0-d numpy arrays
        arr = np.asarray(value)
        if arr.ndim == 0:
            return arr.item()  # int / float / bool / str
        raise TypeError(f"field {name!r}: expected a scalar, got an array of shape {arr.shape}")
    raise TypeError(f"field {name!r}: cannot write {type(value).__name__} to a metrics record")


class Writer(Protocol):
    """What the training loop needs from a metric writer."""

    def write(self, kind: str, **fields: Any) -> None: ...

    def close(self) -> None: ...


class MetricWriter(Closing):
    """Appends one JSON object per line to <run_dir>/metrics.jsonl; flushes every write.

    Usable as a context manager. Each record is {"kind": kind, **fields}, fields converted by the
    rules in the module docstring.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, kind: str, **fields: Any) -> None:
        """Appends {"kind": kind, **fields} as one line."""
        if self._file.closed:
            raise ValueError(f"MetricWriter for {self.path} is closed")
        record = {"kind": str(kind)}
        record.update({k: _to_json_value(v, k) for k, v in fields.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Closes the file; calling it twice is harmless."""
        self._file.close()


class NullWriter(Closing):
    """Same interface as MetricWriter; discards everything (for tests)."""

    def write(self, kind: str, **fields: Any) -> None:
        del kind, fields

    def close(self) -> None:
        pass


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far in MiB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def time_left(done_work: float, done_seconds: float, left_work: float) -> float | None:
    """Seconds that `left_work` units of work take at the rate of the `done_work` units that took
    `done_seconds` (None before any work is done: there is no rate yet)."""
    if done_work <= 0:
        return None
    return done_seconds / done_work * left_work


def duration_text(seconds: float) -> str:
    """'45 s', '12 min', '2 h 05 min': a wall time as a person reads it in a log line."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of <run_dir>/metrics.jsonl, in write order (for tests and reports)."""
    path = Path(run_dir) / METRICS_FILE
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


__all__ = [
    "LOG_FORMAT",
    "METRICS_FILE",
    "MetricWriter",
    "NullWriter",
    "Writer",
    "duration_text",
    "peak_rss_mb",
    "read_metrics",
    "setup_logging",
    "time_left",
]
