"""Run folders -> run records: find each results.json, read it with the --by values from its
config.json, and cut runs to their state after task k (--after-task)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from ctr_jax.config import ExperimentConfig, data_seed_used, with_legacy_values
from ctr_jax.metrics import RESULTS_FILE, read_results, summarize


class ReportError(ValueError):
    """Bad input to the report; the message names the file at fault."""


def find_results(paths: Iterable[Path]) -> list[Path]:
    """Every results.json at or under `paths` (a file, a run folder, or a folder of runs)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(p.rglob(RESULTS_FILE))
        else:
            raise ReportError(f"{p}: no such file or folder")
    return sorted(set(found))


def _lookup(node: object, key: str) -> object:
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def _config_value(config_file: Path, key: str) -> object:
    """The value of dotted config key `key` (e.g. "train.lr") in a run's config.json.

    A key the saved config lacks but ctr-jax knows was added after the run was made: the run
    used its default (or its ``LEGACY_VALUES`` value), as a resume reads it."""
    try:
        node = with_legacy_values(json.loads(config_file.read_text(encoding="utf-8"))["config"])
    except (OSError, ValueError, KeyError) as e:
        raise ReportError(f"{config_file}: no readable run config for --by ({e})") from e
    try:
        return _lookup(node, key)
    except KeyError:
        pass
    try:
        return _lookup(ExperimentConfig().to_dict(), key)
    except KeyError:
        raise ReportError(f"{config_file}: no config key {key!r} (--by)") from None


# Config keys whose value "auto" the run resolves and records in results.json under this field:
# --by shows what the run did ("model.pooling=mean"), so an "auto" run and one that asked for
# that value explicitly share a row, as they share the computation.
RESOLVED_IN_RESULTS: dict[str, str] = {"model.pooling": "pooling"}


# Config keys whose null stands for a setting of its own: --by names it ("train.epochs=paper",
# the paper's epochs per benchmark) rather than "None".
NULL_MEANS: dict[str, str] = {"train.epochs": "paper"}


def _variant_value(run: dict, config_file: Path, key: str) -> object:
    value = _config_value(config_file, key)
    if value is None and key in NULL_MEANS:
        return NULL_MEANS[key]
    field = RESOLVED_IN_RESULTS.get(key)
    if value == "auto" and field is not None and run.get(field) is not None:
        return run[field]
    return value


def _legacy_data_seed(run: dict, config_file: Path) -> int | None:
    """results.json's "data_seed" for a run made before it was written: the seed where the
    data depended on it (DSC small, 20News, a max_train_examples subsample), else None."""
    max_train = None
    if config_file.exists():
        max_train = _config_value(config_file, "data.max_train_examples")
    return run.get("seed") if data_seed_used(run["benchmark"], max_train) else None


def load_runs(files: Sequence[Path], by: Sequence[str] = ()) -> list[dict]:
    """read_results of each file plus "path", "name", "complete" (every task learned) and
    "variant": "key=value" of each --by key, comma-joined ("" without --by); a key in
    RESOLVED_IN_RESULTS set to "auto" shows the value the run resolved it to."""
    runs = []
    for f in files:
        try:
            r = read_results(f)
        except (OSError, ValueError, KeyError) as e:
            raise ReportError(f"{f}: not a results file ({e})") from e
        for key in ("method", "benchmark", "tasks", "acc", "mf1", "summary"):
            if key not in r:
                raise ReportError(f"{f}: results file lacks {key!r}")
        r["path"] = f
        r["name"] = r.get("name") or f.parent.name
        r["complete"] = r["summary"].get("tasks_learned") == len(r["tasks"])
        cfg_file = f.parent / "config.json"
        r["variant"] = ", ".join(f"{k}={_variant_value(r, cfg_file, k)}" for k in by)
        if "data_seed" not in r:  # a run from before data.seed: its seed picked its data
            r["data_seed"] = _legacy_data_seed(r, cfg_file)
        runs.append(r)
    return runs


def after_task(runs: Sequence[dict], k: int) -> list[dict]:
    """Each run as it stood after its k-th task (k >= 1): tasks, test_support and the [T, T]
    matrices cut to the first k (acc[:k, :k]), the summary recomputed from that block: what
    the run had measured by then (task t's training sees nothing of the tasks after it, so it
    compares with a run over the first k tasks of the same order, whose random initial values
    may differ). A run that had not learned k tasks is kept unchanged but marked not
    complete, and a joint run (MTL, whose one phase saw every task) too; "left_out" says why
    (the table lists them)."""
    if k < 1:
        raise ReportError(f"--after-task {k}: must be at least 1")
    out = []
    for r in runs:
        learned = r["summary"].get("tasks_learned")
        if r.get("protocol") == "joint" or r["method"] == "mtl":
            out.append(
                {**r, "complete": False, "left_out": "joint training: no state after a task"}
            )
            continue
        if not isinstance(learned, int) or learned < k:
            out.append({**r, "complete": False,
                        "left_out": f"{learned} of {len(r['tasks'])} tasks learned"})  # fmt: skip
            continue
        acc, mf1 = r["acc"][:k, :k], r["mf1"][:k, :k]
        cut = {**r, "tasks": list(r["tasks"][:k]), "acc": acc, "mf1": mf1, "complete": True,
               "summary": {**summarize(acc, mf1), "tasks_learned": k}}  # fmt: skip
        if r.get("test_support"):
            cut["test_support"] = list(r["test_support"][:k])
        out.append(cut)
    return out
