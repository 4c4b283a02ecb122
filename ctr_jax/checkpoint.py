"""Per-task checkpoints with orbax: one checkpoint step per finished task.

Layout under the (absolute) checkpoint directory, step number == index of the finished task:

    <directory>/
      0/                      task 0 finished
        state/                ocp.args.StandardSave(state): arrays (OCDBT + tensorstore)
        meta/metadata         ocp.args.JsonSave(meta): task name, accuracy row, config hash, ...
        _CHECKPOINT_METADATA
        commit_success.txt
      1/ ...
      2.orbax-checkpoint-tmp  a save in progress (or killed): never reported, never restored

What goes in is exactly what the caller passes: trainable parameters, HAT masks, RNG key data
(`jax.random.key_data(key)`, uint32 [2]), small matrices. The frozen encoder is never passed, so
it is never written; it is reloaded from its source on resume. No optimizer state either: CTR
starts every task with a fresh optimizer (spec §5.5).

Atomicity. Orbax writes a step into `<step>.orbax-checkpoint-tmp`, writes `commit_success.txt`
into it, then renames it to `<step>` (`AtomicRenameTemporaryPath`, the default on local file
systems). `CheckpointManager` only lists directories whose name is a bare step number, so a save
killed at any point leaves at most a tmp directory, which `latest_task()` ignores and which
orbax deletes when that step is saved again. `save()` blocks (`wait_until_finished`) until the
rename has happened, so a task the loop believes checkpointed is on disk.

Orbax quirks handled here:
- `CheckpointManager.save` silently returns False (writes nothing) for a step <= the latest
  step; `save()` raises instead.
- The manager caches its step list; `latest_task()` / `restore()` reload it from disk first, so
  they see saves made by another process (e.g. the run being resumed).
- The manager saves synchronously (see `TaskCheckpointer.__init__`): the same blocking save
  without orbax's false "Waiting for previous save" warning at every save.
- Orbax logs through absl at INFO, dozens of lines per save; a filter on the "absl" logger drops
  orbax's records below WARNING (other absl users are untouched).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from ctr_jax.closing import Closing

PyTree = Any  # nested dicts of arrays; jaxtyping is not a dependency
_log = logging.getLogger(__name__)


class _QuietOrbax(logging.Filter):
    """Drops orbax's INFO/DEBUG records from the absl logger; keeps warnings and other libraries."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_orbax = "/orbax/" in record.pathname.replace("\\", "/")
        return record.levelno >= logging.WARNING or not from_orbax


_absl_logger = logging.getLogger("absl")
if not any(isinstance(f, _QuietOrbax) for f in _absl_logger.filters):
    _absl_logger.addFilter(_QuietOrbax())


class TaskCheckpointer(Closing):
    """Checkpoints under `directory`; step number == index of the finished task (0-based).

    Args:
      directory: where the steps live; made absolute (orbax requires it) and created if missing.
      keep: keep only the newest `keep` tasks (None = keep all).
      log_saves: log each save at INFO (off for a caller that logs its own line).

    Usable as a context manager (closes the orbax manager on exit).
    """

    def __init__(self, directory: Path, *, keep: int | None = 2, log_saves: bool = True):
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be None or >= 1, got {keep}")
        self.directory = Path(directory).expanduser().absolute()
        self._log_saves = log_saves
        self._manager = ocp.CheckpointManager(
            self.directory,
            # Synchronous: save() waits for the commit anyway, and an async manager reports that
            # wait at the next save as "Waiting for previous save to complete took 1.8 seconds.
            # ... consider checkpointing less frequently", a false warning at every save.
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=False
            ),
        )

    def save(self, task_index: int, state: PyTree, meta: dict[str, Any]) -> None:
        """Writes `state` and `meta` as step `task_index`; returns once the step is committed.

        state: nested dict of jax / numpy arrays (any shapes; dict keys are strings).
        meta: JSON-serialisable dict.
        Raises ValueError if task_index is negative or not newer than the latest saved task.
        """
        if task_index < 0:
            raise ValueError(f"task_index must be >= 0, got {task_index}")
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"meta for task {task_index} is not JSON-serialisable: {e}") from e
        saved = self._manager.save(
            int(task_index),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                meta=ocp.args.JsonSave(meta),
            ),
        )
        if not saved:
            raise ValueError(
                f"orbax refused to save task {task_index} in {self.directory}: the latest saved "
                f"task is {self._manager.latest_step()} and steps must increase"
            )
        self._manager.wait_until_finished()
        if self._log_saves:
            _log.info("saved checkpoint for task %d in %s", task_index, self.directory)

    def all_tasks(self) -> list[int]:
        """Indices of the committed (finalised) task checkpoints on disk, ascending."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_task(self) -> int | None:
        """Index of the newest committed task checkpoint, or None if there is none."""
        tasks = self.all_tasks()
        return tasks[-1] if tasks else None

    def restore(self, task_index: int, like: PyTree) -> tuple[PyTree, dict[str, Any]]:
        """Reads step `task_index` back.

        like: pytree with the structure of the saved state; leaves are arrays or
        jax.ShapeDtypeStruct giving shape and dtype. Returns (state, meta): state has like's
        structure, leaves are jax or numpy arrays with the saved shapes and dtypes.
        Raises FileNotFoundError naming the directory, the task and the tasks available.
        """
        available = self.all_tasks()
        if task_index not in available:
            raise FileNotFoundError(
                f"no committed checkpoint for task {task_index} in {self.directory} "
                f"(available tasks: {available})"
            )
        restored = self._manager.restore(
            int(task_index),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(like),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], dict(restored["meta"])

    def restore_meta(self, task_index: int) -> dict[str, Any]:
        """The meta of step `task_index` alone (no arrays read)."""
        restored = self._manager.restore(
            int(task_index), args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        )
        return dict(restored["meta"])

    def clear(self) -> None:
        """Deletes every committed step (and so what a resume would find)."""
        for step in self.all_tasks():
            self._manager.delete(step)

    def close(self) -> None:
        """Waits for pending work and releases orbax's threads."""
        self._manager.close()
