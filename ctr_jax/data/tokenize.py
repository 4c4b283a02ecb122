"""WordPiece tokenisation of `Example`s into fixed-length numpy arrays (spec §7 input format).

Design note. We use the backbone folder's *fast* tokenizer through the `tokenizers` library:
`tokenizer.json` when the folder has one, else a BERT WordPiece pipeline built from `vocab.txt`
(lower-casing from `tokenizer_config.json`'s `do_lower_case`, default True, as in
`BertTokenizerFast`). Whatever padding / truncation the folder's `tokenizer.json` has built in
(the default backbone pads to 128) is switched off; we truncate with `longest_first` to
`max_len` tokens *including* the special tokens and pad ourselves with the tokenizer's pad id:

- single text: `[CLS] text [SEP]`, at most `max_len - 2` wordpieces (126 at 128), segment ids 0;
- pair: `[CLS] text [SEP] text_pair [SEP]`, at most `max_len - 3` wordpieces (125 at 128), segment
  ids 0 up to and including the first `[SEP]`, then 1.

Shapes: N examples, L = `max_len`. `Encoded.input_ids`, `token_type_ids`: `[N, L]` int32;
`lengths`, `labels`: `[N]` int32. The attention mask is `arange(L)[None, :] < lengths[:, None]`
(`Encoded.attention_mask()`), so it is never stored.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from ctr_jax.data.tasks import DataError, Example

_MIN_MAX_LEN = 4  # a pair needs 3 special tokens plus at least one wordpiece


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A tokenised split; arrays padded to `max_len` (L) with the tokenizer's pad id."""

    input_ids: np.ndarray  # [N, L] int32
    token_type_ids: np.ndarray  # [N, L] int32
    lengths: np.ndarray  # [N] int32, number of real tokens
    labels: np.ndarray  # [N] int32

    def __post_init__(self) -> None:
        n, max_len = self.input_ids.shape
        if self.token_type_ids.shape != (n, max_len):
            raise ValueError(f"token_type_ids {self.token_type_ids.shape} != {(n, max_len)}")
        if self.lengths.shape != (n,) or self.labels.shape != (n,):
            raise ValueError(f"lengths {self.lengths.shape} / labels {self.labels.shape} != {(n,)}")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def max_len(self) -> int:
        """L, the padded sequence length."""
        return int(self.input_ids.shape[1])

    def attention_mask(self) -> np.ndarray:
        """[N, L] bool: True on real tokens."""
        return np.arange(self.max_len)[None, :] < self.lengths[:, None]


def _load_tokenizer(folder: Path) -> tuple[Tokenizer, int]:
    """The folder's fast tokenizer with padding and truncation removed, and its pad id."""
    if (folder / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        padding = tok.padding  # read before no_padding(); None when the file sets no padding
        pad_token = padding["pad_token"] if padding else "[PAD]"
        pad_id = tok.token_to_id(pad_token)
        if pad_id is None:
            pad_id = padding["pad_id"] if padding else 0
        return tok, pad_id
    vocab_path = folder / "vocab.txt"
    if not vocab_path.is_file():
        raise DataError(f"{folder}: backbone folder has neither tokenizer.json nor vocab.txt")
    lowercase, strip_accents = True, None
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{config_path}:{e.lineno}: invalid JSON ({e.msg})") from e
        lowercase = bool(config.get("do_lower_case", True))
        strip_accents = config.get("strip_accents")
    tok = Tokenizer(models.WordPiece.from_file(str(vocab_path), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = {}
    for token in ("[CLS]", "[SEP]", "[PAD]"):
        token_id = tok.token_to_id(token)
        if token_id is None:
            raise DataError(f"{vocab_path}: special token {token} missing from the vocabulary")
        special[token] = token_id
    tok.post_processor = processors.BertProcessing(
        ("[SEP]", special["[SEP]"]), ("[CLS]", special["[CLS]"])
    )
    tok.decoder = decoders.WordPiece()
    return tok, special["[PAD]"]


class TextEncoder:
    """Turns `Example`s into `Encoded` arrays with the backbone folder's WordPiece tokenizer."""

    def __init__(self, backbone_folder: Path, max_len: int = 128):
        if max_len < _MIN_MAX_LEN:
            raise ValueError(f"max_len={max_len} is below the minimum {_MIN_MAX_LEN}")
        self.max_len = max_len
        tok, self.pad_id = _load_tokenizer(Path(backbone_folder))
        tok.no_padding()  # we pad ourselves: never depend on the file's built-in padding
        tok.enable_truncation(max_len, strategy="longest_first")  # counts special tokens too
        self._tokenizer = tok

    def token_id(self, token: str) -> int:
        """Vocabulary id of `token` (e.g. "[SEP]"); KeyError if it is not in the vocabulary."""
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise KeyError(f"token {token!r} not in the vocabulary")
        return token_id

    def encode(self, examples: Sequence[Example]) -> Encoded:
        """N examples -> `Encoded`: `[N, max_len]` ids / segment ids, `[N]` lengths and labels."""
        inputs = [ex.text if ex.text_pair is None else (ex.text, ex.text_pair) for ex in examples]
        n, max_len = len(inputs), self.max_len
        input_ids = np.full((n, max_len), self.pad_id, dtype=np.int32)  # [N, L]
        token_type_ids = np.zeros((n, max_len), dtype=np.int32)  # [N, L]
        lengths = np.zeros((n,), dtype=np.int32)  # [N]
        if n:
            encodings = self._tokenizer.encode_batch_fast(inputs, add_special_tokens=True)
            for i, enc in enumerate(encodings):
                ids = enc.ids
                length = len(ids)
                input_ids[i, :length] = ids
                token_type_ids[i, :length] = enc.type_ids
                lengths[i] = length
        labels = np.fromiter((ex.label for ex in examples), dtype=np.int32, count=n)  # [N]
        return Encoded(input_ids, token_type_ids, lengths, labels)
