"""CL-plugin and CTR classifier: shapes, identity, padding invariance, capsule masking, router."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

from ctr_jax.models import plugins
from tests.helpers import TINY_MODEL, open_router, random_batch, tiny_model


def _forward(model, batch, task_id, s=400.0, **kw):
    return model(
        batch.input_ids, batch.token_type_ids, batch.attention_mask, jnp.int32(task_id),
        jnp.float32(s), **kw,
    )  # fmt: skip


class PluginShapesTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((3, 16))
    def test_plugin_and_classifier_shapes(self, batch, length):
        model = tiny_model()
        graphdef, state = nnx.split(model)
        b = random_batch(batch, length)
        T, P, A, D = 3, 4, TINY_MODEL.tsm_width, 32

        def apply(state, b):
            m = nnx.merge(graphdef, state)
            x = jnp.ones((batch, length, D))
            mask = b.attention_mask.astype(jnp.float32)
            caps = m.plugins.task_capsules(0, x, jnp.int32(1))
            ksm = m.plugins.ksm(0, x, mask, jnp.int32(1), None, False)[0]
            g1, g2 = m.plugins.gates(jnp.int32(1), jnp.float32(400.0))
            out = m.plugins(1, x, mask, jnp.int32(1), g1[1], g2[1], None, False)
            logits, gates = _forward(m, b, 1)
            return caps, ksm, out, logits, gates

        caps, ksm, out, logits, (g1, g2) = self.variant(apply)(state, b)
        chex.assert_shape(caps, (batch, length, T, TINY_MODEL.capsule_dim))
        chex.assert_shape([ksm, out], (batch, length, D))
        chex.assert_shape(logits, (batch, 3))
        chex.assert_shape(g1, (P, A))
        chex.assert_shape(g2, (P, D))
        chex.assert_tree_all_finite((caps, ksm, out, logits, g1, g2))


def test_zero_tsm_output_gives_the_frozen_encoder():
    model = tiny_model()
    model.plugins.w2[...] = jnp.zeros_like(model.plugins.w2[...])
    model.plugins.b2[...] = jnp.zeros_like(model.plugins.b2[...])
    b = random_batch(3, 12)
    calls = []

    def spy(layer, site, x, xs):
        calls.append(site)  # traced once per site: the layers run as one scan
        return x

    hidden_plain, pooled_plain = model.encoder(b.input_ids, b.token_type_ids, b.attention_mask)
    _, pooled_spy = model.encoder(b.input_ids, b.token_type_ids, b.attention_mask, plugin=spy)
    logits, _ = _forward(model, b, 1)
    w, bias = model.head_w[...][1], model.head_b[...][1]
    chex.assert_trees_all_close(logits[:, :2], pooled_plain @ w[:, :2] + bias[:2], atol=1e-6)
    chex.assert_trees_all_close(pooled_spy, pooled_plain)
    assert calls == ["attn", "ffn"]
    # The extra class of a 2-class task is masked out.
    assert float(jnp.max(logits[:, 2])) < -1e8


@pytest.mark.parametrize("pooling", ["pooler", "mean", "cls"])
def test_heads_read_what_model_pooling_names(pooling):
    """With identity plugins, the logits are the head applied to the pooler's output, the mean of
    the last hidden states over real tokens (by hand), or h[CLS]."""
    model = tiny_model(cfg=dataclasses.replace(TINY_MODEL, pooling=pooling))
    model.plugins.w2[...] = jnp.zeros_like(model.plugins.w2[...])
    model.plugins.b2[...] = jnp.zeros_like(model.plugins.b2[...])
    b = random_batch(3, 12, lengths=jnp.array([12, 5, 2]))
    hidden, pooled = model.encoder(b.input_ids, b.token_type_ids, b.attention_mask)
    hidden = np.asarray(hidden)
    expected = {
        "pooler": np.asarray(pooled),
        "mean": np.stack([hidden[i, :n].mean(0) for i, n in enumerate((12, 5, 2))]),
        "cls": hidden[:, 0],
    }[pooling]
    logits, _ = _forward(model, b, 1)
    w, bias = np.asarray(model.head_w[...][1]), np.asarray(model.head_b[...][1])
    np.testing.assert_allclose(np.asarray(logits[:, :2]), expected @ w[:, :2] + bias[:2], atol=1e-5)


@pytest.mark.parametrize("declared,expected", [(None, "pooler"), ("mean", "mean"), ("cls", "cls")])
def test_auto_pooling_reads_what_the_backbone_declares(declared, expected):
    auto = dataclasses.replace(TINY_MODEL, pooling="auto")
    assert tiny_model(cfg=auto, declared_pooling=declared).pooling == expected
    # An explicit choice is kept whatever the backbone declares.
    pooler = dataclasses.replace(TINY_MODEL, pooling="pooler")
    assert tiny_model(cfg=pooler, declared_pooling=declared).pooling == "pooler"


def test_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="model.pooling"):
        tiny_model(cfg=dataclasses.replace(TINY_MODEL, pooling="max"))


def test_nonzero_plugins_change_the_output():
    model = tiny_model()
    w2 = model.plugins.w2  # a unit-scale TSM, so its effect does not hang on the init draw
    w2[...] = jax.random.normal(jax.random.key(1), w2[...].shape)
    b = random_batch(3, 12)
    _, pooled_plain = model.encoder(b.input_ids, b.token_type_ids, b.attention_mask)
    logits, _ = _forward(model, b, 0)
    plain = pooled_plain @ model.head_w[...][0] + model.head_b[...][0]
    assert float(jnp.max(jnp.abs(logits - plain))) > 1e-4


@pytest.mark.parametrize("ksm,pooling", [("transfer", "pooler"), ("dynamic", "pooler"),
                                         ("transfer", "mean")])  # fmt: skip
def test_padding_never_changes_a_result(ksm, pooling):
    """The same examples padded to the shortest bucket (32) and to 128: the same logits."""
    model = tiny_model(ksm=ksm, cfg=dataclasses.replace(TINY_MODEL, pooling=pooling))
    if ksm == "transfer":
        open_router(model)
    # The KSM is ~1e-6 of its input at init; scale it up so it matters at the tolerance below.
    model.plugins.big_w[...] = 1e4 * model.plugins.big_w[...]
    lengths = jnp.array([32, 7, 4, 3])
    short = random_batch(4, 32, lengths=lengths)
    pad = 128 - 32
    padded = short.replace(
        input_ids=jnp.pad(short.input_ids, ((0, 0), (0, pad))),
        token_type_ids=jnp.pad(short.token_type_ids, ((0, 0), (0, pad))),
        attention_mask=jnp.pad(short.attention_mask, ((0, 0), (0, pad))),
    )
    for task in (0, 2):
        a, _ = _forward(model, short, task)
        b, _ = _forward(model, padded, task)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_ksm_ignores_whatever_sits_in_padding():
    # Padded positions may hold anything (their hidden states depend on the bucket); the KSM
    # output at real tokens must not see them: not through the CNN windows, not via the max-pool.
    model = tiny_model()
    open_router(model)
    x = jax.random.normal(jax.random.key(1), (2, 6, 32))
    garbage = 100.0 * jax.random.normal(jax.random.key(2), (2, 10, 32))
    mask_short = jnp.array([[1] * 6, [1] * 4 + [0] * 2], jnp.float32)
    mask_long = jnp.pad(mask_short, ((0, 0), (0, 10)))
    x_long = jnp.concatenate([x, garbage], axis=1).at[1, 4:6].set(garbage[1, :2])
    for task in (0, 2):
        short = model.plugins.ksm(0, x, mask_short, jnp.int32(task), None, False)[0]
        long = model.plugins.ksm(0, x_long, mask_long, jnp.int32(task), None, False)[0]
        scale = float(jnp.max(jnp.abs(short - model.plugins.big_b[...][0])))
        assert scale > 0.0
        np.testing.assert_allclose(short[0], long[0, :6], rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(short[1, :4], long[1, :4], rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("layers", [1, 2])
def test_future_capsules_take_no_part(layers):
    cfg = dataclasses.replace(TINY_MODEL, capsule_layers=layers)
    model = tiny_model(cfg=cfg)
    open_router(model)
    b = random_batch(2, 10)
    before, _ = _forward(model, b, 1)
    # Perturb the capsules and routing weights of task 2 (a future task for t = 1).
    names = ("caps_w1", "caps_b1", "caps_w2", "caps_b2")[: 2 * layers]
    for name in names:
        v = getattr(model.plugins, name)
        v[...] = v[...].at[:, 2].add(1.0)
    model.plugins.route[...] = model.plugins.route[...].at[:, :, 2].add(1.0)
    after, _ = _forward(model, b, 1)
    chex.assert_trees_all_close(before, after, atol=0.0, rtol=0.0)
    changed, _ = _forward(model, b, 2)
    fresh = tiny_model(cfg=cfg)
    open_router(fresh)
    assert not np.allclose(np.asarray(changed), np.asarray(_forward(fresh, b, 2)[0]))


@pytest.mark.parametrize("layers", [1, 2])
def test_task_capsules_match_the_spec_formula(layers):
    # spec §3.1: f_k(x) = x W_k + b_k (1 layer) or (x W1_k + b1_k) W2_k + b2_k (2 layers, no
    # nonlinearity); future tasks are zero; squash over the task axis per (token, dim).
    cfg = dataclasses.replace(TINY_MODEL, capsule_layers=layers)
    model = tiny_model(cfg=cfg)
    pl = model.plugins
    for name in ("caps_b1", "caps_b2"):  # non-zero biases, so they are checked too
        if hasattr(pl, name):
            v = getattr(pl, name)
            v[...] = 0.1 * jax.random.normal(jax.random.key(3), v[...].shape)
    x = jax.random.normal(jax.random.key(0), (2, 5, 32))
    got = np.asarray(pl.task_capsules(1, x, jnp.int32(1)))  # plugin 1, task 1 of 3
    xn = np.asarray(x, np.float64)
    w1, b1 = np.asarray(pl.caps_w1[...][1], np.float64), np.asarray(pl.caps_b1[...][1], np.float64)
    u = np.zeros((2, 5, 3, cfg.capsule_dim))
    for k in range(2):  # tasks 0 and 1; task 2 is in the future
        h = xn @ w1[k] + b1[k]
        if layers == 2:
            h = h @ np.asarray(pl.caps_w2[...][1, k], np.float64) + np.asarray(
                pl.caps_b2[...][1, k], np.float64
            )
        u[:, :, k] = h
    q = np.sum(u**2, axis=2, keepdims=True) + 1e-16
    want = q / (1 + q) * u / np.sqrt(q)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert pl.caps_w1[...].shape[-1] == (cfg.capsule_dim if layers == 1 else cfg.capsule_hidden)


def test_squash_over_tasks_bounds_the_norm():
    model = tiny_model()
    x = 5.0 * jax.random.normal(jax.random.key(0), (2, 6, 32))
    caps = model.plugins.task_capsules(0, x, jnp.int32(2))  # [B, L, T, C]
    norms = jnp.sqrt(jnp.sum(caps**2, axis=2))  # over the task axis
    assert float(jnp.max(norms)) < 1.0
    caps_t0 = model.plugins.task_capsules(0, x, jnp.int32(0))
    assert float(jnp.max(jnp.abs(caps_t0[:, :, 1:]))) == 0.0  # future tasks are zero


def test_hard_gumbel_gate():
    logits = jnp.array([[2.0, -1.0], [-3.0, 0.5], [0.0, 0.0]])
    det = plugins.hard_gumbel_gate(logits, None, 1.0, straight_through=False)
    np.testing.assert_array_equal(np.asarray(det), [1.0, 0.0, 1.0])
    noisy = [plugins.hard_gumbel_gate(logits, jax.random.key(i), 1.0, False) for i in range(200)]
    noisy = np.stack([np.asarray(n) for n in noisy])
    assert set(np.unique(noisy)) <= {0.0, 1.0}
    # P(transfer) = softmax(logits)[0] for the Gumbel-max trick: ~0.95, ~0.03, 0.5.
    np.testing.assert_allclose(noisy.mean(0), jax.nn.softmax(logits)[:, 0], atol=0.1)
    grad = jax.grad(lambda z: jnp.sum(plugins.hard_gumbel_gate(z, jax.random.key(0), 1.0, True)))(
        logits
    )
    assert float(jnp.max(jnp.abs(grad))) > 0.0  # straight-through gives a soft gradient


def _crm_reference(win, kernel, bias, valid):
    y = jnp.einsum("btlw,twf->btlf", win, kernel) + bias[:, None, None, :]
    return jnp.max(jax.nn.relu(y) * valid[:, None, :, None], axis=2)


def test_conv_relu_maxpool_matches_autodiff():
    from ctr_jax.models.plugins import conv_relu_maxpool

    k = jax.random.split(jax.random.key(3), 4)
    win = jax.random.normal(k[0], (4, 5, 7, 6))  # [B, T, L', W]
    kernel = jax.random.normal(k[1], (5, 6, 3))  # [T, W, F]
    bias = jax.random.normal(k[2], (4, 3)) - 1.0  # [B, F]; some channels die everywhere
    # The last example has no valid position (a text shorter than the kernel): output 0.
    valid = jnp.arange(7)[None, :] < jnp.array([7, 4, 1, 0])[:, None]
    w = jax.random.normal(k[3], (4, 5, 3))
    ours = conv_relu_maxpool(win, kernel, bias, valid)
    ref = _crm_reference(win, kernel, bias, valid)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-6)
    assert np.any(np.asarray(ref) == 0.0) and np.any(np.asarray(ref) > 0.0)

    def loss(fn):
        return lambda a, b, c: jnp.sum(w * fn(a, b, c, valid))

    g_ours = jax.grad(loss(conv_relu_maxpool), argnums=(0, 1, 2))(win, kernel, bias)
    g_ref = jax.grad(loss(_crm_reference), argnums=(0, 1, 2))(win, kernel, bias)
    for a, b in zip(g_ours, g_ref, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert np.all(np.asarray(g_ours[0])[2, :, 1:] == 0.0)  # masked positions get no gradient
    assert np.all(np.asarray(ours)[3] == 0.0) and np.all(np.asarray(g_ours[0])[3] == 0.0)
    assert np.all(np.isfinite(np.asarray(g_ours[1])))


@pytest.mark.parametrize("std", [0.02, 1.0])
def test_hat_embedding_std_sets_only_the_gate_embeddings(std):
    model = tiny_model(cfg=dataclasses.replace(TINY_MODEL, hat_embedding_std=std))
    p = model.plugins
    for e in (p.e1[...], p.e2[...]):
        assert abs(float(jnp.std(e)) / std - 1.0) < 0.15
    # The TSM weights keep BERT's 0.02 whatever the gates' init.
    assert abs(float(jnp.std(p.w1[...])) / 0.02 - 1.0) < 0.15
    # At s_max, N(0, 1) embeddings start with almost every gate binary; N(0, 0.02) with most
    # gates in between (|400 e| < 4.6 for |e| < 0.0115, i.e. 44% of N(0, 0.02) draws).
    g1, g2 = p.gates(jnp.int32(0), jnp.float32(400.0))
    g = jnp.concatenate([g1.ravel(), g2.ravel()])
    mid = float(jnp.mean((g > 0.01) & (g < 0.99)))
    assert (mid < 0.05) if std == 1.0 else (mid > 0.3)
