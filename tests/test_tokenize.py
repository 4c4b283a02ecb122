"""Tests for ctr_jax.data.tokenize: [CLS] a [SEP] b [SEP] layout, truncation, our own padding."""

from __future__ import annotations

import shutil
from pathlib import Path

import chex
import numpy as np
import pytest

from ctr_jax.data import Encoded, Example, TextEncoder, load_benchmark


@pytest.fixture(scope="module")
def encoder(backbone_folder) -> TextEncoder:
    return TextEncoder(backbone_folder, max_len=128)


def _ids(encoder: TextEncoder, *tokens: str) -> list[int]:
    return [encoder.token_id(t) for t in tokens]


def _real(enc: Encoded, i: int) -> list[int]:
    return enc.input_ids[i, : enc.lengths[i]].tolist()


def _check_arrays(enc: Encoded, n: int, max_len: int, pad_id: int) -> None:
    chex.assert_shape([enc.input_ids, enc.token_type_ids], (n, max_len))
    chex.assert_shape([enc.lengths, enc.labels], (n,))
    for arr in (enc.input_ids, enc.token_type_ids, enc.lengths, enc.labels):
        assert arr.dtype == np.int32
    pad = ~enc.attention_mask()  # [N, L]
    assert np.all(enc.input_ids[pad] == pad_id)
    assert np.all(enc.token_type_ids[pad] == 0)
    assert np.all(enc.input_ids[~pad] != pad_id)  # no built-in [PAD] inside the real tokens


def test_pair_layout(encoder):
    enc = encoder.encode([Example("battery life", "The battery is great.", 1)])
    _check_arrays(enc, 1, 128, encoder.pad_id)
    cls, sep, battery, life, the = _ids(encoder, "[CLS]", "[SEP]", "battery", "life", "the")
    ids = _real(enc, 0)
    assert ids[:5] == [cls, battery, life, sep, the]
    assert ids[-1] == sep and ids.count(sep) == 2
    assert enc.token_type_ids[0, : enc.lengths[0]].tolist() == [0] * 4 + [1] * (len(ids) - 4)
    assert enc.labels.tolist() == [1] and len(enc) == 1


def test_single_layout_and_lowercasing(encoder):
    enc = encoder.encode([Example("HELLO World", None, 0), Example("hello world", None, 1)])
    _check_arrays(enc, 2, 128, encoder.pad_id)
    assert _real(enc, 0) == _real(enc, 1) == _ids(encoder, "[CLS]", "hello", "world", "[SEP]")
    assert enc.lengths.tolist() == [4, 4]
    assert not enc.token_type_ids.any()


def test_no_builtin_padding_or_truncation(backbone_folder, encoder):
    """The default backbone's tokenizer.json pads to 128: lengths must count real tokens only,
    and a different max_len must not be overridden by the file's truncation setting."""
    assert (backbone_folder / "tokenizer.json").is_file()
    enc = encoder.encode([Example("a b c", None, 0)])
    assert enc.lengths.tolist() == [5]
    long = " ".join(["word"] * 400)
    enc = TextEncoder(backbone_folder, max_len=256).encode([Example(long, None, 0)])
    assert enc.lengths.tolist() == [256]


def test_truncation_at_128(encoder):
    long = " ".join(["word"] * 300)
    enc = encoder.encode(
        [Example(long, None, 0), Example("screen", long, 1), Example(long, long, 0)]
    )
    _check_arrays(enc, 3, 128, encoder.pad_id)
    assert enc.lengths.tolist() == [128, 128, 128]
    cls, sep, screen = _ids(encoder, "[CLS]", "[SEP]", "screen")
    single, short_pair, long_pair = (_real(enc, i) for i in range(3))
    assert single[0] == cls and single[-1] == sep and single.count(sep) == 1  # 126 wordpieces
    assert short_pair[:3] == [cls, screen, sep] and short_pair[-1] == sep  # 1 + 124 wordpieces
    first_sep = long_pair.index(sep)  # longest_first: 125 wordpieces split 63 / 62
    assert long_pair.count(sep) == 2 and {first_sep - 1, 128 - first_sep - 2} == {63, 62}


def test_truncation_small_max_len(backbone_folder):
    encoder = TextEncoder(backbone_folder, max_len=8)
    enc = encoder.encode(
        [
            Example("one two three four five six seven eight", None, 0),
            Example("screen", "one two three four five six", 1),
            Example("a", "b", 0),
        ]
    )
    _check_arrays(enc, 3, 8, encoder.pad_id)
    assert enc.lengths.tolist() == [8, 8, 5]
    assert enc.token_type_ids[1].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]  # term kept, sentence cut
    with pytest.raises(ValueError, match="max_len"):
        TextEncoder(backbone_folder, max_len=3)


def test_empty_input(encoder):
    enc = encoder.encode([])
    _check_arrays(enc, 0, 128, encoder.pad_id)
    assert len(enc) == 0


def test_vocab_only_folder_matches(backbone_folder, encoder, tmp_path):
    shutil.copy(backbone_folder / "vocab.txt", tmp_path / "vocab.txt")
    vocab_only = TextEncoder(Path(tmp_path), max_len=128)
    examples = [
        Example("Battery-Life", "Isn't the BATTERY life café-great?!", 1),
        Example("Über cool 123, really.", None, 0),
        Example(" ".join(["token"] * 200), "x", 0),
    ]
    a, b = encoder.encode(examples), vocab_only.encode(examples)
    assert vocab_only.pad_id == encoder.pad_id
    for field in ("input_ids", "token_type_ids", "lengths", "labels"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


@pytest.mark.data
def test_asc_task_encodes(data_root, encoder):
    (task,) = load_benchmark("asc", data_root, order=4, num_tasks=1)  # Bing9domains_Norton
    enc = encoder.encode(task.train)
    _check_arrays(enc, len(task.train), 128, encoder.pad_id)
    np.testing.assert_array_equal(enc.labels, [ex.label for ex in task.train])
    sep = encoder.token_id("[SEP]")
    assert np.all((enc.input_ids == sep).sum(axis=1) == 2)
    assert np.all(enc.token_type_ids[:, 1] == 0)
