"""CTR's transfer routing in both tensor layouts (model.routing_layout) against a loop reference.

The reference is written from the spec's index formulas (§3.2 for "semantic"; §3.5 and Appendix A
for "torch": which slot, example, capsule and task each flat buffer position holds), one token
and one output entry at a time, so it shares no reshape with ``plugins.transfer_ksm_torch``.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import test_step
from tests.helpers import TINY_MODEL, tiny_model


def _conv_pool(x, w, b, k, pad):
    """max over positions of relu(conv1d(x)). x [L, Cin], w [k * Cin, F] (position-major),
    b [F] -> [F]; zero padding `pad` on both sides, every position pooled."""
    xp = np.pad(x, ((pad, pad), (0, 0)))
    y = np.stack([xp[i : i + k].reshape(-1) @ w for i in range(xp.shape[0] - k + 1)]) + b
    return np.maximum(y, 0.0).max(axis=0)


def _ksm_reference(prm, u, t, kernels, layout):
    """CTR's KSM output [B, L, D] for squashed capsules u [B, L, T, C] (u[b, l, k, c] is the
    spec's U~[b, l, c, k]), deterministic router, task t."""
    prm = {name: np.asarray(v, np.float64) for name, v in prm.items()}
    u = np.asarray(u, np.float64)
    B, L, T, C = u.shape
    route = prm["route"]  # [N, T, C, C]
    N = route.shape[0]
    NC, BL = N * C, B * L
    if layout == "semantic":
        pre = np.einsum("blkc,nkce->nblke", u, route)  # [N, B, L, T, C]

        def phi(b, k):  # Phi_k[b, l, n*C + c] = P[n, b, l, k, c]
            return np.stack([pre[n, b, :, k, :] for n in range(N)], axis=1).reshape(L, NC)
    else:
        # Slot a, dim d of token (b, l) holds U~[b, l, c, k] with c * T + k = a * C + d.
        slots = np.empty_like(u)
        for a in range(T):
            for d in range(C):
                c, k = divmod(a * C + d, T)
                slots[:, :, a, d] = u[:, :, k, c]
        pre = np.einsum("blad,nade->nblae", slots, route).reshape(N, BL, T, C)  # i = b * L + l

        def phi(b, a):  # slot a's [N, B*L, C] buffer read as [B, L, N*C]
            out = np.empty((L, NC))
            for pos in range(L):
                for m in range(NC):
                    n, rest = divmod((b * L + pos) * NC + m, BL * C)
                    out[pos, m] = pre[n, rest // C, a, rest % C]
            return out

    z = np.empty((B, T, len(kernels) * prm["cur_b"].shape[0]))
    for b in range(B):
        code = np.concatenate(
            [
                _conv_pool(phi(b, t), prm[f"conv_cur{k}_w"], prm[f"conv_cur{k}_b"], k, k - 2)
                for k in kernels
            ]
        )
        cur = code @ prm["cur_w"] + prm["cur_b"]
        for a in range(T):
            z[b, a] = np.concatenate(
                [
                    _conv_pool(phi(b, a), prm[f"conv_src{k}_w"], prm[f"conv_src{k}_b"] + cur, k, 0)
                    for k in kernels
                ]
            )
    sim = z @ prm["sim_w"] + prm["sim_b"]  # [B, T, N*C]
    logits = z @ prm["dec_w"] + prm["dec_b"]  # [B, T, 2]
    delta = (logits[..., 0] >= logits[..., 1]).astype(np.float64)  # [B, T]
    h = np.zeros((B, L, NC))
    for b in range(B):
        for pos in range(L):
            for m in range(NC):
                if layout == "semantic":
                    n, c = divmod(m, C)
                    h[b, pos, m] = sum(
                        sim[b, a, m] * delta[b, a] * pre[n, b, pos, a, c] for a in range(t + 1)
                    )
                    continue
                n, rest = divmod((b * L + pos) * NC + m, BL * C)  # A9: h is v's buffer
                i, c = divmod(rest, C)
                total = 0.0
                for a in range(t + 1):
                    # A7: sim [B, N*C, T] tiled over L * B rows (row r = example r mod B) and
                    # read as [N, B*L, T, C]; the gate of token i is example i mod B's.
                    g = ((n * BL + i) * T + a) * C + c
                    r, m_src, k_src = g // (T * NC), (g // T) % NC, g % T
                    total += sim[r % B, k_src, m_src] * delta[i % B, a] * pre[n, i, a, c]
                h[b, pos, m] = total
    return h @ prm["big_w"] + prm["big_b"], delta


def _model(layout):
    model = tiny_model(cfg=dataclasses.replace(TINY_MODEL, routing_layout=layout))
    plugins = model.plugins
    # Capsules of unit scale and a router bias that centres the logit margins, so the routing
    # depends on the inputs and some gates open and some close (checked below).
    plugins.caps_w1[...] = 30.0 * plugins.caps_w1[...]
    plugins.dec_b[...] = jnp.zeros_like(plugins.dec_b[...]).at[:, 0].set(-0.3)
    # The KSM is ~1e-6 of its input at init; scale it up so it stands above float error.
    plugins.big_w[...] = 1e4 * plugins.big_w[...]
    return model


@pytest.mark.parametrize("layout", ["semantic", "torch"])
def test_transfer_routing_matches_the_spec_reference(layout):
    model = _model(layout)
    plugins = model.plugins
    B, L = 3, 7
    x = jax.random.normal(jax.random.key(3), (B, L, 32))
    mask = jnp.ones((B, L), jnp.float32)
    prm = plugins._params(1)
    gates = []
    for t in (0, 2):
        out, record = plugins.ksm(prm, x, mask, jnp.int32(t), None, False)
        u = plugins.task_capsules(prm, x, jnp.int32(t))
        ref, delta = _ksm_reference(prm, u, t, TINY_MODEL.cnn_kernels, layout)
        scale = float(np.max(np.abs(ref - np.asarray(prm["big_b"]))))
        assert scale > 0.0
        np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-4 * scale)
        causal = np.arange(delta.shape[1]) <= t
        np.testing.assert_array_equal(np.asarray(record["route"]), delta * causal)
        gates.append(delta[:, causal])
    gates = np.concatenate([g.ravel() for g in gates])
    assert 0.0 < gates.mean() < 1.0  # both branches of the router were exercised


@pytest.mark.parametrize("layout,mixes", [("semantic", False), ("torch", True)])
def test_only_the_torch_layout_mixes_the_examples_of_a_batch(layout, mixes):
    """The original's reshapes feed example 0's output from other examples (spec §3.5)."""
    model = _model(layout)
    x = jax.random.normal(jax.random.key(4), (4, 6, 32))
    mask = jnp.ones((4, 6), jnp.float32)
    other = x.at[1:].set(jax.random.normal(jax.random.key(5), (3, 6, 32)))
    a = model.plugins.ksm(1, x, mask, jnp.int32(2), None, False)[0]
    b = model.plugins.ksm(1, other, mask, jnp.int32(2), None, False)[0]
    moved = float(jnp.max(jnp.abs(a[0] - b[0])))
    assert (moved > 1e-3 * float(jnp.max(jnp.abs(a[0])))) == mixes


def test_torch_layout_trains_and_is_protected_like_the_semantic_one():
    """Two tasks through the real train step: the protection checks of test_step hold."""
    cfg = dataclasses.replace(TINY_MODEL, routing_layout="torch")
    trained = test_step._train_two_tasks("ctr", cfg=cfg)
    assert np.isfinite(float(trained[2]["loss"]))
    test_step.test_protected_tsm_weights_do_not_move_with_weight_decay(trained)
    test_step.test_unprotected_shared_parts_move(trained)
