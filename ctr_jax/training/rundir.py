"""The run folder's bookkeeping: the config it binds, and the lock of the process learning into it.

A run folder keeps the resolved config (config.json, with its fingerprint); a rerun with a
different config is refused, naming the keys that differ.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from ctr_jax.config import UNFINGERPRINTED, ConfigError, ExperimentConfig, with_legacy_values


def read_run_config(run_dir: Path) -> dict:
    """The run folder's config.json as {"fingerprint": ..., "config": {...}}.

    Raises ConfigError naming the file if it cannot be read, is not JSON, or has no "config".
    """
    config_file = Path(run_dir) / "config.json"
    try:
        raw = json.loads(config_file.read_text())
    except OSError as e:
        raise ConfigError(f"{config_file}: cannot read the run's config ({e.strerror})") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"{config_file}: invalid JSON ({e})") from e
    if not isinstance(raw, dict) or "config" not in raw:
        raise ConfigError(f"{config_file}: no 'config' key (not a run folder's config.json)")
    return raw


def run_fingerprint(cfg: ExperimentConfig) -> str:
    """The fingerprint the run folder was made under (its config.json's), else the config's.

    The saved state of a task in progress is keyed by it, so a run that ``check_run_dir``
    accepts under a later version of ctr-jax (one that added a key at its default, which
    changes the fingerprint, not the run) still goes on from its last saved epoch.
    """
    if (cfg.run_dir / "config.json").exists():
        return read_run_config(cfg.run_dir).get("fingerprint", cfg.fingerprint())
    return cfg.fingerprint()


def check_run_dir(cfg: ExperimentConfig) -> bool:
    """Refuses a run folder made with a different config; True if it has no config.json yet.

    Keys the saved config lacks (added by a later version of ctr-jax) count as equal when the new
    value is their default, so a run started before such a key existed still resumes; a key of
    ``LEGACY_VALUES`` counts as the value such a run used instead (model.pooling: "pooler").
    """
    run_dir = cfg.run_dir
    if (run_dir / "config.json").exists():
        saved = read_run_config(run_dir)
        if saved.get("fingerprint") != cfg.fingerprint():
            old, new = with_legacy_values(saved["config"]), cfg.results_dict()
            defaults = ExperimentConfig().results_dict()
            diff = sorted(_diff_keys(old, new, defaults))
            if diff:
                raise ConfigError(
                    f"{run_dir} holds a run made with a different config (differs at {diff}). "
                    "Use another name (--set name=...) or delete the folder."
                )
        return False
    return True


def write_run_config(cfg: ExperimentConfig) -> None:
    """Writes the run folder's config.json (atomically), which binds the folder to the config.

    Called once the data, backbone and model are set up, so a run that fails on bad input leaves
    no config.json behind to refuse the corrected rerun into the same folder.
    """
    path = cfg.run_dir / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps({"fingerprint": cfg.fingerprint(), "config": cfg.to_dict()}, indent=2)
    )
    os.replace(tmp, path)


_MISSING = object()


def _diff_keys(old, new, defaults, prefix=""):
    """Dotted keys where config dicts differ; a key absent from `old` with its default is equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in set(old) | set(new):
            if f"{prefix}{k}" in UNFINGERPRINTED:
                continue
            d = defaults.get(k, _MISSING) if isinstance(defaults, dict) else _MISSING
            yield from _diff_keys(old.get(k, _MISSING), new.get(k, _MISSING), d, f"{prefix}{k}.")
    elif old is _MISSING and new == defaults:
        return
    elif old != new:
        yield prefix.rstrip(".")


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, take: bool):
    """Holds an exclusive lock on <run_dir>/.lock for the run (when `take`).

    Why: two processes learning into one run folder (a sweep started twice, a second shell)
    would interleave checkpoints and results. The lock is an OS file lock, so it dies with its
    process: a crashed or killed run never leaves the folder locked. A no-op without fcntl.
    """
    if not take:
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise ConfigError(
                f"{run_dir} is in use by another run (pid {holder}); wait for it to finish or "
                "stop it, then rerun to resume"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
