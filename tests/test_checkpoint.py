"""TaskCheckpointer: round trip, latest task, pruning, atomicity (fake tmp dir, killed save)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctr_jax.checkpoint import TaskCheckpointer

REPO_ROOT = Path(__file__).resolve().parents[1]


def _state(seed: int = 0) -> dict:
    """A small stand-in for what the loop saves: plugins, HAT masks, RNG key data, a 0-d step."""
    k = jax.random.key(seed)
    return {
        "plugin": {  # integer-like string keys, as nnx.to_pure_dict gives for layer lists
            "0": {"w": jax.random.normal(k, (3, 4), jnp.float32), "b": jnp.zeros((4,))},
            "1": {"w": jnp.full((3, 4), seed, jnp.float32), "b": np.arange(4, dtype=np.float32)},
        },
        "masks": {"m1": jnp.ones((2, 5), jnp.float32) * 0.5, "m2": np.zeros((2, 3), np.float32)},
        "rng": jax.random.key_data(jax.random.fold_in(k, 1)),  # uint32 [2]
        "step": jnp.array(41 + seed, jnp.int32),  # 0-d
        "counts": np.array([1, 2, 3], np.int32),
    }


def _like(state: dict) -> dict:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)


def _assert_same(restored: dict, expected: dict) -> None:
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_round_trip(tmp_path):
    state, meta = _state(3), {"task": "books", "acc_row": [0.9, None], "config_hash": "abc"}
    with TaskCheckpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(0, state, meta)
        for like in (_like(state), state):  # abstract or concrete templates both work
            restored, restored_meta = ckpt.restore(0, like)
            _assert_same(restored, state)
            assert restored_meta == meta
    assert restored["rng"].dtype == np.uint32 and restored["step"].shape == ()
    # The key data still is the same key: identical draws.
    key = jax.random.wrap_key_data(jnp.asarray(restored["rng"]))
    np.testing.assert_array_equal(
        jax.random.uniform(key, (3,)),
        jax.random.uniform(jax.random.fold_in(jax.random.key(3), 1), (3,)),
    )
    # Only the passed items are on disk.
    step_dir = tmp_path / "ckpt" / "0"
    assert {p.name for p in step_dir.iterdir() if not p.name.startswith("_")} == {
        "state",
        "meta",
        "commit_success.txt",
    }


def test_relative_directory_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with TaskCheckpointer(Path("rel") / "ckpt") as ckpt:
        assert ckpt.directory.is_absolute()
        assert ckpt.directory == tmp_path / "rel" / "ckpt"


def test_latest_task_and_resume(tmp_path):
    ckpt = TaskCheckpointer(tmp_path, keep=None)
    assert ckpt.latest_task() is None
    for t in range(3):
        ckpt.save(t, _state(t), {"task": t})
        assert ckpt.latest_task() == t
    ckpt.close()
    with TaskCheckpointer(tmp_path, keep=None) as resumed:  # a new process resuming the run
        assert resumed.all_tasks() == [0, 1, 2]
        restored, meta = resumed.restore(resumed.latest_task(), _like(_state()))
        _assert_same(restored, _state(2))
        assert meta == {"task": 2}


def test_keep_prunes_old_tasks(tmp_path):
    with TaskCheckpointer(tmp_path, keep=2) as ckpt:
        for t in range(4):
            ckpt.save(t, _state(t), {"task": t})
        assert ckpt.all_tasks() == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "3"]
    with pytest.raises(ValueError, match="keep"):
        TaskCheckpointer(tmp_path, keep=0)


def test_no_false_wait_warning_at_each_save(tmp_path, monkeypatch, caplog):
    # An async orbax manager times the wait that save() itself makes for its commit and logs it
    # at the next save as "Waiting for previous save to complete took ... consider
    # checkpointing less frequently" (1-2 s for a task's state: a warning at every save). With
    # the threshold at 10 ms the async manager's wait (tens of ms even for this small state)
    # trips it; the synchronous one has nothing in flight to wait for.
    from orbax.checkpoint import checkpoint_manager

    monkeypatch.setattr(checkpoint_manager, "_WAIT_FOR_PREV_SAVE_WARNING_THRESHOLD_SECS", 0.01)
    with caplog.at_level(logging.WARNING), TaskCheckpointer(tmp_path, keep=1) as ckpt:
        for t in range(3):
            ckpt.save(t, _state(t), {"task": t})
    assert not [r for r in caplog.records if "Waiting for previous save" in r.getMessage()]


def test_missing_task_error_names_directory_and_task(tmp_path):
    with TaskCheckpointer(tmp_path) as ckpt:
        ckpt.save(0, _state(), {})
        with pytest.raises(FileNotFoundError, match=r"task 5 in .*available tasks: \[0\]") as e:
            ckpt.restore(5, _like(_state()))
        assert str(tmp_path) in str(e.value)


def test_save_rejects_stale_step_and_bad_meta(tmp_path):
    with TaskCheckpointer(tmp_path) as ckpt:
        ckpt.save(1, _state(), {})
        with pytest.raises(ValueError, match="steps must increase"):
            ckpt.save(1, _state(), {})  # orbax alone would silently skip this
        with pytest.raises(ValueError, match="JSON"):
            ckpt.save(2, _state(), {"bad": object()})
        assert ckpt.all_tasks() == [1]


def test_uncommitted_tmp_dirs_are_ignored(tmp_path):
    with TaskCheckpointer(tmp_path) as ckpt:
        ckpt.save(0, _state(0), {"task": 0})
        # What a save killed before its rename leaves behind (both naming styles orbax uses).
        for name in ("1.orbax-checkpoint-tmp", "2.orbax-checkpoint-tmp-1712345678"):
            (tmp_path / name / "state").mkdir(parents=True)
            (tmp_path / name / "state" / "partial").write_bytes(b"\0" * 16)
        assert ckpt.latest_task() == 0
        with pytest.raises(FileNotFoundError):
            ckpt.restore(1, _like(_state()))
    with TaskCheckpointer(tmp_path) as ckpt:
        assert ckpt.latest_task() == 0
        ckpt.save(1, _state(1), {"task": 1})  # orbax replaces the stale tmp dir of step 1
        assert ckpt.latest_task() == 1
        _assert_same(ckpt.restore(1, _like(_state()))[0], _state(1))
    assert not (tmp_path / "1.orbax-checkpoint-tmp").exists()


_KILLED_SAVE = """
import os, sys
import numpy as np
from orbax.checkpoint._src.path import atomicity
from ctr_jax.checkpoint import TaskCheckpointer

ckpt = TaskCheckpointer(sys.argv[1])
ckpt.save(0, {"w": np.zeros(4, np.float32)}, {"task": 0})

async def _die(self, *args, **kwargs):  # the process dies after writing, before the commit
    os._exit(17)

atomicity.AtomicRenameTemporaryPath.finalize = _die
ckpt.save(1, {"w": np.ones(4, np.float32)}, {"task": 1})
"""


def test_save_killed_before_commit_is_not_reported(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLED_SAVE), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 17, proc.stderr[-2000:]
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["0", "1.orbax-checkpoint-tmp"]  # the killed save left only a tmp dir
    like = {"w": jax.ShapeDtypeStruct((4,), np.float32)}
    with TaskCheckpointer(tmp_path) as ckpt:
        assert ckpt.latest_task() == 0
        state, meta = ckpt.restore(0, like)
        np.testing.assert_array_equal(state["w"], np.zeros(4, np.float32))
        assert meta == {"task": 0}
        ckpt.save(1, {"w": np.ones(4, np.float32)}, {"task": 1})  # the resumed run redoes task 1
        assert ckpt.latest_task() == 1
