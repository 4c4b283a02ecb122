"""Test Acc / MF1 of a trained CTR run under three ways of setting the router gates at test time.

    python scripts/eval_gates.py RUN_DIR [--task K] [--out FILE.json]

In training CTR's router gate is a hard Gumbel-softmax sample: it opens with probability
p = softmax(logits)[transfer] (spec §3.2). ctr-jax evaluates without the noise (``argmax``: the
gate is 1 where p > 0.5; `model.eval_router_noise=false`, the default); the original code keeps
the noise at test time (``noisy``, `model.eval_router_noise=true`). A router whose margins sit
near 0 then opens at test for every example a gate that training opened half the time: a
train/test mismatch of the kind dropout without rescaling makes. ``expected`` evaluates with
the gate's mean p instead, the analogue of dropout's rescaling. If the mismatch were why the
knowledge-sharing module costs accuracy at test (`python -m ctr_jax.transfer`'s
acc_without_ksm), ``expected`` or ``noisy`` would score above ``argmax``.

Evaluates every learned task on its test split with the run's evaluation keys (so ``argmax``
reproduces the run's accuracy matrix row; the script checks it) from the checkpoint after
--task (0-based; default the newest). ``expected`` swaps ``plugins.hard_gumbel_gate`` for the
length of one trace (``_gate``): an analysis-only change no run config can select.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np

from ctr_jax import metrics, transfer
from ctr_jax.config import ConfigError
from ctr_jax.models import plugins
from ctr_jax.training import trained

MODES = ("argmax", "noisy", "expected")


@contextlib.contextmanager
def _gate(mode: str) -> Iterator[None]:
    """Within the block, a key-less router gate is p = softmax(logits)[..., 0] if mode is
    "expected" (the noisy path, with a key, is unchanged)."""
    hard = plugins.hard_gumbel_gate

    def expected(logits, key, tau, straight_through):  # logits [..., 2] -> [...]
        if key is None:
            return jax.nn.softmax(logits, axis=-1)[..., 0]
        return hard(logits, key, tau, straight_through)

    if mode == "expected":
        plugins.hard_gumbel_gate = expected
    try:
        yield
    finally:
        plugins.hard_gumbel_gate = hard


def gate_scores(run: trained.TrainedRun) -> dict[str, dict]:
    """mode -> {"acc", "mf1": means over the learned tasks; "acc_tasks", "mf1_tasks": [T]}.

    Raises ConfigError for a run without transfer routing, or if ``argmax`` does not reproduce
    the run's accuracy matrix (a checkpoint that does not match the run)."""
    if run.method.ksm != "transfer":
        raise ConfigError(f"method {run.cfg.method!r} has no router gates (ctr has)")
    T = run.last_task + 1
    out = {}
    for mode in MODES:
        with _gate(mode):  # traced and run inside the block: the swap is in the compiled step
            step = jax.jit(
                transfer.make_probe_step(run.graphdef, run.cfg.hat.s_max, mode == "noisy")
            )
            acc, mf1 = [], []
            for u in range(T):
                enc = run.encoded[u]["test"]
                preds = transfer._probe_split(run, step, run.trainable, enc, u)["preds"]
                acc.append(metrics.accuracy(enc.labels, preds))
                mf1.append(metrics.macro_f1(enc.labels, preds))
        if mode == "argmax" and not np.allclose(acc, run.acc[run.last_task, :T], atol=1e-9):
            raise ConfigError(
                f"argmax accuracies {acc} differ from the run's matrix row "
                f"{run.acc[run.last_task, :T].tolist()}"
            )
        out[mode] = {"acc": float(np.mean(acc)), "mf1": float(np.mean(mf1)),
                     "acc_tasks": acc, "mf1_tasks": mf1}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a CTR run folder with checkpoints")
    parser.add_argument("--task", type=int, default=None, help="0-based; default the newest")
    parser.add_argument("--out", type=Path, default=None, help="also write the scores as JSON")
    args = parser.parse_args(argv)
    try:
        run = trained.load_trained(args.run_dir, args.task)
        scores = gate_scores(run)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.run_dir} after task {run.last_task + 1}: test Acc / MF1 (%)")
    for mode, s in scores.items():
        print(f"  {mode:9s} {100 * s['acc']:6.2f} / {100 * s['mf1']:6.2f}")
    if args.out is not None:
        record = {"run": str(args.run_dir), "after_task": run.last_task, **scores}
        args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
