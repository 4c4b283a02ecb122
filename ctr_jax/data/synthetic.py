"""Tiny fake backbones and task streams for tests and CI smoke runs.

``write_tiny_backbone`` writes a randomly initialised BERT as a real Hugging Face folder
(config.json, model.safetensors, vocab.txt), so tests exercise the same loading and tokenizing
code as a real run. ``write_synthetic_tasks`` writes a custom task stream (docs/custom_tasks.md
layout) whose labels are decided by a keyword, so a model can learn them in a few steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flax import nnx

from ctr_jax.models.bert import BertConfig, BertEncoder, hf_tensors

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = (
    [f"w{i}" for i in range(40)] + [f"good{i}" for i in range(6)] + [f"bad{i}" for i in range(6)]
)


def write_tiny_backbone(folder: Path, seed: int = 0, **config_overrides) -> Path:
    """Writes a random tiny BERT (BertConfig.tiny) as an HF folder; returns the folder."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _SPECIAL + _WORDS
    config = BertConfig.tiny(vocab_size=len(vocab), **config_overrides)
    model = BertEncoder(config, rngs=nnx.Rngs(seed))
    save_file(hf_tensors(model), str(folder / "model.safetensors"))
    hf = {
        "model_type": "bert",
        "architectures": ["BertModel"],
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.layer_norm_eps,
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
        "pad_token_id": 0,
    }
    (folder / "config.json").write_text(json.dumps(hf, indent=2))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    return folder


def write_synthetic_tasks(
    root: Path,
    num_tasks: int = 2,
    sizes: tuple[int, int, int] = (32, 8, 8),
    seed: int = 0,
    with_pairs: bool = False,
) -> list[str]:
    """Writes `num_tasks` binary tasks under root/<name>/{train,dev,test}.jsonl; returns names.

    Label 1 iff the text contains a "good*" keyword, else it contains a "bad*" one; the filler
    words vary in number so lengths differ across examples.
    """
    rng = np.random.default_rng(seed)
    names = []
    for t in range(num_tasks):
        name = f"synthetic{t}"
        names.append(name)
        task_dir = Path(root) / name
        task_dir.mkdir(parents=True, exist_ok=True)
        (task_dir / "labels.json").write_text(json.dumps(["negative", "positive"]))
        for split, n in zip(("train", "dev", "test"), sizes, strict=True):
            lines = []
            for _ in range(n):
                label = int(rng.integers(2))
                key = f"{'good' if label else 'bad'}{rng.integers(6)}"
                filler = list(rng.choice(_WORDS[:40], size=int(rng.integers(2, 12))))
                filler.insert(int(rng.integers(len(filler) + 1)), key)
                ex = {"text": " ".join(filler), "label": ["negative", "positive"][label]}
                if with_pairs:
                    ex["text_pair"] = " ".join(rng.choice(_WORDS[:40], size=3))
                lines.append(json.dumps(ex))
            (task_dir / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return names
