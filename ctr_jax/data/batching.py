"""Fixed-size batches padded to a small set of lengths ("buckets").

Every batch has exactly `batch_size` rows (rows that only fill a short last batch get weight 0)
and is padded to the smallest bucket >= its longest example, so a run compiles each step once
per bucket. Training batches are drawn in a seeded random order but grouped by length within
large chunks, so most batches land in a short bucket without losing the shuffle.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ctr_jax.data.tokenize import Encoded
from ctr_jax.training.step import Batch

_GROUP_CHUNK = 50  # batches per length-grouping chunk


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= length. A length beyond the largest bucket is an error."""
    for b in sorted(buckets):
        if length <= b:
            return b
    raise ValueError(f"sequence length {length} exceeds the largest bucket {max(buckets)}")


def make_batch(
    enc: Encoded,
    idx: np.ndarray,
    batch_size: int,
    buckets: Sequence[int],
    task_ids: np.ndarray | None = None,
) -> Batch:
    """Rows `idx` of `enc` as one Batch of `batch_size` rows, padded to a bucket.

    task_ids: [N] int32 task of every row of `enc` (a joint, MTL stream), or None.
    """
    n = len(idx)
    width = bucket_for(int(enc.lengths[idx].max()), buckets)
    rows = np.concatenate([idx, np.full(batch_size - n, idx[0])])  # filler rows, weight 0
    lengths = enc.lengths[rows]
    return Batch(
        input_ids=enc.input_ids[rows, :width],
        token_type_ids=enc.token_type_ids[rows, :width],
        attention_mask=(np.arange(width)[None, :] < lengths[:, None]).astype(np.int32),
        labels=enc.labels[rows],
        weight=(np.arange(batch_size) < n).astype(np.float32),
        task_ids=None if task_ids is None else task_ids[rows].astype(np.int32),
    )


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def train_batches(
    enc: Encoded,
    batch_size: int,
    buckets: Sequence[int],
    rng: np.random.Generator,
    task_ids: np.ndarray | None = None,
) -> Iterator[Batch]:
    """One epoch of shuffled, length-grouped batches (the last partial batch is kept)."""
    perm = rng.permutation(len(enc))
    chunk = batch_size * _GROUP_CHUNK
    groups = []
    for start in range(0, len(perm), chunk):
        part = perm[start : start + chunk]
        part = part[np.argsort(enc.lengths[part], kind="stable")]
        groups += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    for g in rng.permutation(len(groups)):
        yield make_batch(enc, groups[g], batch_size, buckets, task_ids)


def row_sizes(batch_size: int, multiple: int = 1) -> tuple[int, ...]:
    """The batch sizes an evaluation may use: batch_size, batch_size / 4 and batch_size / 16,
    each rounded up to a multiple of `multiple` (the device count)."""
    sizes = {batch_size, batch_size // 4, batch_size // 16}
    return tuple(sorted({max(multiple, -(-s // multiple) * multiple) for s in sizes if s > 0}))


def eval_batches(
    enc: Encoded,
    batch_size: int,
    buckets: Sequence[int],
    task_ids: np.ndarray | None = None,
    multiple: int = 1,
    max_tokens: int | None = None,
) -> Iterator[tuple[Batch, np.ndarray]]:
    """Batches sorted by length (fewest padded tokens); yields (batch, original row indices).

    A short batch (the last one, or a small test set) gets the smallest of ``row_sizes`` that
    holds it, not `batch_size` rows: most ASC test sets have 20-100 examples, and padding each to
    128 rows made evaluation several times slower. At most 3 batch shapes per padded length.

    max_tokens: a batch holds at most this many padded tokens (rows x length): it takes the
    largest row size whose run of next examples fits, cut where their bucket would exceed it
    (at least the smallest row size's worth of examples). Short examples still go 128 at a time,
    while the long tail of a test set runs as batches of 32 or 8, whose activations are a
    fraction of one 128 x 128 batch's (about 1 GB of CPU memory with the default backbone).
    """
    order = np.argsort(enc.lengths, kind="stable")
    sizes = row_sizes(batch_size, multiple)
    widths = np.array([bucket_for(int(n), buckets) for n in enc.lengths[order]])  # ascending
    start = 0
    while start < len(order):
        take = min(batch_size, len(order) - start)
        if max_tokens is not None:
            take = min(sizes[0], take)  # if even the smallest rows overflow: 8 at a time
            for rows in reversed(sizes):
                # widths ascend, so the examples that fit `rows` rows are a prefix
                limit = max_tokens // rows
                fit = int(np.searchsorted(widths[start : start + rows], limit, "right"))
                if fit:
                    take = fit
                    break
        idx = order[start : start + take]
        rows = next(s for s in sizes if s >= len(idx))
        yield make_batch(enc, idx, rows, buckets, task_ids), idx
        start += take


def concat_tasks(encs: Sequence[Encoded]) -> tuple[Encoded, np.ndarray]:
    """One joint split from several tasks' splits (MTL). -> (Encoded [sum N], task_ids [sum N])."""
    joint = Encoded(
        input_ids=np.concatenate([e.input_ids for e in encs]),
        token_type_ids=np.concatenate([e.token_type_ids for e in encs]),
        lengths=np.concatenate([e.lengths for e in encs]),
        labels=np.concatenate([e.labels for e in encs]),
    )
    task_ids = np.concatenate([np.full(len(e), t, np.int32) for t, e in enumerate(encs)])
    return joint, task_ids
