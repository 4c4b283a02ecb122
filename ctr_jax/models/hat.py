"""HAT (hard attention to the task) mask maths, as pure functions.

CTR's task-specific module (TSM) is a HAT-gated MLP (spec §3.4, §5). All P = 2 * num_layers
plugins keep their TSM weights stacked on a leading plugin axis, so the whole protection is a
handful of broadcasts over four leaves instead of a walk over 24 modules:

    gate of task t      m = sigmoid(s * e[:, t])                    e: [P, T, H]   -> [P, H]
    regulariser         R = sum(m * (1 - M)) / sum(1 - M)           M: accumulated masks [P, H]
    update scales       W1 [P, D, A]: 1 - M1[:, None, :]            b1 [P, A]: 1 - M1
                        W2 [P, A, D]: 1 - min(M1[:, :, None], M2[:, None, :])
                        b2 [P, D]:    1 - M2
    compensation        grad_e *= s_max / s * (cosh(clip(s e)) + 1) / (cosh(e) + 1)
    after a task        M <- max(M, sigmoid(s_max * e[:, t]))

Legend: P plugins, T task capacity, D encoder width, A TSM width, H = A or D.
With M = 0 (before the first task ends) every scale is 1 and R is the mean gate, which is
exactly spec §5.1's t = 0 case, so no branch on the task index is needed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class HatMasks:
    """Accumulated masks of all tasks learned so far (spec §5.5). Zeros before the first task."""

    m1: jax.Array  # [P, A]
    m2: jax.Array  # [P, D]

    @classmethod
    def zeros(cls, num_plugins: int, tsm_width: int, d_model: int) -> HatMasks:
        return cls(
            m1=jnp.zeros((num_plugins, tsm_width), jnp.float32),
            m2=jnp.zeros((num_plugins, d_model), jnp.float32),
        )


def gates(e: jax.Array, task_id: jax.Array, s: jax.Array) -> jax.Array:
    """Gate of task `task_id` at temperature `s`. e: [P, T, H] -> [P, H]."""
    return jax.nn.sigmoid(s * jnp.take(e, task_id, axis=1))


def regulariser(m1: jax.Array, m2: jax.Array, prev: HatMasks) -> jax.Array:
    """Capacity penalty over all gates (spec §5.1). m1: [P, A], m2: [P, D] -> []."""
    free1, free2 = 1.0 - prev.m1, 1.0 - prev.m2
    used = jnp.sum(m1 * free1) + jnp.sum(m2 * free2)
    return used / (jnp.sum(free1) + jnp.sum(free2))


def accumulate(prev: HatMasks, m1: jax.Array, m2: jax.Array) -> HatMasks:
    """Elementwise max of the accumulated masks and a finished task's masks at s_max."""
    return HatMasks(m1=jnp.maximum(prev.m1, m1), m2=jnp.maximum(prev.m2, m2))


def gate_summary(m1: jax.Array, m2: jax.Array, tol: float = 0.01) -> dict[str, float]:
    """Fractions of a task's gates (m1 [P, A], m2 [P, D], at s_max) that are closed (<= tol),
    open (>= 1 - tol) and in between. HAT protects a weight fully only where an earlier task's
    gate is open, and passes an old task nothing only where its gate is closed, so "mid" is
    the share of units where protection and isolation are partial."""
    g = jnp.concatenate([m1.ravel(), m2.ravel()])
    closed = float(jnp.mean(g <= tol))
    open_ = float(jnp.mean(g >= 1.0 - tol))
    return {"closed": closed, "open": open_, "mid": 1.0 - closed - open_}


def tsm_scales(prev: HatMasks) -> dict[str, jax.Array]:
    """Per-element update scales of the TSM leaves (spec §5.3.2), broadcastable to them."""
    return {
        "w1": (1.0 - prev.m1)[:, None, :],  # [P, 1, A]
        "b1": 1.0 - prev.m1,  # [P, A]
        "w2": 1.0 - jnp.minimum(prev.m1[:, :, None], prev.m2[:, None, :]),  # [P, A, D]
        "b2": 1.0 - prev.m2,  # [P, D]
    }


def compensation(e: jax.Array, s: jax.Array, s_max: float, cosh_clip: float) -> jax.Array:
    """Gradient factor for embeddings e (any shape) that undoes the annealing of s (HAT §2.5)."""
    num = jnp.cosh(jnp.clip(s * e, -cosh_clip, cosh_clip)) + 1.0
    return (s_max / s) * num / (jnp.cosh(e) + 1.0)
