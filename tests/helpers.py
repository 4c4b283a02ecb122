"""Shared test helpers: tiny-model builders (tiny BERT, tiny CTR plugins), compile counting,
loading a script under scripts/ as a module."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from pathlib import Path
from types import ModuleType

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
    declared_pooling: str | None = None,
):
    """A tiny CTR model; ksm / use_hat select a baseline's plugin (ctr_jax.methods);
    declared_pooling stands for what a loaded backbone folder would declare."""
    encoder = BertEncoder(BertConfig.tiny(), rngs=nnx.Rngs(seed))
    encoder.declared_pooling = declared_pooling
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


@contextlib.contextmanager
def count_compiles(name: str):
    """Collects, inside the block, one entry per lowering of ``jit(name)``: one per miss of a jit
    cache, whether or not the persistent compilation cache then holds the executable. Yields the
    list. (jax logs each lowering at DEBUG, or WARNING with jax_log_compiles.)"""
    logger = logging.getLogger("jax._src.interpreters.pxla")
    seen: list[str] = []
    prefix = f"Compiling jit({name}) "

    class _Collect(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith(prefix):
                seen.append(record.getMessage()[-1500:])  # ends with the argument shardings

    handler = _Collect(logging.DEBUG)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # the argument lists are long; keep them out of pytest's log capture
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as a module (scripts/ is not a package)."""
    path = Path(__file__).parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
