"""Tests for ctr_jax.models.bert: HF parity, shapes, the plugin hook, variable types, weight import.

The parity fixture is written by scripts/make_bert_fixture.py (torch + transformers); this file
never imports torch.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from ctr_jax.models import bert
from ctr_jax.models.bert import (
    BackboneError,
    BertConfig,
    BertEncoder,
    load_pretrained,
    resolve_backbone,
)
from ctr_jax.models.variables import BertParam, LayerNormParam

FIXTURE = Path(__file__).parent / "fixtures" / "bert_parity_minilm.npz"
TOL = 1e-4
TOL_PADDED = 3e-4


# ------------------------------------------------------------------------------------------
# Parity with Hugging Face transformers (default backbone, all-MiniLM-L6-v2)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_batch() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as f:
        return dict(f)


@pytest.fixture(scope="module")
def minilm(backbone_folder: Path) -> BertEncoder:
    assert resolve_backbone(None) == backbone_folder
    return load_pretrained(resolve_backbone(None))


def _run(model: BertEncoder, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    # "highest" keeps float32 matmuls exact on accelerators too (TF32/bf16 passes would not be).
    with jax.default_matmul_precision("highest"):
        h, pooled = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    return np.asarray(h), np.asarray(pooled)


def _diffs(model: BertEncoder, batch: dict[str, np.ndarray]) -> dict[str, float]:
    h, pooled = _run(model, batch)
    real = batch["attention_mask"].astype(bool)  # [B, L]
    dh = np.abs(h - batch["last_hidden_state"])  # [B, L, D]
    return {
        "real": float(dh[real].max()),
        "all": float(dh.max()),
        "pooled": float(np.abs(pooled - batch["pooler_output"]).max()),
    }


def test_fixture_is_a_real_batch(fixture_batch):
    mask = fixture_batch["attention_mask"]
    lengths = mask.sum(1)
    assert len(set(lengths.tolist())) > 4, "sentences of different lengths"
    assert (mask[:, 0] == 1).all() and (lengths < mask.shape[1]).any(), "some rows are padded"
    assert (fixture_batch["token_type_ids"] == 1).any(), "some rows are sentence pairs"


def test_parity_with_transformers(minilm, fixture_batch):
    diffs = _diffs(minilm, fixture_batch)
    assert diffs["real"] <= TOL, diffs
    assert diffs["pooled"] <= TOL, diffs
    # Padded positions are not used downstream, but they match too, to a looser bound: their
    # largest difference was 9.6e-5 under XLA:CPU's fusion emitters and is 1.2e-4 under the
    # loop emitters run.py selects (ctr_jax/runtime.py); real tokens 4.0e-6 and 5.3e-6. One
    # wrong LayerNorm epsilon moves them by 1.3e-3.
    assert diffs["all"] <= TOL_PADDED, diffs


def test_parity_check_is_sensitive(backbone_folder, fixture_batch, tmp_path):
    """Same weights, layer_norm_eps 1e-5 instead of 1e-12: the parity check must fail."""
    raw = json.loads((backbone_folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "layer_norm_eps": 1e-5}))
    (tmp_path / "model.safetensors").symlink_to(backbone_folder / "model.safetensors")
    wrong = load_pretrained(tmp_path)
    assert wrong.config.layer_norm_eps == 1e-5
    diffs = _diffs(wrong, fixture_batch)
    assert diffs["real"] > TOL, diffs


# ------------------------------------------------------------------------------------------
# Tiny random model: shapes, dropout, plugin hook, variable types
# ------------------------------------------------------------------------------------------


def _tiny_batch(b: int = 3, length: int = 9, vocab: int = 100) -> tuple[jax.Array, ...]:
    ids = jax.random.randint(jax.random.key(1), (b, length), 1, vocab, jnp.int32)
    types = jnp.zeros((b, length), jnp.int32).at[:, length // 2 :].set(1)
    lengths = jnp.arange(b) % length + length // 2
    mask = (jnp.arange(length)[None] < lengths[:, None]).astype(jnp.int32)
    return ids, types, mask


@pytest.fixture(scope="module")
def tiny() -> BertEncoder:
    return BertEncoder(BertConfig.tiny(), rngs=nnx.Rngs(0))


@functools.partial(jax.jit, static_argnames="graphdef")
def _apply_jit(graphdef, state, batch, key):
    return nnx.merge(graphdef, state)(*batch, dropout_key=key)


def _apply(model: BertEncoder, batch, key=None, plugin=None):
    """Eager call (per-op compiles are cached across tests; a plugin is a Python side effect)."""
    return model(*batch, dropout_key=key, plugin=plugin)


def test_shapes_with_and_without_dropout(tiny):
    batch = _tiny_batch()
    graphdef, state = nnx.split(tiny)
    det = _apply(tiny, batch)
    drop_a = _apply_jit(graphdef, state, batch, jax.random.key(0))  # the way training calls it
    drop_b = _apply_jit(graphdef, state, batch, jax.random.key(0))
    drop_c = _apply_jit(graphdef, state, batch, jax.random.key(1))
    for h, pooled in (det, drop_a, drop_c):
        chex.assert_shape(h, (3, 9, 32))
        chex.assert_shape(pooled, (3, 32))
        chex.assert_tree_all_finite((h, pooled))
    chex.assert_trees_all_equal(drop_a, drop_b)  # pure: the key alone decides the masks
    assert not np.allclose(drop_a[0], det[0]) and not np.allclose(drop_a[0], drop_c[0])
    chex.assert_trees_all_equal(_apply(tiny, batch), det)  # no hidden state consumed


def test_identity_plugin_keeps_the_output_and_is_called_per_site(tiny):
    batch = _tiny_batch()
    layers = tiny.config.num_hidden_layers
    calls: list[tuple[str, tuple[int, ...]]] = []

    def plugin(layer: jax.Array, site: str, x: jax.Array, xs: jax.Array) -> jax.Array:
        calls.append((site, x.shape))  # traced once per site, inside the layer scan
        # xs is this layer's slice of plugin_xs: adds 0 iff it equals the layer index.
        return x + (xs != layer).astype(x.dtype)

    xs = jnp.arange(layers, dtype=jnp.int32)
    out = tiny(*batch, plugin=plugin, plugin_xs=xs)
    # Equal up to float order: the "+ 0" changes XLA's fusions, and under XLA:CPU's loop
    # emitters (ctr_jax/runtime.py) that moves the last bit (4.8e-7 here). A plugin at the
    # wrong site or layer moves the output by O(1) (test_plugin_output_is_used).
    chex.assert_trees_all_close(out, _apply(tiny, batch), atol=2e-6, rtol=1e-6)
    assert calls == [("attn", (3, 9, 32)), ("ffn", (3, 9, 32))]


def test_plugin_output_is_used(tiny):
    batch = _tiny_batch()
    h, _ = _apply(tiny, batch)
    h2, _ = _apply(tiny, batch, plugin=lambda i, s, x, xs: x + (i == 1) * (s == "ffn"))
    assert not np.allclose(h, h2)
    # Only the last layer's ffn site moved: the same change at layer 0 gives another output.
    h3, _ = _apply(tiny, batch, plugin=lambda i, s, x, xs: x + (i == 0) * (s == "ffn"))
    assert not np.allclose(h2, h3)


def test_unrolled_layer_scan_gives_the_same_output(tiny):
    batch = _tiny_batch()
    key = jax.random.key(3)
    plugin = lambda i, s, x, xs: x * (1.0 + 0.1 * i) + (s == "ffn")  # noqa: E731
    ref = _apply(tiny, batch, key=key, plugin=plugin)
    tiny.scan_unroll = tiny.config.num_hidden_layers
    try:
        out = _apply(tiny, batch, key=key, plugin=plugin)
    finally:
        tiny.scan_unroll = 1
    chex.assert_trees_all_close(out, ref, atol=1e-6)


def test_variable_types(tiny):
    _, ln, frozen, rest = nnx.split(tiny, LayerNormParam, BertParam, ...)
    layers = tiny.config.num_hidden_layers
    assert len(jax.tree.leaves(ln)) == 2 * layers * 2  # 2 LayerNorms x (scale, bias) per layer
    assert len(jax.tree.leaves(rest)) == 0
    # embeddings 3 + embedding LN 2 + pooler 2 + 6 dense x (kernel, bias), stacked over layers
    assert len(jax.tree.leaves(frozen)) == 7 + 12
    assert tiny.weights.query.kernel.shape == (layers, 32, 32)


# ------------------------------------------------------------------------------------------
# Weight import and errors
# ------------------------------------------------------------------------------------------


def _write_folder(folder: Path, config: BertConfig, tensors: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    raw = {"model_type": "bert", "architectures": ["BertModel"], "hidden_act": "gelu"}
    raw |= {k: getattr(config, k) for k in config.__dataclass_fields__}
    (folder / "config.json").write_text(json.dumps(raw))
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def test_round_trip_bare_keys(tiny, tmp_path):
    folder = _write_folder(tmp_path / "m", tiny.config, bert.hf_tensors(tiny))
    loaded = load_pretrained(folder)
    batch = _tiny_batch()
    chex.assert_trees_all_equal(_apply(loaded, batch), _apply(tiny, batch))


def test_round_trip_prefixed_old_names_extra_keys(tiny, tmp_path):
    tensors = {}
    for name, arr in bert.hf_tensors(tiny).items():
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma")
        tensors["bert." + name.replace("LayerNorm.bias", "LayerNorm.beta")] = arr
    tensors["cls.predictions.bias"] = np.zeros(100, np.float32)
    tensors["bert.embeddings.position_ids"] = np.arange(64, dtype=np.int64)[None]
    loaded = load_pretrained(_write_folder(tmp_path / "m", tiny.config, tensors))
    batch = _tiny_batch()
    chex.assert_trees_all_equal(_apply(loaded, batch), _apply(tiny, batch))


def test_missing_config(tmp_path):
    with pytest.raises(BackboneError, match="config.json"):
        load_pretrained(tmp_path)


def test_non_bert_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(BackboneError, match=r"config\.json.*model_type.*gpt2"):
        load_pretrained(tmp_path)


def test_unsupported_activation(tmp_path, tiny):
    folder = _write_folder(tmp_path, tiny.config, bert.hf_tensors(tiny))
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "hidden_act": "relu"}))
    with pytest.raises(BackboneError, match="hidden_act"):
        load_pretrained(folder)


def test_missing_weights_file(tmp_path, tiny):
    folder = _write_folder(tmp_path, tiny.config, bert.hf_tensors(tiny))
    (folder / "model.safetensors").unlink()
    with pytest.raises(BackboneError, match="model.safetensors not found"):
        load_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(BackboneError, match="pytorch_model.bin"):
        load_pretrained(folder)


def test_shape_mismatch(tmp_path, tiny):
    tensors = bert.hf_tensors(tiny)
    key = "encoder.layer.1.intermediate.dense.weight"
    tensors[key] = np.zeros((64, 31), np.float32)
    with pytest.raises(BackboneError, match=rf"{key}.*\(64, 31\).*\(64, 32\)"):
        load_pretrained(_write_folder(tmp_path, tiny.config, tensors))


def test_missing_key(tmp_path, tiny):
    tensors = bert.hf_tensors(tiny)
    del tensors["encoder.layer.0.attention.self.value.bias"]
    with pytest.raises(
        BackboneError, match=r"model\.safetensors.*layer\.0\.attention\.self\.value"
    ):
        load_pretrained(_write_folder(tmp_path, tiny.config, tensors))


def test_resolve_backbone(tmp_path, monkeypatch):
    assert resolve_backbone(str(tmp_path)) == tmp_path

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    with pytest.raises(BackboneError, match=r"bert-base-uncased.*model\.safetensors.*folder path"):
        resolve_backbone("bert-base-uncased")


def test_bfloat16_compute_is_close_and_switchable(tiny):
    batch = _tiny_batch()
    ref = _apply(tiny, batch)
    tiny.set_compute_dtype("bfloat16")
    try:
        low = _apply(tiny, batch)
    finally:
        tiny.set_compute_dtype("float32")
    assert low[0].dtype == jnp.float32  # float32 out, bf16 only inside the matmuls
    diff = float(jnp.max(jnp.abs(low[0] - ref[0])))
    assert 0.0 < diff < 0.1, diff  # bf16 rounding is visible, and small
    chex.assert_trees_all_equal(_apply(tiny, batch), ref)  # "float32" restores exact results


# ---------------------------------------------------------------- the backbone's declared pooling


def _pooling_folder(tmp_path: Path, modes) -> Path:
    (tmp_path / "1_Pooling").mkdir()
    text = modes if isinstance(modes, str) else json.dumps(modes)
    (tmp_path / "1_Pooling" / "config.json").write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    "modes,declared",
    [
        ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}, "mean"),
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),
        ({"pooling_mode_max_tokens": True}, None),  # a mode we do not have: the pooler
        ({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}, None),
    ],
)
def test_declared_pooling_reads_sentence_transformers_config(tmp_path, modes, declared):
    folder = _pooling_folder(tmp_path, modes)
    assert bert.declared_pooling(folder) == declared
    assert bert.resolve_pooling("auto", declared) == (declared or "pooler")
    assert bert.resolve_pooling("cls", declared) == "cls"  # an explicit choice wins


def test_a_plain_bert_folder_declares_no_pooling(tmp_path):
    assert bert.declared_pooling(tmp_path) is None
    assert bert.resolve_pooling("auto", None) == "pooler"


def test_a_broken_pooling_config_names_the_file(tmp_path):
    folder = _pooling_folder(tmp_path, "{not json")
    with pytest.raises(BackboneError, match=r"1_Pooling/config\.json"):
        bert.declared_pooling(folder)


def test_the_default_backbone_declares_mean_pooling(minilm):
    assert minilm.declared_pooling == "mean"  # load_pretrained read its 1_Pooling/config.json


def test_a_loaded_plain_bert_declares_none(backbone_folder, tmp_path):
    for name in ("config.json", "model.safetensors"):  # the weights without 1_Pooling/
        (tmp_path / name).symlink_to(backbone_folder / name)
    assert bert.load_pretrained(tmp_path).declared_pooling is None
