"""Optimizer and the per-element protection of task-specific parameters.

The optimizer is AdamW (linear warm-up, then linear decay to 0 over the task's steps) with a
per-tensor gradient clip, built fresh for every task. Protection is an optax transformation,
``protect()``, placed both first and LAST in the chain: the first scales the gradients (so
Adam's moments never see a protected gradient), the last scales the final update, weight decay
included. A weight whose scale is 0 therefore does not move at all, which the original
BertAdam does not guarantee (spec §10.8).

``update_scales`` builds the scale tree for task t from the Variable metadata only
(``variables.py``): HAT leaves get HAT's masks (``hat.tsm_scales``), per-task leaves a row mask
(capsules: rows k <= t; HAT embeddings, heads and a per-task KSM projection: row t only, so
previous tasks' gates and heads are bit-for-bit frozen), the layers' LayerNorms 0 with
``train.freeze_layernorms``, the knowledge-sharing module's earlier rows and shared weights by
``train.ksm_protect``, everything else 1. Learning-rate factors by parameter group
(``lr_scales``: ``hat.embedding_lr_scale``, ``train.ksm_lr_scale``,
``train.layernorm_lr_scale``) act after the learning rate and before the last protection stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ctr_jax.config import ExperimentConfig, TrainConfig
from ctr_jax.models import hat
from ctr_jax.models.variables import (
    GROUPS,
    CapsuleParam,
    HeadParam,
    LayerNormParam,
    TaskEmbedding,
    group_of,
)


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def _meta(v: nnx.Variable, key: str, default=None):
    return v.get_metadata().get(key, default)


def _row_mask(v: nnx.Variable, task_id: jax.Array, upto: bool) -> jax.Array:
    axis = _meta(v, "task_axis")
    value = v[...]
    rows = jnp.arange(value.shape[axis])
    keep = (rows <= task_id) if upto else (rows == task_id)
    shape = [1] * value.ndim
    shape[axis] = value.shape[axis]
    return keep.astype(value.dtype).reshape(shape)


def update_scales(
    trainable: nnx.State,
    task_id: jax.Array,
    masks: hat.HatMasks,
    *,
    all_heads: bool = False,
    freeze_layernorms: bool = False,
    ksm_protect: str = "none",
) -> nnx.State:
    """Per-element update scales for task `task_id`; same tree as `trainable`, leaves broadcast.

    all_heads: every head row gets scale 1 (joint training of all tasks, MTL).
    freeze_layernorms: the layers' LayerNorms get scale 0 (never move; an ablation).
    ksm_protect: "none" (capsule rows k <= t and the KSM's shared weights train, the original's
    rule); "past" (capsules and routing matrices: row t only); "full" ("past", and the KSM's
    other weights only while task_id == 0). See ``config.TrainConfig.ksm_protect``.
    """
    if ksm_protect not in ("none", "past", "full"):
        raise ValueError(f"ksm_protect must be 'none', 'past' or 'full', got {ksm_protect!r}")
    tsm = hat.tsm_scales(masks)
    own_row = ksm_protect != "none"

    def scale(v: nnx.Variable) -> nnx.Variable:
        if isinstance(v, LayerNormParam) and freeze_layernorms:
            return v.replace(jnp.zeros((), v[...].dtype))
        if (role := _meta(v, "hat")) is not None:
            return v.replace(tsm[role])
        if isinstance(v, CapsuleParam):
            return v.replace(_row_mask(v, task_id, upto=not own_row))
        if _meta(v, "own_row"):  # a per-task KSM projection: task t's row alone, as a head
            return v.replace(_row_mask(v, task_id, upto=False))
        if group_of(v) == "ksm" and own_row and _meta(v, "task_axis") is not None:
            return v.replace(_row_mask(v, task_id, upto=False))  # the routing matrices
        if group_of(v) == "ksm" and ksm_protect == "full":
            return v.replace((task_id == 0).astype(v[...].dtype))
        if isinstance(v, HeadParam) and all_heads:
            return v.replace(jnp.ones((), v[...].dtype))
        if isinstance(v, TaskEmbedding | HeadParam):
            return v.replace(_row_mask(v, task_id, upto=False))
        return v.replace(jnp.ones((), v[...].dtype))

    return jax.tree.map(scale, trainable, is_leaf=_is_var)


def decay_mask(trainable: nnx.State) -> nnx.State:
    """True where decoupled weight decay applies (not on biases or LayerNorms)."""

    def mask(v: nnx.Variable) -> nnx.Variable:
        return v.replace(bool(_meta(v, "decay", True)) and not isinstance(v, LayerNormParam))

    return jax.tree.map(mask, trainable, is_leaf=_is_var)


def lr_scales(trainable: nnx.State, factors: Mapping[str, float]) -> nnx.State | None:
    """Static per-leaf learning-rate factors: ``factors[g]`` on the leaves of parameter group g
    (``variables.GROUPS``), 1 elsewhere; None when every factor is 1 (the optimizer then has no
    extra stage)."""
    if unknown := set(factors) - set(GROUPS):
        raise ValueError(f"unknown parameter groups {sorted(unknown)}; known: {list(GROUPS)}")
    if all(f == 1.0 for f in factors.values()):
        return None

    def factor(v: nnx.Variable) -> nnx.Variable:
        return v.replace(float(factors.get(group_of(v), 1.0)))

    return jax.tree.map(factor, trainable, is_leaf=_is_var)


# Learning-rate factors by config key, and the parameter groups each one scales.
LR_SCALE_KEYS: dict[str, tuple[str, ...]] = {
    "hat.embedding_lr_scale": ("hat_embeddings",),
    "train.ksm_lr_scale": ("ksm", "capsules"),
    "train.layernorm_lr_scale": ("layernorms",),
}


def lr_factors(cfg: ExperimentConfig) -> dict[str, float]:
    """The per-group factors the config's ``LR_SCALE_KEYS`` ask for (a method without a group
    refuses a factor other than 1 for it when the config is built, ``config.check_method_keys``)."""
    out: dict[str, float] = {}
    for key, groups in LR_SCALE_KEYS.items():
        section, leaf = key.split(".")
        out.update(dict.fromkeys(groups, float(getattr(getattr(cfg, section), leaf))))
    return out


def scale_leaves(factors: nnx.State) -> optax.GradientTransformation:
    """Multiplies each leaf's update by its static factor (a float per leaf of `factors`)."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, f: u * f, updates, factors), state

    return optax.GradientTransformation(init_fn, update_fn)


def protect() -> optax.GradientTransformationExtraArgs:
    """Multiplies updates elementwise by the `scales` extra argument (a tree like the params)."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, scales, **extra_args):
        del params, extra_args
        return jax.tree.map(lambda u, s: u * s, updates, scales), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class _ClipState(NamedTuple):
    pass


def clip_per_tensor(max_norm: float) -> optax.GradientTransformation:
    """Clips every tensor's own gradient to L2 norm <= max_norm (BertAdam's rule, spec §5.3.5)."""

    def init_fn(params):
        del params
        return _ClipState()

    def update_fn(updates, state, params=None):
        del params

        def clip(g):
            norm = jnp.sqrt(jnp.sum(jnp.square(g)))
            return g * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def learning_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warm-up over `warmup * total_steps`, then linear decay to 0 at `total_steps`.

    Computed on the host and passed to the step as an array, so one compiled step serves every
    task whatever its length.
    """
    warm = max(1, round(cfg.warmup * total_steps))
    if step < warm:
        return cfg.lr * step / warm
    return cfg.lr * max(0.0, (total_steps - step) / max(1, total_steps - warm))


def scale_by_lr() -> optax.GradientTransformationExtraArgs:
    """Multiplies updates by -lr, where `lr` is an extra argument ([] float array)."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, lr, **extra_args):
        del params, extra_args
        return jax.tree.map(lambda u: -lr * u, updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# Adam's epsilon (BertAdam's, spec §11). A parameter whose gradients are far below it moves at a
# fraction of the learning rate: ``ctr_jax.transfer`` reports the KSM's gradients against it.
ADAM_EPS = 1e-6


def make_optimizer(
    cfg: TrainConfig, decay: nnx.State, factors: nnx.State | None = None
) -> optax.GradientTransformationExtraArgs:
    """Protected AdamW. Call `update(grads, state, params, scales=..., lr=...)`.

    factors: per-leaf learning-rate factors (``lr_scales``), applied to the update after the
    learning rate and before the final protection, so a protected element stays put.
    Build the state fresh for every task with `init`: the moments restart at each task.
    """
    stages = [
        protect(),
        clip_per_tensor(cfg.clip_norm),
        optax.scale_by_adam(b1=0.9, b2=0.999, eps=ADAM_EPS),
        optax.add_decayed_weights(cfg.weight_decay, mask=decay),
        scale_by_lr(),
    ]
    if factors is not None:
        stages.append(scale_leaves(factors))
    return optax.chain(*stages, protect())
