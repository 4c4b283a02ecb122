"""HAT mask maths against hand-computed values."""

import jax.numpy as jnp
import numpy as np

from ctr_jax.models import hat


def test_tsm_scales_follow_spec_rules():
    prev = hat.HatMasks(m1=jnp.array([[1.0, 0.0, 0.25]]), m2=jnp.array([[0.0, 1.0]]))
    s = hat.tsm_scales(prev)
    np.testing.assert_allclose(s["w1"], [[[0.0, 1.0, 0.75]]])  # [P, 1, A]: by output unit
    np.testing.assert_allclose(s["b1"], [[0.0, 1.0, 0.75]])
    # w2[j -> i] *= 1 - min(M1[j], M2[i]); rows j (A = 3), columns i (D = 2).
    np.testing.assert_allclose(s["w2"], [[[1.0, 0.0], [1.0, 1.0], [1.0, 0.75]]])
    np.testing.assert_allclose(s["b2"], [[1.0, 0.0]])


def test_regulariser_and_accumulate():
    zeros = hat.HatMasks.zeros(1, 2, 2)
    m1, m2 = jnp.array([[0.5, 1.0]]), jnp.array([[0.0, 0.5]])
    np.testing.assert_allclose(hat.regulariser(m1, m2, zeros), 2.0 / 4.0)  # mean gate at t = 0
    prev = hat.HatMasks(m1=jnp.array([[1.0, 0.0]]), m2=jnp.array([[0.0, 0.0]]))
    # free = [0, 1] and [1, 1]: used = 1.0 * 1 + 0.0 + 0.5 = 1.5 over 3 free units.
    np.testing.assert_allclose(hat.regulariser(m1, m2, prev), 1.5 / 3.0)
    acc = hat.accumulate(prev, m1, m2)
    np.testing.assert_allclose(acc.m1, [[1.0, 1.0]])
    np.testing.assert_allclose(acc.m2, [[0.0, 0.5]])


def test_gates_and_compensation():
    e = jnp.array([[[0.01, -0.02], [3.0, 0.0]]])  # [P=1, T=2, H=2]
    np.testing.assert_allclose(hat.gates(e, jnp.int32(1), 2.0), [[1 / (1 + np.exp(-6.0)), 0.5]],
                               rtol=1e-6)  # fmt: skip
    x = jnp.array([0.5, -0.01, 2.0])
    s, s_max = 10.0, 400.0
    want = s_max / s * (np.cosh(np.clip(s * x, -50, 50)) + 1) / (np.cosh(x) + 1)
    np.testing.assert_allclose(hat.compensation(x, s, s_max, 50.0), want, rtol=1e-5)


def test_gate_summary_counts_closed_open_and_mid_gates():
    m1 = jnp.array([[0.0, 0.005, 0.5, 0.999]])  # closed, closed, mid, open
    m2 = jnp.array([[1.0, 0.02]])  # open, mid
    got = hat.gate_summary(m1, m2)
    np.testing.assert_allclose([got["closed"], got["open"], got["mid"]], [2 / 6, 2 / 6, 2 / 6])
