"""Pure, jitted train and eval steps (the NNX functional API).

The model is split once into ``graphdef`` (static), ``trainable`` (everything the method
trains, spec §2) and ``frozen`` (the pretrained encoder and constant buffers). The steps take
the states as arguments and merge inside the trace, so the frozen encoder is an argument, never
a captured constant, and nothing recompiles across tasks: the task id, HAT scale ``s``,
learning rate and accumulated masks are all arrays. One compilation per padded length.

Update order (spec §5.3): loss -> grads -> HAT embedding-gradient compensation -> protected
AdamW (``optim.make_optimizer``: scales grads, clips, Adam, decay, lr, scales the final update)
-> clamp of the HAT embeddings.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from ctr_jax.config import HatConfig
from ctr_jax.models import hat
from ctr_jax.models.variables import (
    CapsuleParam,
    HeadParam,
    LayerNormParam,
    PluginParam,
    TaskEmbedding,
)
from ctr_jax.training import optim

TRAINABLE = nnx.Any(LayerNormParam, PluginParam, CapsuleParam, TaskEmbedding, HeadParam)


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """-> (graphdef, trainable, frozen). Trainability is decided by Variable type only."""
    return nnx.split(model, TRAINABLE, ...)


@struct.dataclass
class Batch:
    """A padded batch. All [B, L] int32 except labels [B] int32 and weight [B] float32.

    weight is 0 for rows that only pad the batch to its fixed size. task_ids [B] int32 is the
    task (head) of each row when a batch mixes tasks (MTL); None = the step's task_id.
    """

    input_ids: jax.Array
    token_type_ids: jax.Array
    attention_mask: jax.Array
    labels: jax.Array
    weight: jax.Array
    task_ids: jax.Array | None = None


def _map_embeddings(fn: Callable, tree: nnx.State, like: nnx.State) -> nnx.State:
    """Applies fn(leaf, param_value) to the leaves of `tree` that are TaskEmbeddings in `like`."""

    def go(t, p):
        return t.replace(fn(t[...], p[...])) if isinstance(p, TaskEmbedding) else t

    return jax.tree.map(go, tree, like, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _weighted_ce(logits: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """-> (sum of weighted CE, number of real rows). logits: [B, C]."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch.labels)  # [B]
    return jnp.sum(ce * batch.weight), jnp.sum(batch.weight)


def num_microbatches(batch_size: int, length: int, max_tokens: int | None) -> int:
    """Smallest k dividing batch_size with (batch_size / k) * length <= max_tokens (1 if None)."""
    if max_tokens is None or batch_size * length <= max_tokens:
        return 1
    for k in range(2, batch_size + 1):
        if batch_size % k == 0 and (batch_size // k) * length <= max_tokens:
            return k
    return batch_size


def accumulate_grads(loss_fn: Callable, params, batch: Batch, k: int):
    """value_and_grad of a loss that is a sum over examples, in k microbatches.

    loss_fn(params, microbatch, i) -> (loss_i, aux_i), with i the microbatch index ([] int32)
    and the batch loss = sum_i loss_i. k == 1 is a plain value_and_grad on the whole batch; k > 1
    scans over the microbatches, so only one microbatch's activations are alive at a time (the
    temp memory of a step is about 1/k), summing gradients. Returns ((loss, aux stacked [k, ...]
    or unstacked when k == 1), grads).
    """
    if k == 1:
        return jax.value_and_grad(loss_fn, has_aux=True)(params, batch, jnp.int32(0))
    mbs = jax.tree.map(lambda x: x.reshape(k, x.shape[0] // k, *x.shape[1:]), batch)

    def body(acc, xs):
        mb, i = xs
        (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, mb, i)
        return jax.tree.map(jnp.add, acc, g), (loss, aux)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, (losses, aux) = jax.lax.scan(body, zeros, (mbs, jnp.arange(k, dtype=jnp.int32)))
    return (jnp.sum(losses), aux), grads


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformationExtraArgs,
    hat_cfg: HatConfig,
    *,
    use_hat: bool = True,
    all_heads: bool = False,
    freeze_layernorms: bool = False,
    ksm_protect: str = "none",
    max_tokens: int | None = None,
) -> Callable:
    """Returns the un-jitted train step (jit it with donate_argnums=(0, 1)).

    use_hat: add the HAT mask regulariser to the loss (methods without HAT have no gates to
    regularise). all_heads: every task's head is trained (MTL), not only task_id's.
    freeze_layernorms: the layers' LayerNorms keep their values (``optim.update_scales``).
    ksm_protect: what of the knowledge-sharing module later tasks may update (the same).
    max_tokens: split a batch of more padded tokens (rows x length) into microbatches whose
    gradients are summed (``accumulate_grads``): the same update up to float summation order
    and dropout draws, with a fraction of the activation memory. None = never split.
    """

    def train_step(
        trainable: nnx.State,
        opt_state: optax.OptState,
        frozen: nnx.State,
        batch: Batch,
        task_id: jax.Array,
        s: jax.Array,
        lr: jax.Array,
        masks: hat.HatMasks,
        key: jax.Array,
    ):
        """One protected update on task `task_id`. Returns (trainable, opt_state, metrics)."""
        dropout_key, router_key = jax.random.split(key)
        k = num_microbatches(batch.input_ids.shape[0], batch.input_ids.shape[1], max_tokens)
        n = jnp.maximum(jnp.sum(batch.weight), 1.0)

        def loss_fn(tr, mb: Batch, i: jax.Array):
            # Microbatch i's share: its CE sum over the batch's rows, and 1/k of the regulariser.
            keys = (dropout_key, router_key)
            if k > 1:
                keys = tuple(jax.random.fold_in(key_, i) for key_ in keys)
            model = nnx.merge(graphdef, tr, frozen)
            logits, (g1, g2) = model(
                mb.input_ids,
                mb.token_type_ids,
                mb.attention_mask,
                task_id,
                s,
                dropout_key=keys[0],
                router_key=keys[1],
                straight_through=True,
                head_ids=mb.task_ids,
            )
            ce_sum, _ = _weighted_ce(logits, mb)
            reg = hat.regulariser(g1, g2, masks) if use_hat else jnp.zeros(())
            return ce_sum / n + hat_cfg.reg_weight * reg / k, (ce_sum, reg, logits)

        (loss, (ce_sum, reg, logits)), grads = accumulate_grads(loss_fn, trainable, batch, k)
        ce = jnp.sum(ce_sum) / n
        reg = jnp.mean(reg)  # the same value in every microbatch
        logits = logits.reshape(-1, logits.shape[-1])
        grads = _map_embeddings(
            lambda g, e: g * hat.compensation(e, s, hat_cfg.s_max, hat_cfg.cosh_clip),
            grads,
            trainable,
        )
        scales = optim.update_scales(
            trainable,
            task_id,
            masks,
            all_heads=all_heads,
            freeze_layernorms=freeze_layernorms,
            ksm_protect=ksm_protect,
        )
        updates, opt_state = tx.update(grads, opt_state, trainable, scales=scales, lr=lr)
        trainable = optax.apply_updates(trainable, updates)
        trainable = _map_embeddings(
            lambda e, _: jnp.clip(e, -hat_cfg.clamp, hat_cfg.clamp), trainable, trainable
        )
        correct = jnp.sum((jnp.argmax(logits, -1) == batch.labels) * batch.weight)
        metrics = {
            "loss": loss,
            "ce": ce,
            "reg": reg,
            "correct": correct,
            "n": jnp.sum(batch.weight),
        }
        return trainable, opt_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, hat_cfg: HatConfig, router_noise: bool) -> Callable:
    """Returns the un-jitted eval step: eval mode at s = s_max (spec §6)."""

    def eval_step(
        trainable: nnx.State,
        frozen: nnx.State,
        batch: Batch,
        task_id: jax.Array,
        key: jax.Array,
    ):
        """-> {"ce_sum": [], "n": [], "preds": [B] int32}."""
        model = nnx.merge(graphdef, trainable, frozen)
        logits, _ = model(
            batch.input_ids,
            batch.token_type_ids,
            batch.attention_mask,
            task_id,
            jnp.float32(hat_cfg.s_max),
            router_key=key if router_noise else None,
            head_ids=batch.task_ids,
        )
        ce_sum, n = _weighted_ce(logits, batch)
        return {"ce_sum": ce_sum, "n": n, "preds": jnp.argmax(logits, -1).astype(jnp.int32)}

    return eval_step


def task_masks(trainable: nnx.State, graphdef: nnx.GraphDef, frozen: nnx.State, task_id, s_max):
    """HAT masks of task `task_id` at s_max: (m1 [P, A], m2 [P, D])."""
    model = nnx.merge(graphdef, trainable, frozen)
    return model.plugins.gates(jnp.asarray(task_id, jnp.int32), jnp.float32(s_max))


def mask_regulariser(trainable, graphdef, frozen, task_id, s_max, masks: hat.HatMasks):
    """The HAT regulariser R at s_max for validation loss (spec §5.4)."""
    g1, g2 = task_masks(trainable, graphdef, frozen, task_id, s_max)
    return hat.regulariser(g1, g2, masks)
