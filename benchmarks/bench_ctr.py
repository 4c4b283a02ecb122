"""Throughput, compile time and peak memory of the train / eval steps (run by hand, not in CI).

    python benchmarks/bench_ctr.py                      # the full table (issue 6)
    python benchmarks/bench_ctr.py --methods ctr --capacity 19 --padding fine --remat on

Every row runs in a fresh subprocess so its peak RSS is its own. Batches are real ASC batches
(default backbone, order 0 training sets pooled, batch 32; eval: test sets, batch 128), either
padded to the smallest bucket of (16, 24, 32, 48, 64, 96, 128) ("fine", TrainConfig.buckets'
default), of (32, 64, 128) ("coarse", the default before 2026-11-25; "bucketed" in older tables of
RESULTS.md) or all to 128 ("128"). A row first compiles every padded length it will meet
(compile_s is that total, train + eval), then times `--steps` train steps and the eval batches
over the same mix of lengths.

Columns: method, capacity T (task slots in the model; the current task is T - 1, so the KSM of
CTR and B-CL works over all T tasks), padding, compile_s, train_ex_s, eval_ex_s, peak_rss_mb
(host), device_peak_mb (accelerator memory high-water mark, from the allocator; "-" on CPU),
train_gflop_s (XLA's flop count of the timed train steps, counted on the fully unrolled layer
loop without remat's recomputation, over their time: how hard the step drives the machine; the
header line gives a large float32 matmul's rate on the same machine for scale).
Prints a Markdown table; --json writes the rows too.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time

PADDINGS = {  # --padding choices: the padded lengths a batch may get
    "fine": (16, 24, 32, 48, 64, 96, 128),  # TrainConfig.buckets' default
    "coarse": (32, 64, 128),  # fewer compilations, more padding
    "128": (128,),  # the original's fixed padding
}
ROW_FIELDS = ("method", "capacity", "width", "padding", "dtype", "max_tokens", "eval_max_tokens",
              "unroll", "remat", "pooling", "layout",
              "compile_s", "train_ex_s", "eval_ex_s", "peak_rss_mb", "device_peak_mb",
              "train_gflop_s")  # fmt: skip


def _batches(padding: str, n_train: int, n_eval: int, eval_max_tokens: int | None):
    """Real ASC batches: (train batches of 32, eval batches of up to 128 rows)."""
    import numpy as np

    from ctr_jax.data import batching
    from ctr_jax.data.benchmarks import load_benchmark
    from ctr_jax.data.tasks import resolve_data_root
    from ctr_jax.data.tokenize import TextEncoder
    from ctr_jax.models.bert import resolve_backbone

    tasks = load_benchmark("asc", resolve_data_root(None), 0)
    text = TextEncoder(resolve_backbone(None), 128)
    buckets = PADDINGS[padding]
    rng = np.random.default_rng(0)
    train = []
    for task in tasks:  # a few batches of every task: the run's mix of lengths
        enc = text.encode(task.split("train"))
        train += list(batching.train_batches(enc, 32, buckets, rng))[:3]
    # Eval: all test sets pooled, so every batch is full (the step cost does not depend on the
    # task id; a short last batch of one task would time padding rows instead).
    test, _ = batching.concat_tasks([text.encode(t.split("test")) for t in tasks])
    evals = [
        b
        for b, _ in batching.eval_batches(test, 128, buckets, max_tokens=eval_max_tokens)
        if b.weight.sum() == b.weight.shape[0]  # full batches of their row size
    ]
    order = rng.permutation(len(train))[:n_train]
    eval_order = rng.permutation(len(evals))[:n_eval]
    return [train[i] for i in order], [evals[i] for i in eval_order]


def _matmul_gflop_s(n: int = 2048, reps: int = 10) -> float:
    """A large float32 matmul's rate: what this machine's BLAS-level kernels reach."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    jax.block_until_ready(mm(a))
    t0 = time.perf_counter()
    for _ in range(reps):
        out = mm(a)
    jax.block_until_ready(out)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def run_row(
    method: str,
    capacity: int,
    padding: str,
    steps: int,
    dtype: str,
    width: int,
    max_tokens: int | None = None,
    unroll: int = 1,
    remat: bool = False,
    eval_max_tokens: int | None = None,
    pooling: str = "pooler",
    layout: str = "semantic",
) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ctr_jax.config import HatConfig, ModelConfig, TrainConfig
    from ctr_jax.methods import get_method
    from ctr_jax.models import hat
    from ctr_jax.models.bert import load_pretrained, resolve_backbone
    from ctr_jax.models.classifier import CTRClassifier
    from ctr_jax.training import optim, step
    from ctr_jax.training.loop import _cast_kernels

    m = get_method(method)
    routing = dict(routing_layout=layout) if m.ksm == "transfer" else {}
    cfg = ModelConfig(tsm_width=width, compute_dtype=dtype, pooling=pooling, **routing)
    encoder = load_pretrained(resolve_backbone(None))
    model = CTRClassifier(encoder, [3] * capacity, cfg, ksm=m.ksm, use_hat=m.hat, rngs=nnx.Rngs(0))
    if dtype != "float32":
        model.encoder.set_compute_dtype(dtype)
    model.encoder.scan_unroll = unroll
    model.encoder.remat = remat
    graphdef, trainable, frozen = step.split_model(model)
    frozen = _cast_kernels(frozen, dtype)
    train_cfg, hat_cfg = TrainConfig(), HatConfig()
    tx = optim.make_optimizer(train_cfg, optim.decay_mask(trainable))

    def train_fn(graphdef_):
        fn = step.make_train_step(graphdef_, tx, hat_cfg, use_hat=m.hat, max_tokens=max_tokens)
        return jax.jit(fn, donate_argnums=(0, 1))

    train_step = train_fn(graphdef)
    eval_step = jax.jit(step.make_eval_step(graphdef, hat_cfg, False))
    P, D = 2 * encoder.config.num_hidden_layers, encoder.config.hidden_size
    masks = hat.HatMasks.zeros(P, width, D)
    opt_state = tx.init(trainable)
    tid = jnp.int32(capacity - 1)
    train, evals = _batches(padding, steps, max(4, steps // 2), eval_max_tokens)
    args = (tid, jnp.float32(1.0), jnp.float32(1e-5), masks)

    t0 = time.perf_counter()
    for width_ in sorted({b.input_ids.shape[1] for b in train}):  # compile every length once
        b = next(b for b in train if b.input_ids.shape[1] == width_)
        trainable, opt_state, met = train_step(trainable, opt_state, frozen, b, *args,
                                               jax.random.key(0))  # fmt: skip
        jax.block_until_ready(met)
    for width_ in sorted({b.input_ids.shape[1] for b in evals}):
        b = next(b for b in evals if b.input_ids.shape[1] == width_)
        jax.block_until_ready(eval_step(trainable, frozen, b, tid, jax.random.key(0)))
    compile_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    n = 0
    for i, b in enumerate(train):
        trainable, opt_state, met = train_step(trainable, opt_state, frozen, b, *args,
                                               jax.random.key(i))  # fmt: skip
        n += int(b.weight.sum())
    jax.block_until_ready(met)
    train_s = time.perf_counter() - t0
    train_ex_s = n / train_s
    t0 = time.perf_counter()
    n = 0
    for b in evals:
        out = eval_step(trainable, frozen, b, tid, jax.random.key(0))
        n += int(b.weight.sum())
    jax.block_until_ready(out)
    eval_ex_s = n / (time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # XLA counts a scan body once, not once per layer: count on the unrolled graph (lowering
    # only), without remat's recomputation, so rows compare by the work the step needs.
    model.encoder.scan_unroll, model.encoder.remat = encoder.config.num_hidden_layers, False
    counting = train_fn(nnx.split(model, step.TRAINABLE, ...)[0])
    flops = {}
    for b in train:
        if b.input_ids.shape[1] not in flops:
            lowered = counting.lower(trainable, opt_state, frozen, b, *args, jax.random.key(0))
            flops[b.input_ids.shape[1]] = lowered.cost_analysis()["flops"]
    gflop_s = sum(flops[b.input_ids.shape[1]] for b in train) / train_s / 1e9
    stats = jax.local_devices()[0].memory_stats() or {}  # None on CPU
    dev_peak = round(stats["peak_bytes_in_use"] / 2**20) if "peak_bytes_in_use" in stats else "-"
    return dict(method=method, capacity=capacity, width=width, padding=padding, dtype=dtype,
                max_tokens=max_tokens, eval_max_tokens=eval_max_tokens, unroll=unroll,
                remat=remat, pooling=pooling, layout=cfg.routing_layout if routing else "-",
                compile_s=round(compile_s, 1), train_ex_s=round(train_ex_s, 1),
                eval_ex_s=round(eval_ex_s, 1), peak_rss_mb=round(peak),
                device_peak_mb=dev_peak, train_gflop_s=round(gflop_s, 1))  # fmt: skip


def main() -> None:
    from ctr_jax.runtime import apply_xla_defaults

    apply_xla_defaults()  # run.py's XLA flags; rows run in subprocesses that inherit them
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["ctr", "ncl"])
    p.add_argument("--capacity", type=int, nargs="+", default=[1, 5, 10, 19])
    p.add_argument("--padding", nargs="+", default=["fine", "128"], choices=list(PADDINGS))
    p.add_argument("--dtype", nargs="+", default=["float32"])
    p.add_argument("--steps", type=int, default=12, help="timed train steps per row")
    p.add_argument("--tsm-width", type=int, default=2000)
    p.add_argument("--max-tokens", type=int, help="train.max_batch_tokens (microbatching)")
    p.add_argument(
        "--eval-max-tokens",
        type=int,
        default=4096,
        help="train.eval_max_tokens (default 4096, as the config; 0 = no cap)",
    )
    p.add_argument("--unroll", type=int, default=1, help="model.scan_unroll")
    p.add_argument(
        "--remat",
        choices=["on", "off"],
        default="off",
        help="model.remat (default off, as the config)",
    )
    p.add_argument(
        "--pooling",
        nargs="+",
        default=["pooler"],
        choices=["pooler", "mean", "cls"],
        help="model.pooling (default pooler, as the tables before 2026-12-01; a run's "
        "default, auto, reads the mean on the default backbone, at the same speed)",
    )
    p.add_argument(
        "--routing-layout",
        nargs="+",
        default=["semantic"],
        choices=["semantic", "torch"],
        help="model.routing_layout of CTR rows (other methods have no transfer routing)",
    )
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--row", help=argparse.SUPPRESS)  # internal: one row, in this process
    args = p.parse_args()
    if args.row:
        r = json.loads(args.row)
        print("ROW " + json.dumps(run_row(**r)))
        return
    import jax

    print(f"devices: {jax.devices()}; cpus: {os.cpu_count()}; "
          f"float32 matmul 2048^3: {_matmul_gflop_s():.0f} GFLOP/s; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)  # fmt: skip
    print("| " + " | ".join(ROW_FIELDS) + " |\n|" + "---|" * len(ROW_FIELDS), flush=True)
    rows = []
    for method in args.methods:
        # Capacity only changes the KSM; an adapter baseline is measured once, at the largest.
        caps = args.capacity if method in ("ctr", "bcl") else [max(args.capacity)]
        for cap in caps:
            for padding in args.padding:
                layouts = args.routing_layout if method == "ctr" else ["semantic"]
                for dtype, pooling, layout in itertools.product(args.dtype, args.pooling, layouts):
                    spec = dict(method=method, capacity=cap, padding=padding, steps=args.steps,
                                dtype=dtype, pooling=pooling, width=args.tsm_width, layout=layout,
                                max_tokens=args.max_tokens, unroll=args.unroll,
                                eval_max_tokens=args.eval_max_tokens or None,
                                remat=args.remat == "on")  # fmt: skip
                    proc = subprocess.run(
                        [sys.executable, __file__, "--row", json.dumps(spec)],
                        capture_output=True, text=True,
                    )  # fmt: skip
                    line = [x for x in proc.stdout.splitlines() if x.startswith("ROW ")]
                    if proc.returncode or not line:
                        print(f"row {spec} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                        continue
                    row = json.loads(line[0][4:])
                    rows.append(row)
                    print("| " + " | ".join(str(row[k]) for k in ROW_FIELDS) + " |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
