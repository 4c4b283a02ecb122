"""Data parallelism over the batch axis with ``jax.sharding``.

One mesh axis, "data", over the devices the run uses. Parameters, optimizer state, masks and the
frozen encoder are replicated; every batch is a global array split over "data" along its first
axis. The jitted steps are unchanged: XLA partitions them from these shardings (the loss sums
over the batch become all-reduces), so the same code runs on 1 CPU, several local GPUs / TPU cores
or several hosts. On several hosts (``parallel.distributed: true``) ``jax.distributed.initialize``
connects them (its arguments come from the environment, e.g. a SLURM or TPU-pod launch), every
host builds the same global batch from the same seed, and each host feeds only the shards of its
own devices.

Random numbers do not depend on the sharding (JAX's partitionable threefry, the default), so a run
on N devices equals the 1-device run up to float reduction order.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """A 1-D device mesh over the batch axis and the two shardings that use it."""

    mesh: Mesh

    @classmethod
    def create(cls, num_devices: int | None = None, distributed: bool = False) -> DataParallel:
        """Mesh over the first `num_devices` devices (None = all, across hosts if distributed)."""
        if distributed:
            jax.distributed.initialize()
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
