"""User task folders: run CTR on your own classification tasks (format in docs/custom_tasks.md).

Design note. Layout: `root/<task_name>/{train,dev,test}.jsonl`, one JSON object per line:
`{"text": str, "text_pair": str (optional), "label": str | int}`; other keys are ignored and
blank lines are skipped. Optional `root/<task_name>/labels.json` is a JSON list of label names
(head order). Without it the labels are the distinct training labels as strings, sorted
numerically when every training label is an int and alphabetically otherwise. A label value is
always a *name*: int `3` matches the name `"3"`, never the fourth entry of labels.json.

Validation is strict and eager: every problem raises `DataError` naming the file and, for a bad
line, the line number (1-based), so nothing fails later in the middle of training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctr_jax.data.tasks import SPLITS, DataError, Example, Task

LABELS_FILE = "labels.json"


def _label_name(value: Any) -> str | None:
    """The label's name, or None if its type is not allowed (bool is not an int here)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return None


def _read_jsonl(path: Path) -> list[tuple[int, str, str | None, Any]]:
    """(line number, text, text_pair, raw label) per non-blank line, with types checked."""
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        for field in ("text", "label"):
            if field not in obj:
                raise DataError(f"{path}:{lineno}: missing field {field!r}")
        text, text_pair, label = obj["text"], obj.get("text_pair"), obj["label"]
        if not isinstance(text, str):
            raise DataError(f"{path}:{lineno}: field 'text' must be a string")
        if text_pair is not None and not isinstance(text_pair, str):
            raise DataError(f"{path}:{lineno}: field 'text_pair' must be a string")
        if _label_name(label) is None:
            raise DataError(f"{path}:{lineno}: field 'label' must be a string or an int")
        rows.append((lineno, text, text_pair, label))
    if not rows:
        raise DataError(f"{path}: split is empty")
    return rows


def _read_labels(path: Path) -> tuple[str, ...]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
    if not isinstance(raw, list) or not all(_label_name(v) is not None for v in raw):
        raise DataError(f"{path}: expected a JSON list of label names (strings or ints)")
    labels = tuple(_label_name(v) for v in raw)
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise DataError(f"{path}: need at least 2 distinct labels, got {list(labels)}")
    return labels  # type: ignore[return-value]  # all str after the check above


def _infer_labels(
    train_path: Path, rows: list[tuple[int, str, str | None, Any]]
) -> tuple[str, ...]:
    values = {row[3] for row in rows}
    if all(isinstance(v, int) for v in values):
        labels = tuple(str(v) for v in sorted(values))
    else:
        labels = tuple(sorted({_label_name(v) for v in values}))  # type: ignore[type-var]
    if len(labels) < 2:
        raise DataError(
            f"{train_path}: only one label {list(labels)} in the training split; add "
            f"{LABELS_FILE} or more classes"
        )
    return labels


def load_custom_task(folder: Path) -> Task:
    """One task from `folder/{train,dev,test}.jsonl` (+ optional `labels.json`)."""
    rows = {split: _read_jsonl(folder / f"{split}.jsonl") for split in SPLITS}
    labels_path = folder / LABELS_FILE
    if labels_path.is_file():
        labels = _read_labels(labels_path)
    else:
        labels = _infer_labels(folder / "train.jsonl", rows["train"])
    index = {name: i for i, name in enumerate(labels)}
    splits: dict[str, tuple[Example, ...]] = {}
    for split, split_rows in rows.items():
        examples = []
        for lineno, text, text_pair, label in split_rows:
            name = _label_name(label)
            if name not in index:
                raise DataError(
                    f"{folder / f'{split}.jsonl'}:{lineno}: label {label!r} not in the task's "
                    f"labels {list(labels)}"
                )
            examples.append(Example(text=text, text_pair=text_pair, label=index[name]))
        splits[split] = tuple(examples)
    return Task(name=folder.name, labels=labels, **splits)


def load_custom(root: Path, task_names: Sequence[str] | None = None) -> list[Task]:
    """Tasks from `root/<task_name>/`, in the order of `task_names` (default: sorted folders)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: custom task root is not a directory")
    if task_names is None:
        task_names = sorted(
            p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not task_names:
            raise DataError(f"{root}: no task folders found")
    if len(set(task_names)) != len(task_names):
        raise ValueError(f"duplicate task names in {list(task_names)}")
    tasks = []
    for name in task_names:
        folder = root / name
        if not folder.is_dir():
            raise DataError(f"{folder}: task folder not found (task {name!r})")
        tasks.append(load_custom_task(folder))
    return tasks
