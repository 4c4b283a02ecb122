"""Task containers shared by every data source (benchmarks, user folders, synthetic tasks).

Design note. A continual-learning run is a *stream* of tasks, i.e. a plain `list[Task]` in training
order. A `Task` is immutable and holds raw text only: tokenisation happens later
(`ctr_jax.data.tokenize`), so that the same task objects serve any backbone and any `max_len`.

- `Example(text, text_pair, label)`: `text_pair` is `None` for single-sentence tasks (DSC, 20News)
  and the review sentence for ASC (`text` is then the aspect term, giving
  `[CLS] term [SEP] sentence [SEP]`). `label` is an index into `Task.labels`.
- `Task.labels`: class names in head order; `num_classes == len(labels)` (C in the shape legend).
- `DataError`: any problem with files on disk. Its message always names the file, and the line or
  JSON key when there is one, so a user can fix the data without reading our code.
- `resolve_data_root`: where the benchmark folders live (env `CTR_JAX_DATA_ROOT` > config >
  default).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

DATA_ROOT_ENV = "CTR_JAX_DATA_ROOT"
DEFAULT_DATA_ROOT = "../shared/data"  # relative to the cwd, i.e. the project root in normal use

SplitName = Literal["train", "dev", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "dev", "test")


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file (and line / key)."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One labelled input. `label` indexes `Task.labels`."""

    text: str
    text_pair: str | None
    label: int


@dataclasses.dataclass(frozen=True)
class Task:
    """One classification task with its three splits (raw text, not tokenised)."""

    name: str
    labels: tuple[str, ...]
    train: tuple[Example, ...]
    dev: tuple[Example, ...]
    test: tuple[Example, ...]

    def __post_init__(self) -> None:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"task {self.name!r}: need >= 2 distinct labels, got {self.labels}")
        num_classes = len(self.labels)
        for split in SPLITS:
            bad = [ex.label for ex in self.split(split) if not 0 <= ex.label < num_classes]
            if bad:
                raise ValueError(
                    f"task {self.name!r}, split {split!r}: labels {sorted(set(bad))} outside "
                    f"[0, {num_classes})"
                )

    @property
    def num_classes(self) -> int:
        """C: size of this task's classifier head."""
        return len(self.labels)

    def split(self, name: SplitName) -> tuple[Example, ...]:
        """The examples of split `name` ("train", "dev" or "test")."""
        match name:
            case "train":
                return self.train
            case "dev":
                return self.dev
            case "test":
                return self.test
        raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")


def resolve_data_root(configured: str | os.PathLike | None) -> Path:
    """Returns the data root: env `CTR_JAX_DATA_ROOT` if set, else `configured`, else
    `../shared/data` (relative to the cwd). Raises `DataError` if the directory does not exist."""
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        raw, source = env, f"env {DATA_ROOT_ENV}"
    elif configured is not None:
        raw, source = os.fspath(configured), "data.root"
    else:
        raw, source = DEFAULT_DATA_ROOT, "default"
    root = Path(raw).expanduser().resolve()
    if not root.is_dir():
        raise DataError(
            f"data root {root} (from {source}) is not a directory; set {DATA_ROOT_ENV} or "
            f"data.root to the folder that holds absa/, dsc/ and 20news-bydate.tar.gz"
        )
    return root
