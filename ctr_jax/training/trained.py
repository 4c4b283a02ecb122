"""A finished run's model, rebuilt from its folder for analysis (transfer, drift, gate probes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ctr_jax.checkpoint import TaskCheckpointer
from ctr_jax.config import ConfigError, ExperimentConfig, from_dict, with_legacy_values
from ctr_jax.data.tasks import Task
from ctr_jax.data.tokenize import Encoded, TextEncoder
from ctr_jax.methods import Method, get_method
from ctr_jax.models import hat
from ctr_jax.models.bert import resolve_backbone
from ctr_jax.training import rundir
from ctr_jax.training.loop import build_model, load_tasks
from ctr_jax.training.snapshot import saveable, unflat


@dataclasses.dataclass
class TrainedRun:
    """A run folder's model at one task checkpoint, rebuilt for analysis (``load_trained``)."""

    cfg: ExperimentConfig
    method: Method
    tasks: list[Task]
    encoded: list[dict[str, Encoded]]  # per task: "train" / "dev" / "test"
    graphdef: nnx.GraphDef
    trainable: nnx.State
    frozen: nnx.State
    masks: hat.HatMasks
    acc: np.ndarray  # [T, T] as in results.json, NaN where not evaluated
    mf1: np.ndarray
    last_task: int  # index of the task (phase) after which the state was saved


def load_trained(run_dir: Path, task: int | None = None) -> TrainedRun:
    """Rebuilds a run folder's model from its config.json and the checkpoint after task `task`
    (0-based; None = the newest).

    Raises ConfigError naming the folder if it has no config.json or no finished task, or if
    the run keeps no checkpoint after `task` (it names those it keeps).
    """
    run_dir = Path(run_dir)
    raw = rundir.read_run_config(run_dir)
    cfg = from_dict(ExperimentConfig, with_legacy_values(raw["config"]))
    method = get_method(cfg.method)
    tasks = load_tasks(cfg)
    backbone = resolve_backbone(cfg.model.backbone)
    text = TextEncoder(backbone, cfg.data.max_len)
    encoded = [{s: text.encode(task.split(s)) for s in ("train", "dev", "test")} for task in tasks]
    graphdef, trainable, frozen = build_model(cfg, method, tasks, backbone)
    P, D = trainable["plugins"]["w2"][...].shape[0], trainable["plugins"]["w2"][...].shape[2]
    T = len(tasks)
    empty = np.full((T, T), np.nan)
    run = TrainedRun(
        cfg, method, tasks, encoded, graphdef, trainable, frozen,
        hat.HatMasks.zeros(P, cfg.model.tsm_width, D), empty, empty, -1,
    )  # fmt: skip
    return restore_task(run, run_dir, task)


def restore_task(run: TrainedRun, run_dir: Path, task: int | None = None) -> TrainedRun:
    """`run` with its state (trainable, masks, matrices) read from the checkpoint of `run_dir`
    after task `task` (None = the newest): another task's state of the same rebuilt model.

    Raises ConfigError as ``load_trained``.
    """
    checkpoints = Path(run_dir) / "checkpoints"
    with TaskCheckpointer(checkpoints) as ckpt:
        kept = ckpt.all_tasks()
        if not kept:
            raise ConfigError(f"{checkpoints}: no finished task to analyse")
        last = kept[-1] if task is None else task
        if last not in kept:
            raise ConfigError(
                f"{checkpoints}: no checkpoint after task {task} (0-based); the run keeps "
                f"those after tasks {kept}"
            )
        like = saveable(run.trainable, run.masks, run.acc, run.mf1, jax.random.key(run.cfg.seed))
        state, _ = ckpt.restore(last, like)
    return dataclasses.replace(
        run,
        trainable=unflat(run.trainable, state["trainable"]),
        masks=hat.HatMasks(
            m1=jnp.asarray(state["masks"]["m1"]), m2=jnp.asarray(state["masks"]["m2"])
        ),
        acc=np.array(state["acc"]),
        mf1=np.array(state["mf1"]),
        last_task=last,
    )
