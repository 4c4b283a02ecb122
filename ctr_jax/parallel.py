"""Data parallelism over the batch axis with ``jax.sharding``.

One mesh axis, "data", over the devices the run uses. Parameters, optimizer state, masks and the
frozen encoder are replicated; every batch is a global array split over "data" along its first
axis. The jitted steps are unchanged: XLA partitions them from these shardings (the loss sums
over the batch become all-reduces), so the same code runs on 1 CPU, several local GPUs / TPU cores
or several hosts. On several hosts (``parallel.distributed: true``) ``init_distributed`` connects
them before jax starts (its arguments come from the config or the launcher's environment, e.g.
SLURM or a TPU pod), every host builds the same global batch from the same seed, and each host
feeds only the shards of its own devices. Outputs that the loop reads on the host (predictions,
step metrics) are replicated, so every process can read them.

Random numbers do not depend on the sharding (JAX's partitionable threefry, the default), so a run
on N devices equals the 1-device run up to float reduction order.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ctr_jax.config import ParallelConfig

log = logging.getLogger(__name__)


def init_distributed(cfg: ParallelConfig) -> None:
    """Connects the processes of a multi-process run; a no-op unless ``cfg.distributed``.

    Must run before the first jax computation (jax fixes its devices then). On CPU the
    cross-process collectives go through gloo, which jax does not pick by itself.
    Idempotent within a process.
    """
    if not cfg.distributed or jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=cfg.coordinator_address,
        num_processes=cfg.num_processes,
        process_id=cfg.process_id,
    )
    log.info(
        "process %d of %d; %d global devices, %d local",
        jax.process_index(), jax.process_count(), jax.device_count(), jax.local_device_count(),
    )  # fmt: skip


def is_primary() -> bool:
    """True in the process that writes the run folder's files (process 0; the only one unless
    the run is distributed)."""
    return jax.process_index() == 0


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """A 1-D device mesh over the batch axis and the two shardings that use it."""

    mesh: Mesh

    @classmethod
    def create(cls, num_devices: int | None = None) -> DataParallel:
        """Mesh over the first `num_devices` devices (None = all, across hosts once
        ``init_distributed`` has connected them)."""
        devices = jax.devices()
        n = len(devices) if num_devices is None else num_devices
        if not 1 <= n <= len(devices):
            raise ValueError(
                f"parallel.num_devices: {n} requested, {len(devices)} available ({devices})"
            )
        if n > 1:
            log.info("data parallel over %d devices: %s", n, devices[:n])
        return cls(Mesh(np.asarray(devices[:n]), ("data",)))

    @property
    def size(self) -> int:
        return self.mesh.size

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batched(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec("data"))

    def check_batch_size(self, batch_size: int, key: str) -> None:
        if batch_size % self.size:
            raise ValueError(f"{key}: {batch_size} is not divisible by {self.size} devices")

    def replicate(self, tree):
        """Puts every array leaf of `tree` on all devices of the mesh."""
        return jax.device_put(tree, self.replicated)

    def shard(self, tree):
        """Global numpy arrays (first axis = batch) -> arrays split over "data".

        Each host supplies only its own devices' rows (all hosts hold the same global arrays).
        """
        if self.size == 1:
            return jax.device_put(tree, self.replicated)

        def put(x):
            if x is None:
                return None
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, self.batched, lambda idx: x[idx])

        return jax.tree.map(put, tree)
