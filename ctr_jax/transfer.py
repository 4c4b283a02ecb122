"""What the knowledge-sharing module does in a trained run: transfer routing, KSM strength, and
the accuracy it is worth.

    python -m ctr_jax.transfer runs/asc_ctr [--split test] [--out DIR]

Loads the run folder's newest checkpoint (``loop.load_trained``) and evaluates every learned task
u on its split in evaluation mode (s = s_max, the run's router noise and evaluation keys, so the
accuracies equal row ``last`` of the run's accuracy matrix; the tool checks that they do). For a
CTR or B-CL run it writes to ``--out`` (default: the run folder):

- ``transfer.json``: per task u
  - ``route[u][k]`` (k <= u): how much task k's capsules feed task u's examples, averaged over the
    examples and all plugins. CTR: the share of (example, plugin) pairs whose router gate delta_k
    is 1 ("transfer from k"); B-CL: the mean dynamic-routing coupling coefficient of task k.
  - ``ksm_rms_ratio`` / ``tsm_rms_ratio``: RMS of the KSM's output and of the TSM's output over the
    RMS of the plugin's input (real tokens, mean over examples and plugins): how large the
    knowledge-sharing signal is next to what it is added to;
  - ``acc`` and ``acc_without_ksm``: test accuracy as trained, and with the KSM's output set to
    zero at evaluation (its projection W_big, b_big zeroed): what the trained TSM draws from it.
  - ``route_by_plugin[p]``: the mean share of *earlier* tasks routed, over tasks u >= 1, per plugin
    (p = 2 * layer + site, site 0 after attention, 1 after the FFN).
- ``transfer_matrix.csv`` (rows u, columns k) and ``transfer.png`` (its heatmap).

The analysis uses the final model: the routers and similarity CNNs are shared and unprotected,
so row u is how the run's last state routes task u, not necessarily how it routed right after
learning u. Legend: T tasks, P plugins, B batch rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ctr_jax import metrics
from ctr_jax.config import ConfigError
from ctr_jax.data import batching
from ctr_jax.data.tokenize import Encoded
from ctr_jax.tracking import setup_logging
from ctr_jax.training.loop import TrainedRun, load_trained

log = logging.getLogger(__name__)

_RECORDS = ("route", "x_rms", "ksm_rms", "tsm_rms")


def make_probe_step(graphdef: nnx.GraphDef, s_max: float, router_noise: bool) -> Callable:
    """Un-jitted eval step that also returns every plugin's probe record (``CLPlugins``).

    (trainable, frozen, batch, task_id [], key) -> {"preds": [B], "route": [P, B, T],
    "x_rms" / "ksm_rms" / "tsm_rms": [P, B]}, with p = 2 * layer + site.
    """

    def probe_step(trainable, frozen, batch, task_id, key):
        model = nnx.merge(graphdef, trainable, frozen)
        logits, _, aux = model(
            batch.input_ids,
            batch.token_type_ids,
            batch.attention_mask,
            task_id,
            jnp.float32(s_max),
            router_key=key if router_noise else None,
            head_ids=batch.task_ids,
            probe=True,
        )

        def by_plugin(name: str) -> jax.Array:  # [NL, B, ...] per site -> [NL * 2, B, ...]
            both = jnp.stack([aux["attn"][name], aux["ffn"][name]], axis=1)
            return both.reshape(-1, *both.shape[2:])

        out = {name: by_plugin(name) for name in _RECORDS}
        out["preds"] = jnp.argmax(logits, -1).astype(jnp.int32)
        return out

    return probe_step


def _without_ksm(trainable: nnx.State) -> nnx.State:
    """A copy whose KSM output projection is zero, so every plugin's KSM adds nothing."""
    out = jax.tree.map(lambda x: x, trainable)
    for name in ("big_w", "big_b"):
        out["plugins"][name][...] = jnp.zeros_like(out["plugins"][name][...])
    return out


def _probe_split(run: TrainedRun, step, trainable, enc: Encoded, task_id: int) -> dict:
    """Probe records of every real example of one split: name -> [P, N, ...], and preds [N]."""
    cfg = run.cfg
    # The evaluation keys of loop._Evaluator: the same router noise, so the same predictions.
    eval_key = jax.random.fold_in(jax.random.key(cfg.seed), 2)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in (*_RECORDS, "preds")}
    order = []
    batches = batching.eval_batches(
        enc, cfg.train.eval_batch_size, cfg.train.buckets, max_tokens=cfg.train.eval_max_tokens
    )
    for i, (batch, idx) in enumerate(batches):
        key = jax.random.fold_in(jax.random.fold_in(eval_key, task_id), i)
        out = step(trainable, run.frozen, batch, jnp.int32(task_id), key)
        n = len(idx)
        for name in _RECORDS:
            parts[name].append(np.asarray(out[name])[:, :n])
        parts["preds"].append(np.asarray(out["preds"])[:n])
        order.append(idx)
    inverse = np.argsort(np.concatenate(order))  # back to the split's order
    out = {name: np.concatenate(parts[name], axis=1)[:, inverse] for name in _RECORDS}
    out["preds"] = np.concatenate(parts["preds"])[inverse]
    return out


def analyse(run: TrainedRun, split: str = "test") -> dict:
    """The transfer report of a loaded run (see the module docstring) as a JSON-ready dict.

    Raises ConfigError for a method without a knowledge-sharing module, or if the recomputed test
    accuracies differ from the run's accuracy matrix (a checkpoint that does not match the run).
    """
    if run.method.ksm is None:
        raise ConfigError(
            f"method {run.cfg.method!r} has no knowledge-sharing module to analyse (ctr, bcl do)"
        )
    step = jax.jit(
        make_probe_step(run.graphdef, run.cfg.hat.s_max, run.cfg.model.eval_router_noise)
    )
    no_ksm = _without_ksm(run.trainable)
    last = run.last_task
    T = last + 1
    route = np.full((T, T), np.nan)
    rows = []
    by_plugin = []
    for u in range(T):
        enc = run.encoded[u][split]
        rec = _probe_split(run, step, run.trainable, enc, u)
        ablated = _probe_split(run, step, no_ksm, enc, u)
        acc = metrics.accuracy(enc.labels, rec["preds"])
        if split == "test" and not np.isclose(acc, run.acc[last, u], atol=1e-9):
            raise ConfigError(
                f"task {u} ({run.tasks[u].name}): recomputed test accuracy {acc:.4f} differs from "
                f"the run's {run.acc[last, u]:.4f} after task {last}: the checkpoint does not "
                "match the run's results"
            )
        route[u, : u + 1] = rec["route"][:, :, : u + 1].mean(axis=(0, 1))  # [u + 1]
        if u > 0:
            by_plugin.append(rec["route"][:, :, :u].mean(axis=(1, 2)))  # [P]
        x = np.maximum(rec["x_rms"], 1e-12)
        rows.append(
            {
                "task": run.tasks[u].name,
                "acc": acc,
                "acc_without_ksm": metrics.accuracy(enc.labels, ablated["preds"]),
                "ksm_rms_ratio": float(np.mean(rec["ksm_rms"] / x)),
                "tsm_rms_ratio": float(np.mean(rec["tsm_rms"] / x)),
                "route_earlier": float(np.mean(route[u, :u])) if u else None,
            }
        )
        log.info(
            "task %d/%d %s: acc %.4f, without KSM %.4f; KSM/input RMS %.3f; earlier tasks routed "
            "%s", u + 1, T, run.tasks[u].name, acc, rows[-1]["acc_without_ksm"],
            rows[-1]["ksm_rms_ratio"], "-" if not u else f"{rows[-1]['route_earlier']:.3f}",
        )  # fmt: skip
    return {
        "method": run.cfg.method,
        "name": run.cfg.name,
        "split": split,
        "after_task": last,
        "tasks": [t.name for t in run.tasks[:T]],
        "route": [[None if np.isnan(v) else float(v) for v in r] for r in route],
        "per_task": rows,
        "route_by_plugin": np.mean(by_plugin, axis=0).tolist() if by_plugin else None,
    }


def plot_route(report: dict, path: Path) -> None:
    """Left: heatmap of report["route"] (rows: task evaluated, columns: source task). Right: the
    share of earlier tasks routed per plugin (report["route_by_plugin"]), where the router's
    decisions show whether they depend on the source task or only on the plugin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = np.array([[np.nan if v is None else v for v in row] for row in report["route"]])
    T = len(r)
    size = max(4.0, 0.45 * T + 2.5)
    fig, (ax, bx) = plt.subplots(
        1, 2, figsize=(2 * size + 1.5, size), gridspec_kw={"width_ratios": [1.15, 1]}
    )
    im = ax.imshow(r, vmin=0.0, vmax=1.0, cmap="viridis")
    for u in range(T):
        for k in range(u + 1):
            ax.text(k, u, f"{r[u, k]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if r[u, k] < 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(T), range(T))
    ax.set_yticks(range(T), range(T))
    ax.set_xlabel("source task k (capsules routed)")
    ax.set_ylabel("task u (its test examples)")
    share = "router gate for k open" if report["method"] == "ctr" else "coupling coefficient"
    ax.set_title(f"{share}\nmean over examples and plugins", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    per_plugin = report["route_by_plugin"]
    if per_plugin:
        labels = [f"L{p // 2}{'af'[p % 2]}" for p in range(len(per_plugin))]
        bx.bar(range(len(per_plugin)), per_plugin, color="tab:blue")
        bx.set_xticks(range(len(per_plugin)), labels, fontsize=7, rotation=90)
        bx.set_ylim(0.0, 1.0)
        bx.set_xlabel("plugin (layer, a = after attention, f = after FFN)")
        bx.set_title("earlier tasks routed, per plugin\n(mean over tasks u >= 1)", fontsize=9)
    else:
        bx.axis("off")
    fig.suptitle(f"{report['name']} ({report['split']} split, after task {report['after_task']})",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(report: dict, out: Path, plot: bool = True) -> list[Path]:
    """Writes transfer.json, transfer_matrix.csv and (plot) transfer.png under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "transfer.json", out / "transfer_matrix.csv"]
    files[0].write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    with files[1].open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["task", *report["tasks"]])
        for name, row in zip(report["tasks"], report["route"], strict=True):
            w.writerow([name, *("" if v is None else f"{v:.6f}" for v in row)])
    if plot:
        files.append(out / "transfer.png")
        plot_route(report, files[-1])
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="a CTR or B-CL run folder with checkpoints")
    parser.add_argument("--split", choices=("test", "dev", "train"), default="test")
    parser.add_argument("--out", type=Path, default=None, help="output folder (the run's)")
    parser.add_argument("--no-plot", action="store_true", help="JSON and CSV only")
    args = parser.parse_args(argv)
    setup_logging("INFO")
    try:
        report = analyse(load_trained(args.run_dir), args.split)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files = write(report, args.out or args.run_dir, plot=not args.no_plot)
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
