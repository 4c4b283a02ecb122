"""The CTR model: frozen BERT + CL-plugins at both insertion points of every layer + task heads.

    logits_t = head_t(dropout(pooler(BERT_with_plugins(x; t, s))))        spec §2

``model.pooling`` can replace the pooler by the mean of the last hidden states or h[CLS]
(``pool``; the default backbone's pooler is untrained, see ``ModelConfig.pooling``).

Heads of all T tasks are stacked ``[T, D, C_max]``; a task with fewer classes than ``C_max``
gets its extra logits masked to a large negative value, so the cross-entropy equals the one of
an ``n_t``-way head and every task runs the same compiled step.

Legend: B batch, L tokens, D encoder width, T task capacity, C_max the largest class count,
P = 2 * num_layers plugins, A TSM width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ctr_jax.config import ModelConfig
from ctr_jax.models.bert import BertEncoder, resolve_pooling
from ctr_jax.models.plugins import CLPlugins, by_site
from ctr_jax.models.variables import Buffer, HeadParam

NEG_INF = -1e9  # logit of a class the task does not have
POOLED_DROPOUT = 0.1


def _dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


POOLINGS = ("pooler", "mean", "cls")


def pool(hidden: jax.Array, pooled: jax.Array, mask: jax.Array, how: str) -> jax.Array:
    """What the heads read: hidden [B, L, D] last hidden states, pooled [B, D] BERT's pooled
    output, mask [B, L] float (1 = real token) -> [B, D] (``ModelConfig.pooling``)."""
    if how == "pooler":
        return pooled
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        n = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0)  # [B, 1]
        return jnp.einsum("bld,bl->bd", hidden, mask) / n
    raise ValueError(f"unknown pooling {how!r}; known: {POOLINGS}")


class CTRClassifier(nnx.Module):
    """Frozen encoder + CL-plugins (CTR or a baseline's) + per-task heads."""

    def __init__(
        self,
        encoder: BertEncoder,
        num_classes: Sequence[int],
        cfg: ModelConfig,
        *,
        ksm: Literal["transfer", "dynamic"] | None = "transfer",
        use_hat: bool = True,
        rngs: nnx.Rngs,
    ):
        """ksm / use_hat pick the method's plugin (``CLPlugins``, ``ctr_jax.methods``)."""
        T, D = len(num_classes), encoder.config.hidden_size
        c_max = max(num_classes)
        self.encoder = encoder
        self.num_plugins = 2 * encoder.config.num_hidden_layers
        self.plugins = CLPlugins(self.num_plugins, D, T, cfg, ksm=ksm, use_hat=use_hat, rngs=rngs)
        bound = 1.0 / D**0.5  # PyTorch's Linear default init (spec §4)
        self.head_w = HeadParam(
            jax.random.uniform(rngs.params(), (T, D, c_max), jnp.float32, -bound, bound),
            task_axis=0,
        )
        self.head_b = HeadParam(
            jax.random.uniform(rngs.params(), (T, c_max), jnp.float32, -bound, bound),
            task_axis=0,
            decay=False,
        )
        valid = np.arange(c_max)[None, :] < np.asarray(num_classes)[:, None]
        self.class_valid = Buffer(jnp.asarray(valid))  # [T, C_max]
        # "auto": the pooling the backbone declares (load_pretrained reads it), else the pooler.
        pooling = resolve_pooling(cfg.pooling, getattr(encoder, "declared_pooling", None))
        if pooling not in POOLINGS:
            raise ValueError(
                f"model.pooling must be one of {(*POOLINGS, 'auto')}, got {cfg.pooling!r}"
            )
        self.pooling = pooling

    def __call__(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array,
        attention_mask: jax.Array,
        task_id: jax.Array,
        s: jax.Array,
        *,
        dropout_key: jax.Array | None = None,
        router_key: jax.Array | None = None,
        straight_through: bool = False,
        head_ids: jax.Array | None = None,
        probe: bool = False,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]] | tuple[jax.Array, tuple, dict]:
        """ids/mask: [B, L] int32, task_id: [] int32, s: [] float.

        head_ids: [B] int32, the head (task) of each example; None = task_id for all (MTL mixes
        tasks in a batch, every other method feeds one task at a time).
        Returns (logits [B, C_max], gates (g1 [P, A], g2 [P, D])). dropout_key None = eval mode;
        router_key None = deterministic router. probe: also return every plugin's probe record
        (``CLPlugins.__call__``) as {"attn": ..., "ffn": ...}, each leaf [num_layers, B, ...].
        """
        g1, g2 = self.plugins.gates(task_id, s)
        mask = attention_mask.astype(jnp.float32)
        enc_key = pool_key = None
        if dropout_key is not None:
            enc_key, pool_key = jax.random.split(dropout_key)

        # The plugins' parameters and gates by layer [NL, 2 sites, ...], for the layer scan.
        NL = self.encoder.config.num_hidden_layers
        plugin_xs = (self.plugins.by_layer(NL), by_site(g1, NL), by_site(g2, NL))

        def plugin(layer: jax.Array, site: str, x: jax.Array, xs) -> jax.Array:
            j = ("attn", "ffn").index(site)
            params, a, b = xs  # this layer's: name -> [2, ...], gates [2, A], [2, D]
            prm = {name: v[j] for name, v in params.items()}
            key = None if router_key is None else jax.random.fold_in(router_key, 2 * layer + j)
            return self.plugins(prm, x, mask, task_id, a[j], b[j], key, straight_through, probe)

        hidden, pooled, *aux = self.encoder(
            input_ids,
            token_type_ids,
            attention_mask,
            dropout_key=enc_key,
            plugin=plugin,
            plugin_xs=plugin_xs,
            plugin_aux=probe,
        )
        pooled = pool(hidden, pooled, mask, self.pooling)  # [B, D]
        pooled = _dropout(pooled, POOLED_DROPOUT, pool_key)
        if head_ids is None:
            head_ids = jnp.full(pooled.shape[:1], task_id, jnp.int32)
        w = jnp.take(self.head_w[...], head_ids, axis=0)  # [B, D, C_max]
        b = jnp.take(self.head_b[...], head_ids, axis=0)  # [B, C_max]
        logits = jnp.einsum("bd,bdc->bc", pooled, w) + b
        valid = jnp.take(self.class_valid[...], head_ids, axis=0)  # [B, C_max]
        logits = jnp.where(valid, logits, NEG_INF)
        return (logits, (g1, g2), aux[0]) if probe else (logits, (g1, g2))
