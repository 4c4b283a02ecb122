"""Train step: HAT protection (with weight decay on), future capsules, masks, compile-once."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ctr_jax.config import ExperimentConfig, HatConfig, TrainConfig
from ctr_jax.models import hat
from ctr_jax.models.variables import CapsuleParam, HeadParam, TaskEmbedding
from ctr_jax.training import optim, step
from tests.helpers import TINY_MODEL, open_router, random_batch, tiny_model

HAT = HatConfig()
TRAIN = TrainConfig(weight_decay=0.1, lr=3e-3)


def _learnable_batch(seed):
    """Label = whether token 1 is a high id: learnable, so some HAT units get used."""
    b = random_batch(8, 12, seed=seed)
    return b.replace(labels=(b.input_ids[:, 1] >= 52).astype(jnp.int32))


def _leaves(state):
    return {
        ".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_leaves_with_path(state)
    }


# The HAT-protected methods (ctr_jax.methods): CTR, B-CL and HAT must protect alike.
VARIANTS = {"ctr": ("transfer", True), "bcl": ("dynamic", True), "hat": (None, True)}
SHARED = {"ctr": ("route", "big_w", "sim_w", "conv_src3_w"), "bcl": ("route", "big_w"), "hat": ()}


def _train_two_tasks(
    method: str, freeze_layernorms: bool = False, ksm_protect: str = "none", cfg=TINY_MODEL
):
    """Trains task 0 then task 1 of a tiny model; returns everything the tests inspect."""
    ksm, use_hat = VARIANTS[method]
    chex.clear_trace_counter()  # the counter is per function code, shared across params
    model = tiny_model(num_classes=(2, 2, 2), cfg=cfg, ksm=ksm, use_hat=use_hat)
    if ksm == "transfer":
        open_router(model)
    graphdef, trainable, frozen = step.split_model(model)
    tx = optim.make_optimizer(TRAIN, optim.decay_mask(trainable))
    fn = step.make_train_step(
        graphdef, tx, HAT, freeze_layernorms=freeze_layernorms, ksm_protect=ksm_protect
    )
    train_step = jax.jit(chex.assert_max_traces(fn, n=1), donate_argnums=(0, 1))
    gates = jax.jit(lambda tr, t: step.task_masks(tr, graphdef, frozen, t, HAT.s_max))
    P, D = 4, 32
    masks = hat.HatMasks.zeros(P, TINY_MODEL.tsm_width, D)
    snapshots = {"init": jax.tree.map(jnp.copy, trainable), "graph": (graphdef, frozen)}
    for t in (0, 1):
        opt_state = tx.init(trainable)
        for i in range(12):
            batch = _learnable_batch(10 * t + i % 3)
            s = (HAT.s_max - 1 / HAT.s_max) * (i % 6) / 6 + 1 / HAT.s_max
            trainable, opt_state, metrics = train_step(
                trainable, opt_state, frozen, batch, jnp.int32(t), jnp.float32(s),
                jnp.float32(TRAIN.lr), masks, jax.random.key(i),
            )  # fmt: skip
        snapshots[t] = (jax.tree.map(jnp.copy, trainable), masks)
        g1, g2 = gates(trainable, jnp.int32(t))
        snapshots[f"gates{t}"] = (np.asarray(g1), np.asarray(g2))
        masks = hat.accumulate(masks, g1, g2)
        # Also fully use the first half of the units, so the protection test below never depends
        # on how many units a 12-step task happened to claim.
        masks = hat.accumulate(
            masks, masks.m1.at[:, : masks.m1.shape[1] // 2].set(1.0), masks.m2.at[:, :16].set(1.0)
        )
    snapshots["method"] = method
    return snapshots, trainable, metrics


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def two_tasks(request):
    return _train_two_tasks(request.param)


def test_protected_tsm_weights_do_not_move_with_weight_decay(two_tasks):
    snapshots, after, _ = two_tasks
    before, _ = snapshots[0]
    masks_after_0 = snapshots[1][1]
    scales = hat.tsm_scales(masks_after_0)
    b, a = before["plugins"], after["plugins"]
    total_protected = 0
    for name in ("w1", "b1", "w2", "b2"):
        scale = np.broadcast_to(np.asarray(scales[name]), a[name][...].shape)
        protected = scale == 0.0
        total_protected += int(protected.sum())
        old, new = np.asarray(b[name][...]), np.asarray(a[name][...])
        np.testing.assert_array_equal(new[protected], old[protected])  # bit-identical
        assert np.any(new[~protected] != old[~protected]), name  # the rest does learn
    assert total_protected > 0


def test_unprotected_shared_parts_move(two_tasks):
    snapshots, after, _ = two_tasks
    before, _ = snapshots[0]
    for name in SHARED[snapshots["method"]]:
        assert np.any(
            np.asarray(after["plugins"][name][...]) != np.asarray(before["plugins"][name][...])
        ), name
    ln_b, ln_a = _leaves(before["encoder"]), _leaves(after["encoder"])
    assert any(np.any(ln_b[k] != ln_a[k]) for k in ln_b)


def _task0_logits(snapshots, trainable) -> np.ndarray:
    """Task 0's eval-mode logits (s = s_max) on fixed batches: [16, 2]."""
    graphdef, frozen = snapshots["graph"]
    model = nnx.merge(graphdef, trainable, frozen)
    out = []
    for seed in (0, 1):
        b = _learnable_batch(seed)
        logits, _ = model(
            b.input_ids, b.token_type_ids, b.attention_mask, jnp.int32(0), jnp.float32(HAT.s_max)
        )
        out.append(np.asarray(logits))
    return np.concatenate(out)


@pytest.mark.parametrize("two_tasks", ["hat"], indirect=True)
def test_frozen_layernorms_leave_hat_nothing_to_forget(two_tasks):
    """train.freeze_layernorms: the LayerNorms never move, and then HAT (whose only other shared
    parameters are masked) gives task 0 the same outputs after task 1. Trained, they move them."""
    snapshots, after, _ = two_tasks
    drift = np.abs(_task0_logits(snapshots, after) - _task0_logits(snapshots, snapshots[0][0]))
    frozen_snaps, frozen_after, _ = _train_two_tasks("hat", freeze_layernorms=True)
    ln_0, ln_1 = _leaves(frozen_snaps["init"]["encoder"]), _leaves(frozen_after["encoder"])
    assert ln_0 and all(np.array_equal(ln_0[k], ln_1[k]) for k in ln_0)  # bit-identical
    p_0, p_1 = _leaves(frozen_snaps["init"]["plugins"]), _leaves(frozen_after["plugins"])
    assert any(np.any(p_0[k] != p_1[k]) for k in p_0)  # the plugins still learn
    frozen_drift = np.abs(
        _task0_logits(frozen_snaps, frozen_after) - _task0_logits(frozen_snaps, frozen_snaps[0][0])
    )
    # Not exactly 0: task 0's gates at s_max are near-binary, not binary, so task 1's updates
    # to the weights of its nearly-closed units still leak in at ~1e-5 (measured 3.6e-5, against
    # 2.8e-2 with the LayerNorms trained).
    assert frozen_drift.max() < 2e-4, frozen_drift.max()
    assert drift.max() > 50 * max(frozen_drift.max(), 1e-7), (drift.max(), frozen_drift.max())


def test_previous_and_future_task_rows_are_frozen(two_tasks):
    snapshots, after, _ = two_tasks
    before, _ = snapshots[0]
    flat_b, flat_a = _leaves(before), _leaves(after)
    leaves = jax.tree_util.tree_leaves(
        after, is_leaf=lambda x: isinstance(x, (CapsuleParam, TaskEmbedding, HeadParam))
    )
    assert leaves
    for key in flat_b:
        if key.startswith("plugins.caps"):
            np.testing.assert_array_equal(flat_a[key][:, 2], flat_b[key][:, 2])  # future task
            assert np.any(flat_a[key][:, 1] != flat_b[key][:, 1])  # current task learns
        if key.startswith(("plugins.e1", "plugins.e2")):
            np.testing.assert_array_equal(flat_a[key][:, 0], flat_b[key][:, 0])  # previous gates
            np.testing.assert_array_equal(flat_a[key][:, 2], flat_b[key][:, 2])
        if key.startswith("head"):
            np.testing.assert_array_equal(flat_a[key][0], flat_b[key][0])  # previous head
            np.testing.assert_array_equal(flat_a[key][2], flat_b[key][2])


def test_future_capsules_get_no_update_even_in_task_0(two_tasks):
    snapshots, _, _ = two_tasks
    after0, _ = snapshots[0]
    ksm, use_hat = VARIANTS[snapshots["method"]]
    fresh = step.split_model(tiny_model(num_classes=(2, 2, 2), ksm=ksm, use_hat=use_hat))[1]
    a, f = _leaves(after0), _leaves(fresh)
    for key in a:
        if key.startswith("plugins.caps"):
            np.testing.assert_array_equal(a[key][:, 1:], f[key][:, 1:])


def test_masks_after_a_task_are_near_binary(two_tasks):
    snapshots, _, _ = two_tasks
    g1, g2 = snapshots["gates0"]
    gates = np.concatenate([g1.ravel(), g2.ravel()])
    frac_mid = np.mean((gates > 0.01) & (gates < 0.99))
    # At init (e ~ N(0, 0.02)) about 43% of gates at s_max are in (0.01, 0.99); 12 annealed steps
    # of a tiny task leave ~3-10% there.
    assert frac_mid < 0.15, frac_mid
    assert 0.0 < np.mean(gates > 0.5) < 1.0


def test_step_is_traced_once_across_tasks(two_tasks):
    # The fixture wraps the step in chex.assert_max_traces(n=1) and ran 2 tasks x 12 steps;
    # reaching here means it compiled once. Its metrics are finite.
    _, _, metrics = two_tasks
    chex.assert_tree_all_finite(metrics)


def test_update_scales_shapes():
    model = tiny_model()
    _, trainable, _ = step.split_model(model)
    masks = hat.HatMasks.zeros(4, TINY_MODEL.tsm_width, 32)
    scales = optim.update_scales(trainable, jnp.int32(1), masks)
    for g, sc in zip(jax.tree.leaves(trainable), jax.tree.leaves(scales), strict=True):
        np.broadcast_shapes(g.shape, sc.shape)  # raises if not broadcastable


def _updates_with_factors(trainable, factors, task_id=1):
    """One protected AdamW update of random gradients for task `task_id`, with per-group
    learning-rate factors (None: the default chain); leaves by dotted path."""
    masks = hat.HatMasks.zeros(4, TINY_MODEL.tsm_width, 32)
    scales = optim.update_scales(trainable, jnp.int32(task_id), masks)
    keys = iter(jax.random.split(jax.random.key(0), 1000))
    grads = jax.tree.map(lambda v: jax.random.normal(next(keys), v.shape), trainable)
    lr = None if factors is None else optim.lr_scales(trainable, factors)
    tx = optim.make_optimizer(TRAIN, optim.decay_mask(trainable), lr)
    u, _ = tx.update(grads, tx.init(trainable), trainable, scales=scales, lr=TRAIN.lr)
    return _leaves(u)


def test_embedding_lr_scale_multiplies_only_the_current_gate_rows():
    """hat.embedding_lr_scale: the task's gate-embedding rows move k times as far (the same
    Adam step, weight decay included); every other leaf moves exactly as with k = 1, and the
    other tasks' rows not at all."""
    _, trainable, _ = step.split_model(tiny_model())
    assert optim.lr_scales(trainable, {"hat_embeddings": 1.0}) is None  # no extra stage
    base = _updates_with_factors(trainable, None)
    scaled = _updates_with_factors(trainable, {"hat_embeddings": 25.0})
    embeddings = {"plugins.e1.value", "plugins.e2.value"}
    assert embeddings <= set(base)
    for k in base:
        if k in embeddings:
            np.testing.assert_allclose(scaled[k], 25.0 * base[k], rtol=1e-6)
            others = np.delete(base[k], 1, axis=1)  # task axis 1: rows of tasks 0 and 2
            assert np.all(others == 0) and np.all(np.delete(scaled[k], 1, axis=1) == 0)
            assert np.abs(base[k][:, 1]).min() > 0
        else:
            np.testing.assert_array_equal(scaled[k], base[k])


@pytest.mark.parametrize("ksm", ["transfer", "dynamic"])
def test_ksm_lr_scale_multiplies_the_knowledge_sharing_module_only(ksm):
    """train.ksm_lr_scale (CTR and B-CL): the capsules and the KSM's shared weights move k
    times as far; future capsule rows stay frozen; the TSM, LayerNorms, gate embeddings and
    heads move exactly as with k = 1."""
    _, trainable, _ = step.split_model(tiny_model(ksm=ksm))
    # The LayerNorms at the shared lr, so that the KSM's factor is the only one off 1.
    cfg = ExperimentConfig(
        method="ctr" if ksm == "transfer" else "bcl", train=TrainConfig(layernorm_lr_scale=1.0)
    )
    factors = optim.lr_factors(
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ksm_lr_scale=8.0))
    )
    assert factors == {"hat_embeddings": 1.0, "ksm": 8.0, "capsules": 8.0, "layernorms": 1.0}
    assert optim.lr_scales(trainable, optim.lr_factors(cfg)) is None  # all 1: no stage
    base = _updates_with_factors(trainable, None)
    scaled = _updates_with_factors(trainable, factors)
    # Every plugin leaf but the TSM's four and the gate embeddings belongs to the KSM.
    unscaled = {"w1", "b1", "w2", "b2", "e1", "e2"}
    moved = {k for k in base if k.startswith("plugins.") and k.split(".")[1] not in unscaled}
    expect = {"route", "big_w", "big_b", "caps_w1", "caps_b1"}
    if ksm == "transfer":  # the similarity CNN and the router
        expect |= {f"conv_{a}{k}_{p}" for a in ("cur", "src") for k in (3, 4, 5) for p in "wb"}
        expect |= {"cur_w", "cur_b", "sim_w", "sim_b", "dec_w", "dec_b"}
    assert {k.split(".")[1] for k in moved} == expect
    for k in base:
        if k in moved:
            np.testing.assert_allclose(scaled[k], 8.0 * base[k], rtol=1e-6)
            assert np.abs(scaled[k]).max() > 0
            if k.split(".")[1].startswith("caps_"):  # task axis 1; task 1 learns: row 2 frozen
                assert np.all(scaled[k][:, 2] == 0) and np.abs(scaled[k][:, 1]).min() > 0
        else:
            np.testing.assert_array_equal(scaled[k], base[k])


def test_layernorm_lr_scale_multiplies_the_layernorms_only():
    """train.layernorm_lr_scale (every method): the layers' LayerNorms move k times as far (the
    same Adam step; they take no weight decay); every other leaf moves exactly as with k = 1."""
    _, trainable, _ = step.split_model(tiny_model())
    cfg = ExperimentConfig()  # 0.05 is the default since session 47
    factors = optim.lr_factors(cfg)
    assert factors["layernorms"] == 0.05
    assert {v for g, v in factors.items() if g != "layernorms"} == {1.0}
    base = _updates_with_factors(trainable, None)
    scaled = _updates_with_factors(trainable, factors)
    norms = {k for k in base if ".attn_norm." in k or ".out_norm." in k}
    assert len(norms) == 8  # scale and bias of both LayerNorms of the tiny encoder's 2 layers
    for k in base:
        if k in norms:
            np.testing.assert_allclose(scaled[k], 0.05 * base[k], rtol=1e-6)
            assert np.abs(base[k]).min() > 0
        else:
            np.testing.assert_array_equal(scaled[k], base[k])


def _protected_updates(trainable, task_id: int, ksm_protect: str) -> dict[str, np.ndarray]:
    """One protected AdamW update (weight decay on) of random gradients; leaves by path."""
    masks = hat.HatMasks.zeros(4, TINY_MODEL.tsm_width, 32)
    scales = optim.update_scales(trainable, jnp.int32(task_id), masks, ksm_protect=ksm_protect)
    keys = iter(jax.random.split(jax.random.key(0), 1000))
    grads = jax.tree.map(lambda v: jax.random.normal(next(keys), v.shape), trainable)
    tx = optim.make_optimizer(TRAIN, optim.decay_mask(trainable))
    u, _ = tx.update(grads, tx.init(trainable), trainable, scales=scales, lr=TRAIN.lr)
    return _leaves(u)


@pytest.mark.parametrize("ksm_protect", ["past", "full"])
@pytest.mark.parametrize("ksm", ["transfer", "dynamic"])
def test_ksm_protect_freezes_earlier_rows_and_shared_weights(ksm, ksm_protect):
    """train.ksm_protect: "past" gives task t's capsules and routing-matrix rows alone an
    update (earlier and future rows: exactly 0, weight decay included); "full" also stops the
    KSM's shared weights after task 0. Nothing outside the module changes."""
    _, trainable, _ = step.split_model(tiny_model(ksm=ksm))
    base = _protected_updates(trainable, 1, "none")
    upd = _protected_updates(trainable, 1, ksm_protect)
    first = _protected_updates(trainable, 0, ksm_protect)
    tsm = {"w1", "b1", "w2", "b2", "e1", "e2"}
    rows = {"caps_w1": 1, "caps_b1": 1, "route": 2}  # leaf -> its task axis
    ksm_leaves = [k for k in base if k.startswith("plugins.") and k.split(".")[1] not in tsm]
    assert {k.split(".")[1] for k in ksm_leaves} >= set(rows) | {"big_w", "big_b"}
    for k in base:
        name = k.split(".")[1] if k.startswith("plugins.") else None
        if name in rows:
            axis = rows[name]
            assert np.all(np.delete(upd[k], 1, axis=axis) == 0), k  # rows of tasks 0 and 2
            assert np.abs(np.take(upd[k], 1, axis=axis)).max() > 0, k
            assert np.abs(np.take(base[k], 0, axis=axis)).max() > 0, k  # "none" moves row 0
            assert np.abs(np.take(first[k], 0, axis=axis)).max() > 0, k
        elif k in ksm_leaves and ksm_protect == "full":
            assert np.all(upd[k] == 0), k
            np.testing.assert_array_equal(first[k], _protected_updates(trainable, 0, "none")[k])
        else:
            np.testing.assert_array_equal(upd[k], base[k])
    with pytest.raises(ValueError, match="ksm_protect.*'shared'"):
        _protected_updates(trainable, 1, "shared")


@pytest.mark.parametrize("ksm_protect", ["none", "past", "full"])
def test_a_per_task_projection_moves_the_current_tasks_row_only(ksm_protect):
    """model.ksm_projection=per_task: whatever train.ksm_protect, task t's W_big and b_big rows
    alone get an update (earlier and future rows: exactly 0, weight decay on), as a head."""
    cfg = dataclasses.replace(TINY_MODEL, ksm_projection="per_task")
    _, trainable, _ = step.split_model(tiny_model(cfg=cfg))
    for task in (0, 1):
        upd = _protected_updates(trainable, task, ksm_protect)
        for name in ("big_w", "big_b"):
            u = upd[f"plugins.{name}.value"]  # [P, T, ...]
            assert u.shape[:2] == (4, 3), u.shape
            assert np.all(np.delete(u, task, axis=1) == 0), (name, task)
            assert np.abs(u[:, task]).max() > 0, (name, task)


@pytest.mark.parametrize("ksm", ["transfer", "dynamic"])
def test_a_per_task_projection_is_read_by_its_task_alone(ksm):
    """model.ksm_projection=per_task: task t's KSM output is its routed capsules through W_big[t]
    plus b_big[t]; another task's projection changes nothing of it."""
    cfg = dataclasses.replace(TINY_MODEL, ksm_projection="per_task")
    plugins = tiny_model(cfg=cfg, ksm=ksm).plugins
    x = jax.random.normal(jax.random.key(3), (2, 12, 32))
    mask = jnp.ones((2, 12)).at[1, 7:].set(0.0)

    def out(t: int) -> np.ndarray:
        return np.asarray(plugins.ksm(1, x, mask, jnp.int32(t), None, False)[0])

    w, b = plugins.big_w[...], plugins.big_b[...]  # [P, T, N*C, D], [P, T, D]
    before = out(1)
    plugins.big_w[...] = w.at[:, 0].multiply(5.0).at[:, 2].set(1.0)
    plugins.big_b[...] = b.at[:, 0].set(2.0).at[:, 2].set(-3.0)
    np.testing.assert_array_equal(out(1), before)
    assert np.abs(out(0) - out(1)).max() > 1e-3
    plugins.big_w[...] = jnp.zeros_like(w)  # only the bias row of the task remains
    plugins.big_b[...] = jnp.zeros_like(b).at[1, :, 0].set(jnp.arange(3.0) + 1.0)
    for t in range(3):
        np.testing.assert_array_equal(out(t)[..., 0], np.full((2, 12), t + 1.0))
        assert np.all(out(t)[..., 1:] == 0)


def _task0_ksm(snapshots, trainable) -> np.ndarray:
    """Every plugin's KSM output for task 0 on a fixed input (no router noise): [P, 2, 12, 32]."""
    graphdef, frozen = snapshots["graph"]
    plugins = nnx.merge(graphdef, trainable, frozen).plugins
    x = jax.random.normal(jax.random.key(7), (2, 12, 32))
    mask = jnp.ones((2, 12)).at[1, 9:].set(0.0)
    outs = [plugins.ksm(p, x, mask, jnp.int32(0), None, False)[0] for p in range(4)]
    return np.stack([np.asarray(o) for o in outs])


@pytest.mark.parametrize("two_tasks", ["bcl", "ctr"], indirect=True)
def test_full_ksm_protection_keeps_an_earlier_tasks_ksm_output(two_tasks):
    """train.ksm_protect=full: after task 1 the knowledge-sharing module gives task 0 bit for bit
    the output it gave after task 0 (its capsule, routing rows and shared weights all frozen;
    weight decay on). With the original's rule ("none") task 1 changes it."""
    snaps_none, after_none, _ = two_tasks
    method = snaps_none["method"]
    change = np.abs(_task0_ksm(snaps_none, after_none) - _task0_ksm(snaps_none, snaps_none[0][0]))
    assert change.max() > 1e-3, change.max()
    snaps, after, _ = _train_two_tasks(method, ksm_protect="full")
    np.testing.assert_array_equal(_task0_ksm(snaps, after), _task0_ksm(snaps, snaps[0][0]))
    b, a = _leaves(snaps[0][0]["plugins"]), _leaves(after["plugins"])
    moved = {k.split(".")[0] for k in b if np.any(a[k] != b[k])}
    # Task 1 still learns: its capsule and routing rows, and the TSM with its gates.
    assert moved == {"caps_w1", "caps_b1", "route", "w1", "b1", "w2", "b2", "e1", "e2"}


def test_full_protection_with_per_task_projections_keeps_earlier_outputs():
    """train.ksm_protect=full with model.ksm_projection=per_task: task 1 trains its own
    projection row (so its module is not silent) while the module gives task 0 bit for bit the
    output it gave after task 0."""
    cfg = dataclasses.replace(TINY_MODEL, ksm_projection="per_task")
    snaps, after, _ = _train_two_tasks("ctr", ksm_protect="full", cfg=cfg)
    np.testing.assert_array_equal(_task0_ksm(snaps, after), _task0_ksm(snaps, snaps[0][0]))
    b, a = _leaves(snaps[0][0]["plugins"]), _leaves(after["plugins"])
    moved = {k.split(".")[0] for k in b if np.any(a[k] != b[k])}
    assert moved == {"caps_w1", "caps_b1", "route", "big_w", "big_b"} | {
        "w1",
        "b1",
        "w2",
        "b2",
        "e1",
        "e2",
    }
    for name in ("big_w", "big_b"):  # [P, T, ...]: row 1 trained, rows 0 and 2 untouched
        key = f"{name}.value"
        np.testing.assert_array_equal(np.delete(a[key], 1, axis=1), np.delete(b[key], 1, axis=1))
        assert np.abs(a[key][:, 1] - b[key][:, 1]).max() > 0


def test_lr_scales_refuses_an_unknown_group():
    _, trainable, _ = step.split_model(tiny_model())
    with pytest.raises(ValueError, match="unknown parameter groups.*'adapter'"):
        optim.lr_scales(trainable, {"adapter": 2.0})


@pytest.mark.parametrize("layers", [1, 2])
def test_trainable_paths_are_pinned(layers):
    cfg = dataclasses.replace(TINY_MODEL, capsule_layers=layers)
    _, trainable, frozen = step.split_model(tiny_model(cfg=cfg))
    paths = sorted(_leaves(trainable))
    plugin = sorted(p for p in paths if p.startswith("plugins."))
    caps = ["caps_w1", "caps_b1", "caps_w2", "caps_b2"][: 2 * layers]
    assert plugin == sorted(
        f"plugins.{n}.value"
        for n in caps + ["route", "cur_w", "cur_b", "sim_w", "sim_b", "dec_w", "dec_b", "big_w",
                         "big_b", "w1", "b1", "w2", "b2", "e1", "e2"]
        + [f"conv_{w}{k}_{p}" for w in ("cur", "src") for k in (3, 4, 5) for p in ("w", "b")]
    )  # fmt: skip
    assert sorted(p for p in paths if p.startswith("head")) == ["head_b.value", "head_w.value"]
    encoder = [p for p in paths if p.startswith("encoder.")]
    assert len(encoder) == 2 * 2 * 2 and all("_norm." in p for p in encoder)
    assert not any("_norm." in p for p in _leaves(frozen))


def test_num_microbatches():
    assert step.num_microbatches(32, 128, None) == 1
    assert step.num_microbatches(32, 64, 2048) == 1
    assert step.num_microbatches(32, 128, 2048) == 2
    assert step.num_microbatches(32, 128, 1000) == 8  # 4 rows x 128 = 512 tokens; 8 rows is 1024
    assert step.num_microbatches(6, 10, 25) == 3


def test_microbatched_gradients_equal_the_whole_batch():
    model = tiny_model(num_classes=(2, 2, 2))
    open_router(model)
    graphdef, trainable, frozen = step.split_model(model)
    batch = random_batch(8, 12)

    def loss_fn(tr, mb, i):  # deterministic (eval mode): a sum over the microbatch's rows
        del i
        logits, _ = nnx.merge(graphdef, tr, frozen)(
            mb.input_ids, mb.token_type_ids, mb.attention_mask, jnp.int32(1), jnp.float32(1.0)
        )
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, mb.labels)
        return jnp.sum(ce * mb.weight) / 8.0, logits

    (l1, _), g1 = jax.jit(lambda tr: step.accumulate_grads(loss_fn, tr, batch, 1))(trainable)
    (l4, aux), g4 = jax.jit(lambda tr: step.accumulate_grads(loss_fn, tr, batch, 4))(trainable)
    assert aux.shape == (4, 2, 2)  # per-microbatch logits, stacked
    np.testing.assert_allclose(float(l4), float(l1), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    assert any(float(jnp.max(jnp.abs(a))) > 0 for a in jax.tree.leaves(g4))


def test_microbatching_cuts_the_step_temp_memory():
    model = tiny_model(num_classes=(2, 2, 2), cfg=TINY_MODEL)
    graphdef, trainable, frozen = step.split_model(model)
    tx = optim.make_optimizer(TRAIN, optim.decay_mask(trainable))
    batch = random_batch(16, 64)
    masks = hat.HatMasks.zeros(4, TINY_MODEL.tsm_width, 32)
    args = (jnp.int32(1), jnp.float32(1.0), jnp.float32(1e-3), masks, jax.random.key(0))

    def temp(max_tokens):
        fn = jax.jit(step.make_train_step(graphdef, tx, HAT, max_tokens=max_tokens))
        compiled = fn.lower(trainable, tx.init(trainable), frozen, batch, *args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    whole, split = temp(None), temp(256)  # 16 x 64 = 1024 tokens -> 4 microbatches of 4 rows
    assert split < 0.6 * whole, (split, whole)


def test_remat_gives_the_same_update_with_less_temp_memory():
    # One full train step (dropout and router noise on): recomputing each layer in the backward
    # pass must reproduce the same random draws, hence the same update.
    batch = random_batch(16, 64)
    masks = hat.HatMasks.zeros(4, TINY_MODEL.tsm_width, 32)
    args = (jnp.int32(1), jnp.float32(1.0), jnp.float32(1e-3), masks, jax.random.key(0))
    out, temp = {}, {}
    for remat in (False, True):
        model = tiny_model(num_classes=(2, 2, 2), cfg=TINY_MODEL)
        open_router(model)
        model.encoder.remat = remat
        graphdef, trainable, frozen = step.split_model(model)
        tx = optim.make_optimizer(TRAIN, optim.decay_mask(trainable))
        fn = jax.jit(step.make_train_step(graphdef, tx, HAT))
        compiled = fn.lower(trainable, tx.init(trainable), frozen, batch, *args).compile()
        temp[remat] = compiled.memory_analysis().temp_size_in_bytes
        out[remat] = compiled(trainable, tx.init(trainable), frozen, batch, *args)
    (tr0, _, m0), (tr1, _, m1) = out[False], out[True]
    np.testing.assert_allclose(float(m1["loss"]), float(m0["loss"]), rtol=1e-6)
    before = _leaves(step.split_model(tiny_model(num_classes=(2, 2, 2), cfg=TINY_MODEL))[1])
    moved = 0
    for name, a in _leaves(tr0).items():
        b = _leaves(tr1)[name]
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=name)
        moved += not np.array_equal(a, before[name])
    assert moved > 0  # the step updated something, so the comparison means something
    assert temp[True] < 0.7 * temp[False], temp
