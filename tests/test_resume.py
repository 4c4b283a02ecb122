"""The task-in-progress state (ctr_jax.training.resume): what is saved comes back, and only for
the task and config it was saved for. The loop's use of it: tests/test_loop.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ctr_jax.training.resume import DIRNAME, PhaseCheckpointer, PhaseState


def _fresh():
    trainable = {"w": jnp.zeros((3, 2)), "head": {"b": jnp.zeros(2)}}
    return trainable, optax.adamw(1e-3).init(trainable)


def _trained(scale: float):
    trainable, _ = _fresh()
    trainable = jax.tree.map(lambda x: x + scale * jnp.arange(x.size).reshape(x.shape), trainable)
    tx = optax.adamw(1e-3)
    opt_state = tx.init(trainable)
    _, opt_state = tx.update(trainable, opt_state, trainable)  # moments and count move
    return trainable, opt_state


def _equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b) and len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize(
    "best_epoch, best_key, best_is",
    [(-1, (math.inf,), "none"), (2, (0.5,), "current"), (0, (-0.8, 0.25), "own")],
)
def test_a_saved_state_comes_back(tmp_path, best_epoch, best_key, best_is):
    trainable, opt_state = _trained(1.0)
    best = {"none": None, "current": trainable, "own": _trained(2.0)[0]}[best_is]
    state = PhaseState(3, 17, trainable, opt_state, best, best_key, best_epoch, (0.5, math.nan))
    ckpt = PhaseCheckpointer(tmp_path, 0, "abc")
    ckpt.save(4, state)
    ckpt.close()
    back = PhaseCheckpointer(tmp_path, 0, "abc").restore(4, *_fresh())  # a new process
    assert (back.epoch, back.g_step, back.best_epoch) == (3, 17, best_epoch)
    assert back.best_key == best_key
    assert back.best_scores[0] == 0.5 and math.isnan(back.best_scores[1])
    _equal(back.trainable, trainable)
    _equal(back.opt_state, opt_state)
    if best is None:
        assert back.best is None
    else:
        for x in jax.tree.leaves(back.trainable):
            x.delete()  # as the train step's donation does: the best weights must survive it
        _equal(back.best, best)
    # Only the newest state is kept: a later save replaces it.
    ckpt = PhaseCheckpointer(tmp_path, 0, "abc")
    ckpt.save(4, PhaseState(4, 20, trainable, opt_state, None, (math.inf,), -1, (0.0, 0.0)))
    assert ckpt.restore(4, *_fresh()).epoch == 4
    assert sorted(p.name for p in (tmp_path / DIRNAME).iterdir()) == ["4"]


def test_a_state_of_another_task_or_config_is_dropped(tmp_path, caplog):
    trainable, opt_state = _trained(1.0)
    state = PhaseState(1, 5, trainable, opt_state, None, (math.inf,), -1, (0.0, 0.0))
    PhaseCheckpointer(tmp_path, 0, "abc").save(2, state)
    assert PhaseCheckpointer(tmp_path, 0, "other").restore(2, *_fresh()) is None
    assert "another config" in caplog.text
    assert not any((tmp_path / DIRNAME).iterdir())  # removed
    PhaseCheckpointer(tmp_path, 0, "abc").save(2, state)
    assert PhaseCheckpointer(tmp_path, 0, "abc").restore(3, *_fresh()) is None  # task 2 is done
    assert not any((tmp_path / DIRNAME).iterdir())


def test_close_removes_the_folder_only_when_nothing_is_left_in_it(tmp_path):
    trainable, opt_state = _trained(1.0)
    state = PhaseState(1, 5, trainable, opt_state, None, (math.inf,), -1, (0.0, 0.0))
    ckpt = PhaseCheckpointer(tmp_path, 0, "abc")
    ckpt.save(2, state)
    ckpt.close()  # a crash or Ctrl-C mid-task: the state stays, to go on from
    assert sorted(p.name for p in (tmp_path / DIRNAME).iterdir()) == ["1"]
    ckpt = PhaseCheckpointer(tmp_path, 0, "abc")
    assert ckpt.restore(2, *_fresh()).epoch == 1
    ckpt.clear()  # the task's checkpoint is committed
    ckpt.close()
    assert not (tmp_path / DIRNAME).exists()
    PhaseCheckpointer(tmp_path, 0, "abc").close()  # a run that saved nothing leaves nothing
    assert not (tmp_path / DIRNAME).exists()


def test_due_follows_the_interval(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("ctr_jax.training.resume.time.perf_counter", lambda: clock[0])
    ckpt = PhaseCheckpointer(tmp_path, 60, "abc")
    ckpt.start_phase()
    clock[0] = 159.0
    assert not ckpt.due()
    clock[0] = 160.0
    assert ckpt.due()
    trainable, opt_state = _trained(1.0)
    ckpt.save(0, PhaseState(1, 1, trainable, opt_state, None, (math.inf,), -1, (0.0, 0.0)))
    assert not ckpt.due()  # the interval restarts at a save
    assert PhaseCheckpointer(tmp_path, 0, "abc").due()  # 0: every epoch's end
    never = PhaseCheckpointer(tmp_path, None, "abc")
    assert not never.due()  # None: never saves, but goes on from a state saved before
    assert never.restore(0, *_fresh()).epoch == 1
