"""Throughput of CTR's jitted train and eval steps on the default backbone (run by hand).

    python benchmarks/bench_ctr.py [--capacity 1 5 10 19] [--lengths 32 64 128] [--steps 5]

Prints a table: compile time, train examples/s (batch 32) and eval examples/s (batch 128) per
task capacity and padded length, on random token ids. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ctr_jax.config import HatConfig, ModelConfig, TrainConfig
from ctr_jax.models import hat
from ctr_jax.models.bert import load_pretrained, resolve_backbone
from ctr_jax.models.classifier import CTRClassifier
from ctr_jax.training import optim, step


def _batch(b: int, length: int, seed: int) -> step.Batch:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(length // 2, length + 1, b)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    return step.Batch(
        input_ids=(rng.integers(1000, 20000, (b, length)) * mask).astype(np.int32),
        token_type_ids=np.zeros((b, length), np.int32),
        attention_mask=mask,
        labels=rng.integers(0, 2, b).astype(np.int32),
        weight=np.ones(b, np.float32),
    )


def bench(capacity: int, lengths: list[int], steps: int, model_cfg: ModelConfig) -> list[dict]:
    encoder = load_pretrained(resolve_backbone(None))
    model = CTRClassifier(encoder, [2] * capacity, model_cfg, rngs=nnx.Rngs(0))
    graphdef, trainable, frozen = step.split_model(model)
    train_cfg, hat_cfg = TrainConfig(), HatConfig()
    tx = optim.make_optimizer(train_cfg, optim.decay_mask(trainable))
    train_step = jax.jit(step.make_train_step(graphdef, tx, hat_cfg), donate_argnums=(0, 1))
    eval_step = jax.jit(step.make_eval_step(graphdef, hat_cfg, False))
    P, D = 2 * encoder.config.num_hidden_layers, encoder.config.hidden_size
    masks = hat.HatMasks.zeros(P, model_cfg.tsm_width, D)
    opt_state = tx.init(trainable)
    tid = jnp.int32(capacity - 1)
    rows = []
    for length in lengths:
        batch = _batch(32, length, 0)
        args = (jnp.float32(1.0), jnp.float32(1e-5), masks)
        t0 = time.perf_counter()
        trainable, opt_state, m = train_step(
            trainable, opt_state, frozen, batch, tid, *args, jax.random.key(0)
        )
        jax.block_until_ready(m)
        compile_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(steps):
            trainable, opt_state, m = train_step(
                trainable, opt_state, frozen, batch, tid, *args, jax.random.key(i)
            )
        jax.block_until_ready(m)
        train_eps = 32 * steps / (time.perf_counter() - t0)
        ebatch = _batch(128, length, 1)
        t0 = time.perf_counter()
        jax.block_until_ready(eval_step(trainable, frozen, ebatch, tid, jax.random.key(0)))
        compile_eval = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(max(1, steps // 2)):
            out = eval_step(trainable, frozen, ebatch, tid, jax.random.key(0))
        jax.block_until_ready(out)
        eval_eps = 128 * max(1, steps // 2) / (time.perf_counter() - t0)
        rows.append(
            dict(capacity=capacity, length=length, compile_train_s=compile_train,
                 train_ex_s=train_eps, compile_eval_s=compile_eval, eval_ex_s=eval_eps)
        )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--capacity", type=int, nargs="+", default=[1, 5, 10, 19])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--tsm-width", type=int, default=2000)
    args = parser.parse_args()
    cfg = ModelConfig(tsm_width=args.tsm_width)
    header = "capacity length compile_train_s train_ex_s compile_eval_s eval_ex_s"
    print(f"devices: {jax.devices()}\n{header}")
    for cap in args.capacity:
        for r in bench(cap, args.lengths, args.steps, cfg):
            print(" ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r.values()))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
