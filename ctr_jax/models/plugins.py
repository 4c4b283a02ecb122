"""CTR's CL-plugins: knowledge-sharing module (task capsules + transfer routing) and HAT TSM.

Spec §3. Every transformer layer gets two plugins (after the attention-output and the
FFN-output dense + dropout, before the residual add and LayerNorm), P = 2 * num_layers in all.
All plugins have the same shapes, so their parameters are stacked on a leading plugin axis
``[P, ...]`` and plugin ``p`` reads slice ``p``. That keeps the HAT protection a few broadcasts
(see ``hat.py``) and the parameter tree small.

One plugin, input x [B, L, D] (post-dropout dense output), task t, HAT scale s:

    TK-Layer   U[b,l,k,:] = f_k(x[b,l])              task capsules, f_k: D -> C (1 or 2 layers)
               U[..., k, :] = 0 for k > t             future capsules take no part
               U <- squash over the task axis k       (spec §3.1, §10.2)
    TR-Layer   P[b,l,k,n] = U[b,l,k] @ W_route[n,k]   pre-route vectors            [B, L, T, N, C]
               Phi_k = P[:, :, k] flattened            per-task features            [B, L, N*C]
               c_t = maxpool(relu(conv_cur(Phi_t)))    current-task code            [B, 3F]
               z_k = maxpool(relu(conv_src(Phi_k) + c_t W_cur))                     [B, T, 3F]
               a_k = z_k W_sim (similarity), r_k = z_k W_dec (router logits)
               delta_k = hard Gumbel-softmax(r_k)[0]   (straight-through in training)
               v[n] = sum_{k<=t} a_k[n] * delta_k * P[:, :, k, n]                   [B, L, N, C]
               ksm = v W_big + b_big                                                [B, L, D]
               (W_big, b_big shared by all tasks, or task t's own: model.ksm_projection)
    TSM        out = x + m2 * relu(m1 * relu((x + ksm) W1 + b1) W2 + b2)            (spec §3.4)

The same module serves the baselines (``ctr_jax/methods.py``):
- B-CL (ksm="dynamic"): the TR-Layer is replaced by dynamic routing (``dynamic_routing``):
               c = softmax over tasks k <= t of agreement logits, 3 iterations  [B, L, T, N]
               ksm = (sum_k c_k P[:, :, k]) W_big + b_big
  B-CL's code routes in the batch-mixing layout, squashes over tokens and has a projection per
  task; here it uses CTR's per-token layout and CTR's projection (shared by default,
  model.ksm_projection), so only the routing differs.
- no KSM (HAT, NCL, ONE, MTL): out = x + m2 * relu(m1 * relu(x W1 + b1) W2 + b2);
- no HAT (NCL, ONE, MTL): m1 = m2 = 1, a plain bottleneck adapter of the same width.

Deviations from the original code, on purpose (README "Deviations"):
- routing is per example ("semantic" layout, spec §3.5), not the original's batch-mixing reshapes
  (those are ``transfer_ksm_torch``, model.routing_layout="torch");
- future capsules are masked out before the squash (the original lets them into the norm);
- padding never changes a result (semantic layout): padded positions are zeroed before the
  similarity CNN and excluded from its max-pool (the original pools over padding);
- the "phantom" gate of spec §3.3 is dropped (it multiplies nothing in the forward pass).

Legend: B batch, L tokens, D encoder width, T task capacity, C capsule dim, N transfer capsules,
F CNN filters, A TSM width, P plugins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Union

import jax
import jax.numpy as jnp
from flax import nnx

from ctr_jax.config import ModelConfig
from ctr_jax.models import hat
from ctr_jax.models.variables import CapsuleParam, PluginParam, TaskEmbedding

Params = Mapping[str, jax.Array]
"""One plugin's parameters: the stacked arrays' slice p, by attribute name (``by_layer``)."""
PluginRef = Union[int, Params]  # noqa: UP007 (a runtime alias)
"""A plugin index p, or that plugin's parameters (its slice of ``CLPlugins.by_layer``)."""

_INIT_STD = 0.02  # BERT's initializer_range: HF re-initialises the plugin Linears with it (spec §4)


def _normal(rngs: nnx.Rngs, shape, std=_INIT_STD) -> jax.Array:
    return std * jax.random.normal(rngs.params(), shape, jnp.float32)


def _uniform(rngs: nnx.Rngs, shape, bound: float) -> jax.Array:
    return jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound)


def _windows(x: jax.Array, k: int) -> jax.Array:
    """Sliding windows along axis -2 for a 1-D convolution as one matmul (im2col).

    x: [..., L, Cin] -> [..., L - k + 1, k * Cin]. With Cin = 9 a matmul beats a generic conv.
    """
    n = x.shape[-2] - k + 1
    return jnp.concatenate([x[..., i : i + n, :] for i in range(k)], axis=-1)


def _conv_fused(win: jax.Array, kernel: jax.Array) -> jax.Array:
    """win @ kernel per task as a sum of W broadcast products: [B, T, L', F].

    win: [B, T, L', W], kernel: [T, W, F]. W is only 9-15 (k * C): as elementwise work XLA fuses
    this with the mask and the max-pool that consumes it, so the [B, T, L', F] tensor is never
    written to memory (a batched dot with K = 9 is memory-bound and several times slower on CPU).
    """
    y = win[..., 0, None] * kernel[None, :, None, 0, :]
    for w in range(1, win.shape[-1]):
        y = y + win[..., w, None] * kernel[None, :, None, w, :]
    return y


def _masked(y: jax.Array, valid: jax.Array) -> jax.Array:
    """-inf at invalid positions, so they never win the max-pool. y: [B, T, L', F]."""
    return jnp.where(valid[:, None, :, None], y, -jnp.inf)


@jax.custom_vjp
def conv_relu_maxpool(
    win: jax.Array, kernel: jax.Array, bias: jax.Array, valid: jax.Array
) -> jax.Array:
    """max over valid positions l of relu(win[b, t, l] @ kernel[t] + bias[b]).

    win: [B, T, L', W] conv windows, kernel: [T, W, F], bias: [B, F], valid: [B, L'] bool
    -> [B, T, F] (0 where no position is valid).

    The similarity CNN's hot spot. The bias is constant over l and ReLU is monotone, so this is
    relu(max_l(win @ kernel) + bias): the max-pool runs on the raw convolution. Plain autodiff
    would keep the [B, T, L', F] activations of every plugin for the backward pass (F = 100
    channels, 7-11x the windows); this VJP keeps the windows and the winning position of every
    (example, task, filter) and sends the gradient there alone (ties, of measure zero for real
    inputs, go to the first winner).
    """
    m = jnp.max(_masked(_conv_fused(win, kernel), valid), axis=2)  # [B, T, F]
    return jax.nn.relu(m + bias[:, None, :])


def _crm_fwd(win, kernel, bias, valid):
    # Under differentiation the winners are needed too. A dot materialises y once, and the
    # winner is the first position equal to the max of that same tensor: cheaper than
    # jnp.argmax (a variadic reduce, slow on CPU) and exact (no recomputed values compared).
    y = _masked(jnp.einsum("btlw,twf->btlf", win, kernel), valid)  # [B, T, L', F]
    m = jnp.max(y, axis=2)  # [B, T, F]
    pos = jnp.arange(y.shape[2])[None, None, :, None]
    idx = jnp.min(jnp.where(y == m[:, :, None, :], pos, y.shape[2]), axis=2)  # [B, T, F]
    out = jax.nn.relu(m + bias[:, None, :])
    return out, (win, kernel, idx, out)


def _crm_bwd(res, g):
    win, kernel, idx, out = res
    g = jnp.where(out > 0.0, g, 0.0)  # dead ReLU (or no valid position): no gradient
    # The one-hot of the winners as a dense [B, T, L', F] tensor and two dots: measured about
    # 1.6x faster on CPU than gathering the winning windows and scattering back to them.
    pos = jnp.arange(win.shape[2])[None, None, :, None]
    dy = jnp.where(pos == idx[:, :, None, :], g[:, :, None, :], 0.0)  # [B, T, L', F]
    d_kernel = jnp.einsum("btlw,btlf->twf", win, dy)
    d_win = jnp.einsum("btlf,twf->btlw", dy, kernel)
    return d_win, d_kernel, jnp.sum(g, axis=1), None


conv_relu_maxpool.defvjp(_crm_fwd, _crm_bwd)


def by_site(x: jax.Array, num_layers: int) -> jax.Array:
    """[P, ...] stacked by plugin (P = 2 * num_layers) -> [num_layers, 2 (attn, ffn), ...]."""
    return x.reshape(num_layers, 2, *x.shape[1:])


def hard_gumbel_gate(
    logits: jax.Array, key: jax.Array | None, tau: float, straight_through: bool
) -> jax.Array:
    """Router gate delta in {0, 1} ("transfer" = component 0). logits: [..., 2] -> [...].

    With a key, Gumbel noise is added (training, or the original's noisy evaluation); with
    `straight_through` the backward pass uses the soft sample's gradient (spec §3.2).
    """
    if key is not None:
        logits = logits + jax.random.gumbel(key, logits.shape, logits.dtype)
    soft = jax.nn.softmax(logits / tau, axis=-1)
    hard = jax.nn.one_hot(jnp.argmax(soft, axis=-1), logits.shape[-1], dtype=soft.dtype)
    if straight_through:
        hard = hard + soft - jax.lax.stop_gradient(soft)
    return hard[..., 0]


def squash(v: jax.Array, axis: int) -> jax.Array:
    """Capsule squash |v|^2 / (1 + |v|^2) * v / |v| along `axis` (epsilon as the original)."""
    q = jnp.sum(jnp.square(v), axis=axis, keepdims=True) + 1e-16
    return (q / (1.0 + q)) * v / jnp.sqrt(q)


def dynamic_routing(pre: jax.Array, active: jax.Array, iters: int) -> tuple[jax.Array, jax.Array]:
    """B-CL's routing by agreement from task capsules to N knowledge-sharing capsules.

    pre: [B, L, T, N, C] pre-route vectors, active: [T] bool (tasks <= t). Coupling coefficients
    are a softmax over the *task* axis, as in B-CL's code (each output capsule distributes a unit
    of weight over the learned tasks; future tasks get 0):

        b = 0;  repeat iters times:  c = softmax_k(b) over active k;  s = sum_k c_k pre_k;
                                     b += <pre_k, squash(s)>   (not after the last iteration)

    Returns (s [B, L, N, C], the last coupling coefficients c [B, L, T, N]). Like B-CL, the
    un-squashed vote s is what the KSM passes on.
    """
    logits = jnp.zeros(pre.shape[:-1], pre.dtype)  # [B, L, T, N]
    keep = active[:, None]  # [T, 1]
    for i in range(iters):
        c = jax.nn.softmax(jnp.where(keep, logits, -1e9), axis=2)  # [B, L, T, N]
        votes = jnp.einsum("bltn,bltnc->blnc", c, pre)  # [B, L, N, C]
        if i < iters - 1:
            logits = logits + jnp.einsum("bltnc,blnc->bltn", pre, squash(votes, axis=-1))
    return votes, c


class CLPlugins(nnx.Module):
    """All P CL-plugins of the encoder; parameters stacked on a leading plugin axis."""

    def __init__(
        self,
        num_plugins: int,
        d_model: int,
        num_tasks: int,
        cfg: ModelConfig,
        *,
        ksm: Literal["transfer", "dynamic"] | None = "transfer",
        use_hat: bool = True,
        rngs: nnx.Rngs,
    ):
        """ksm: "transfer" (CTR), "dynamic" (B-CL) or None (no KSM: HAT and the adapter
        baselines). use_hat: gate the TSM with HAT masks (else a plain adapter)."""
        P, D, T = num_plugins, d_model, num_tasks
        C, N, F, A = cfg.capsule_dim, cfg.num_transfer_caps, cfg.cnn_filters, cfg.tsm_width
        self.cfg = cfg
        self.num_tasks = T
        self.ksm_kind = ksm
        self.use_hat = use_hat
        if ksm is not None:
            self._init_capsules(P, D, T, N, C, rngs)
        if ksm == "transfer":
            self._init_similarity(P, N * C, F, rngs)
        if ksm is not None:  # KSM output projection N*C -> D (spec §10.12)
            self._init_projection(P, N * C, D, T, rngs)
        # TSM (HAT-masked MLP) and its gate embeddings; a plain adapter without HAT. The `tsm`
        # role marks the adapter either way (analysis groups it); `hat` is what optim masks.
        tag = (lambda role: {"tsm": role, "hat": role}) if use_hat else (lambda role: {"tsm": role})
        self.w1 = PluginParam(_normal(rngs, (P, D, A)), **tag("w1"))
        self.b1 = PluginParam(jnp.zeros((P, A)), decay=False, **tag("b1"))
        self.w2 = PluginParam(_normal(rngs, (P, A, D)), **tag("w2"))
        self.b2 = PluginParam(jnp.zeros((P, D)), decay=False, **tag("b2"))
        if use_hat:
            std = cfg.hat_embedding_std
            self.e1 = TaskEmbedding(_normal(rngs, (P, T, A), std), task_axis=1)
            self.e2 = TaskEmbedding(_normal(rngs, (P, T, D), std), task_axis=1)

    def _init_capsules(self, P: int, D: int, T: int, N: int, C: int, rngs: nnx.Rngs) -> None:
        """TK-Layer (per-task capsule networks [P, T, ...], task axis 1) and W_route."""
        cap = dict(task_axis=1)
        if self.cfg.capsule_layers == 2:
            M = self.cfg.capsule_hidden
            self.caps_w1 = CapsuleParam(_normal(rngs, (P, T, D, M)), **cap)
            self.caps_b1 = CapsuleParam(jnp.zeros((P, T, M)), decay=False, **cap)
            self.caps_w2 = CapsuleParam(_normal(rngs, (P, T, M, C)), **cap)
            self.caps_b2 = CapsuleParam(jnp.zeros((P, T, C)), decay=False, **cap)
        else:
            self.caps_w1 = CapsuleParam(_normal(rngs, (P, T, D, C)), **cap)
            self.caps_b1 = CapsuleParam(jnp.zeros((P, T, C)), decay=False, **cap)
        # W_route is a raw N(0, 1) parameter in the original (spec §4). Shared (every task
        # trains it), but its axis 2 indexes source tasks: train.ksm_protect freezes rows by it.
        self.route = PluginParam(jax.random.normal(rngs.params(), (P, N, T, C, C)), task_axis=2)

    def _init_projection(self, P: int, nc: int, D: int, T: int, rngs: nnx.Rngs) -> None:
        """W_big [P, N*C, D] and b_big [P, D] shared by all tasks, or one per task ([P, T, N*C, D],
        [P, T, D]; task axis 1) whose earlier rows are frozen (``own_row``, as the heads)."""
        if self.cfg.ksm_projection == "per_task":
            own = dict(task_axis=1, own_row=True)
            self.big_w = PluginParam(_normal(rngs, (P, T, nc, D)), **own)
            self.big_b = PluginParam(jnp.zeros((P, T, D)), decay=False, **own)
        else:
            self.big_w = PluginParam(_normal(rngs, (P, nc, D)))
            self.big_b = PluginParam(jnp.zeros((P, D)), decay=False)

    def projection(self, prm: Params, task_id: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The output projection task `task_id` reads: (W_big [N*C, D], b_big [D])."""
        w, b = prm["big_w"], prm["big_b"]
        if self.cfg.ksm_projection == "per_task":
            return jnp.take(w, task_id, axis=0), jnp.take(b, task_id, axis=0)
        return w, b

    def _init_similarity(self, P: int, cin: int, F: int, rngs: nnx.Rngs) -> None:
        """CTR's similarity-estimator CNN, its current-task code map, similarity and router."""
        for k in self.cfg.cnn_kernels:
            bound = 1.0 / (cin * k) ** 0.5  # PyTorch's Conv1d default init
            setattr(self, f"conv_cur{k}_w", PluginParam(_uniform(rngs, (P, k * cin, F), bound)))
            setattr(self, f"conv_cur{k}_b", PluginParam(_uniform(rngs, (P, F), bound), decay=False))
            setattr(self, f"conv_src{k}_w", PluginParam(_uniform(rngs, (P, k * cin, F), bound)))
            setattr(self, f"conv_src{k}_b", PluginParam(_uniform(rngs, (P, F), bound), decay=False))
        code = F * len(self.cfg.cnn_kernels)
        self.cur_w = PluginParam(_normal(rngs, (P, code, F)))
        self.cur_b = PluginParam(jnp.zeros((P, F)), decay=False)
        self.sim_w = PluginParam(_normal(rngs, (P, code, cin)))
        self.sim_b = PluginParam(jnp.zeros((P, cin)), decay=False)
        dec_bound = 1.0 / code**0.5
        self.dec_w = PluginParam(_uniform(rngs, (P, code, 2), dec_bound))
        self.dec_b = PluginParam(_uniform(rngs, (P, 2), dec_bound), decay=False)

    def task_capsules(self, p: PluginRef, x: jax.Array, task_id: jax.Array) -> jax.Array:
        """TK-Layer of plugin p. x: [B, L, D] -> squashed capsules [B, L, T, C]."""
        prm = self._params(p)
        T = self.num_tasks
        if self.cfg.capsule_layers == 2:
            # No nonlinearity between the two layers (spec §3.1), so fold them into one map.
            w2 = prm["caps_w2"]  # [T, M, C]
            w = jnp.einsum("tdm,tmc->dtc", prm["caps_w1"], w2)  # [D, T, C]
            b = jnp.einsum("tm,tmc->tc", prm["caps_b1"], w2) + prm["caps_b2"]  # [T, C]
        else:
            w = jnp.transpose(prm["caps_w1"], (1, 0, 2))  # [D, T, C]
            b = prm["caps_b1"]
        u = jnp.einsum("bld,dtc->bltc", x, w) + b  # [B, L, T, C]
        active = (jnp.arange(T) <= task_id).astype(u.dtype)  # [T]
        u = u * active[:, None]
        return squash(u, axis=2)  # over the task axis (spec §10.2)

    def _folded_kernel(self, prm: Params, prefix: str, k: int, route_t: jax.Array) -> jax.Array:
        """Conv kernel of plugin p folded with the routing matrices of each task.

        The CNN reads Phi_k = U_k R_k (R_k = W_route[:, k] as a [C, N*C] map), which is linear in
        the C-dim capsules, so conv(Phi_k) = conv'(U_k) with kernel R_k W: 3x fewer flops than
        convolving the 9-channel Phi. route_t: [..., C, N*C] -> kernel [..., k * C, F].
        """
        F = self.cfg.cnn_filters
        w = prm[f"{prefix}{k}_w"].reshape(k, -1, F)  # [k, N*C, F]
        folded = jnp.einsum("...cj,ijf->...icf", route_t, w)  # [..., k, C, F]
        return folded.reshape(*folded.shape[:-3], k * folded.shape[-2], F)

    def ksm(
        self,
        p: PluginRef,
        x: jax.Array,
        mask: jax.Array,
        task_id: jax.Array,
        router_key: jax.Array | None,
        straight_through: bool,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Knowledge-sharing module of plugin p. x: [B, L, D], mask: [B, L] ->
        ([B, L, D], record): record["route"] [B, T] is how much each task's capsules feed this
        example's output; record["margin"] [B, T] is the router's noise-free logit margin
        (``transfer_ksm``; NaN for B-CL, which has no router)."""
        if self.ksm_kind == "dynamic":
            return self.dynamic_ksm(p, x, mask, task_id)
        if self.cfg.routing_layout == "torch":
            return self.transfer_ksm_torch(p, x, task_id, router_key, straight_through)
        return self.transfer_ksm(p, x, mask, task_id, router_key, straight_through)

    def dynamic_ksm(
        self, p: PluginRef, x: jax.Array, mask: jax.Array, task_id: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """B-CL's KSM of plugin p: task capsules + dynamic routing. x: [B, L, D] ->
        ([B, L, D], record): "route" [B, T] is the coupling coefficients' mean over real tokens
        and N; "margin" is NaN (no router)."""
        prm = self._params(p)
        _, pre = self._pre_route(prm, x, mask, task_id)
        votes, c = dynamic_routing(
            pre, jnp.arange(self.num_tasks) <= task_id, self.cfg.routing_iters
        )
        n = jnp.maximum(jnp.sum(mask, axis=1), 1.0)  # [B]
        route = jnp.einsum("bltn,bl->bt", c, mask) / (n[:, None] * c.shape[-1])  # [B, T]
        return self._project(prm, votes, task_id), {
            "route": route,
            "margin": jnp.full_like(route, jnp.nan),
        }

    def _pre_route(
        self, prm: Params, x: jax.Array, mask: jax.Array, task_id: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Task capsules and pre-route vectors (both KSMs). x: [B, L, D], mask: [B, L] ->
        (u [B, L, T, C], pre [B, L, T, N, C])."""
        # Zeroed padding makes every valid conv window identical at any padded length.
        u = self.task_capsules(prm, x, task_id) * mask[:, :, None, None]  # [B, L, T, C]
        pre = jnp.einsum("bltc,ntce->bltne", u, prm["route"])  # [B, L, T, N, C]
        return u, pre

    def _project(self, prm: Params, v: jax.Array, task_id: jax.Array) -> jax.Array:
        """Transfer capsules back to the hidden width. v: [B, L, N, C] -> [B, L, D]."""
        w, b = self.projection(prm, task_id)
        return v.reshape(*v.shape[:2], -1) @ w + b

    def transfer_ksm(
        self,
        p: PluginRef,
        x: jax.Array,
        mask: jax.Array,
        task_id: jax.Array,
        router_key: jax.Array | None,
        straight_through: bool,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """CTR's KSM of plugin p (transfer routing). x: [B, L, D], mask: [B, L] ->
        ([B, L, D], record): "route" [B, T] is the router's gate delta_k for k <= t (0 for later
        tasks); "margin" [B, T] is its noise-free logit margin r_k[0] - r_k[1] (> 0: transfer).
        The Gumbel noises' difference is a standard logistic variable, so in training the gate
        opens with probability sigmoid(margin) (tau scales only the soft sample's gradient)."""
        prm = self._params(p)
        B, L, _ = x.shape
        T, C, N = self.num_tasks, self.cfg.capsule_dim, self.cfg.num_transfer_caps
        u, pre = self._pre_route(prm, x, mask, task_id)
        route = prm["route"]  # [N, T, C, C]
        # R[k, c, n*C + e] = route[n, k, c, e]: Phi_k = U_k @ R[k].
        r = jnp.transpose(route, (1, 2, 0, 3)).reshape(T, C, N * C)  # [T, C, N*C]
        u_t = jnp.take(u, task_id, axis=2)  # [B, L, C]
        r_t = jnp.take(r, task_id, axis=0)  # [C, N*C]
        n = jnp.sum(mask, axis=1).astype(jnp.int32)  # [B] real tokens
        codes = []
        for k in self.cfg.cnn_kernels:
            pad = k - 2  # the original pads the current-task convs by k - 2 on both sides
            win = _windows(jnp.pad(u_t, ((0, 0), (pad, pad), (0, 0))), k)  # [B, L + k - 3, k*C]
            valid = jnp.arange(win.shape[1])[None, :] <= (n + k - 4)[:, None]  # same as length n
            bias = jnp.broadcast_to(prm[f"conv_cur{k}_b"], (B, self.cfg.cnn_filters))
            kernel = self._folded_kernel(prm, "conv_cur", k, r_t)[None]  # [1, k*C, F]
            codes.append(conv_relu_maxpool(win[:, None], kernel, bias, valid)[:, 0])  # [B, F]
        cur = jnp.concatenate(codes, axis=-1) @ prm["cur_w"] + prm["cur_b"]  # [B, F]
        u_k = jnp.swapaxes(u, 1, 2)  # [B, T, L, C]
        feats = []
        for k in self.cfg.cnn_kernels:
            kernel = self._folded_kernel(prm, "conv_src", k, r)  # [T, k*C, F]
            win = _windows(u_k, k)  # [B, T, L - k + 1, k*C]
            bias = prm[f"conv_src{k}_b"] + cur  # [B, F]
            valid = jnp.arange(win.shape[2])[None, :] <= (n - k)[:, None]  # [B, L - k + 1]
            feats.append(conv_relu_maxpool(win, kernel, bias, valid))  # [B, T, F]
        z = jnp.concatenate(feats, axis=-1)  # [B, T, 3F]
        sim = z @ prm["sim_w"] + prm["sim_b"]  # [B, T, N*C]
        logits = z @ prm["dec_w"] + prm["dec_b"]  # [B, T, 2]
        tau = self.cfg.router_tau
        delta = hard_gumbel_gate(logits, router_key, tau, straight_through)  # [B, T]
        causal = (jnp.arange(T) <= task_id).astype(x.dtype)  # [T]
        weight = sim.reshape(B, T, N, C) * (delta * causal)[:, :, None, None]  # [B, T, N, C]
        v = jnp.einsum("btnc,bltnc->blnc", weight, pre)  # [B, L, N, C]
        record = {
            "route": jax.lax.stop_gradient(delta) * causal,
            "margin": jax.lax.stop_gradient(logits[..., 0] - logits[..., 1]),
        }
        return self._project(prm, v, task_id), record

    def transfer_ksm_torch(
        self,
        p: PluginRef,
        x: jax.Array,
        task_id: jax.Array,
        router_key: jax.Array | None,
        straight_through: bool,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """CTR's KSM of plugin p in the original code's layout (model.routing_layout="torch").

        x: [B, L, D] -> ([B, L, D], record as ``transfer_ksm``). Spec Appendix A step by step, on
        the row-major buffers the original reshapes (i = b * L + l a flat token):

            A2  X [B*L, T, C]     the per-token [C, T] capsule buffer read as T slots of C
            A3  P [N, B*L, T, C]  P[n, i, a] = X[i, a] @ W_route[n, a]
            A4  Phi_a [B, L, N*C] = P[:, :, a] (an [N, B*L, C] buffer) reshaped: example b's
                                    features come from other examples' tokens
            A5  c_t from Phi_t (slot t), z_a from every Phi_a, as the semantic layout's CNN
            A6  sim [B, N*C, T], delta [B, T]
            A7  both tiled L times over rows (row r is example r mod B), sim reshaped to
                [N, B*L, T, C]: token i is weighted by example i mod B's gates
            A8  v[n, i] = sum_{a <= t} sim_t[n, i, a] * delta_t[i, a] * P[n, i, a]
            A9  v [N, B*L, C] reshaped to [B, L, N*C], then W_big, b_big

        Padding enters as in the original: padded tokens' capsules are not zeroed and the
        max-pools run over every position. Future tasks' capsules stay zero (``task_capsules``),
        so the slots hold only learned tasks' values, as in the semantic layout.
        """
        prm = self._params(p)
        B, L, _ = x.shape
        T, C, N = self.num_tasks, self.cfg.capsule_dim, self.cfg.num_transfer_caps
        F = self.cfg.cnn_filters
        u = self.task_capsules(prm, x, task_id)  # [B, L, T, C]
        slots = jnp.swapaxes(u, 2, 3).reshape(B * L, T, C)  # A2
        pre = jnp.einsum("iad,nade->niae", slots, prm["route"])  # A3 [N, B*L, T, C]
        phi = jnp.transpose(pre, (2, 0, 1, 3)).reshape(T, B, L, N * C)  # A4
        phi = jnp.swapaxes(phi, 0, 1)  # [B, T, L, N*C]
        phi_t = jnp.take(phi, task_id, axis=1)  # [B, L, N*C]
        codes = []
        for k in self.cfg.cnn_kernels:
            pad = k - 2
            win = _windows(jnp.pad(phi_t, ((0, 0), (pad, pad), (0, 0))), k)  # [B, L + k - 3, k*NC]
            bias = jnp.broadcast_to(prm[f"conv_cur{k}_b"], (B, F))
            kernel = prm[f"conv_cur{k}_w"][None]  # [1, k*N*C, F]
            every = jnp.ones(win.shape[:2], bool)
            codes.append(conv_relu_maxpool(win[:, None], kernel, bias, every)[:, 0])  # [B, F]
        cur = jnp.concatenate(codes, axis=-1) @ prm["cur_w"] + prm["cur_b"]  # [B, F]
        feats = []
        for k in self.cfg.cnn_kernels:
            win = _windows(phi, k)  # [B, T, L - k + 1, k*N*C]
            kernel = jnp.broadcast_to(prm[f"conv_src{k}_w"], (T, *prm[f"conv_src{k}_w"].shape))
            every = jnp.ones((B, win.shape[2]), bool)
            feats.append(conv_relu_maxpool(win, kernel, prm[f"conv_src{k}_b"] + cur, every))
        z = jnp.concatenate(feats, axis=-1)  # [B, T, 3F]
        sim = z @ prm["sim_w"] + prm["sim_b"]  # [B, T, N*C]
        logits = z @ prm["dec_w"] + prm["dec_b"]  # [B, T, 2]
        delta = hard_gumbel_gate(logits, router_key, self.cfg.router_tau, straight_through)
        causal = (jnp.arange(T) <= task_id).astype(x.dtype)  # [T]
        sim_rows = jnp.tile(jnp.swapaxes(sim, 1, 2), (L, 1, 1)).reshape(N, B * L, T, C)  # A6-7
        gate_rows = jnp.tile(delta * causal, (L, 1))  # [B*L, T]
        v = jnp.einsum("niac,ia,niac->nic", sim_rows, gate_rows, pre)  # A8 [N, B*L, C]
        record = {
            "route": jax.lax.stop_gradient(delta) * causal,
            "margin": jax.lax.stop_gradient(logits[..., 0] - logits[..., 1]),
        }
        return self._project(prm, v.reshape(B, L, N, C), task_id), record  # A9

    def _stacked_names(self) -> list[str]:
        """Attribute names of the parameters stacked on the plugin axis (not the HAT embeddings,
        which ``gates`` reads for all plugins at once)."""
        return [
            name for name, v in vars(self).items() if isinstance(v, (PluginParam, CapsuleParam))
        ]

    def by_layer(self, num_layers: int) -> dict[str, jax.Array]:
        """The stacked parameters viewed by layer for the encoder's layer scan (a reshape only).

        Plugin p sits in layer p // 2 at site ("attn", "ffn")[p % 2], so [P, ...] is
        [num_layers, 2, ...]: name -> [num_layers, 2, ...]. The scan slices one layer at a time;
        slicing every plugin by a static index outside it instead padded each slice's gradient
        to the full stacked size and summed P of them (most of a step's temporary memory).
        """
        return {
            name: by_site(getattr(self, name)[...], num_layers) for name in self._stacked_names()
        }

    def _params(self, p: PluginRef) -> Params:
        """Plugin p's parameters (an index is sliced here: fine outside a differentiated loop)."""
        if isinstance(p, int):
            return {name: getattr(self, name)[p] for name in self._stacked_names()}
        return p

    def gates(self, task_id: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
        """HAT gates of all plugins for task `task_id` at scale s: ([P, A], [P, D]).

        Without HAT (a plain adapter) every gate is 1.
        """
        if not self.use_hat:
            P, D, A = self.w1.shape
            return jnp.ones((P, A), jnp.float32), jnp.ones((P, D), jnp.float32)
        return hat.gates(self.e1[...], task_id, s), hat.gates(self.e2[...], task_id, s)

    def __call__(
        self,
        p: PluginRef,
        x: jax.Array,
        mask: jax.Array,
        task_id: jax.Array,
        g1: jax.Array,
        g2: jax.Array,
        router_key: jax.Array | None,
        straight_through: bool,
        probe: bool = False,
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """Plugin p. x: [B, L, D], mask: [B, L] (1 = token), g1: [A], g2: [D] -> [B, L, D].

        probe: also return what each part contributes, per example (``ctr_jax.transfer``):
        {"route", "margin": [B, T] (``ksm``; zeros and NaN without a KSM), "x_rms", "ksm_rms",
        "routed_rms", "tsm_rms": [B], the RMS over real tokens of the plugin's input, the KSM's
        output, its routed part (the output less the projection's bias b_big, which is the same
        for every token, task and example) and the TSM's output}.
        """
        prm = self._params(p)
        h = x
        ksm = record = None
        if self.ksm_kind is not None:
            ksm, record = self.ksm(prm, x, mask, task_id, router_key, straight_through)
            h = x + ksm
        a1 = jax.nn.relu(h @ prm["w1"] + prm["b1"]) * g1  # [B, L, A]
        a2 = jax.nn.relu(a1 @ prm["w2"] + prm["b2"]) * g2  # [B, L, D]
        if not probe:
            return x + a2
        n = jnp.maximum(jnp.sum(mask, axis=1), 1.0) * x.shape[-1]  # [B] real entries

        def rms(y: jax.Array | None) -> jax.Array:
            if y is None:
                return jnp.zeros(x.shape[:1], x.dtype)
            return jnp.sqrt(jnp.einsum("bld,bl->b", jnp.square(y), mask) / n)

        if record is None:
            none = jnp.zeros((x.shape[0], self.num_tasks), x.dtype)
            record = {"route": none, "margin": jnp.full_like(none, jnp.nan)}
        routed = None if ksm is None else ksm - self.projection(prm, task_id)[1]
        return x + a2, {
            **record,
            "x_rms": rms(x),
            "ksm_rms": rms(ksm),
            "routed_rms": rms(routed),
            "tsm_rms": rms(a2),
        }
