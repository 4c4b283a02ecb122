"""MetricWriter JSONL records, scalar conversion, append on reopen; setup_logging idempotence."""

from __future__ import annotations

import json
import logging

import jax.numpy as jnp
import numpy as np
import pytest

from ctr_jax import tracking


def test_records_round_trip(tmp_path):
    with tracking.MetricWriter(tmp_path / "run") as writer:
        writer.write("train_epoch", task=0, epoch=1, loss=0.25)
        writer.write("eval", task=0, eval_task=0, acc=0.9, split="test", note=None)
    assert tracking.read_metrics(tmp_path / "run") == [
        {"kind": "train_epoch", "task": 0, "epoch": 1, "loss": 0.25},
        {"kind": "eval", "task": 0, "eval_task": 0, "acc": 0.9, "split": "test", "note": None},
    ]


def test_numpy_and_jax_scalars_become_python(tmp_path):
    with tracking.MetricWriter(tmp_path) as writer:
        writer.write(
            "eval",
            np_f32=np.float32(0.5),
            np_i64=np.int64(3),
            np_bool=np.bool_(True),
            np_0d=np.array(2.0),
            jax_f32=jnp.float32(1.5),
            jax_i32=jnp.array(7, jnp.int32),
            jax_bool=jnp.array(False),
            row=[np.float32(0.25), jnp.float32(0.75)],
            nested={"a": jnp.int32(1)},
        )
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record == {
        "kind": "eval",
        "np_f32": 0.5,
        "np_i64": 3,
        "np_bool": True,
        "np_0d": 2.0,
        "jax_f32": 1.5,
        "jax_i32": 7,
        "jax_bool": False,
        "row": [0.25, 0.75],
        "nested": {"a": 1},
    }
    assert type(record["np_i64"]) is int and type(record["jax_i32"]) is int
    assert type(record["jax_bool"]) is bool


def test_rejects_arrays_and_objects(tmp_path):
    with tracking.MetricWriter(tmp_path) as writer:
        with pytest.raises(TypeError, match="shape"):
            writer.write("eval", logits=jnp.zeros((2, 3)))
        with pytest.raises(TypeError, match="object"):
            writer.write("eval", thing=object())
    assert (tmp_path / "metrics.jsonl").read_text() == ""  # nothing half-written


def test_append_across_reopen_and_flush(tmp_path):
    writer = tracking.MetricWriter(tmp_path)
    writer.write("train_epoch", task=0, loss=1.0)
    # Flushed: visible to a reader before close.
    assert tracking.read_metrics(tmp_path) == [{"kind": "train_epoch", "task": 0, "loss": 1.0}]
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        writer.write("eval")
    with tracking.MetricWriter(tmp_path) as writer:  # a resumed run appends
        writer.write("train_epoch", task=1, loss=0.5)
    assert [r["task"] for r in tracking.read_metrics(tmp_path)] == [0, 1]


def test_nan_stays_visible(tmp_path):
    with tracking.MetricWriter(tmp_path) as writer:
        writer.write("train_step", loss=jnp.float32(jnp.nan))
    assert np.isnan(tracking.read_metrics(tmp_path)[0]["loss"])


def test_null_writer(tmp_path):
    with tracking.NullWriter() as writer:
        writer.write("eval", acc=jnp.float32(1.0))
    writer.close()
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_setup_logging_is_idempotent(restore_root_logger):
    root = restore_root_logger
    tracking.setup_logging("INFO")
    tracking.setup_logging("debug")
    ours = [h for h in root.handlers if h.get_name() == "ctr_jax.stderr"]
    assert len(ours) == 1
    assert ours[0].formatter._fmt == tracking.LOG_FORMAT
    assert root.level == logging.DEBUG
    with pytest.raises(ValueError, match="unknown logging level"):
        tracking.setup_logging("LOUD")


def test_time_left_by_hand():
    # 30 units took 90 s, so 3 s a unit: 50 units left are 150 s.
    assert tracking.time_left(30.0, 90.0, 50.0) == pytest.approx(150.0)
    assert tracking.time_left(30.0, 90.0, 0.0) == 0.0
    assert tracking.time_left(0.0, 5.0, 50.0) is None  # no finished work, no rate


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0 s"), (59.4, "59 s"), (61, "1 min"), (3569, "59 min"), (3600, "1 h 00 min"),
     (7530, "2 h 06 min"), (36000, "10 h 00 min")],
)  # fmt: skip
def test_duration_text(seconds, text):
    assert tracking.duration_text(seconds) == text
