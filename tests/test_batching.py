"""Length-bucketed, fixed-size batches."""

import numpy as np
import pytest

from ctr_jax.data import batching
from ctr_jax.data.tokenize import Encoded


def _encoded(lengths, max_len=128):
    n = len(lengths)
    lengths = np.asarray(lengths, np.int32)
    ids = np.where(np.arange(max_len)[None] < lengths[:, None], 7, 0).astype(np.int32)
    return Encoded(
        input_ids=ids,
        token_type_ids=np.zeros_like(ids),
        lengths=lengths,
        labels=np.arange(n, dtype=np.int32) % 2,
    )


def test_bucket_for():
    assert batching.bucket_for(5, (32, 64, 128)) == 32
    assert batching.bucket_for(64, (128, 32, 64)) == 64
    with pytest.raises(ValueError, match="exceeds"):
        batching.bucket_for(129, (32, 64, 128))


def test_make_batch_pads_rows_and_length():
    enc = _encoded([10, 40, 3])
    b = batching.make_batch(enc, np.array([0, 1]), 4, (32, 64, 128))
    assert b.input_ids.shape == (4, 64) and b.attention_mask.shape == (4, 64)
    np.testing.assert_array_equal(b.weight, [1, 1, 0, 0])
    np.testing.assert_array_equal(b.attention_mask.sum(1)[:2], [10, 40])


def test_train_batches_cover_every_example_once_and_group_lengths():
    rng = np.random.default_rng(0)
    enc = _encoded(rng.integers(3, 120, 203))
    seen = []
    widths = []
    for b in batching.train_batches(enc, 16, (32, 64, 128), np.random.default_rng(1)):
        assert b.input_ids.shape[0] == 16
        real = b.weight > 0
        seen += list(b.labels[real])  # labels = index % 2; count rows instead
        widths.append(b.input_ids.shape[1])
    assert len(seen) == 203
    assert sum(w == 32 for w in widths) >= 2  # grouping puts short examples together


def test_eval_batches_return_original_indices():
    enc = _encoded([50, 5, 20, 7, 100])
    idx_all = []
    for batch, idx in batching.eval_batches(enc, 2, (32, 64, 128)):
        np.testing.assert_array_equal(batch.attention_mask.sum(1)[: len(idx)], enc.lengths[idx])
        idx_all += list(idx)
    assert sorted(idx_all) == [0, 1, 2, 3, 4]


def test_row_sizes():
    assert batching.row_sizes(128) == (8, 32, 128)
    assert batching.row_sizes(128, multiple=3) == (9, 33, 129)
    assert batching.row_sizes(2) == (2,)


def test_short_eval_batches_use_fewer_rows():
    enc = _encoded(list(range(3, 3 + 150)))  # 150 examples: one full batch, then 22
    shapes = [b.input_ids.shape[0] for b, _ in batching.eval_batches(enc, 128, (128, 256))]
    assert shapes == [128, 32]
    small = _encoded([5] * 6)
    assert [b.input_ids.shape[0] for b, _ in batching.eval_batches(small, 128, (32,))] == [8]
    two = [b.input_ids.shape[0] for b, _ in batching.eval_batches(small, 128, (32,), multiple=4)]
    assert two == [8]


def test_eval_token_cap_splits_long_batches_only():
    # 100 short (length 10, bucket 16) and 100 long (length 100, bucket 128) examples.
    enc = _encoded([10] * 100 + [100] * 100)
    uncapped = [b.input_ids.shape for b, _ in batching.eval_batches(enc, 128, (16, 128))]
    assert uncapped == [(128, 128), (128, 128)]  # the first batch mixes lengths: padded to 128
    batches = list(batching.eval_batches(enc, 128, (16, 128), max_tokens=4096))
    shapes = [b.input_ids.shape for b, _ in batches]
    assert all(r * w <= 4096 or r == 8 for r, w in shapes)
    # The short rows go 128 at a time, cut where the long ones begin; those go 32 at a time.
    assert shapes == [(128, 16), (32, 128), (32, 128), (32, 128), (8, 128)]
    idx = np.concatenate([i for _, i in batches])
    assert sorted(idx) == list(range(200))  # every example exactly once
    for b, i in batches:
        np.testing.assert_array_equal(b.attention_mask.sum(1)[: len(i)], enc.lengths[i])
    # A cap below the smallest row size's tokens still makes progress, 8 rows at a time.
    tiny = [b.input_ids.shape for b, _ in batching.eval_batches(enc, 128, (16, 128), max_tokens=1)]
    assert {r for r, _ in tiny} == {8} and len(tiny) == 25
