"""Shared tiny-model builders for tests (tiny BERT, tiny CTR plugins)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ctr_jax.config import ModelConfig
from ctr_jax.models.bert import BertConfig, BertEncoder
from ctr_jax.models.classifier import CTRClassifier
from ctr_jax.training.step import Batch

TINY_MODEL = ModelConfig(tsm_width=16, capsule_hidden=8, cnn_filters=4)


def tiny_model(
    num_classes=(3, 2, 2),
    cfg: ModelConfig = TINY_MODEL,
    seed: int = 0,
    ksm: str | None = "transfer",
    use_hat: bool = True,
):
    """A tiny CTR model; ksm / use_hat select a baseline's plugin (ctr_jax.methods)."""
    encoder = BertEncoder(BertConfig.tiny(), rngs=nnx.Rngs(seed))
    return CTRClassifier(
        encoder, list(num_classes), cfg, ksm=ksm, use_hat=use_hat, rngs=nnx.Rngs(seed + 1)
    )


def random_batch(batch: int = 4, length: int = 16, lengths=None, seed: int = 0, classes: int = 2):
    """A Batch of random ids; `lengths` [B] real tokens (default: varied)."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    ids = jax.random.randint(k1, (batch, length), 5, 100)
    if lengths is None:
        lengths = jnp.linspace(length, 3, batch).astype(jnp.int32)
    mask = (jnp.arange(length)[None, :] < jnp.asarray(lengths)[:, None]).astype(jnp.int32)
    return Batch(
        input_ids=ids * mask,
        token_type_ids=jnp.zeros_like(ids),
        attention_mask=mask,
        labels=jax.random.randint(k2, (batch,), 0, classes),
        weight=jnp.ones((batch,), jnp.float32),
    )


def open_router(model) -> None:
    """Biases every task router towards "transfer", so the whole KSM path is live in a test."""
    b = model.plugins.dec_b[...]
    model.plugins.dec_b[...] = b.at[:, 0].set(10.0).at[:, 1].set(-10.0)
