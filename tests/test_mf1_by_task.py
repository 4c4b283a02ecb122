"""scripts/mf1_by_task.py on hand-made run folders: the split of an MF1 difference by hand."""

import numpy as np

from ctr_jax.metrics import write_results
from tests.helpers import load_script

NAN = np.nan


def _script():
    return load_script("mf1_by_task")


def _run(root, name, final_mf1, tasks=("a", "b", "c")):
    mf1 = np.full((3, 3), NAN)
    mf1[np.tril_indices(3)] = 0.5
    mf1[-1] = final_mf1
    support = [{"pos": 21, "neg": 1}, {"pos": 10, "neg": 10}, {"pos": 20, "neg": 2}]
    write_results(root / name, method="ctr", benchmark="asc", order=0, seed=0, backbone="tiny",
                  tasks=list(tasks), acc=mf1, mf1=mf1, extra={"test_support": support})  # fmt: skip
    return root / name


def test_splits_the_difference_into_tiny_tasks_and_the_rest(tmp_path, capsys):
    ref = _run(tmp_path, "hat", [1.0, 0.8, 0.5])
    run = _run(tmp_path, "ctr", [0.49, 0.9, 0.5])
    assert _script().main([str(ref), str(run)]) == 0
    out = capsys.readouterr().out
    assert "tiny tasks (rarest test class <= 2): a (1), c (2)" in out
    # a: -51 points, b: +10, c: 0 -> mean over 3 tasks -13.67; tiny a + c: -17.00; others +3.33.
    assert "ctr | -13.67 | -17.00 | +3.33 | a -51, c +0" in out


def test_refuses_runs_over_other_tasks(tmp_path, capsys):
    ref = _run(tmp_path, "hat", [1.0, 0.8, 0.5])
    other = _run(tmp_path, "other", [1.0, 0.8, 0.5], tasks=("a", "b", "d"))
    assert _script().main([str(ref), str(other)]) == 2
    assert "learned other tasks" in capsys.readouterr().err
