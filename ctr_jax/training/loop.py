"""The host-side continual-learning loop: tasks one after another, checkpoint after each.

For each task t of the stream (Mammoth/Avalanche vocabulary, as plain functions):

    begin_task   fresh optimizer state
    train        epochs of protected updates; HAT's s ramps 1/s_max -> s_max within each epoch
    select       after every epoch, dev loss (CE + lambda R at s_max; or dev accuracy with
                 train.select_by=acc); keep the best epoch
    end_task     restore the best epoch; accumulate HAT masks; test every task u <= t (row t of
                 the accuracy and macro-F1 matrices); checkpoint; write results.json

The method (``ctr_jax/methods.py``) decides the plugin and the protocol: ONE resets the trainable
state before every task and tests only the new task (earlier scores stand); MTL trains one phase
on all tasks at once and tests every task after it. A checkpoint follows every phase.

All randomness is derived from ``cfg.seed`` by ``fold_in(task, epoch, step)``, never from
history, so a run resumed after task k ends exactly as an uninterrupted one. A run folder keeps
the resolved config; a rerun with a different config is refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ctr_jax import metrics
from ctr_jax.checkpoint import TaskCheckpointer
from ctr_jax.config import (
    ConfigError,
    ExperimentConfig,
)
from ctr_jax.data import batching
from ctr_jax.data.benchmarks import load_benchmark
from ctr_jax.data.custom import load_custom
from ctr_jax.data.tasks import Task, resolve_data_root
from ctr_jax.data.tokenize import Encoded, TextEncoder
from ctr_jax.methods import Method, get_method
from ctr_jax.models import hat
from ctr_jax.models.bert import (
    declared_pooling,
    load_pretrained,
    resolve_backbone,
    resolve_pooling,
)
from ctr_jax.models.classifier import CTRClassifier
from ctr_jax.parallel import DataParallel, init_distributed, is_primary
from ctr_jax.tracking import (
    MetricWriter,
    NullWriter,
    duration_text,
    peak_rss_mb,
    setup_logging,
    time_left,
)
from ctr_jax.training import optim, rundir, snapshot, step
from ctr_jax.training.resume import PhaseCheckpointer, PhaseState

log = logging.getLogger(__name__)

# Paper epochs per task (spec §5.4).
_SEMEVAL_TASKS = frozenset({"XuSemEval14_rest", "XuSemEval14_laptop"})
_PAPER_EPOCHS = {"dsc_small": 20, "dsc_full": 20, "20news": 10}
_PROGRESS_EVERY_S = 30.0  # a progress line at least this often within an epoch


@dataclasses.dataclass
class RunResult:
    """What a run returns (and also writes to <run_dir>/results.json)."""

    run_dir: Path
    tasks: list[str]
    acc: np.ndarray  # [T, T], NaN where not evaluated
    mf1: np.ndarray  # [T, T]
    summary: dict
    checkpoint_dir: Path
    resumed_from: int | None  # index of the last finished task found on start, if any
    trainable: nnx.State | None = None  # the trained state after the last task


def epochs_for(cfg: ExperimentConfig, task_name: str) -> int:
    if cfg.train.epochs is not None:
        return cfg.train.epochs
    bench = cfg.data.benchmark
    if bench == "asc":
        return 10 if task_name in _SEMEVAL_TASKS else 30
    if bench in _PAPER_EPOCHS:
        return _PAPER_EPOCHS[bench]
    raise ConfigError("train.epochs: must be set for a custom task stream")


def load_tasks(cfg: ExperimentConfig) -> list[Task]:
    """The task stream of the config, first `num_tasks`, training sets optionally subsampled."""
    root = resolve_data_root(cfg.data.root)
    if cfg.data.benchmark == "custom":
        tasks = load_custom(root, cfg.data.custom_tasks)
        if cfg.data.num_tasks is not None:
            tasks = tasks[: cfg.data.num_tasks]
    else:
        tasks = load_benchmark(
            cfg.data.benchmark,
            root,
            cfg.data.order,
            num_tasks=cfg.data.num_tasks,
            seed=cfg.data.seed,
        )
    if (k := cfg.data.max_train_examples) is not None:
        out = []
        for i, task in enumerate(tasks):
            if len(task.train) > k:
                keep = np.sort(
                    np.random.default_rng([cfg.data.seed, i]).permutation(len(task.train))[:k]
                )
                task = dataclasses.replace(task, train=tuple(task.train[j] for j in keep))
            out.append(task)
        tasks = out
    return tasks


def _release_heap() -> None:
    """Hands freed heap pages back to the OS (glibc ``malloc_trim``); a no-op elsewhere.

    Why: compiling a train step makes XLA's CPU compiler allocate and free about 0.7 GB
    (width 2000, measured), and glibc keeps those pages mapped, so the run's resident memory
    stayed that much higher for hours. Called once per epoch: it costs milliseconds.
    """
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl)
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _add_metrics(sums: dict[str, float], pending: list[dict[str, jax.Array]]) -> None:
    """Adds the steps' metrics (mean loss, correct, n) to ``sums`` and empties ``pending``."""
    for m in jax.device_get(pending):
        for k in sums:
            sums[k] += float(m[k]) * (float(m["n"]) if k == "loss" else 1.0)
    pending.clear()


def _cast_kernels(frozen: nnx.State, dtype: str) -> nnx.State:
    """Stores the frozen dense kernels in `dtype` once, instead of casting them every step."""
    if dtype == "float32":
        return frozen

    def cast(path, v):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path[-2:]]
        return v.astype(jnp.dtype(dtype)) if "kernel" in names else v

    return jax.tree_util.tree_map_with_path(cast, frozen)


class Evaluator:
    """Evaluation over a split: predictions, accuracy, macro-F1 and mean CE."""

    def __init__(self, eval_step, frozen, cfg: ExperimentConfig, key: jax.Array, dp: DataParallel):
        self.eval_step, self.frozen, self.cfg, self.key, self.dp = eval_step, frozen, cfg, key, dp

    def __call__(self, trainable, enc: Encoded, task_id: int) -> dict:
        preds = np.zeros(len(enc), np.int32)
        ce_sum = 0.0
        tid = jnp.int32(task_id)
        for i, (batch, idx) in enumerate(
            batching.eval_batches(
                enc,
                self.cfg.train.eval_batch_size,
                self.cfg.train.buckets,
                multiple=self.dp.size,
                max_tokens=self.cfg.train.eval_max_tokens,
            )  # fmt: skip
        ):
            key = jax.random.fold_in(jax.random.fold_in(self.key, task_id), i)
            out = self.eval_step(trainable, self.frozen, self.dp.shard(batch), tid, key)
            preds[idx] = np.asarray(out["preds"])[: len(idx)]
            ce_sum += float(out["ce_sum"])
        return {
            "preds": preds,  # [N] in the split's order
            "acc": metrics.accuracy(enc.labels, preds),
            "mf1": metrics.macro_f1(enc.labels, preds),
            "ce": ce_sum / max(1, len(enc)),
            "one_class": metrics.one_class(enc.labels, preds),
        }


def build_model(
    cfg: ExperimentConfig, method: Method, tasks: list[Task], backbone: Path
) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """The method's model on the pretrained backbone, freshly initialised from ``cfg.seed``, as
    (graphdef, trainable, frozen) (``step.split_model``; frozen kernels in the compute dtype)."""
    rngs = nnx.Rngs(params=jax.random.fold_in(jax.random.key(cfg.seed), 0))
    model = CTRClassifier(
        load_pretrained(backbone),
        [t.num_classes for t in tasks],
        cfg.model,
        ksm=method.ksm,
        use_hat=method.hat,
        rngs=rngs,
    )
    if cfg.model.compute_dtype != "float32":
        model.encoder.set_compute_dtype(cfg.model.compute_dtype)
    model.encoder.scan_unroll = cfg.model.scan_unroll
    model.encoder.remat = cfg.model.remat
    graphdef, trainable, frozen = step.split_model(model)
    return graphdef, trainable, _cast_kernels(frozen, cfg.model.compute_dtype)


def run(cfg: ExperimentConfig, writer: MetricWriter | NullWriter | None = None) -> RunResult:
    """Learns the config's task stream with its method; resumes after the last finished task.

    In a multi-process run (``parallel.distributed``) every process calls this with the same
    config; process 0 alone writes config.json, metrics.jsonl and the results files (and holds
    the run folder's lock: a second run into the same folder raises ConfigError).
    """
    init_distributed(cfg.parallel)  # before any jax computation
    primary = is_primary()
    # The other processes of a distributed run log warnings only: their progress is process 0's.
    setup_logging(cfg.log_level if primary else "WARNING")
    # The stack closes what _run opens (metric file, orbax managers) by an error or Ctrl-C too,
    # so that a run called in-process (a notebook, a sweep) leaks no file or thread when it stops.
    with rundir.run_dir_lock(cfg.run_dir, primary), contextlib.ExitStack() as closing:
        return _run(cfg, writer, primary, closing)


def _run(cfg: ExperimentConfig, writer, primary: bool, closing: contextlib.ExitStack) -> RunResult:
    new_run_dir = primary and rundir.check_run_dir(cfg)
    if cfg.train.deterministic and "--xla_gpu_deterministic_ops" not in os.environ.get(
        "XLA_FLAGS", ""
    ):
        log.warning(
            "train.deterministic is on but XLA_FLAGS lacks --xla_gpu_deterministic_ops=true: "
            "run.py sets it; a program of your own must set it before JAX starts"
        )
    method = get_method(cfg.method)
    keep = cfg.train.keep_checkpoints
    run_dir = cfg.run_dir
    if writer is None:
        writer = closing.enter_context(MetricWriter(run_dir) if primary else NullWriter())

    tasks = load_tasks(cfg)
    if not tasks:
        raise ConfigError("data: the task stream is empty")
    names = [t.name for t in tasks]
    T = len(tasks)
    backbone = resolve_backbone(cfg.model.backbone)
    log.info("method %s; backbone %s; %d tasks: %s", method.label, backbone, T, ", ".join(names))
    pooling = resolve_pooling(cfg.model.pooling, declared_pooling(backbone))  # as the model
    log.info("task heads read: %s (model.pooling=%s)", pooling, cfg.model.pooling)
    t0 = time.perf_counter()
    text = TextEncoder(backbone, cfg.data.max_len)
    encoded = [{s: text.encode(task.split(s)) for s in ("train", "dev", "test")} for task in tasks]
    log.info("tokenized %d tasks in %.1fs", T, time.perf_counter() - t0)

    graphdef, trainable, frozen = build_model(cfg, method, tasks, backbone)
    if new_run_dir:
        rundir.write_run_config(cfg)
    dp = DataParallel.create(cfg.parallel.num_devices)
    dp.check_batch_size(cfg.train.batch_size, "train.batch_size")
    dp.check_batch_size(cfg.train.eval_batch_size, "train.eval_batch_size")
    trainable, frozen = dp.replicate(trainable), dp.replicate(frozen)
    P, D = trainable["plugins"]["w2"][...].shape[0], trainable["plugins"]["w2"][...].shape[2]
    # Every array the train step takes is committed to the mesh, as the step's outputs are: an
    # uncommitted input (sharding {}) next to a committed one is a new jit cache key, i.e. a
    # second compilation of the whole step (tests/test_loop.py counts them).
    masks = dp.replicate(hat.HatMasks.zeros(P, cfg.model.tsm_width, D))
    acc = np.full((T, T), np.nan)
    mf1 = np.full((T, T), np.nan)
    # ONE restarts every task from this state (a copy: the train step donates its input).
    initial = jax.tree.map(jnp.copy, trainable) if method.protocol == "independent" else None

    factors = optim.lr_scales(trainable, optim.lr_factors(cfg))
    tx = optim.make_optimizer(cfg.train, optim.decay_mask(trainable), factors)
    train_step = jax.jit(
        step.make_train_step(
            graphdef,
            tx,
            cfg.hat,
            use_hat=method.hat,
            all_heads=method.protocol == "joint",
            freeze_layernorms=cfg.train.freeze_layernorms,
            ksm_protect=cfg.train.ksm_protect,
            max_tokens=cfg.train.max_batch_tokens,
        ),
        donate_argnums=(0, 1),
    )
    eval_step = jax.jit(
        step.make_eval_step(graphdef, cfg.hat, cfg.model.eval_router_noise),
        out_shardings=dp.replicated,  # predictions readable on every host
    )
    gates = jax.jit(lambda tr, fr, t: step.task_masks(tr, graphdef, fr, t, cfg.hat.s_max))
    root_key = jax.random.key(cfg.seed)
    train_key = jax.random.fold_in(root_key, 1)
    evaluate = Evaluator(eval_step, frozen, cfg, jax.random.fold_in(root_key, 2), dp)
    progress = closing.enter_context(
        PhaseCheckpointer(run_dir, cfg.train.epoch_checkpoint_s, rundir.run_fingerprint(cfg))
    )
    ctx = _TaskContext(
        cfg, method, frozen, tx, train_step, gates, evaluate, train_key, writer, dp, names,
        progress,
    )  # fmt: skip

    ckpt = closing.enter_context(TaskCheckpointer(run_dir / "checkpoints", keep=keep))
    start = 0
    resumed = ckpt.latest_task()
    if resumed is not None:
        state, meta = ckpt.restore(resumed, snapshot.saveable(trainable, masks, acc, mf1, root_key))
        trainable = dp.replicate(snapshot.unflat(trainable, state["trainable"]))
        masks = dp.replicate(
            hat.HatMasks(m1=jnp.asarray(state["masks"]["m1"]), m2=jnp.asarray(state["masks"]["m2"]))
        )
        acc, mf1 = np.array(state["acc"]), np.array(state["mf1"])
        start = resumed + 1
        log.info("resuming after task %d/%d (%s)", resumed + 1, T, meta.get("task"))

    # A "phase" is one task (sequential, independent) or the whole joint stream (MTL); a
    # checkpoint after each phase is indexed by the last task it covers.
    phases = [list(range(T))] if method.protocol == "joint" else [[t] for t in range(T)]
    support = _test_support(tasks, encoded)
    work = [phase_work(cfg, tasks, encoded, phase) for phase in phases]
    done_work, done_s = 0.0, 0.0  # phases trained by this process, for the time-left estimate
    for i, phase in enumerate(phases):
        t = phase[-1]
        if t < start:
            continue
        if initial is not None:
            trainable = jax.tree.map(jnp.copy, initial)  # ONE: nothing carries over
        t_phase = time.perf_counter()
        trainable, masks, share = _learn_phase(ctx, phase, tasks, encoded, trainable, masks)
        _test_after(ctx, method, t, phase, encoded, trainable, acc, mf1)
        row = " ".join(f"{a:.3f}" for a in acc[t, : t + 1])
        usage = _resource_usage(time.perf_counter() - t_phase)
        # `share`: the phase's epochs this process trained (less after a mid-task resume)
        done_work, done_s = done_work + share * work[i], done_s + usage["seconds"]
        left = time_left(done_work, done_s, sum(work[i + 1 :]))
        eta = f" | about {duration_text(left)} left" if left and i + 1 < len(phases) else ""
        log.info("after task %d/%d %s: test acc %s | mean %.4f | %s%s", t + 1, T, names[t], row,
                 np.mean(acc[t, : t + 1]), _usage_text(usage), eta)  # fmt: skip
        writer.write(
            "task_end", task=t, **usage, seconds_left=None if left is None else round(left, 1)
        )
        ckpt.save(
            t,
            snapshot.saveable(trainable, masks, acc, mf1, root_key),
            {
                "task": names[t],
                "task_index": t,
                "fingerprint": cfg.fingerprint(),
                "config": cfg.to_dict(),
            },
        )
        progress.clear()  # the task's checkpoint is committed: its epochs are not needed
        if primary:
            _write_results(cfg, method, run_dir, names, acc, mf1, str(backbone), pooling, support)
    done = int(np.sum(~np.isnan(np.diag(acc))))
    summary = metrics.summarize(acc[:done, :done], mf1[:done, :done]) if done else {}
    log.info("done: %s", json.dumps(summary))
    return RunResult(run_dir, names, acc, mf1, summary, run_dir / "checkpoints", resumed, trainable)


def phase_work(cfg: ExperimentConfig, tasks, encoded, phase: list[int]) -> float:
    """A phase's training work, for the estimate of a run's time left: epochs x the bucket
    widths (padded tokens) of its training examples. Compute per step grows with the padded
    length, so SemEval's long sentences weigh more than Bing's short ones; evaluation and
    compilation are left out, which the rate of the finished phases absorbs."""
    epochs = max(epochs_for(cfg, tasks[u].name) for u in phase)  # MTL: the joint phase's
    tokens = sum(
        batching.bucket_for(int(n), cfg.train.buckets)
        for u in phase
        for n in encoded[u]["train"].lengths
    )
    return float(epochs * tokens)


def _resource_usage(seconds: float) -> dict[str, float | None]:
    """A phase's wall time, the process's peak host memory so far and, on an accelerator whose
    allocator reports it, the device's peak memory (MiB; None where unknown)."""
    stats = jax.local_devices()[0].memory_stats() or {}  # None on CPU
    device = stats.get("peak_bytes_in_use")
    return {
        "seconds": round(seconds, 3),  # a tiny task with its steps compiled takes < 0.05 s
        "peak_rss_mb": None if (rss := peak_rss_mb()) is None else round(rss, 1),
        "device_peak_mb": None if device is None else round(device / 2**20, 1),
    }


def _usage_text(usage: dict[str, float | None]) -> str:
    parts = [f"{usage['seconds']:.0f} s"]
    if usage["peak_rss_mb"] is not None:
        parts.append(f"peak RSS {usage['peak_rss_mb'] / 1024:.2f} GB")
    if usage["device_peak_mb"] is not None:
        parts.append(f"device peak {usage['device_peak_mb'] / 1024:.2f} GB")
    return ", ".join(parts)


def _test_after(ctx, method: Method, t, phase, encoded, trainable, acc, mf1) -> None:
    """Fills row t of the matrices after a phase (in place), per the method's protocol."""
    if method.protocol == "independent":
        # Task u's model is never touched again after u: its score stands (A[t, u] = A[u, u]).
        evaluated = [t]
        if t > 0:
            acc[t, :t], mf1[t, :t] = acc[t - 1, :t], mf1[t - 1, :t]
    else:
        evaluated = list(range(t + 1))
    for u in evaluated:
        res = ctx.evaluate(trainable, encoded[u]["test"], u)
        acc[t, u], mf1[t, u] = res["acc"], res["mf1"]
        ctx.writer.write(
            "test", task=t, eval_task=u, acc=res["acc"], mf1=res["mf1"], one_class=res["one_class"]
        )
        if res["one_class"] is not None and u == t:
            # A collapse, not forgetting: the task's model ignores its input (README "When
            # training collapses"). Said once per task, when it is learned.
            log.warning(
                "task %d/%d %s: every test prediction is class %d (a one-class predictor, "
                "test acc %.3f, MF1 %.3f)",
                u + 1, len(acc), ctx.task_names[u], res["one_class"], res["acc"], res["mf1"],
            )  # fmt: skip
    if method.protocol == "joint":
        # One model learned every task at once: every row is that model's evaluation.
        final_a, final_f = acc[t].copy(), mf1[t].copy()
        for r in range(t):
            acc[r, : r + 1], mf1[r, : r + 1] = final_a[: r + 1], final_f[: r + 1]


def _test_support(tasks, encoded) -> list[dict[str, int]]:
    """Each task's number of test examples per class, {label name: count} in label order.

    Why in results.json: macro-F1 on a task whose rarest test class has one or two examples
    moves by tens of points when one prediction flips (ASC's small Bing tasks), so a reader of
    two runs' MF1 needs the counts to tell a real difference from a handful of examples."""
    out = []
    for task, enc in zip(tasks, encoded, strict=True):
        counts = np.bincount(enc["test"].labels, minlength=task.num_classes)  # [C]
        out.append({lab: int(n) for lab, n in zip(task.labels, counts, strict=True)})
    return out


def _write_results(
    cfg, method: Method, run_dir, names, acc, mf1, backbone, pooling, support
) -> None:
    metrics.write_results(
        run_dir,
        method=cfg.method,
        benchmark=cfg.data.benchmark,
        order=cfg.data.order,
        seed=cfg.seed,
        backbone=backbone,
        tasks=names,
        acc=acc,
        mf1=mf1,
        extra={
            "protocol": method.protocol,
            "epochs": cfg.train.epochs,
            "name": cfg.name,
            "pooling": pooling,  # what the heads read, model.pooling="auto" resolved
            "data_seed": cfg.data_seed,  # None where data.seed changes nothing
            "test_support": support,  # [T] of {label: test examples}
        },
    )


@dataclasses.dataclass(frozen=True)
class _TaskContext:
    """What every phase of a run shares (compiled steps, frozen encoder, keys, writer)."""

    cfg: ExperimentConfig
    method: Method
    frozen: nnx.State
    tx: object
    train_step: object
    gates: object
    evaluate: Evaluator
    train_key: jax.Array
    writer: MetricWriter | NullWriter
    dp: DataParallel
    task_names: list[str]
    progress: PhaseCheckpointer  # the task in progress's state at an epoch's end


def selection_key(select_by: str, dev_loss: float, dev_acc: float) -> tuple[float, ...]:
    """Model selection's order of an epoch's dev scores: the smallest key is kept, the
    earliest epoch among equal keys. "loss": the dev loss alone (spec §5.4); "acc": the
    highest dev accuracy, then the lowest dev loss."""
    if select_by == "loss":
        return (dev_loss,)
    if select_by == "acc":
        return (-dev_acc, dev_loss)
    raise ValueError(f"train.select_by: 'loss' or 'acc', got {select_by!r}")


def _learn_phase(ctx: _TaskContext, phase, tasks, encoded, trainable, masks):
    """Trains on the tasks of `phase` (one task, or all for MTL) with model selection.

    Returns (trainable at the best epoch, masks with the phase's HAT masks accumulated, the
    share of the phase's epochs trained by this call: 1, or less when it went on from a saved
    state).
    """
    cfg, method = ctx.cfg, ctx.method
    T, t = len(tasks), phase[-1]
    joint = len(phase) > 1
    if joint:
        train_enc, train_ids = batching.concat_tasks([encoded[u]["train"] for u in phase])
        name = f"joint({len(phase)} tasks)"
        epochs = max(epochs_for(cfg, tasks[u].name) for u in phase)
        key_index = T  # a key stream of its own, apart from every task's
    else:
        train_enc, train_ids = encoded[t]["train"], None
        name = tasks[t].name
        epochs = epochs_for(cfg, name)
        key_index = t
    bs = cfg.train.batch_size
    per_epoch = batching.num_batches(len(train_enc), bs)
    total = per_epoch * epochs
    # begin_task: fresh moments, committed to the mesh like the step's output (else Adam's
    # step count, made outside it, makes the first step of every task compile the step anew)
    opt_state = ctx.dp.replicate(ctx.tx.init(trainable))
    tid = jnp.int32(t)
    s_max = cfg.hat.s_max
    reg_weight = cfg.hat.reg_weight if method.hat else 0.0
    best, best_key, best_epoch, best_scores = None, (math.inf,), -1, (math.nan, math.nan)
    g_step, first = 0, 0
    ctx.progress.start_phase()
    saved = ctx.progress.restore(t, trainable, opt_state)
    if saved is not None:  # a crash or Ctrl-C stopped this phase after `saved.epoch` epochs
        first, g_step = saved.epoch, saved.g_step
        trainable, opt_state = ctx.dp.replicate(saved.trainable), ctx.dp.replicate(saved.opt_state)
        best = None if saved.best is None else ctx.dp.replicate(saved.best)
        best_key, best_epoch, best_scores = saved.best_key, saved.best_epoch, saved.best_scores
        log.info("task %d/%d %s: going on after epoch %d/%d (its saved training state)",
                 t + 1, T, name, first, epochs)  # fmt: skip
    for epoch in range(first, epochs):
        rng = np.random.default_rng([cfg.seed, key_index, epoch])
        ep_key = jax.random.fold_in(jax.random.fold_in(ctx.train_key, key_index), epoch)
        t0 = time.perf_counter()
        sums = {"loss": 0.0, "correct": 0.0, "n": 0.0}
        last_log = t0
        pending: list[dict[str, jax.Array]] = []
        batches = batching.train_batches(train_enc, bs, cfg.train.buckets, rng, train_ids)
        for j, batch in enumerate(batches):
            s = (s_max - 1.0 / s_max) * j / per_epoch + 1.0 / s_max  # spec §5.2, per epoch
            lr = optim.learning_rate(cfg.train, g_step, total)
            trainable, opt_state, m = ctx.train_step(
                trainable, opt_state, ctx.frozen, ctx.dp.shard(batch), tid, jnp.float32(s),
                jnp.float32(lr),
                masks, jax.random.fold_in(ep_key, j),
            )  # fmt: skip
            g_step += 1
            pending.append(m)  # read later: a read now would stall an accelerator every step
            if time.perf_counter() - last_log > _PROGRESS_EVERY_S:
                _add_metrics(sums, pending)
                last_log = time.perf_counter()
                log.info(
                    "task %d/%d %s epoch %d/%d step %d/%d: loss %.4f | %.1f ex/s",
                    t + 1, T, name, epoch + 1, epochs, j + 1, per_epoch,
                    sums["loss"] / max(sums["n"], 1.0), sums["n"] / (last_log - t0),
                )  # fmt: skip
        _add_metrics(sums, pending)
        dt = time.perf_counter() - t0
        dev_ce, dev_acc = _dev_scores(ctx, trainable, encoded, phase)
        _release_heap()  # after the epoch's compilations, if any
        dev_loss = dev_ce
        if method.hat:
            g1, g2 = ctx.gates(trainable, ctx.frozen, tid)
            dev_loss += reg_weight * float(hat.regulariser(g1, g2, masks))
        n = max(sums["n"], 1.0)
        log.info(
            "task %d/%d %s epoch %d/%d: loss %.4f train acc %.3f | dev loss %.4f acc %.3f | "
            "%.1f ex/s",
            t + 1, T, name, epoch + 1, epochs, sums["loss"] / n, sums["correct"] / n, dev_loss,
            dev_acc, sums["n"] / dt,
        )  # fmt: skip
        ctx.writer.write(
            "epoch", task=t, epoch=epoch, loss=sums["loss"] / n, train_acc=sums["correct"] / n,
            dev_loss=dev_loss, dev_acc=dev_acc, examples_per_s=sums["n"] / dt,
        )  # fmt: skip
        key = selection_key(cfg.train.select_by, dev_loss, dev_acc)
        if key < best_key:
            best_key, best_epoch, best_scores = key, epoch, (dev_loss, dev_acc)
            best = jax.tree.map(jnp.copy, trainable)  # the step donates `trainable`
        if epoch + 1 < epochs and ctx.progress.due():
            ctx.progress.save(t, PhaseState(epoch + 1, g_step, trainable, opt_state, best,
                                            best_key, best_epoch, best_scores))  # fmt: skip
    if best is None:  # NaN < x is False: every epoch's dev loss was NaN
        raise FloatingPointError(
            f"task {t + 1}/{T} {name}: the dev loss was not a number after every epoch "
            "(training diverged); try a lower train.lr"
        )
    log.info("task %d/%d %s: best epoch %d by dev %s (dev loss %.4f, acc %.3f)", t + 1, T, name,
             best_epoch + 1, cfg.train.select_by, *best_scores)  # fmt: skip
    ctx.writer.write("select", task=t, epoch=best_epoch, by=cfg.train.select_by,
                     dev_loss=best_scores[0], dev_acc=best_scores[1])  # fmt: skip
    share = (epochs - first) / epochs
    if not method.hat:
        return best, masks, share
    g1, g2 = ctx.gates(best, ctx.frozen, tid)
    # How binary the task's gates ended: a mid gate protects its weights and isolates earlier
    # tasks only in part (README "LayerNorms and HAT's drift").
    summary = hat.gate_summary(g1, g2)
    masks = hat.accumulate(masks, g1, g2)
    # What the tasks so far hold of the TSM: a unit held (>= 0.99) by an earlier task is frozen
    # for every later one, so "free" is what the next task can still train fully.
    held = hat.gate_summary(masks.m1, masks.m2)
    log.info("task %d/%d %s: HAT gates at s_max: %.1f%% open, %.1f%% closed, %.1f%% in between; "
             "tasks so far hold %.1f%% of the units, %.1f%% in part, %.1f%% free",
             t + 1, T, name, 100 * summary["open"], 100 * summary["closed"],
             100 * summary["mid"], 100 * held["open"], 100 * held["mid"],
             100 * held["closed"])  # fmt: skip
    ctx.writer.write("gates", task=t, **summary, held=held["open"], held_in_part=held["mid"],
                     free=held["closed"])  # fmt: skip
    return best, masks, share


def _dev_scores(ctx: _TaskContext, trainable, encoded, phase) -> tuple[float, float]:
    """(mean dev CE, dev accuracy) over the dev sets of the phase's tasks, pooled by example."""
    ce = correct = n = 0.0
    for u in phase:
        enc = encoded[u]["dev"]
        res = ctx.evaluate(trainable, enc, u)
        ce += res["ce"] * len(enc)
        correct += res["acc"] * len(enc)
        n += len(enc)
    return ce / max(n, 1.0), correct / max(n, 1.0)
