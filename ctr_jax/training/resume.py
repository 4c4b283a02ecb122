"""Mid-task resume: the training state of the task in progress, saved at an epoch's end.

A task checkpoint (``ctr_jax.checkpoint``) follows every finished task, so a crash loses at
most the task in progress. At the paper's epochs that can be hours (30 epochs of a Bing task on
bert-base, the whole joint phase of MTL), so the loop also saves, at the end of an epoch, what it
needs to go on from the next one: the weights, the optimizer's moments, the best epoch's weights
and scores so far (model selection), the global step (the learning-rate schedule). Every draw of
an epoch (batch order, dropout, router noise) is derived from (seed, task, epoch), so a rerun that
goes on from there gives the same results, bit for bit on CPU, as a run never stopped
(tests/test_loop.py).

Layout: ``<run>/task_in_progress/<epochs finished>/`` (orbax steps, the newest kept, written
atomically as the task checkpoints are); the loop clears it once the task's checkpoint is
committed, and removes the folder when the run ends with nothing in it. A state left from another
task (a crash between the two) is never restored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ctr_jax.checkpoint import TaskCheckpointer
from ctr_jax.closing import Closing

log = logging.getLogger(__name__)

DIRNAME = "task_in_progress"


@dataclasses.dataclass
class PhaseState:
    """Where the training of a phase stands after `epoch` finished epochs."""

    epoch: int  # epochs finished; the next to run is this index (0-based)
    g_step: int  # optimizer steps taken in the phase (the learning-rate schedule's position)
    trainable: nnx.State
    opt_state: Any
    best: nnx.State | None  # weights of the best epoch so far; None while every dev loss was NaN
    best_key: tuple[float, ...]  # selection key of the best epoch ((inf,) before any)
    best_epoch: int  # -1 before any
    best_scores: tuple[float, float]  # (dev loss, dev acc) of the best epoch


def _flat(state) -> dict[str, jax.Array]:
    """Any pytree -> {"00000": leaf, ...} in leaf order (the like tree restores the structure)."""
    return {f"{i:05d}": v for i, v in enumerate(jax.tree.leaves(state))}


def _unflat(like, flat: dict[str, Any]):
    leaves, treedef = jax.tree.flatten(like)
    return jax.tree.unflatten(treedef, [jnp.asarray(flat[f"{i:05d}"]) for i in range(len(leaves))])


class PhaseCheckpointer(Closing):
    """Saves and restores the `PhaseState` of the task in progress under `run_dir`/task_in_progress.

    Args:
      run_dir: the run folder.
      every_s: save at the end of an epoch once this many seconds passed since the phase began
        (in this process) or since the last save; 0 = after every epoch; None = never (a state
        saved before, under another value, is still restored).
      fingerprint: the run's config fingerprint; a state saved under another is not restored.
    """

    def __init__(self, run_dir: Path, every_s: float | None, fingerprint: str):
        self.every_s, self.fingerprint = every_s, fingerprint
        self._ckpt = TaskCheckpointer(Path(run_dir) / DIRNAME, keep=1, log_saves=False)
        self._since = time.perf_counter()

    def start_phase(self) -> None:
        """Starts the clock of the phase that begins now."""
        self._since = time.perf_counter()

    def due(self) -> bool:
        """Whether an epoch's end now should save."""
        if self.every_s is None:
            return False
        return time.perf_counter() - self._since >= self.every_s

    def save(self, task: int, state: PhaseState) -> None:
        """Writes `state` of the phase ending at `task` (committed when this returns)."""
        t0 = time.perf_counter()
        # The best weights are written only when they are not the current ones.
        best_is = "none" if state.best is None else "own"
        if state.best is not None and state.best_epoch == state.epoch - 1:
            best_is = "current"
        arrays = {
            "trainable": _flat(state.trainable),
            "opt_state": _flat(state.opt_state),
            # Floats go as arrays: the selection key may be inf or NaN, which JSON refuses.
            "best_key": np.asarray(state.best_key, np.float64),
            "best_scores": np.asarray(state.best_scores, np.float64),
        }
        if best_is == "own":
            arrays["best"] = _flat(state.best)
        meta = {
            "task": task,
            "epoch": state.epoch,
            "g_step": state.g_step,
            "best_epoch": state.best_epoch,
            "best_is": best_is,
            "key_len": len(state.best_key),
            "fingerprint": self.fingerprint,
        }
        self._ckpt.save(state.epoch, arrays, meta)
        self._since = time.perf_counter()
        log.info("task %d: saved its training state after epoch %d in %s (%.1fs)", task + 1,
                 state.epoch, self._ckpt.directory, self._since - t0)  # fmt: skip

    def restore(self, task: int, trainable: nnx.State, opt_state) -> PhaseState | None:
        """The saved state of the phase ending at `task`, or None if there is none for it.

        trainable, opt_state: the phase's fresh state, giving the structure (and shapes) to read.
        A state from another task or config is cleared, with a warning.
        """
        step = self._ckpt.latest_task()  # read whatever every_s is now: it changes no result
        if step is None:
            return None
        meta = self._ckpt.restore_meta(step)
        if meta.get("task") != task or meta.get("fingerprint") != self.fingerprint:
            log.warning(
                "%s: ignoring the saved state of task %s (this run is at task %d%s); removing it",
                self._ckpt.directory, meta.get("task"), task,
                "" if meta.get("fingerprint") == self.fingerprint else ", another config",
            )  # fmt: skip
            self.clear()
            return None
        like = {
            "trainable": _flat(trainable),
            "opt_state": _flat(opt_state),
            "best_key": np.zeros(int(meta["key_len"]), np.float64),
            "best_scores": np.zeros(2, np.float64),
        }
        if meta["best_is"] == "own":
            like["best"] = _flat(trainable)
        arrays, _ = self._ckpt.restore(step, like)
        current = _unflat(trainable, arrays["trainable"])
        best = None
        if meta["best_is"] == "current":  # its own buffers: the train step donates `trainable`
            best = jax.tree.map(jnp.copy, current)
        elif meta["best_is"] == "own":
            best = _unflat(trainable, arrays["best"])
        scores = np.asarray(arrays["best_scores"], np.float64)
        return PhaseState(
            epoch=int(meta["epoch"]),
            g_step=int(meta["g_step"]),
            trainable=current,
            opt_state=_unflat(opt_state, arrays["opt_state"]),
            best=best,
            best_key=tuple(float(k) for k in np.asarray(arrays["best_key"])),
            best_epoch=int(meta["best_epoch"]),
            best_scores=(float(scores[0]), float(scores[1])),
        )

    def clear(self) -> None:
        """Removes every saved state (the phase's task checkpoint is committed)."""
        self._ckpt.clear()

    def close(self) -> None:
        """Releases orbax's threads, and removes the folder when nothing is left in it to resume
        from (a finished run), so that a finished run holds no empty ``task_in_progress/``."""
        self._ckpt.close()
        with contextlib.suppress(OSError):  # not empty (a state to go on from) or already gone
            self._ckpt.directory.rmdir()
