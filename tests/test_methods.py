"""Each baseline's distinctive rule (ctr_jax/methods.py), at tiny sizes.

- B-CL: dynamic routing runs its iterations; coupling coefficients sum to one over learned tasks.
- NCL/ONE/MTL: the adapter has no HAT gates and no protection.
- MTL: a mixed batch trains every task's head; the joint stream holds every task's examples.
- ONE: nothing flows from one task to the next (a run's task-1 result ignores task 0's data).
(HAT protecting like CTR's TSM is in test_step.py, parametrised over ctr, bcl and hat.)
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ctr_jax.config import HatConfig, TrainConfig, load_config
from ctr_jax.data import batching
from ctr_jax.data.synthetic import write_synthetic_tasks, write_tiny_backbone
from ctr_jax.data.tokenize import Encoded
from ctr_jax.methods import METHODS, get_method
from ctr_jax.models import hat
from ctr_jax.models.bert import load_pretrained
from ctr_jax.models.classifier import CTRClassifier
from ctr_jax.models.plugins import dynamic_routing, squash
from ctr_jax.training import loop, optim, step
from tests.helpers import TINY_MODEL, random_batch, tiny_model


def _routing_reference(pre: np.ndarray, active: np.ndarray, iters: int):
    """Loop-by-loop numpy routing by agreement (softmax over active tasks), for one token."""
    T, N, _ = pre.shape
    b = np.zeros((T, N))
    for i in range(iters):
        c = np.zeros((T, N))
        for n in range(N):
            e = np.exp(b[active, n] - b[active, n].max())
            c[active, n] = e / e.sum()
        s = np.einsum("tn,tnc->nc", c, pre)
        if i < iters - 1:
            q = np.sum(s**2, axis=-1, keepdims=True) + 1e-16
            v = q / (1 + q) * s / np.sqrt(q)
            b = b + np.einsum("tnc,nc->tn", pre, v)
    return s, c


def test_dynamic_routing_matches_reference_and_coefficients_sum_to_one():
    pre = jax.random.normal(jax.random.key(0), (2, 3, 5, 3, 4))  # [B, L, T, N, C]
    active = jnp.arange(5) <= 2
    votes, c = dynamic_routing(pre, active, iters=3)
    assert votes.shape == (2, 3, 3, 4) and c.shape == (2, 3, 5, 3)
    np.testing.assert_allclose(np.sum(c, axis=2), 1.0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(c[:, :, 3:]), 0.0)  # future tasks get nothing
    ref_s, ref_c = _routing_reference(np.asarray(pre[1, 2]), np.asarray(active), 3)
    np.testing.assert_allclose(np.asarray(votes[1, 2]), ref_s, atol=1e-5)
    np.testing.assert_allclose(np.asarray(c[1, 2]), ref_c, atol=1e-5)


def test_dynamic_routing_iterations_change_the_coupling():
    pre = jax.random.normal(jax.random.key(1), (1, 2, 4, 3, 3))
    active = jnp.arange(4) <= 3
    _, c1 = dynamic_routing(pre, active, iters=1)
    _, c3 = dynamic_routing(pre, active, iters=3)
    np.testing.assert_allclose(np.asarray(c1), 0.25, atol=1e-7)  # one pass: uniform
    assert np.max(np.abs(np.asarray(c3) - 0.25)) > 0.01  # agreement moved the weights


def test_squash_keeps_direction_and_bounds_the_norm():
    v = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    out = np.asarray(squash(v, axis=-1))
    np.testing.assert_allclose(out[0], np.array([3.0, 4.0]) / 5 * 25 / 26, rtol=1e-6)
    np.testing.assert_allclose(out[1], 0.0)


def test_bcl_plugin_ignores_future_capsules():
    model = tiny_model(num_classes=(2, 2, 2), ksm="dynamic")
    x = jax.random.normal(jax.random.key(2), (2, 6, 32))
    mask = jnp.ones((2, 6))
    before = model.plugins.ksm(1, x, mask, jnp.int32(0), None, False)[0]
    w = model.plugins.caps_w1[...]
    model.plugins.caps_w1[...] = w.at[:, 1:].set(5.0)  # rewrite tasks 1 and 2's capsules
    after = model.plugins.ksm(1, x, mask, jnp.int32(0), None, False)[0]
    np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
    during_task_2 = model.plugins.ksm(1, x, mask, jnp.int32(2), None, False)[0]
    assert np.max(np.abs(np.asarray(during_task_2 - before))) > 1e-3  # ...which task 2 does use


@pytest.mark.parametrize("name", ["ncl", "one", "mtl"])
def test_adapter_baselines_have_no_gates_and_no_protection(name):
    m = get_method(name)
    model = tiny_model(ksm=m.ksm, use_hat=m.hat)
    _, trainable, _ = step.split_model(model)
    assert not hasattr(model.plugins, "e1") and not hasattr(model.plugins, "caps_w1")
    g1, g2 = model.plugins.gates(jnp.int32(1), jnp.float32(400.0))
    np.testing.assert_array_equal(np.asarray(g1), 1.0)
    np.testing.assert_array_equal(np.asarray(g2), 1.0)
    full = hat.HatMasks(m1=jnp.ones((4, 16)), m2=jnp.ones((4, 32)))  # "everything used"
    scales = optim.update_scales(trainable, jnp.int32(1), full)
    for key in ("w1", "b1", "w2", "b2"):
        np.testing.assert_array_equal(np.asarray(scales["plugins"][key][...]), 1.0)


def test_method_table_is_consistent():
    assert sorted(METHODS) == ["bcl", "ctr", "hat", "mtl", "ncl", "one"]
    assert get_method("ctr").ksm == "transfer" and get_method("bcl").ksm == "dynamic"
    assert [m for m in METHODS if METHODS[m].hat] == ["ctr", "bcl", "hat"]
    with pytest.raises(ValueError, match="unknown method"):
        get_method("ewc")


def test_mtl_step_trains_every_head_of_a_mixed_batch():
    hat_cfg, train_cfg = HatConfig(), TrainConfig(lr=1e-2, weight_decay=0.1)
    model = tiny_model(num_classes=(2, 2, 2), ksm=None, use_hat=False)
    graphdef, trainable, frozen = step.split_model(model)
    before = np.asarray(trainable["head_w"][...]).copy()
    tx = optim.make_optimizer(train_cfg, optim.decay_mask(trainable))
    batch = random_batch(6, 10).replace(task_ids=jnp.array([0, 1, 0, 1, 0, 1], jnp.int32))
    masks = hat.HatMasks.zeros(4, 16, 32)
    args = (jnp.int32(2), jnp.float32(1.0), jnp.float32(train_cfg.lr), masks, jax.random.key(0))

    def moved(all_heads):
        fn = jax.jit(step.make_train_step(graphdef, tx, hat_cfg, use_hat=False,
                                          all_heads=all_heads))  # fmt: skip
        tr = jax.tree.map(jnp.copy, trainable)
        tr, _, m = fn(tr, tx.init(tr), frozen, batch, *args)
        assert float(m["reg"]) == 0.0  # no HAT, no regulariser
        return np.any(np.asarray(tr["head_w"][...]) != before, axis=(1, 2))

    np.testing.assert_array_equal(moved(True), [True, True, True])  # 2 decays only
    np.testing.assert_array_equal(moved(False), [False, False, True])  # task_id's head only


def test_joint_stream_holds_every_task_example_once_per_epoch():
    encs = [
        Encoded(
            input_ids=np.full((n, 8), t + 1, np.int32),
            token_type_ids=np.zeros((n, 8), np.int32),
            lengths=np.full(n, 3 + t, np.int32),
            labels=np.arange(n, dtype=np.int32) % 2,
        )
        for t, n in enumerate((5, 7, 4))
    ]
    joint, ids = batching.concat_tasks(encs)
    seen = []
    for b in batching.train_batches(joint, 4, [8], np.random.default_rng(0), ids):
        w = np.asarray(b.weight) > 0
        assert np.all(np.asarray(b.input_ids)[:, 0] == np.asarray(b.task_ids) + 1)  # ids align
        seen += list(np.asarray(b.task_ids)[w])
    assert sorted(seen) == [0] * 5 + [1] * 7 + [2] * 4


# --------------------------------------------------------------------------- loop level


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("methods")
    backbone = write_tiny_backbone(base / "backbone")
    write_synthetic_tasks(base / "tasks", num_tasks=3, sizes=(16, 8, 8))
    return base, backbone


def _run(world, name, method, tasks, epochs=1):
    base, backbone = world
    cfg = load_config(None, [
        f"name={name}", f"runs_dir={base / 'runs'}", f"data.root={base / 'tasks'}",
        "data.benchmark=custom", f"data.custom_tasks={list(tasks)}", f"model.backbone={backbone}",
        "model.tsm_width=16", "model.capsule_hidden=8", "model.cnn_filters=4",
        f"train.epochs={epochs}", "train.batch_size=8", "train.eval_batch_size=8",
        "train.buckets=[16]", f"method={method}", "log_level=WARNING",
    ])  # fmt: skip
    return loop.run(cfg)


def _leaves(state):
    return [np.asarray(v) for v in jax.tree.leaves(state)]


@pytest.fixture(autouse=True)
def _no_env_data_root(monkeypatch):
    monkeypatch.delenv("CTR_JAX_DATA_ROOT", raising=False)


@pytest.mark.entry
@pytest.mark.parametrize("method,shared", [("one", False), ("ncl", True)])
def test_one_shares_nothing_between_tasks(world, method, shared):
    """Task 1 learned after task A or after task B: identical for ONE, not for NCL."""
    a = _run(world, f"{method}_a", method, ["synthetic0", "synthetic2"])
    b = _run(world, f"{method}_b", method, ["synthetic1", "synthetic2"])
    same = all(
        np.array_equal(x, y)
        for x, y in zip(_leaves(a.trainable), _leaves(b.trainable), strict=True)
    )
    assert same != shared
    if not shared:
        assert a.acc[1, 1] == b.acc[1, 1] and a.mf1[1, 1] == b.mf1[1, 1]
        assert a.acc[1, 0] == a.acc[0, 0]  # task 0's own model still stands
        assert a.summary["forgetting"] == 0.0


@pytest.mark.entry
def test_mtl_learns_all_tasks_in_one_phase(world):
    res = _run(world, "mtl", "mtl", ["synthetic0", "synthetic1", "synthetic2"], epochs=2)
    records = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["task"] for r in epochs] == [2, 2]  # one joint phase, 2 epochs
    tests = [(r["task"], r["eval_task"]) for r in records if r["kind"] == "test"]
    assert tests == [(2, 0), (2, 1), (2, 2)]
    # The run's initial heads (the loop builds the model from fold_in(key(seed), 0)):
    init = CTRClassifier(
        load_pretrained(world[1]), [2, 2, 2], TINY_MODEL, ksm=None, use_hat=False,
        rngs=nnx.Rngs(params=jax.random.fold_in(jax.random.key(0), 0)),
    )  # fmt: skip
    heads, heads0 = np.asarray(res.trainable["head_w"][...]), np.asarray(init.head_w[...])
    assert np.all(np.any(heads != heads0, axis=(1, 2)))  # every task's head was trained
    assert np.max(np.abs(heads - heads0)) < 0.05  # by small steps from this very init
    for r in range(3):  # every row is the one final evaluation
        np.testing.assert_array_equal(res.acc[r, : r + 1], res.acc[2, : r + 1])
    saved = json.loads((res.run_dir / "results.json").read_text())
    assert saved["protocol"] == "joint" and saved["method"] == "mtl"
