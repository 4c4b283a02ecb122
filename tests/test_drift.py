"""The drift attribution (ctr_jax.drift): parameter groups, mixing states, and the report of a
finished tiny run."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from ctr_jax import drift
from ctr_jax.config import ConfigError
from ctr_jax.methods import get_method
from ctr_jax.training import step, trained
from tests.helpers import tiny_model


def _state(ksm="transfer", use_hat=True, seed=0):
    return step.split_model(tiny_model(ksm=ksm, use_hat=use_hat, seed=seed))[1]


def _leaves(state):
    return jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))


@pytest.mark.parametrize(
    ("ksm", "use_hat", "expect"),
    [
        ("transfer", True, drift.GROUPS),  # CTR: every group
        (None, True, ("layernorms", "tsm", "hat_embeddings", "heads")),  # HAT: no KSM
        (None, False, ("layernorms", "tsm", "heads")),  # NCL: the adapter is the TSM, ungated
    ],
)
def test_groups_follow_the_variable_types(ksm, use_hat, expect):
    state = _state(ksm, use_hat)
    assert tuple(drift.groups_present(state)) == expect
    assert drift.group_of(state["plugins"]["w1"]) == "tsm"
    assert drift.group_of(state["encoder"]["layers"][0]["attn_norm"]["scale"]) == "layernorms"
    assert drift.group_of(state["head_w"]) == "heads"
    if ksm:
        assert drift.group_of(state["plugins"]["big_w"]) == "ksm"
        assert drift.group_of(state["plugins"]["caps_w1"]) == "capsules"


def test_mix_takes_exactly_one_group():
    a, b = _state(seed=0), _state(seed=5)  # different values, the same tree
    mixed = drift.mix(a, b, "layernorms")
    for x, y, m in zip(_leaves(a), _leaves(b), _leaves(mixed), strict=True):
        src = y if drift.group_of(x) == "layernorms" else x
        np.testing.assert_array_equal(np.asarray(m[...]), np.asarray(src[...]))
    # Taking every group in turn gives the other state: the groups partition the leaves.
    out = a
    for g in drift.groups_present(a):
        out = drift.mix(out, b, g)
    for y, m in zip(_leaves(b), _leaves(out), strict=True):
        np.testing.assert_array_equal(np.asarray(m[...]), np.asarray(y[...]))


def test_change_norms_by_hand():
    a = _state()
    b = jax.tree.map(lambda v: v, a)
    scale = b["encoder"]["layers"][0]["attn_norm"]["scale"]
    before = np.asarray(scale[...])
    scale[...] = scale[...] + 1.0  # one LayerNorm scale moves by 1 per element
    ln = [np.asarray(v[...]) for v in _leaves(a) if drift.group_of(v) == "layernorms"]
    expect = np.sqrt(before.size) / np.sqrt(sum(float(np.sum(x**2)) for x in ln))
    got = drift.change_norms(a, b)
    assert got["layernorms"] == pytest.approx(expect, rel=1e-6)
    assert all(v == 0.0 for g, v in got.items() if g != "layernorms")
    # A group that starts at zero has no relative change to give: None, not inf (valid JSON).
    zero = jax.tree.map(
        lambda v: v.replace(v[...] * 0.0) if drift.group_of(v) == "layernorms" else v,
        a, is_leaf=lambda x: isinstance(x, nnx.Variable),
    )  # fmt: skip
    assert drift.change_norms(zero, zero)["layernorms"] == 0.0
    assert drift.change_norms(zero, b)["layernorms"] is None


def check_drift(run_dir, tmp_path):
    """The drift report of a finished 2-task CTR run folder is consistent with it. Called by
    tests/test_loop.py on its CTR run (a run of its own here would double CI time)."""
    after = trained.load_trained(run_dir)
    before = trained.restore_task(after, run_dir, 0)
    assert (before.last_task, after.last_task) == (0, 1)
    start = drift.start_state(after)
    report = drift.analyse(before, after, start=start)  # raises if an accuracy differs
    results = json.loads((run_dir / "results.json").read_text())
    acc = np.asarray(results["acc"], dtype=float)
    (row,) = report["per_task"]  # task 0 only: the one learned before K = 0's checkpoint
    assert row["at_from"]["acc"] == pytest.approx(acc[0, 0], abs=1e-12)
    assert row["at_to"]["acc"] == pytest.approx(acc[1, 0], abs=1e-12)
    assert tuple(report["groups"]) == drift.GROUPS
    # Task 0's gate embedding row and head are frozen after task 0: putting them back to task
    # 0's values, or taking them alone from task 1, leaves every prediction where it was.
    for g in ("hat_embeddings", "heads"):
        assert row["revert"][g]["changed"] == 0.0, g
        assert row["revert"][g]["acc"] == row["at_to"]["acc"], g
        assert row["alone"][g]["acc"] == row["at_from"]["acc"], g
    for g in report["groups"]:
        assert 0.0 <= row["revert"][g]["changed"] <= 1.0
    # Learning task 1 moved the shared groups and task 1's own rows.
    assert all(report["change"][g] > 0.0 for g in report["groups"])
    # Since the start: the same groups, each moved (the LayerNorms from the pretrained values).
    assert list(report["change_from_start"]) == report["groups"]
    assert all(v > 0.0 for v in report["change_from_start"].values())
    with pytest.raises(ConfigError, match="earlier task"):
        drift.analyse(after, before)
    with pytest.raises(ConfigError, match="sequential method"):
        drift.analyse(before, dataclasses.replace(after, method=get_method("one")))
    with pytest.raises(ConfigError, match=r"no checkpoint after task 5.*\[0, 1\]"):
        trained.restore_task(after, run_dir, 5)
    table = drift.write_table(report)
    assert "layernorms reverted" in table and row["task"] in table
    assert "since the run's start" in table
    assert drift.main([str(run_dir), "--out", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "drift_0_1.json").read_text())
    assert written["per_task"][0]["at_to"] == row["at_to"]
    assert (tmp_path / "drift_0_1.md").read_text() == table


def test_main_refuses_a_folder_without_checkpoints(tmp_path, capsys):
    assert drift.main([str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()  # nothing created on a bad path
