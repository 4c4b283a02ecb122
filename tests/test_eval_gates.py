"""scripts/eval_gates.py: the expected gate by hand, and the three modes on a trained run."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctr_jax.config import ConfigError
from ctr_jax.methods import get_method
from ctr_jax.models import plugins
from ctr_jax.training import trained
from tests.helpers import load_script


def _script():
    return load_script("eval_gates")


def test_expected_gate_is_the_transfer_probability_and_is_undone():
    mod = _script()
    logits = jnp.array([[2.0, 0.0], [0.0, 0.1], [-1.0, 3.0]])  # margins 2, -0.1, -4
    hard = plugins.hard_gumbel_gate
    np.testing.assert_array_equal(hard(logits, None, 1.0, False), [1.0, 0.0, 0.0])
    with mod._gate("expected"):
        got = plugins.hard_gumbel_gate(logits, None, 1.0, False)
        noisy = plugins.hard_gumbel_gate(logits, jax.random.key(0), 1.0, False)
    np.testing.assert_allclose(got, 1.0 / (1.0 + np.exp(-np.array([2.0, -0.1, -4.0]))), rtol=1e-6)
    assert set(np.asarray(noisy).tolist()) <= {0.0, 1.0}  # with a key: still a hard sample
    assert plugins.hard_gumbel_gate is hard
    with mod._gate("argmax"):
        assert plugins.hard_gumbel_gate is hard


def check_gates(run_dir, tmp_path):
    """The three modes on a finished 2-task CTR run folder (called by tests/test_loop.py on its
    run, like tests/test_transfer.py's check_report)."""
    mod = _script()
    run = trained.load_trained(run_dir)
    scores = mod.gate_scores(run)
    assert set(scores) == set(mod.MODES)
    results = json.loads((run_dir / "results.json").read_text())
    np.testing.assert_allclose(scores["argmax"]["acc_tasks"], results["acc"][1], atol=1e-12)
    np.testing.assert_allclose(scores["argmax"]["mf1_tasks"], results["mf1"][1], atol=1e-12)
    for s in scores.values():
        assert len(s["acc_tasks"]) == 2 and 0.0 <= s["acc"] <= 1.0 and 0.0 <= s["mf1"] <= 1.0
    assert mod.main([str(run_dir), "--out", str(tmp_path / "gates.json")]) == 0
    assert json.loads((tmp_path / "gates.json").read_text())["argmax"] == scores["argmax"]
    # A checkpoint that does not match the run's matrix, and a method without routers: refused.
    run.acc[1, 0] += 0.5
    with pytest.raises(ConfigError, match="differ from the run's"):
        mod.gate_scores(run)
    with pytest.raises(ConfigError, match="no router gates"):
        mod.gate_scores(dataclasses.replace(run, method=get_method("bcl")))
