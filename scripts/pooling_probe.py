"""What the task heads would read from the frozen backbone under each ``model.pooling``.

No plugins, no training: for every task of the stream, the features of its train and test
examples under "pooler" (BERT's pooled output), "cls" (h[CLS]) and "mean" (mean of the last
hidden states over real tokens). Per task and pooling it prints one JSON line:

- rms: RMS of the train features; spread: the per-dimension std across train examples, averaged
  over dimensions (the part of the signal that differs between examples);
- probe_acc, probe_mf1: a linear probe (multinomial logistic regression on standardised features,
  L2 1e-2, L-BFGS) trained on train, scored on test. Standardising removes the scale, so the
  probe asks whether the information is there, not how loud it is.

    .venv/bin/python scripts/pooling_probe.py --set data.order=1 --set data.num_tasks=4
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
from scipy.optimize import minimize  # noqa: E402

from ctr_jax import metrics  # noqa: E402
from ctr_jax.config import load_config  # noqa: E402
from ctr_jax.data import batching  # noqa: E402
from ctr_jax.data.tokenize import Encoded, TextEncoder  # noqa: E402
from ctr_jax.models.bert import BertEncoder, load_pretrained, resolve_backbone  # noqa: E402
from ctr_jax.models.classifier import POOLINGS, pool  # noqa: E402
from ctr_jax.training import loop  # noqa: E402

L2 = 1e-2


def features(encoder: BertEncoder, enc: Encoded) -> dict[str, np.ndarray]:
    """-> {pooling: [N, D]} for the N examples of `enc`."""

    @jax.jit
    def run(ids, types, mask):
        hidden, pooled = encoder(ids, types, mask)
        m = mask.astype(jnp.float32)
        return {how: pool(hidden, pooled, m, how) for how in POOLINGS}

    d = encoder.config.hidden_size
    out = {how: np.zeros((len(enc), d), np.float32) for how in POOLINGS}
    for batch, idx in batching.eval_batches(enc, 64, [32, 64, 128]):
        f = run(batch.input_ids, batch.token_type_ids, batch.attention_mask)
        for how in POOLINGS:
            out[how][idx] = np.asarray(f[how])[: len(idx)]
    return out


def linear_probe(x_train, y_train, x_test, num_classes: int) -> np.ndarray:
    """Logistic regression on standardised features -> test predictions [N_test]."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-8
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    n, d = x_train.shape
    rows = np.arange(n)

    def loss_and_grad(w):
        W = w.reshape(d + 1, num_classes)
        z = x_train @ W[:-1] + W[-1]
        z = z - z.max(1, keepdims=True)
        lse = np.log(np.exp(z).sum(1))
        p = np.exp(z - lse[:, None])
        loss = np.mean(lse - z[rows, y_train]) + L2 * np.sum(W[:-1] ** 2) / 2
        p[rows, y_train] -= 1.0
        grad = np.vstack([x_train.T @ p / n + L2 * W[:-1], p.mean(0)])
        return loss, grad.ravel()

    w0 = np.zeros((d + 1) * num_classes)
    w = minimize(loss_and_grad, w0, jac=True, method="L-BFGS-B", options={"maxiter": 500}).x
    W = w.reshape(d + 1, num_classes)
    return (x_test @ W[:-1] + W[-1]).argmax(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/asc_ctr.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    backbone = resolve_backbone(cfg.model.backbone)
    encoder = load_pretrained(backbone)
    text = TextEncoder(backbone, cfg.data.max_len)
    for task in loop.load_tasks(cfg):
        enc = {split: text.encode(task.split(split)) for split in ("train", "test")}
        feats = {split: features(encoder, e) for split, e in enc.items()}
        for how in POOLINGS:
            x = feats["train"][how]
            pred = linear_probe(x, enc["train"].labels, feats["test"][how], task.num_classes)
            y = enc["test"].labels
            row = {
                "task": task.name,
                "pooling": how,
                "rms": float(np.sqrt(np.mean(x**2))),
                "spread": float(np.mean(x.std(0))),
                "probe_acc": metrics.accuracy(y, pred),
                "probe_mf1": metrics.macro_f1(y, pred),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
