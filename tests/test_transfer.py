"""The transfer analysis (ctr_jax.transfer): probe records, and the report of finished tiny runs."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctr_jax import transfer
from ctr_jax.config import ConfigError
from ctr_jax.methods import get_method
from ctr_jax.training import step, trained
from tests.helpers import open_router, random_batch, tiny_model


def _forward(model, batch, task_id, **kw):
    return model(
        batch.input_ids, batch.token_type_ids, batch.attention_mask, jnp.int32(task_id),
        jnp.float32(400.0), **kw,
    )  # fmt: skip


@pytest.mark.parametrize("ksm", ["transfer", "dynamic", None])
def test_probe_leaves_the_output_unchanged_and_records_every_plugin(ksm):
    model = tiny_model(ksm=ksm)
    if ksm == "transfer":
        open_router(model)
    b = random_batch(3, 12)
    plain, _ = _forward(model, b, 1)
    logits, _, aux = _forward(model, b, 1, probe=True)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(logits))
    for site in ("attn", "ffn"):
        rec = aux[site]
        chex.assert_shape(rec["route"], (2, 3, 3))  # [layers, B, T]
        chex.assert_shape([rec["x_rms"], rec["ksm_rms"], rec["routed_rms"], rec["tsm_rms"]], (2, 3))
        route = np.asarray(rec["route"])
        margin = np.asarray(rec["margin"])
        chex.assert_shape(rec["margin"], (2, 3, 3))
        np.testing.assert_array_equal(route[:, :, 2], 0.0)  # a future task feeds nothing
        if ksm == "transfer":  # no noise: the gate is open exactly where the margin is positive
            np.testing.assert_array_equal(route[:, :, :2], (margin[:, :, :2] > 0).astype(float))
        else:  # no router
            assert np.all(np.isnan(margin))
        if ksm is None:
            np.testing.assert_array_equal(route, 0.0)
            np.testing.assert_array_equal(np.asarray(rec["ksm_rms"]), 0.0)
            np.testing.assert_array_equal(np.asarray(rec["routed_rms"]), 0.0)
        elif ksm == "transfer":
            np.testing.assert_array_equal(route[:, :, :2], 1.0)  # the opened router transfers
        else:  # coupling coefficients over the learned tasks sum to one
            np.testing.assert_allclose(route.sum(-1), 1.0, rtol=1e-5)
        assert np.all(np.asarray(rec["x_rms"]) > 0)


def test_probe_rms_is_over_real_tokens_only():
    model = tiny_model()
    x = jax.random.normal(jax.random.key(0), (2, 6, 32))
    mask = jnp.array([[1, 1, 1, 0, 0, 0], [1] * 6], jnp.float32)
    g1, g2 = model.plugins.gates(jnp.int32(0), jnp.float32(400.0))
    _, rec = model.plugins(0, x, mask, jnp.int32(0), g1[0], g2[0], None, False, probe=True)
    expect = np.sqrt(np.mean(np.square(np.asarray(x[0, :3]))))
    np.testing.assert_allclose(float(rec["x_rms"][0]), expect, rtol=1e-5)
    x_padded = x.at[0, 3:].set(100.0)  # what sits at padded positions must not count
    _, rec2 = model.plugins(0, x_padded, mask, jnp.int32(0), g1[0], g2[0], None, False, probe=True)
    np.testing.assert_allclose(float(rec2["x_rms"][0]), expect, rtol=1e-5)


def test_router_stats_by_hand():
    # One plugin; task 0: 2 examples x 1 source task, task 1: 2 examples x 2 source tasks.
    margins = [np.array([[[1.0], [3.0]]]), np.array([[[0.0, 2.0], [4.0, 6.0]]])]
    (got,) = transfer.router_stats(margins)
    assert got["margin_mean"] == pytest.approx(16.0 / 6.0)
    # variances over examples: (u0, k0) 1, (u1, k0) 4, (u1, k1) 4 -> sqrt(3)
    assert got["margin_sd_examples"] == pytest.approx(np.sqrt(3.0))
    # variances over source tasks, tasks u >= 1: [0, 2] 1, [4, 6] 1 -> 1
    assert got["margin_sd_tasks"] == pytest.approx(1.0)
    sig = 1.0 / (1.0 + np.exp(-np.array([1.0, 3.0, 0.0, 2.0, 4.0, 6.0])))
    assert got["train_open_prob"] == pytest.approx(sig.mean())
    # A single task has no spread over source tasks to report.
    assert transfer.router_stats(margins[:1])[0]["margin_sd_tasks"] is None


def test_routed_part_is_the_ksm_output_less_its_bias():
    model = tiny_model()
    open_router(model)
    x = jax.random.normal(jax.random.key(0), (2, 6, 32))
    mask = jnp.ones((2, 6), jnp.float32)
    g1, g2 = model.plugins.gates(jnp.int32(1), jnp.float32(400.0))

    def probe():
        return model.plugins(0, x, mask, jnp.int32(1), g1[0], g2[0], None, False, probe=True)[1]

    w = model.plugins.big_w  # a large routed part, so float rounding at the bias is small
    w[...] = 100.0 * jax.random.normal(jax.random.key(1), w[...].shape)
    model.plugins.big_b[...] = jnp.zeros_like(model.plugins.big_b[...])
    rec = probe()  # no bias: the routed part is the whole output
    np.testing.assert_allclose(np.asarray(rec["routed_rms"]), np.asarray(rec["ksm_rms"]), rtol=1e-6)
    assert float(jnp.min(rec["routed_rms"])) > 1e-3
    model.plugins.big_b[...] = jnp.full_like(model.plugins.big_b[...], 3.0)
    rec2 = probe()  # a bias moves the output, not the routed part
    np.testing.assert_allclose(
        np.asarray(rec2["routed_rms"]), np.asarray(rec["routed_rms"]), rtol=1e-5
    )
    assert float(jnp.min(rec2["ksm_rms"])) > 2.0


def check_report(run_dir, tmp_path):
    """The transfer report of a finished 2-task CTR run folder is consistent with it.
    Called by tests/test_loop.py on its CTR run (a run of its own here would double CI time)."""
    run = trained.load_trained(run_dir)
    assert run.last_task == 1 and run.method.name == "ctr"
    report = transfer.analyse(run)  # raises if the test accuracies differ from the run's
    results = json.loads((run_dir / "results.json").read_text())
    accs = [row["acc"] for row in report["per_task"]]
    np.testing.assert_allclose(accs, np.asarray(results["acc"], dtype=float)[1], atol=1e-12)
    route = report["route"]
    assert [len([v for v in r if v is not None]) for r in route] == [1, 2]  # k <= u only
    r = np.array([[np.nan if v is None else v for v in row] for row in route])
    assert np.nanmin(r) >= 0.0 and np.nanmax(r) <= 1.0
    assert len(report["route_by_plugin"]) == 4  # 2 layers x 2 sites
    for row in report["per_task"]:
        assert row["ksm_rms_ratio"] > 0.0 and row["tsm_rms_ratio"] > 0.0
        assert row["routed_rms_ratio"] > 0.0
        assert 0.0 <= row["acc_without_ksm"] <= 1.0
    router = report["router_by_plugin"]
    assert len(router) == 4
    for d in router:
        assert np.isfinite([d["margin_mean"], d["margin_sd_examples"], d["margin_sd_tasks"]]).all()
        assert 0.0 < d["train_open_prob"] < 1.0
    grads = transfer.grad_rms(run, num_batches=1)
    assert set(grads) == set(transfer.GRAD_GROUPS)
    for group, per_plugin in grads.items():
        assert len(per_plugin) == 4 and np.isfinite(per_plugin).all(), group
        assert min(per_plugin) >= 0.0
    assert min(grads["tsm"]) > 0.0 and min(grads["router"]) > 0.0
    files = transfer.write(report, tmp_path)
    assert all(f.stat().st_size > 0 for f in files)
    assert (tmp_path / "transfer_matrix.csv").read_text().count("\n") == 3

    # --init: the untrained model of the same config (no accuracy check): other margins.
    assert transfer.main([str(run_dir), "--init", "--no-plot", "--out", str(tmp_path)]) == 0
    init = json.loads((tmp_path / "transfer_init.json").read_text())
    assert init["state"] == "init" and len(init["router_by_plugin"]) == 4
    assert [d["margin_mean"] for d in init["router_by_plugin"]] != [
        d["margin_mean"] for d in router
    ]

    # --task 0: the checkpoint after the first task, checked against that row of the matrix.
    assert transfer.main([str(run_dir), "--task", "0", "--no-plot", "--out", str(tmp_path)]) == 0
    first = json.loads((tmp_path / "transfer_after_0.json").read_text())
    assert first["after_task"] == 0 and first["tasks"] == report["tasks"][:1]
    assert first["per_task"][0]["acc"] == pytest.approx(results["acc"][0][0], abs=1e-12)
    assert transfer.main([str(run_dir), "--task", "5", "--no-plot", "--out", str(tmp_path)]) == 2

    # A checkpoint that does not match the run's matrix is refused, not reported.
    run.acc[1, 0] = run.acc[1, 0] + 0.5
    with pytest.raises(ConfigError, match="differs from the run's"):
        transfer.analyse(run)
    # So is a method without a knowledge-sharing module.
    with pytest.raises(ConfigError, match="no knowledge-sharing module"):
        transfer.analyse(dataclasses.replace(run, method=get_method("hat")))


def test_without_ksm_zeroes_the_projection_only():
    _, trainable, _ = step.split_model(tiny_model())
    cut = transfer._without_ksm(trainable)
    assert not np.any(np.asarray(cut["plugins"]["big_w"][...]))
    assert np.any(np.asarray(trainable["plugins"]["big_w"][...]))  # the original is untouched
    np.testing.assert_array_equal(
        np.asarray(cut["plugins"]["w1"][...]), np.asarray(trainable["plugins"]["w1"][...])
    )


def test_a_folder_without_a_run_is_refused(tmp_path, capsys):
    assert transfer.main([str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    assert transfer.main([str(tmp_path)]) == 2
    assert "no 'config' key" in capsys.readouterr().err
