"""Experiment configuration: frozen dataclasses, a strict YAML loader and dotted overrides.

Defaults live here and nowhere else; a YAML file only overrides them. Every key is checked: an
unknown key or a value of the wrong type raises ``ConfigError`` naming the dotted key (and the
file it came from). Values that can be derived (the run folder, the number of tasks) are
properties or are computed by the loop; nothing writes back into a loaded config.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from ctr_jax.data.benchmarks import NUM_ORDERS
from ctr_jax.methods import METHODS


class ConfigError(ValueError):
    """A configuration problem; the message names the key (and file) at fault."""


# Keys (dotted paths) that never change results beyond float summation order: logging, devices,
# padded lengths (padding is masked everywhere, tests/test_plugins.py; not under the torch
# routing layout, see BATCHING_KEYS) and how the encoder's
# layer loop is compiled. A run may resume with other values for them. (With
# model.eval_router_noise on, the evaluation's noise draws follow its batches, so the eval
# batching keys move those draws; off, the default, they change nothing.)
UNFINGERPRINTED = (
    "log_level",
    "parallel",
    "train.buckets",
    "train.eval_max_tokens",
    "model.scan_unroll",
    "model.remat",
    "train.deterministic",
    "train.keep_checkpoints",
    "train.epoch_checkpoint_s",
)
# Under model.routing_layout="torch" a batch's size, composition and padded length change every
# output (spec §3.5), so the batching keys are part of what a run's results depend on.
BATCHING_KEYS = ("train.buckets", "train.eval_max_tokens")

# Benchmarks whose data depend on data.seed (DSC small's 200-review subsets, the 20News split);
# data.max_train_examples's subsample does too, on any benchmark.
SEEDED_DATA_BENCHMARKS = ("dsc_small", "20news")


def data_seed_used(benchmark: str, max_train_examples: int | None) -> bool:
    """Whether data.seed changes a run's data (else any value gives the same examples)."""
    return benchmark in SEEDED_DATA_BENCHMARKS or max_train_examples is not None


def _legacy_data_seed(saved: dict[str, Any]) -> int:
    data = saved.get("data", {})
    used = data_seed_used(data.get("benchmark", "asc"), data.get("max_train_examples"))
    return int(saved.get("seed", 0)) if used else 0


# Keys added after run folders were made, whose default is not what those runs did: a saved
# config.json that lacks one of them ran with this value (or the value this function of the
# saved config gives), not with today's default; resume, analysis and the report read it so.
# model.pooling: before the key existed the heads read BERT's pooler; its default is "auto" now.
# data.seed: before it existed the run's seed picked the data where data.seed now does.
# train.layernorm_lr_scale: before it existed the LayerNorms trained at the shared lr (1); its
# default is 0.05 now.
LEGACY_VALUES: dict[str, Any] = {
    "model.pooling": "pooler",
    "data.seed": _legacy_data_seed,
    "train.layernorm_lr_scale": 1.0,
}


def with_legacy_values(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved run config (config.json's "config") with every ``LEGACY_VALUES`` key it lacks
    filled in with the value such a run used. Returns a new dict."""
    out = copy.deepcopy(saved)
    for key, value in LEGACY_VALUES.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = value(saved) if callable(value) else value
    return out


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # Which task stream: one of the paper's benchmarks, or "custom" (folders of JSONL, see docs).
    benchmark: Literal["asc", "dsc_small", "dsc_full", "20news", "custom"] = "asc"
    # Data root; the environment variable CTR_JAX_DATA_ROOT overrides it. None -> ../shared/data.
    root: str | None = None
    # Task order index (0..4) of the benchmark (spec §7); ignored for custom streams.
    order: int = 0
    # Learn only the first k tasks of the order (quick runs). None = all.
    num_tasks: int | None = None
    # For benchmark "custom": the task folder names in learning order (None = sorted folder names).
    custom_tasks: tuple[str, ...] | None = None
    # Keep at most this many training examples per task (a random subset by data.seed). None = all.
    max_train_examples: int | None = None
    # The data seed: DSC small's 200-review subsets, the 20News split and the max_train_examples
    # subsample (the original's data_seed, 0 in the paper's runs, spec §5.6). Apart from the
    # run's `seed` (weights, dropout, batch order, router noise), so a seed sweep trains every
    # seed on the same examples. Until 2026-12-04 the run's seed picked these too.
    seed: int = 0
    # Wordpieces per example including [CLS]/[SEP] (spec §7).
    max_len: int = 128


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    # Hugging Face BERT folder, hub id, or None for the packaged all-MiniLM-L6-v2.
    backbone: str | None = None
    # Width of the task-specific module (HAT MLP D -> A -> D); spec §3.4 uses 2000.
    tsm_width: int = 2000
    # Task-capsule depth: 1 (D -> C) or 2 (D -> capsule_hidden -> C, no nonlinearity), spec §3.1.
    # 1 is the original code's CTR and B-CL default (`--baseline ctr`, spec §11). With 2 (the
    # paper's text, our default until 2026-12-01) two small N(0, 0.02) factors and the squash,
    # quadratic near 0, shrink the capsules so far that on the default backbone the capsules,
    # routing matrices, similarity CNN and router of 11 of 12 plugins got gradients 10-10^4x
    # below Adam's eps over a 3-task ASC run and never trained (README "What the
    # knowledge-sharing module does"); with 1 they train.
    capsule_layers: Literal[1, 2] = 1
    capsule_hidden: int = 100
    # Capsule dimension C and number of transfer capsules N (spec §3, both 3).
    capsule_dim: int = 3
    num_transfer_caps: int = 3
    # Similarity-estimator CNN: filters per kernel size and the kernel sizes.
    cnn_filters: int = 100
    cnn_kernels: tuple[int, ...] = (3, 4, 5)
    # What the task heads read: "pooler" = BERT's pooled output tanh(h[CLS] W_p + b_p) (spec §2);
    # "mean" = the mean of the last hidden states over real tokens; "cls" = h[CLS]; "auto" = the
    # pooling the backbone folder declares in a sentence-transformers 1_Pooling/config.json,
    # else "pooler" (so bert-base-uncased keeps the spec's pooler). all-MiniLM-L6-v2 declares
    # "mean", and its BERT pooler was never trained (bias exactly 0, weight RMS 0.009, singular
    # values 0.35 down to 1e-4); reading it kept the heads on the majority class for longer
    # (README "The pooler of the default backbone"). "auto" is the default since 2026-12-01;
    # every earlier figure read the pooler.
    pooling: Literal["auto", "pooler", "mean", "cls"] = "auto"
    # Evaluate with Gumbel noise in the task router, as the original code does (spec §10.5).
    eval_router_noise: bool = False
    # Gumbel-softmax temperature of the task router.
    router_tau: float = 1.0
    # Std of the normal init of the HAT gate embeddings e (TSM masks of CTR, B-CL and HAT).
    # 0.02: the original code (HF re-initialises them, spec §4, §13.11); 1.0: the HAT paper.
    # With 0.02, s_max * e starts within a few units of 0, and 3-epoch ASC runs end with about
    # 40% of the gates between 0.01 and 0.99 (README "How binary HAT's gates end").
    hat_embedding_std: float = 0.02
    # The knowledge-sharing module's output projection N*C -> D (W_big, b_big) of CTR and B-CL.
    # "shared": one per plugin, trained by every task (the original's `larger_as_share`, its
    # default, spec §10.12). "per_task": one per plugin and task (`larger_as_list`, which the
    # original's 20News script and B-CL's code used); task t reads and trains its own, and an
    # earlier task's is frozen like its head, so the projection cannot move what the module
    # gives an earlier task (at the paper's epochs on ASC the shared one was part of what
    # flipped an earlier task, docs/FINDINGS.md).
    ksm_projection: Literal["shared", "per_task"] = "shared"
    # CTR only: the tensor layout of transfer routing (spec §3.5, Appendix A). "semantic": the
    # method as described, every example routed from its own capsules, padding masked.
    # "torch": the original code's row-major reshapes, which mix tokens, capsule dims, tasks and
    # the examples of a batch, and pool over padding; its outputs depend on the batch's size,
    # composition and padded length (train.buckets=[128] pads as the original does). The
    # paper's numbers came from that code.
    routing_layout: Literal["semantic", "torch"] = "semantic"
    # B-CL only: iterations of its dynamic routing (spec §9.3).
    routing_iters: int = 3
    # Matmul dtype of the frozen encoder's dense layers ("bfloat16" on GPU/TPU: about 2x faster
    # there). Accumulation, LayerNorms, plugins, masks and optimizer state stay float32.
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    # Encoder layers per iteration of its layer scan: 1 compiles one layer (fastest compile,
    # least compiler memory); the layer count unrolls it fully (benchmarks/RESULTS.md).
    scan_unroll: int = 1
    # Recompute each encoder layer's activations in the backward pass instead of keeping them
    # (jax.checkpoint): CTR's peak memory on CPU falls from 4.6 to 2.7 GB (benchmark process,
    # every length compiled) for 12% slower training on ASC batches (benchmarks/RESULTS.md).
    remat: bool = False


@dataclasses.dataclass(frozen=True)
class HatConfig:
    s_max: float = 400.0  # final gate temperature; masks are taken at this value
    reg_weight: float = 0.75  # lambda of the mask regulariser (spec §5.1)
    clamp: float = 6.0  # |e| bound re-applied after every update (spec §5.3.6)
    cosh_clip: float = 50.0  # clip of s*e inside cosh in the gradient compensation
    # Learning-rate factor of the gate embeddings (1 = the shared lr, as the paper and the
    # original). Adam moves an element at most about lr per step, so at lr 1e-3 a few dozen
    # steps leave N(0, 0.02) embeddings near their start (README "How binary HAT's gates end").
    embedding_lr_scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # Epochs per task; None = the paper's (spec §5.4: SemEval 10, Bing 30, DSC 20, 20News 10).
    epochs: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 128
    # 1e-3, not the original 5e-5: measured on XuSemEval14_laptop (800 examples, 2 epochs) with
    # the default backbone, 5e-5 only learned the majority class (test acc 0.534), 5e-4 gave
    # 0.636 and 2e-3 0.622 (README "Status"). The original ran 10-30 epochs on bert-base.
    lr: float = 1e-3
    warmup: float = 0.1  # fraction of a task's steps spent in linear warm-up
    weight_decay: float = 0.01  # decoupled (AdamW); never on biases and LayerNorms
    clip_norm: float = 1.0  # per-tensor gradient-norm clip (as BertAdam, spec §5.3.5)
    # Keep the LayerNorms inside the transformer layers at their pretrained values (an ablation:
    # the paper and the original train them, shared by every task and protected by no mask,
    # spec §2, so they are the one place where a HAT-masked method's earlier tasks can still
    # move; README "LayerNorms and HAT's drift").
    freeze_layernorms: bool = False
    # Learning-rate factor of those LayerNorms (1 = the shared lr; 0 = frozen, as
    # freeze_layernorms). 0.05, not 1: our lr is 20x the original's 5e-5, because 5e-5 does not
    # move this small backbone's adapters in a few epochs, and the LayerNorms, which no mask
    # protects, got the 20x too; at 1 HAT forgot through them at the paper's epochs (FR 10.8 on
    # ASC order 0). 0.05 gives them the original's rate back while the adapters keep 1e-3: HAT
    # and CTR then score higher at 3 and at the paper's epochs, and NCL, which no mask guards,
    # still forgets as in the paper (docs/FINDINGS.md, "The LayerNorms' rate becomes the
    # default"). Applied after Adam, before the protection.
    layernorm_lr_scale: float = 0.05
    # Learning-rate factor of the knowledge-sharing module of CTR and B-CL: its task capsules,
    # routing matrices, similarity CNN, router and output projection (1 = the shared lr, as the
    # paper and the original). An ablation: on the default backbone the module's gradients
    # start below Adam's eps and its routed output stays a small fraction of its input
    # (docs/FINDINGS.md, "Capsule depth" and "DSC small"); a factor > 1 lets it grow faster.
    # Applied after Adam, before the protection, so frozen capsule rows stay frozen.
    ksm_lr_scale: float = 1.0
    # What of the knowledge-sharing module (CTR, B-CL) later tasks may update. "none": the
    # original code's rule (spec §10.6): task t trains capsule rows k <= t and every shared
    # weight of the module (routing matrices, similarity CNN, router, output projection), so
    # what the module gives an earlier task drifts. "past": earlier tasks' capsules and their
    # routing-matrix rows are frozen (task t trains row t only); the shared CNN, router and
    # projection still train (a per-task projection, model.ksm_projection, trains task t's own
    # row under every rule). "full": "past", and the shared weights train on the first task
    # only, so the module's output for an earlier task cannot change (its input still can,
    # through the LayerNorms and partly-open HAT gates). An ablation: at 3 epochs on ASC "past"
    # raised CTR's MF1 on orders 1-4 (+3.9 on average) and put it +1.7 Acc above HAT over five
    # runs; it does not stop B-CL's forgetting; "full" leaves the module silent
    # (docs/FINDINGS.md, "protecting the knowledge-sharing module" and the sections after it).
    # The default stays the original's rule, which the paper's figures came from.
    ksm_protect: Literal["none", "past", "full"] = "none"
    # Model selection: the epoch of each task whose weights are kept. "loss": the lowest dev
    # loss (CE + lambda R at s_max), the paper's and the original's rule (spec §5.4). "acc": the
    # highest dev accuracy, ties to the lower dev loss; an ablation: an unprotected adapter
    # (NCL, ONE) on DSC small's 200 reviews overfits within 1-2 epochs, its dev loss rises from
    # there while its dev accuracy still climbs, so "loss" keeps a near-untrained epoch
    # (docs/FINDINGS.md, "DSC small").
    select_by: Literal["loss", "acc"] = "loss"
    # Task checkpoints kept in the run folder: the newest N (null = all). A resume needs only
    # the newest; ``ctr_jax.drift`` compares any two kept ones, so keep all to trace what
    # moved an earlier task at every step (each is the trainable state: 67 MB for B-CL on
    # the default backbone with 4 tasks, growing with the task count).
    keep_checkpoints: int | None = 2
    # Within a task, save its training state (weights, optimizer moments, the best epoch so far)
    # at the end of an epoch once this many seconds passed since the task began or since the
    # last such save, so a crash or Ctrl-C loses the epochs since rather than the whole task: a
    # rerun goes on from there, with the results of a run never stopped. 0 = after every epoch;
    # null = never. Written to <run>/task_in_progress (about 3x the trainable state), removed
    # when the task's checkpoint is written.
    epoch_checkpoint_s: float | None = 600.0
    # Padded sequence lengths; every batch is padded to the smallest bucket that fits it.
    # Fine steps: ASC batches fill 76% of their padded tokens with these, 60% with (32, 64, 128),
    # for 1.35x faster CPU training; each length met compiles once (about 13 s each on CPU).
    buckets: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128)
    # Split a training batch of more padded tokens (rows x length) than this into microbatches
    # whose gradients are summed inside the step: the same update (up to float order and dropout
    # draws) with a fraction of the activation memory. e.g. 2048: batches of 32 at length 128 run
    # as 2 x 16. None = never split.
    max_batch_tokens: int | None = None
    # Evaluation batches of more padded tokens (rows x length) than this take fewer rows (32 or
    # 8 of 128): with 4096, rows of up to 32 tokens still go 128 at a time, while a 128 x 128
    # batch, whose activations took about 1 GB of CPU memory, runs as four of 32. None = never.
    eval_max_tokens: int | None = 4096
    # GPU: XLA's deterministic ops (--xla_gpu_deterministic_ops=true), so a rerun of the same
    # config on the same GPU and software gives bit-identical results (scatter-adds and other
    # atomics otherwise reorder float sums from run to run). Costs some speed; CPU runs are
    # deterministic already. run.py sets the flag before JAX starts.
    deterministic: bool = False


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    # Devices of the data-parallel mesh over the batch axis; None = every visible device. The
    # batch sizes must divide by it. Not part of the fingerprint: results do not depend on it
    # (up to float reduction order), so a run may resume on another device count.
    num_devices: int | None = None
    # Several processes (hosts): call jax.distributed.initialize() before anything touches jax.
    # The three keys below are its arguments; left at None, jax detects them from the launcher
    # (SLURM, Open MPI, TPU pods; JAX_COORDINATOR_ADDRESS for the address). Every process runs
    # the same command; process 0 writes the run folder's files, all of them write checkpoints.
    distributed: bool = False
    coordinator_address: str | None = None  # "host:port" of process 0
    num_processes: int | None = None
    process_id: int | None = None


def _at_least(lo: float) -> tuple[typing.Callable[[Any], bool], str]:
    return (lambda v: v >= lo), f">= {lo}"


def _above(lo: float) -> tuple[typing.Callable[[Any], bool], str]:
    return (lambda v: v > lo), f"> {lo}"


# Value ranges, by dotted key: a type check alone lets train.lr=-1 or train.batch_size=0 through
# to a shape error or a silent non-run deep inside JAX. None (where a key allows it) is always
# fine; a tuple's every element must be in range, and the tuple must not be empty.
RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "data.order": ((lambda v: 0 <= v < NUM_ORDERS), f"in [0, {NUM_ORDERS - 1}]"),
    "data.num_tasks": _at_least(1),
    "data.max_train_examples": _at_least(1),
    "data.seed": _at_least(0),
    "model.tsm_width": _at_least(1),
    "model.capsule_hidden": _at_least(1),
    "model.capsule_dim": _at_least(1),
    "model.num_transfer_caps": _at_least(1),
    "model.cnn_filters": _at_least(1),
    # The current-task convolution pads by k - 2 on each side (as the original), so k >= 2.
    "model.cnn_kernels": _at_least(2),
    "model.router_tau": _above(0),
    "model.hat_embedding_std": _above(0),
    "model.routing_iters": _at_least(1),
    "model.scan_unroll": _at_least(1),
    "hat.s_max": _at_least(1),  # s anneals from 1 / s_max up to s_max (spec §5.1)
    "hat.reg_weight": _at_least(0),
    "hat.clamp": _above(0),
    "hat.cosh_clip": _above(0),
    "hat.embedding_lr_scale": _at_least(0),
    "train.epochs": _at_least(1),
    "train.batch_size": _at_least(1),
    "train.eval_batch_size": _at_least(1),
    "train.lr": _above(0),
    "train.warmup": ((lambda v: 0 <= v <= 1), "in [0, 1]"),
    "train.weight_decay": _at_least(0),
    "train.ksm_lr_scale": _at_least(0),
    "train.layernorm_lr_scale": _at_least(0),
    "train.clip_norm": _above(0),
    "train.keep_checkpoints": _at_least(1),
    "train.epoch_checkpoint_s": _at_least(0),
    "train.buckets": _at_least(1),
    "train.max_batch_tokens": _at_least(1),
    "train.eval_max_tokens": _at_least(1),
    "parallel.num_devices": _at_least(1),
    "parallel.num_processes": _at_least(1),
    "parallel.process_id": _at_least(0),
}


def _dotted(cfg: ExperimentConfig, key: str) -> Any:
    """The value of dotted key `key` ("train.lr") in a built config."""
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def check_ranges(cfg: ExperimentConfig) -> None:
    """Raises ConfigError naming the first key of ``RANGES`` whose value is out of range."""
    for key, (ok, what) in RANGES.items():
        value = _dotted(cfg, key)
        if value is None:
            continue
        items = value if isinstance(value, tuple) else (value,)
        if not items or not all(ok(v) for v in items):
            need = f"a non-empty list of values {what}" if isinstance(value, tuple) else what
            raise ConfigError(f"{key}: must be {need}, got {_to_plain(value)!r}")


# Settings of a module some methods lack (learning-rate factors, protection rules): key ->
# (whether a method has the module, what the module is). A method without the module must keep
# the key's default.
METHOD_MODULE_KEYS: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "train.ksm_lr_scale": (lambda m: m.ksm is not None, "knowledge-sharing module"),
    "train.ksm_protect": (lambda m: m.ksm is not None, "knowledge-sharing module"),
    "model.ksm_projection": (lambda m: m.ksm is not None, "knowledge-sharing module"),
    "model.routing_layout": (lambda m: m.ksm == "transfer", "transfer routing"),
    "hat.embedding_lr_scale": (lambda m: bool(m.hat), "HAT gates"),
}


def _default(key: str) -> Any:
    """The dataclass default of dotted config key `key` ("train.lr")."""
    section, leaf = key.split(".")
    field = {f.name: f for f in dataclasses.fields(ExperimentConfig)}[section]
    return getattr(field.default_factory(), leaf)


def key_applies(method: str, key: str) -> bool:
    """False for a dotted config key that sets a module `method` lacks (its value has nothing
    to act on), True for every other key."""
    if key not in METHOD_MODULE_KEYS or method not in METHODS:
        return True
    has, _ = METHOD_MODULE_KEYS[key]
    return has(METHODS[method])


def check_method_keys(cfg: ExperimentConfig) -> None:
    """Raises ConfigError for a key set away from its default that the config's method has
    nothing to apply to (a learning-rate factor or protection rule for a module it lacks),
    instead of a run that silently ignores it."""
    for key, (_, what) in METHOD_MODULE_KEYS.items():
        value = _dotted(cfg, key)
        if not key_applies(cfg.method, key) and value != _default(key):
            raise ConfigError(f"{key}: method {cfg.method!r} has no {what}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = "ctr"
    # The CL method (ctr_jax/methods.py): ctr, bcl (B-CL), hat, ncl, one, mtl.
    method: Literal["ctr", "bcl", "hat", "ncl", "one", "mtl"] = "ctr"
    seed: int = 0
    # Parent folder of run folders; the run writes to <runs_dir>/<name>/.
    runs_dir: str = "runs"
    log_level: Literal["DEBUG", "INFO", "WARNING"] = "INFO"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    hat: HatConfig = dataclasses.field(default_factory=HatConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)

    def __post_init__(self) -> None:
        check_ranges(self)
        check_method_keys(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @property
    def data_seed(self) -> int | None:
        """data.seed where it changes the run's data (``data_seed_used``), else None."""
        used = data_seed_used(self.data.benchmark, self.data.max_train_examples)
        return self.data.seed if used else None

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def results_dict(self) -> dict[str, Any]:
        """to_dict() without the keys that do not change results (log level, devices)."""
        d = self.to_dict()
        for key in UNFINGERPRINTED:
            if self.model.routing_layout == "torch" and key in BATCHING_KEYS:
                continue
            *parents, leaf = key.split(".")
            node = d
            for name in parents:
                node = node[name]
            node.pop(leaf)
        return d

    def fingerprint(self) -> str:
        """A hash of everything that changes results (not the log level or device count)."""
        d = self.results_dict()
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _to_plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return [_to_plain(v) for v in x]
    return x


def _check_value(tp: Any, value: Any, key: str) -> Any:
    """Validates `value` against type `tp`; returns it converted (lists -> tuples)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key + ".")
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool) != any(
            isinstance(a, bool) for a in typing.get_args(tp)
        ):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_value(a, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {tp}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_check_value(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads "5e-5" (no dot) as a string; accept what float() accepts.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - schema bug


def from_dict(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    """Builds dataclass `cls` from nested dicts; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(raw) - names):
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; "
            f"valid keys here: {sorted(prefix + n for n in names)}"
        )
    return cls(**{k: _check_value(hints[k], v, prefix + k) for k, v in raw.items()})


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key.path=value")
    key, text = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(text) if text.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies `a.b=c` overrides (values parsed as YAML) to a nested dict copy."""
    out = json.loads(json.dumps(raw))
    for item in overrides:
        path, value = _parse_override(item)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[path[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None):
    """Loads a YAML config (optional) plus `key=value` overrides into an ExperimentConfig."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config ({e.strerror})") from e
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    raw = apply_overrides(raw, overrides or [])
    try:
        return from_dict(ExperimentConfig, raw)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
