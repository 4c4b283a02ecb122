"""Replays the training of a run's first task step by step and records what the plugins do.

The loop's training of task 0 (``ctr_jax.training.loop._learn_phase``: the same batches, keys,
learning-rate schedule, HAT scale and optimizer), with, after every step, a probe of the first
dev batch in eval mode. One JSON line per step:

- loss, acc: the step's training CE and accuracy. Their epoch means equal the run's
  metrics.jsonl "epoch" records while the float order is the same: replaying the NCL seed-1 run
  of docs/bing_paper_epochs (made by older code) matched its first 3 epochs to 3 decimals, then
  drifted, and the replay did not blow up where the run did (epoch 6), so the collapse is
  sensitive to rounding (docs/pooling/replay_ncl_o1_s1_pooler.jsonl);
- tsm_over_x: per plugin site ("attn", "ffn") and layer, the RMS of the TSM's output over the RMS
  of the plugin's input (0.1-0.2 at initialisation; above 1 the adapter outweighs the residual
  stream it is added to);
- cls_spread: per-dimension std of the last h[CLS] across the dev examples over its RMS (how
  much of it depends on the example), logit_spread: std across examples of the first two
  logits' difference, preds: how many dev examples each class gets. A collapsed model has
  spreads near 0 and one class for every example.

    .venv/bin/python scripts/collapse_replay.py --config configs/asc_ncl.yaml --epochs 8 \\
        --set seed=1 --set data.order=1 --set data.num_tasks=1
"""

from __future__ import annotations

import argparse
import json
import os

from ctr_jax.runtime import apply_xla_defaults

apply_xla_defaults(os.environ)

import jax  # noqa: E402 (after the XLA flags)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from ctr_jax.config import load_config  # noqa: E402
from ctr_jax.data import batching  # noqa: E402
from ctr_jax.data.tokenize import TextEncoder  # noqa: E402
from ctr_jax.methods import get_method  # noqa: E402
from ctr_jax.models import hat  # noqa: E402
from ctr_jax.models.bert import resolve_backbone  # noqa: E402
from ctr_jax.models.plugins import by_site  # noqa: E402
from ctr_jax.parallel import DataParallel  # noqa: E402
from ctr_jax.training import loop, optim, step  # noqa: E402


def make_probe(graphdef, s_max: float):
    """-> jitted probe(trainable, frozen, batch) for task 0 in eval mode at s_max."""

    @jax.jit
    def probe(trainable, frozen, b):
        model = nnx.merge(graphdef, trainable, frozen)
        tid, s = jnp.int32(0), jnp.float32(s_max)
        logits, _, rec = model(
            b.input_ids, b.token_type_ids, b.attention_mask, tid, s, probe=True
        )  # fmt: skip
        # The encoder again, with the same plugins, for the last hidden states.
        g1, g2 = model.plugins.gates(tid, s)
        nl = model.encoder.config.num_hidden_layers
        mask = b.attention_mask.astype(jnp.float32)

        def plugin(layer, site, x, xs):
            j = ("attn", "ffn").index(site)
            params, a, c = xs
            prm = {name: v[j] for name, v in params.items()}
            return model.plugins(prm, x, mask, tid, a[j], c[j], None, False)

        hidden, _ = model.encoder(
            b.input_ids, b.token_type_ids, b.attention_mask, plugin=plugin,
            plugin_xs=(model.plugins.by_layer(nl), by_site(g1, nl), by_site(g2, nl)),
        )  # fmt: skip
        return logits, rec, hidden[:, 0]

    return probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--epochs", type=int, default=8, help="epochs of task 0 to replay")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    method = get_method(cfg.method)
    tasks = loop.load_tasks(cfg)
    backbone = resolve_backbone(cfg.model.backbone)
    text = TextEncoder(backbone, cfg.data.max_len)
    enc = {split: text.encode(tasks[0].split(split)) for split in ("train", "dev")}

    graphdef, trainable, frozen = loop.build_model(cfg, method, tasks, backbone)
    dp = DataParallel.create(None)
    trainable, frozen = dp.replicate(trainable), dp.replicate(frozen)
    P, _, D = trainable["plugins"]["w2"][...].shape
    masks = dp.replicate(hat.HatMasks.zeros(P, cfg.model.tsm_width, D))
    tx = optim.make_optimizer(cfg.train, optim.decay_mask(trainable))
    train_step = jax.jit(
        step.make_train_step(graphdef, tx, cfg.hat, use_hat=method.hat), donate_argnums=(0, 1)
    )
    probe = make_probe(graphdef, cfg.hat.s_max)
    dev_batch = next(iter(batching.eval_batches(enc["dev"], 128, cfg.train.buckets)))[0]
    real = np.asarray(dev_batch.weight) > 0

    # As loop._run / loop._learn_phase, for task 0 (key index 0).
    train_key = jax.random.fold_in(jax.random.key(cfg.seed), 1)
    bs, s_max = cfg.train.batch_size, cfg.hat.s_max
    per_epoch = batching.num_batches(len(enc["train"]), bs)
    total = per_epoch * loop.epochs_for(cfg, tasks[0].name)
    opt_state = dp.replicate(tx.init(trainable))
    g_step = 0
    for epoch in range(min(args.epochs, total // per_epoch)):
        rng = np.random.default_rng([cfg.seed, 0, epoch])
        ep_key = jax.random.fold_in(jax.random.fold_in(train_key, 0), epoch)
        batches = batching.train_batches(enc["train"], bs, cfg.train.buckets, rng, None)
        for j, batch in enumerate(batches):
            s = (s_max - 1.0 / s_max) * j / per_epoch + 1.0 / s_max
            lr = optim.learning_rate(cfg.train, g_step, total)
            trainable, opt_state, m = train_step(
                trainable, opt_state, frozen, dp.shard(batch), jnp.int32(0), jnp.float32(s),
                jnp.float32(lr), masks, jax.random.fold_in(ep_key, j),
            )  # fmt: skip
            g_step += 1
            logits, rec, cls = probe(trainable, frozen, dev_batch)
            logits, cls = np.asarray(logits)[real], np.asarray(cls)[real]
            ratio = {
                site: np.round(
                    np.asarray(rec[site]["tsm_rms"])[:, real].mean(1)
                    / np.asarray(rec[site]["x_rms"])[:, real].mean(1),
                    3,
                ).tolist()
                for site in ("attn", "ffn")
            }
            c = tasks[0].num_classes
            row = {
                "epoch": epoch,
                "step": g_step,
                "lr": lr,
                "loss": float(m["ce"]),
                "n": float(m["n"]),
                "acc": float(m["correct"] / m["n"]),
                "tsm_over_x": ratio,
                "cls_spread": float(cls.std(0).mean() / np.sqrt(np.mean(cls**2))),
                "logit_spread": float(np.std(logits[:, 0] - logits[:, 1])),
                "preds": np.bincount(logits[:, :c].argmax(1), minlength=c).tolist(),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
