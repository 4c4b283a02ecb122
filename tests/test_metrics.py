"""Metrics against hand-computed values; results files round trip."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from ctr_jax import metrics

NAN = np.nan

# Accuracy matrix of a 3-task run; row t = after learning task t, column u = task evaluated.
#            task0  task1  task2
#   after 0  0.90   -      -
#   after 1  0.80   0.70   -
#   after 2  0.60   0.65   0.85
# acc (last row mean)   = (0.60 + 0.65 + 0.85) / 3 = 2.10 / 3 = 0.70
# forward_acc (diag)    = (0.90 + 0.70 + 0.85) / 3 = 2.45 / 3 = 0.81666...
# FR  = mean(0.90 - 0.60, 0.70 - 0.65) = mean(0.30, 0.05) = 0.175
# BWT = -FR = -0.175
ACC = np.array([[0.90, NAN, NAN], [0.80, 0.70, NAN], [0.60, 0.65, 0.85]])
# Macro-F1 matrix, same layout; mf1 = (0.50 + 0.60 + 0.79) / 3 = 1.89 / 3 = 0.63
MF1 = np.array([[0.88, NAN, NAN], [0.75, 0.66, NAN], [0.50, 0.60, 0.79]])
TASKS = ("books", "dvd", "kitchen")


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a)
    a.flags.writeable = False  # any in-place write by the function under test raises
    return a


def test_hand_computed_3x3():
    assert metrics.forgetting_rate(ACC) == pytest.approx(0.175)
    assert metrics.backward_transfer(ACC) == pytest.approx(-0.175)
    assert metrics.summarize(ACC, MF1) == pytest.approx(
        {"acc": 0.70, "mf1": 0.63, "forgetting": 0.175, "bwt": -0.175, "forward_acc": 2.45 / 3}
    )


def test_max_drop_sees_a_fall_that_the_last_row_hides():
    assert metrics.max_drop(ACC) == pytest.approx(0.175)  # falls are largest at the end: = FR
    # Task 0 falls from 0.9 to 0.4 after task 1 and recovers to 0.85; task 1 goes 0.8 -> 0.7.
    # FR = mean(0.90 - 0.85, 0.80 - 0.70) = 0.075; max_drop = mean(0.90 - 0.40, 0.10) = 0.30.
    a = _readonly(np.array([[0.9, NAN, NAN], [0.4, 0.8, NAN], [0.85, 0.7, 0.9]]))
    assert metrics.forgetting_rate(a) == pytest.approx(0.075)
    assert metrics.max_drop(a) == pytest.approx(0.30)
    # A task that only improves later has a negative drop (its smallest gain).
    assert metrics.max_drop(np.array([[0.5, NAN], [0.7, 0.8]])) == pytest.approx(-0.2)
    assert metrics.max_drop(np.array([[0.9]])) == 0.0


def test_single_task_has_no_forgetting():
    one = np.array([[0.9]])
    assert metrics.forgetting_rate(one) == 0.0
    assert metrics.backward_transfer(one) == 0.0
    assert metrics.summarize(one, one)["forward_acc"] == pytest.approx(0.9)


def test_negative_forgetting_is_backward_transfer():
    # Task 0 improves from 0.5 to 0.7 after learning task 1: FR = 0.5 - 0.7 = -0.2.
    a = np.array([[0.5, NAN], [0.7, 0.8]])
    assert metrics.forgetting_rate(a) == pytest.approx(-0.2)
    assert metrics.backward_transfer(a) == pytest.approx(0.2)


def test_matrix_validation():
    with pytest.raises(ValueError, match="square"):
        metrics.forgetting_rate(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.forgetting_rate(np.array([[0.5, NAN], [NAN, 0.8]]))


def test_accuracy():
    assert metrics.accuracy(np.array([0, 1, 2, 1]), np.array([0, 1, 1, 1])) == 0.75
    with pytest.raises(ValueError, match="differ in size"):
        metrics.accuracy(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="empty"):
        metrics.accuracy(np.array([]), np.array([]))


@pytest.mark.parametrize(
    ("y_true", "y_pred", "expected"),
    [
        # label 0: tp=1 fp=0 fn=1 -> P=1, R=1/2, F1=2/3; label 1: tp=2 fp=1 fn=0 -> P=2/3, R=1,
        # F1=4/5; macro = (2/3 + 4/5) / 2 = 11/15
        ([0, 0, 1, 1], [0, 1, 1, 1], 11 / 15),
        # label 2 only in y_pred: labels {0, 1, 2}; F1 = 2/3, 1, 0 -> macro = 5/9
        ([0, 0, 1, 1], [0, 2, 1, 1], 5 / 9),
        # labels 1 and 2 never predicted (precision 0/0 -> 0): label 0 tp=1 fp=2 fn=0 ->
        # P=1/3, R=1, F1=1/2; labels 1, 2: F1=0 -> macro = 1/6
        ([0, 1, 2], [0, 0, 0], 1 / 6),
        # disjoint labels: every F1 is 0
        ([1, 1], [0, 0], 0.0),
        ([3, 1, 2], [3, 1, 2], 1.0),
    ],
)
def test_macro_f1_hand_computed(y_true, y_pred, expected):
    assert metrics.macro_f1(np.array(y_true), np.array(y_pred)) == pytest.approx(expected)


def test_inputs_are_not_mutated():
    y_true, y_pred = _readonly([0, 1, 2, 2]), _readonly([0, 2, 2, 1])
    acc, mf1 = _readonly(ACC), _readonly(MF1)
    metrics.accuracy(y_true, y_pred)
    metrics.macro_f1(y_true, y_pred)
    metrics.forgetting_rate(acc)
    metrics.backward_transfer(acc)
    metrics.summarize(acc, mf1)
    np.testing.assert_array_equal(y_true, [0, 1, 2, 2])
    np.testing.assert_array_equal(y_pred, [0, 2, 2, 1])
    np.testing.assert_array_equal(acc, ACC)  # NaNs compare equal here
    np.testing.assert_array_equal(mf1, MF1)


def _write(tmp_path, acc, mf1, **kw):
    return metrics.write_results(
        tmp_path,
        method="ctr",
        benchmark="dsc_small",
        order=1,
        seed=7,
        backbone="bert-base-uncased",
        tasks=TASKS,
        acc=acc,
        mf1=mf1,
        **kw,
    )


def test_results_round_trip_full(tmp_path):
    acc, mf1 = _readonly(ACC), _readonly(MF1)
    path = _write(tmp_path, acc, mf1, extra={"wall_s": 12.5, "git_sha": "abc"})
    assert path == tmp_path / "results.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "acc_matrix.csv",
        "mf1_matrix.csv",
        "results.json",
    ]  # no temp files left behind

    raw = json.loads(path.read_text())
    assert raw["acc"] == [[0.9, None, None], [0.8, 0.7, None], [0.6, 0.65, 0.85]]
    assert raw["tasks"] == list(TASKS)
    assert raw["wall_s"] == 12.5 and raw["git_sha"] == "abc"

    back = metrics.read_results(path)
    np.testing.assert_array_equal(back["acc"], ACC)
    np.testing.assert_array_equal(back["mf1"], MF1)
    assert back["summary"] == pytest.approx({**metrics.summarize(ACC, MF1), "tasks_learned": 3})
    assert (back["method"], back["order"], back["seed"]) == ("ctr", 1, 7)
    assert metrics.read_results(tmp_path)["tasks"] == list(TASKS)  # run dir works too

    assert (tmp_path / "acc_matrix.csv").read_text() == (
        "after\\task,books,dvd,kitchen\nbooks,0.9,,\ndvd,0.8,0.7,\nkitchen,0.6,0.65,0.85\n"
    )


def test_results_partial_run_uses_learned_block(tmp_path):
    # Only tasks 0 and 1 learned: row 2 is all NaN. Summary from the 2 x 2 block:
    # acc = (0.80 + 0.70) / 2 = 0.75, mf1 = (0.75 + 0.66) / 2 = 0.705, FR = 0.90 - 0.80 = 0.10,
    # forward_acc = (0.90 + 0.70) / 2 = 0.80.
    acc, mf1 = ACC.copy(), MF1.copy()
    acc[2], mf1[2] = NAN, NAN
    # A value above the diagonal is never written, even if the caller left one there.
    acc[0, 2] = 0.123
    _write(tmp_path, acc, mf1)
    raw = json.loads((tmp_path / "results.json").read_text())
    assert raw["acc"][0] == [0.9, None, None]
    assert raw["acc"][2] == [None, None, None]
    assert raw["summary"] == pytest.approx(
        {
            "acc": 0.75,
            "mf1": 0.705,
            "forgetting": 0.10,
            "bwt": -0.10,
            "forward_acc": 0.80,
            "tasks_learned": 2,
        }
    )
    assert (tmp_path / "mf1_matrix.csv").read_text().splitlines()[-1] == "kitchen,,,"
    back = metrics.read_results(tmp_path / "results.json")
    assert np.isnan(back["acc"][2]).all() and np.isnan(back["acc"][0, 2])


def test_results_nothing_learned_and_overwrite(tmp_path):
    empty = np.full((3, 3), NAN)
    _write(tmp_path, empty, empty)
    back = metrics.read_results(tmp_path / "results.json")
    assert back["summary"]["tasks_learned"] == 0 and np.isnan(back["summary"]["acc"])
    _write(tmp_path, ACC, MF1)  # the next task's write replaces the file
    assert metrics.read_results(tmp_path / "results.json")["summary"]["tasks_learned"] == 3


def test_results_validation(tmp_path):
    with pytest.raises(ValueError, match="shadow"):
        _write(tmp_path, ACC, MF1, extra={"acc": 1.0})
    with pytest.raises(ValueError, match="must both be"):
        _write(tmp_path, ACC[:2, :2], MF1[:2, :2])
    gap = ACC.copy()
    gap[1] = NAN  # row 2 learned but row 1 not
    with pytest.raises(ValueError, match="prefix"):
        _write(tmp_path, gap, MF1)
    assert not (tmp_path / "results.json").exists()


def test_results_files_get_the_umask_permissions(tmp_path):
    """The atomic write's temp file starts owner-only; the result must not stay that way."""
    old = os.umask(0o022)
    try:
        _write(tmp_path, _readonly(ACC), _readonly(MF1))
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["acc_matrix.csv", "mf1_matrix.csv", "results.json"], 0o644)


@pytest.mark.parametrize(
    "y_true, y_pred, expected",
    [
        ([0, 1, 1, 0], [1, 1, 1, 1], 1),  # every prediction class 1: a one-class predictor
        ([0, 1, 1, 0], [1, 1, 0, 1], None),  # two classes predicted
        ([1, 1, 1], [1, 1, 1], None),  # one true class: predicting it is no collapse
        ([2, 0, 1], [0, 0, 0], 0),
    ],
)
def test_one_class(y_true, y_pred, expected):
    assert metrics.one_class(np.array(y_true), np.array(y_pred)) == expected
