"""What the knowledge-sharing module does in a trained run: transfer routing, KSM strength, and
the accuracy it is worth.

    python -m ctr_jax.transfer runs/asc_ctr [--task K] [--split test] [--out DIR]

Loads the run folder's newest checkpoint, or with ``--task K`` the one after task K (0-based;
``trained.load_trained``; files ``transfer_after_K.*``), and evaluates every learned task
u on its split in evaluation mode (s = s_max, the run's router noise and evaluation keys, so the
accuracies equal row ``last`` of the run's accuracy matrix; the tool checks that they do). For a
CTR or B-CL run it writes to ``--out`` (default: the run folder):

- ``transfer.json``: per task u
  - ``route[u][k]`` (k <= u): how much task k's capsules feed task u's examples, averaged over the
    examples and all plugins. CTR: the share of (example, plugin) pairs whose router gate delta_k
    is 1 ("transfer from k"); B-CL: the mean dynamic-routing coupling coefficient of task k.
    (Under ``model.routing_layout=torch`` the gate decided for example b weights the
    flat tokens i with i mod B = b, mostly other examples' (spec §3.5), and slot k
    holds a mix of tasks' capsule dims, so k is the original's slot index.)
  - ``ksm_rms_ratio`` / ``tsm_rms_ratio``: RMS of the KSM's output and of the TSM's output over the
    RMS of the plugin's input (real tokens, mean over examples and plugins): how large the
    knowledge-sharing signal is next to what it is added to; ``routed_rms_ratio``: the same
    for the KSM's output less its projection's bias b_big (a constant vector per plugin), i.e.
    the part that carries the routed capsules;
  - ``acc`` and ``acc_without_ksm``: test accuracy as trained, and with the KSM's output set to
    zero at evaluation (its projection W_big, b_big zeroed): what the trained TSM draws from it.
  - ``route_by_plugin[p]``: the mean share of *earlier* tasks routed, over tasks u >= 1, per plugin
    (p = 2 * layer + site, site 0 after attention, 1 after the FFN).
  - ``router_by_plugin[p]`` (CTR): what the router's decisions depend on. Its noise-free logit
    margin m = r_k[0] - r_k[1] (> 0: transfer from k) over every task u, example and source task
    k <= u: ``margin_mean``; ``margin_sd_examples``, its spread over the examples of a task for
    one source task (root mean variance); ``margin_sd_tasks``, its spread over the source tasks
    k <= u for one example (tasks u >= 1); and ``train_open_prob``, the mean of sigmoid(m), the
    chance that the gate opens in training, where Gumbel noise adds a standard logistic
    variable to m. A router that picks source tasks per example needs spreads comparable to
    that noise (standard deviation 1.81); with spreads near 0 each plugin's gate is one constant
    decision, the same for every example and source task.
  - with ``--grads N``, ``grad_rms_by_plugin[group][p]``: the RMS gradient of the training loss
    (cross-entropy, with the training's dropout and router noise) over N training batches of
    every task u, per plugin, for the parameter groups of ``GRAD_GROUPS`` (the task capsules:
    task u's own), beside ``adam_eps``. Adam divides by sqrt(v) + eps, so a group whose
    gradients are far below eps moves at a small fraction of the learning rate: it does not
    train.
- ``transfer_matrix.csv`` (rows u, columns k) and ``transfer.png`` (its heatmap).

The analysis uses the final model: the routers and similarity CNNs are shared and unprotected,
so row u is how the run's last state routes task u, not necessarily how it routed right after
learning u. Legend: T tasks, P plugins, B batch rows.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
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
from ctr_jax.models.bert import resolve_backbone
from ctr_jax.tracking import setup_logging
from ctr_jax.training import optim
from ctr_jax.training.loop import build_model
from ctr_jax.training.trained import TrainedRun, load_trained

log = logging.getLogger(__name__)

_RECORDS = ("route", "margin", "x_rms", "ksm_rms", "routed_rms", "tsm_rms")


def make_probe_step(graphdef: nnx.GraphDef, s_max: float, router_noise: bool) -> Callable:
    """Un-jitted eval step that also returns every plugin's probe record (``CLPlugins``).

    (trainable, frozen, batch, task_id [], key) -> {"preds": [B], "route" / "margin": [P, B, T],
    "x_rms" / "ksm_rms" / "routed_rms" / "tsm_rms": [P, B]}, with p = 2 * layer + site.
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
    # The evaluation keys of loop.Evaluator: the same router noise, so the same predictions.
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


def router_stats(margins: list[np.ndarray]) -> list[dict[str, float]]:
    """Per-plugin summary of the router's logit margins (module docstring, ``router_by_plugin``).

    margins[u]: [P, N_u, u + 1], the margins of task u's N_u examples for source tasks k <= u.
    -> one dict per plugin: margin_mean, margin_sd_examples, margin_sd_tasks (None with a single
    task), train_open_prob.
    """
    P = margins[0].shape[0]
    out = []
    for p in range(P):
        per_task = [m[p] for m in margins]  # [N_u, u + 1] each
        flat = np.concatenate([m.ravel() for m in per_task])
        var_ex = np.concatenate([m.var(axis=0) for m in per_task])  # per (u, k)
        var_k = [m.var(axis=1) for m in per_task if m.shape[1] > 1]  # per (u >= 1, example)
        out.append(
            {
                "margin_mean": float(flat.mean()),
                "margin_sd_examples": float(np.sqrt(var_ex.mean())),
                "margin_sd_tasks": float(np.sqrt(np.concatenate(var_k).mean())) if var_k else None,
                # the logistic as 0.5 (1 + tanh(x / 2)): no overflow at margins of -1000
                "train_open_prob": float(np.mean(0.5 * (1.0 + np.tanh(flat / 2.0)))),
            }
        )
    return out


def init_state(run: TrainedRun) -> TrainedRun:
    """The run with its trainable state replaced by the fresh initialisation of its config (the
    same seed, so the same weights its first task started from): what the router sees before
    any training. Its accuracies are those of untrained heads."""
    backbone = resolve_backbone(run.cfg.model.backbone)
    _, trainable, _ = build_model(run.cfg, run.method, run.tasks, backbone)
    return dataclasses.replace(run, trainable=trainable)


def analyse(run: TrainedRun, split: str = "test", check_acc: bool = True, grads: int = 0) -> dict:
    """The transfer report of a loaded run (see the module docstring) as a JSON-ready dict.

    Raises ConfigError for a method without a knowledge-sharing module, or (check_acc) if the
    recomputed test accuracies differ from the run's accuracy matrix (a checkpoint that does not
    match the run; off for ``init_state``'s untrained model). grads: batches per task for
    ``grad_rms`` (0: not measured).
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
    margins = []
    for u in range(T):
        enc = run.encoded[u][split]
        rec = _probe_split(run, step, run.trainable, enc, u)
        ablated = _probe_split(run, step, no_ksm, enc, u)
        acc = metrics.accuracy(enc.labels, rec["preds"])
        if check_acc and split == "test" and not np.isclose(acc, run.acc[last, u], atol=1e-9):
            raise ConfigError(
                f"task {u} ({run.tasks[u].name}): recomputed test accuracy {acc:.4f} differs from "
                f"the run's {run.acc[last, u]:.4f} after task {last}: the checkpoint does not "
                "match the run's results"
            )
        route[u, : u + 1] = rec["route"][:, :, : u + 1].mean(axis=(0, 1))  # [u + 1]
        if u > 0:
            by_plugin.append(rec["route"][:, :, :u].mean(axis=(1, 2)))  # [P]
        margins.append(rec["margin"][:, :, : u + 1])  # [P, N_u, u + 1]
        x = np.maximum(rec["x_rms"], 1e-12)
        rows.append(
            {
                "task": run.tasks[u].name,
                "acc": acc,
                "acc_without_ksm": metrics.accuracy(enc.labels, ablated["preds"]),
                "ksm_rms_ratio": float(np.mean(rec["ksm_rms"] / x)),
                "routed_rms_ratio": float(np.mean(rec["routed_rms"] / x)),
                "tsm_rms_ratio": float(np.mean(rec["tsm_rms"] / x)),
                "route_earlier": float(np.mean(route[u, :u])) if u else None,
            }
        )
        log.info(
            "task %d/%d %s: acc %.4f, without KSM %.4f; KSM/input RMS %.3f; earlier tasks routed "
            "%s", u + 1, T, run.tasks[u].name, acc, rows[-1]["acc_without_ksm"],
            rows[-1]["ksm_rms_ratio"], "-" if not u else f"{rows[-1]['route_earlier']:.3f}",
        )  # fmt: skip
    report = {
        "method": run.cfg.method,
        "name": run.cfg.name,
        "split": split,
        "after_task": last,
        "tasks": [t.name for t in run.tasks[:T]],
        "route": [[None if np.isnan(v) else float(v) for v in r] for r in route],
        "per_task": rows,
        "route_by_plugin": np.mean(by_plugin, axis=0).tolist() if by_plugin else None,
        "router_by_plugin": router_stats(margins) if run.method.ksm == "transfer" else None,
    }
    if grads:
        log.info("gradients over %d training batches of each task", grads)
        report["grad_rms_by_plugin"] = grad_rms(run, grads)
        report["adam_eps"] = optim.ADAM_EPS
    return report


# Parameter groups of a plugin whose gradients ``grad_rms`` reports: attribute name prefixes.
GRAD_GROUPS = {
    "router": ("dec_",),
    "similarity_cnn": ("conv_", "cur_", "sim_"),
    "routing_matrices": ("route",),
    "task_capsule": ("caps_",),
    "ksm_projection": ("big_",),
    "tsm": ("w1", "w2", "b1", "b2"),
}


def grad_rms(run: TrainedRun, num_batches: int) -> dict[str, list[float]]:
    """RMS gradient per plugin and parameter group (module docstring, ``--grads``).

    For each task u, up to `num_batches` shuffled training batches of u (seeded by the run's
    seed), the gradient of u's mean cross-entropy at the run's state, in training mode. Task
    capsules count task u's row only (the others are frozen or unused for u). -> group ->
    [P], the root mean square over tasks, batches and the group's elements.
    """
    cfg = run.cfg

    def loss(trainable, batch, task_id, key):
        dropout_key, router_key = jax.random.split(key)
        model = nnx.merge(run.graphdef, trainable, run.frozen)
        logits, _ = model(
            batch.input_ids, batch.token_type_ids, batch.attention_mask, task_id,
            jnp.float32(cfg.hat.s_max), dropout_key=dropout_key, router_key=router_key,
            straight_through=True, head_ids=batch.task_ids,
        )  # fmt: skip
        logp = jax.nn.log_softmax(logits, axis=-1)
        ce = -jnp.take_along_axis(logp, batch.labels[:, None], axis=-1)[:, 0]
        return jnp.sum(ce * batch.weight) / jnp.maximum(jnp.sum(batch.weight), 1.0)

    grad = jax.jit(jax.grad(loss))
    key = jax.random.fold_in(jax.random.key(cfg.seed), 3)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for u in range(run.last_task + 1):
        rng = np.random.default_rng([cfg.seed, u])
        batches = batching.train_batches(
            run.encoded[u]["train"], cfg.train.batch_size, cfg.train.buckets, rng
        )
        for i, batch in zip(range(num_batches), batches, strict=False):
            g = grad(run.trainable, batch, jnp.int32(u), jax.random.fold_in(key, 1000 * u + i))
            for name, v in g["plugins"].items():
                group = next((k for k, pre in GRAD_GROUPS.items() if name.startswith(pre)), None)
                if group is None:
                    continue
                a = np.asarray(v[...], np.float64)  # [P, ...]
                if group == "task_capsule":
                    a = a[:, u]  # [P, T, ...] -> task u's capsule
                a = a.reshape(a.shape[0], -1)
                sums[group] = sums.get(group, 0.0) + np.sum(np.square(a), axis=1)
                counts[group] = counts.get(group, 0) + a.shape[1]
    return {k: np.sqrt(sums[k] / counts[k]).tolist() for k in GRAD_GROUPS if k in sums}


_LOGISTIC_SD = float(np.pi / np.sqrt(3.0))  # sd of the Gumbel noises' difference in the margin


def plot_route(report: dict, path: Path) -> None:
    """Left: heatmap of report["route"] (rows: task evaluated, columns: source task). Middle: the
    share of earlier tasks routed per plugin (report["route_by_plugin"]), where the router's
    decisions show whether they depend on the source task or only on the plugin. Right (CTR):
    each plugin's router margin, its spreads over examples and source tasks, and the training
    noise's spread for scale (report["router_by_plugin"])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = np.array([[np.nan if v is None else v for v in row] for row in report["route"]])
    T = len(r)
    size = max(4.0, 0.45 * T + 2.5)
    router = report.get("router_by_plugin")
    ncols = 3 if router else 2
    fig, axes = plt.subplots(
        1, ncols, figsize=(ncols * size + 1.5, size),
        gridspec_kw={"width_ratios": [1.15, 1, 1][:ncols]},
    )  # fmt: skip
    ax, bx = axes[0], axes[1]
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
    P = len(per_plugin) if per_plugin else len(router or [])
    labels = [f"L{p // 2}{'af'[p % 2]}" for p in range(P)]
    xlabel = "plugin (layer, a = after attention, f = after FFN)"
    if per_plugin:
        bx.bar(range(P), per_plugin, color="tab:blue")
        bx.set_xticks(range(P), labels, fontsize=7, rotation=90)
        bx.set_ylim(0.0, 1.0)
        bx.set_xlabel(xlabel)
        bx.set_title("earlier tasks routed, per plugin\n(mean over tasks u >= 1)", fontsize=9)
    else:
        bx.axis("off")
    if router:
        cx = axes[2]
        x = np.arange(P)
        mean = [d["margin_mean"] for d in router]
        sd_ex = [d["margin_sd_examples"] for d in router]
        sd_k = [np.nan if d["margin_sd_tasks"] is None else d["margin_sd_tasks"] for d in router]
        cx.axhspan(-_LOGISTIC_SD, _LOGISTIC_SD, color="0.9", label="training noise, +-1 sd")
        cx.axhline(0.0, color="0.5", lw=0.8)
        cx.errorbar(x - 0.15, mean, yerr=sd_ex, fmt="o", ms=4, capsize=3,
                    label="mean, +-sd over examples")  # fmt: skip
        cx.errorbar(x + 0.15, mean, yerr=sd_k, fmt="none", ecolor="tab:red", capsize=3,
                    label="+-sd over source tasks")  # fmt: skip
        cx.set_xticks(x, labels, fontsize=7, rotation=90)
        cx.set_xlabel(xlabel)
        cx.set_ylabel("margin r[0] - r[1] (> 0: transfer)")
        cx.set_title("router logit margin, per plugin", fontsize=9)
        # Below the axes: inside, it can hide a plugin's point.
        cx.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=2)
    state = " at initialisation" if report.get("state") == "init" else ""
    fig.suptitle(f"{report['name']}{state} ({report['split']} split, after task "
                 f"{report['after_task']})", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write(report: dict, out: Path, plot: bool = True, stem: str = "transfer") -> list[Path]:
    """Writes {stem}.json, {stem}_matrix.csv and (plot) {stem}.png under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{stem}.json", out / f"{stem}_matrix.csv"]
    files[0].write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    with files[1].open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["task", *report["tasks"]])
        for name, row in zip(report["tasks"], report["route"], strict=True):
            w.writerow([name, *("" if v is None else f"{v:.6f}" for v in row)])
    if plot:
        files.append(out / f"{stem}.png")
        plot_route(report, files[-1])
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="a CTR or B-CL run folder with checkpoints")
    parser.add_argument(
        "--task",
        type=int,
        default=None,
        metavar="K",
        help="analyse the checkpoint after task K (0-based; default: the newest) and write "
        "transfer_after_K.* (a run keeps every task's with train.keep_checkpoints=null)",
    )
    parser.add_argument("--split", choices=("test", "dev", "train"), default="test")
    parser.add_argument("--out", type=Path, default=None, help="output folder (the run's)")
    parser.add_argument("--no-plot", action="store_true", help="JSON and CSV only")
    parser.add_argument(
        "--init",
        action="store_true",
        help="analyse the run config's freshly initialised model instead of its checkpoint "
        "(writes transfer_init.*)",
    )
    parser.add_argument(
        "--grads",
        type=int,
        default=0,
        metavar="N",
        help="also measure the KSM's gradients over N training batches of each task",
    )
    args = parser.parse_args(argv)
    if args.grads < 0:
        parser.error(f"--grads must be >= 0, got {args.grads}")
    if args.task is not None and (args.task < 0 or args.init):
        parser.error("--task takes a task index >= 0, and not with --init")
    setup_logging("INFO")
    try:
        run = load_trained(args.run_dir, args.task)
        if args.init:
            run = init_state(run)
        report = analyse(run, args.split, check_acc=not args.init, grads=args.grads)
        report["state"] = "init" if args.init else "trained"
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stem = "transfer_init" if args.init else "transfer"
    if args.task is not None:
        stem = f"transfer_after_{args.task}"
    files = write(report, args.out or args.run_dir, plot=not args.no_plot, stem=stem)
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
