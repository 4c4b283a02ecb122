"""Which parameters changed what an earlier task predicts, between two checkpoints of a run.

    python -m ctr_jax.drift runs/asc_bcl [--from K] [--to L] [--split test] [--out DIR]

In Task-CL an earlier task u's predictions can only move through trainable parameters that u's
forward pass reads and that learning a later task updates. With HAT's protection that leaves
the layers' LayerNorms (no mask covers them), the TSM's units still partly free for u (gates
between 0 and 1 keep part of their update; HAT scales it by 1 - the largest earlier gate), and
a knowledge-sharing module's shared weights (routers, similarity CNNs, routing matrices, the
output projection) and earlier tasks' capsules. Forgetting and backward transfer are the two
signs of the same movement; this tool says which group carried it.

It loads the run's checkpoints after tasks K < L (0-based; by default the two newest; a run
keeps two unless ``train.keep_checkpoints`` says more) and evaluates every task u <= K in
evaluation mode (s = s_max, the run's evaluation keys) with the state at L, and with each
parameter group in turn:

- ``revert``: put back to its value at K, the rest at L: what the group's change did, given
  the others' (all groups reverted = the state at K);
- ``alone``: taken from L, the rest at K: what the group's change does by itself.

Changes interact, so the rows need not add up; a group whose ``revert`` brings u back to its
accuracy at K and whose ``alone`` takes it to its accuracy at L carried the movement. Groups
(by Variable type and metadata, ``models/variables.py``): ``layernorms``, ``tsm`` (the TSM of
CTR and B-CL, the HAT-masked adapter of HAT, the ungated adapter of NCL), ``ksm`` (the other
shared plugin weights), ``capsules``, ``hat_embeddings``, ``heads``; a method's empty groups
are left out. Task u's HAT embedding row and head never move after u (``training/optim.py``),
so those groups change nothing for u by construction: a check on the tool as much as on the
run.

Writes ``drift_K_L.json`` and a Markdown table, ``drift_K_L.md``, to ``--out`` (default: the
run folder): per task u its accuracy and
macro-F1 at K and at L (checked against the run's accuracy matrix), and per group its
``revert`` and ``alone`` accuracy, macro-F1 and the share of u's predictions that differ from
those at L; per group the relative size of its change, ||theta_L - theta_K|| / ||theta_K||,
and since the run's start, ||theta_L - theta_0|| / ||theta_0|| (for the LayerNorms: how far
from the pretrained values).
ONE (each task its own model) and MTL (one joint phase) have no later phase that could move an
earlier task: they are refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from ctr_jax.checkpoint import TaskCheckpointer
from ctr_jax.config import ConfigError
from ctr_jax.models.bert import resolve_backbone
from ctr_jax.models.variables import GROUPS, group_of, groups_present
from ctr_jax.parallel import DataParallel
from ctr_jax.tracking import setup_logging
from ctr_jax.training import step
from ctr_jax.training.loop import Evaluator, build_model
from ctr_jax.training.trained import TrainedRun, load_trained, restore_task

log = logging.getLogger(__name__)


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def mix(base: nnx.State, other: nnx.State, group: str) -> nnx.State:
    """`base` with the leaves of `group` taken from `other` (same tree structure)."""
    return jax.tree.map(lambda b, o: o if group_of(b) == group else b, base, other, is_leaf=_is_var)


def change_norms(before: nnx.State, after: nnx.State) -> dict[str, float | None]:
    """Per group present: ||after - before|| / ||before|| over all its leaves (0 where before
    is all zeros and nothing changed, None where it is all zeros and something did)."""
    sq_diff: dict[str, float] = {}
    sq_base: dict[str, float] = {}
    pairs = zip(
        jax.tree.leaves(before, is_leaf=_is_var), jax.tree.leaves(after, is_leaf=_is_var),
        strict=True,
    )  # fmt: skip
    for b, a in pairs:
        g = group_of(b)
        bv, av = np.asarray(b[...], np.float64), np.asarray(a[...], np.float64)
        sq_diff[g] = sq_diff.get(g, 0.0) + float(np.sum((av - bv) ** 2))
        sq_base[g] = sq_base.get(g, 0.0) + float(np.sum(bv**2))
    out = {}
    for g in GROUPS:
        if g in sq_diff:
            d, b = np.sqrt(sq_diff[g]), np.sqrt(sq_base[g])
            out[g] = float(d / b) if b > 0 else (0.0 if d == 0 else None)
    return out


def make_evaluator(run: TrainedRun) -> Callable[[nnx.State, int], dict]:
    """(trainable, task u) -> ``Evaluator`` result on u's split, as the run's loop evaluates it
    (one device: predictions do not depend on the device count)."""
    dp = DataParallel.create(1)
    eval_step = jax.jit(
        step.make_eval_step(run.graphdef, run.cfg.hat, run.cfg.model.eval_router_noise),
        out_shardings=dp.replicated,
    )
    key = jax.random.fold_in(jax.random.key(run.cfg.seed), 2)  # loop.run's evaluation key
    return Evaluator(eval_step, run.frozen, run.cfg, key, dp)


def start_state(run: TrainedRun) -> nnx.State:
    """The trainable state `run` started from, rebuilt as ``loop.run`` builds it: the
    backbone's pretrained LayerNorms, and the plugins, gate embeddings and heads initialised from
    the run's seed."""
    backbone = resolve_backbone(run.cfg.model.backbone)
    return build_model(run.cfg, run.method, run.tasks, backbone)[1]


def analyse(
    before: TrainedRun, after: TrainedRun, split: str = "test", start: nnx.State | None = None
) -> dict:
    """The drift report (module docstring) of two states of one run, K = before.last_task <
    L = after.last_task, as a JSON-ready dict. With `start` (``start_state``) it also has
    ``change_from_start``: each group's ||theta_L - theta_0|| / ||theta_0||, how far training
    has taken it from where the run began (the LayerNorms: from the pretrained values).

    Raises ConfigError for ONE or MTL, for K >= L, or if a recomputed test accuracy differs
    from the run's accuracy matrix (the checkpoints do not match the run's results).
    """
    cfg = after.cfg
    if after.method.protocol != "sequential":
        raise ConfigError(
            f"method {cfg.method!r} ({after.method.protocol} protocol) has no later phase that "
            "could move an earlier task's predictions; drift needs a sequential method"
        )
    K, L = before.last_task, after.last_task
    if not K < L:
        raise ConfigError(f"--from ({K}) must be an earlier task than --to ({L})")
    evaluator = make_evaluator(after)
    groups = groups_present(after.trainable)

    def score(trainable, u, enc, ref=None):
        res = evaluator(trainable, enc, u)
        out = {"acc": res["acc"], "mf1": res["mf1"]}
        if ref is not None:
            out["changed"] = float(np.mean(res["preds"] != ref))
        return out, res["preds"]

    rows = []
    for u in range(K + 1):
        enc = after.encoded[u][split]
        at_k, _ = score(before.trainable, u, enc)
        at_l, preds_l = score(after.trainable, u, enc)
        if split == "test":
            for name, got, run, t in (("K", at_k, before, K), ("L", at_l, after, L)):
                if not np.isclose(got["acc"], run.acc[t, u], atol=1e-9):
                    raise ConfigError(
                        f"task {u} ({after.tasks[u].name}): recomputed test accuracy "
                        f"{got['acc']:.4f} after task {t} ({name}) differs from the run's "
                        f"{run.acc[t, u]:.4f}: the checkpoint does not match the run's results"
                    )
        row = {"task": after.tasks[u].name, "at_from": at_k, "at_to": at_l, "revert": {},
               "alone": {}}  # fmt: skip
        for g in groups:
            row["revert"][g], _ = score(mix(after.trainable, before.trainable, g), u, enc, preds_l)
            row["alone"][g], _ = score(mix(before.trainable, after.trainable, g), u, enc, preds_l)
        rows.append(row)
        log.info(
            "task %d %s: acc %.4f after task %d, %.4f after task %d; with one group reverted: %s",
            u, row["task"], at_k["acc"], K, at_l["acc"], L,
            ", ".join(f"{g} {row['revert'][g]['acc']:.4f}" for g in groups),
        )  # fmt: skip
    return {
        "method": cfg.method,
        "name": cfg.name,
        "split": split,
        "from_task": K,
        "to_task": L,
        "tasks": [t.name for t in after.tasks[: L + 1]],
        "groups": groups,
        "change": change_norms(before.trainable, after.trainable),
        "per_task": rows,
        **({} if start is None else {"change_from_start": change_norms(start, after.trainable)}),
    }


def _norms(norms: dict[str, float | None]) -> str:
    return ", ".join(f"{g} {'- (from 0)' if v is None else f'{v:.3g}'}" for g, v in norms.items())


def write_table(report: dict) -> str:
    """A Markdown table of the report: one row per earlier task, accuracy (%) at K, at L, and
    with each group reverted to K."""
    groups = report["groups"]
    K, L = report["from_task"], report["to_task"]
    head = ["task", f"after {K}", f"after {L}", *[f"{g} reverted" for g in groups]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["per_task"]:
        cells = [r["task"], r["at_from"]["acc"], r["at_to"]["acc"],
                 *[r["revert"][g]["acc"] for g in groups]]  # fmt: skip
        lines.append("| " + " | ".join(c if isinstance(c, str) else f"{100 * c:.1f}"
                                       for c in cells) + " |")  # fmt: skip
    lines.append("")
    lines.append(
        f"relative change ||theta_{L} - theta_{K}|| / ||theta_{K}||: {_norms(report['change'])}"
    )
    if "change_from_start" in report:
        lines.append("")
        lines.append(
            f"since the run's start, ||theta_{L} - theta_0|| / ||theta_0||: "
            f"{_norms(report['change_from_start'])}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="a run folder with two task checkpoints")
    parser.add_argument(
        "--from",
        dest="from_task",
        type=int,
        default=None,
        metavar="K",
        help="earlier checkpoint (0-based task; default: the second newest kept)",
    )
    parser.add_argument("--to", dest="to_task", type=int, default=None, metavar="L",
                        help="later checkpoint (default: the newest)")  # fmt: skip
    parser.add_argument("--split", choices=("test", "dev", "train"), default="test")
    parser.add_argument("--out", type=Path, default=None, help="output folder (the run's)")
    args = parser.parse_args(argv)
    setup_logging("INFO")
    try:
        checkpoints = args.run_dir / "checkpoints"
        if not checkpoints.is_dir():
            raise ConfigError(f"{checkpoints}: no such folder (not a run folder with checkpoints)")
        with TaskCheckpointer(checkpoints) as ckpt:
            kept = ckpt.all_tasks()
        to_task = kept[-1] if args.to_task is None and kept else args.to_task
        from_task = args.from_task
        if from_task is None:
            earlier = [k for k in kept if to_task is not None and k < to_task]
            if not earlier:
                raise ConfigError(
                    f"{checkpoints}: no two task checkpoints to compare "
                    f"(kept: {kept}); it needs 2 tasks learned, and train.keep_checkpoints >= 2"
                )
            from_task = earlier[-1]
        after = load_trained(args.run_dir, to_task)
        before = restore_task(after, args.run_dir, from_task)
        report = analyse(before, after, args.split, start_state(after))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or args.run_dir
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"drift_{report['from_task']}_{report['to_task']}.json"
    path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    table = write_table(report)
    (path.with_suffix(".md")).write_text(table, encoding="utf-8")
    print(table + f"\nwrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
