"""The decoder in Flax NNX, one module for every family we run (Llama, Mistral, Qwen2, Qwen3, Gemma-2, Gemma-3 text):
RMSNorm (Gemma's (1 + w) through `norm_offset`), RoPE (rotate-half; per-layer bases), GQA attention with optional
biases, q/k norm, soft-capping and per-layer sliding windows, a KV cache, a gated MLP (SwiGLU or GeGLU), optional
sandwich norms, optional scan over layers with a remat policy by op or by name. `CausalLM` adds an LM head (or ties
it), `ScoreModel` a score head. The differences between families are data in `ModelConfig`, read top to bottom here.

Shapes: B batch, T tokens of this call, S cache slots, E hidden, H/K query/kv heads, Dh head dim, V vocab.

The modules are only ever run through `nnx.merge(graphdef, State(params))` inside a `jax.jit` owned by the caller
(see `saferlhf_jax.models.api`); they hold no state beyond their parameters.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import numpy as np
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from saferlhf_jax import ops
from saferlhf_jax.models.config import ModelConfig
from saferlhf_jax.models.rope import apply_rope, inverse_frequencies, mask_positions, rope_angles
from saferlhf_jax.parallel.constraints import constrain

# Remat policies by op type and by name (the names are `checkpoint_name`s set in Attention / MLP below).
_SAVE = jax.checkpoint_policies.save_only_these_names
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attention_out": _SAVE("attention_out"),
    "save_qkv_attention_out": _SAVE("query_proj", "key_proj", "value_proj", "attention_out"),
    "save_attention_mlp_out": _SAVE("attention_out", "mlp_out"),
}

# Logical axes of the activations (see saferlhf_jax.parallel.mesh.DEFAULT_RULES).
RESIDUAL = ("batch", "seq", "act_embed")
QUERIES = ("batch", "seq", "act_heads", "head_dim")
KEYS = ("batch", "seq", "act_kv_heads", "head_dim")
LOGITS = ("batch", "seq", "act_vocab")


# the score normalizer statistics' key in a score model's parameters (ScoreModel.normalizer)
NORMALIZER_KEY = "normalizer"


class NormalizerStat(nnx.Variable):
    """Score normalizer statistics: saved with the model, never trained by the optimizer."""


class Normalizer(nnx.Module):
    """Running score statistics (spec §3.5), stored next to the score head."""

    def __init__(self, score_dim: int):
        self.mean = NormalizerStat(jnp.zeros((score_dim,), jnp.float32), axes=("score",))
        self.var = NormalizerStat(jnp.ones((score_dim,), jnp.float32), axes=("score",))
        self.count = NormalizerStat(jnp.zeros((), jnp.float32), axes=())

    def state(self):
        return {"mean": self.mean[...], "var": self.var[...], "count": self.count[...]}


def _dtype(name: str):
    return jnp.dtype(name)


def project(x, kernel, transposed: bool, compute_dtype, matmul_dtype=None):
    """x (..., in) @ kernel ((in, out), or (out, in) when `transposed`) → (..., out) in `compute_dtype`.

    With `matmul_dtype` (a bf16 rollout copy) the products are taken in that dtype and summed in the compute dtype
    (`preferred_element_type`): on XLA CPU that is the bf16 GEMM with f32 accumulation (a SmolLM2 decode step 1.5×
    the f32 one: docs/bench_real_model_cpu.json), where a bf16 → bf16 dot or an upcast copy of the kernel is slower
    than f32."""
    if matmul_dtype is None:
        x, kernel, out = x, kernel.astype(compute_dtype), None
    else:
        x, kernel, out = x.astype(matmul_dtype), kernel.astype(matmul_dtype), compute_dtype
    if transposed:
        return jnp.einsum("...i,oi->...o", x, kernel, preferred_element_type=out)
    return jnp.dot(x, kernel, preferred_element_type=out)


class Dense(nnx.Module):
    """y = x @ kernel (+ bias); kernel (in, out) in param dtype, computed in the compute dtype.

    axes: the kernel's logical axes (in, out); the bias takes the out axis. With `config.out_in_kernels` (the
    rollout layout "fused_out_in") the kernel is stored (out, in), axes reversed: which form XLA CPU multiplies a
    decode step's skinny (B, in) activations by faster depends on the machine and the shape (an AVX2 Xeon: (out, in)
    1.2–1.35× faster at B = 8 and 32; an AVX-512 one: (in, out) faster at B = 8, docs/bench_generate_cpu_*.json);
    accelerators take either form.

    name: the projection's HF name; when it is one of `config.lora_targets` the layer also holds LoRA adapters
    lora_a (in, r) and lora_b (r, out) (the latter already scaled by α/r: `models.lora.inject`) and computes
    x @ W + (x @ A) @ B — the low-rank path beside the frozen kernel, so that neither an adapted copy of W nor
    a full-size gradient of it ever exists (merging first, W + A@B, costs both: one more model's worth of
    temporaries in a LoRA train step)."""

    def __init__(self, d_in: int, d_out: int, *, bias: bool, axes: tuple[str, str], config: ModelConfig,
                 rngs: nnx.Rngs, name: str = ""):
        init = nnx.initializers.normal(config.initializer_range)
        self.transposed = config.out_in_kernels
        shape, kernel_axes = ((d_out, d_in), axes[::-1]) if self.transposed else ((d_in, d_out), axes)
        self.kernel = nnx.Param(init(rngs.params(), shape, _dtype(config.param_dtype)), axes=kernel_axes)
        self.bias = nnx.Param(jnp.zeros((d_out,), _dtype(config.param_dtype)), axes=axes[1:]) if bias else None
        self.adapted = name in config.lora_targets
        if self.adapted:  # the rank axis is never split (models.lora.adapter_axes)
            r = max(int(config.lora_rank), 1)
            self.lora_a = nnx.Param(jnp.zeros((d_in, r), jnp.float32), axes=(axes[0], None))
            self.lora_b = nnx.Param(jnp.zeros((r, d_out), jnp.float32), axes=(None, axes[1]))
        self.compute_dtype = _dtype(config.dtype)
        self.matmul_dtype = _dtype(config.matmul_dtype) if config.matmul_dtype else None

    def __call__(self, x):
        x = x.astype(self.compute_dtype)
        y = project(x, self.kernel[...], self.transposed, self.compute_dtype, self.matmul_dtype)
        if self.adapted:
            a, b = (v[...].astype(self.compute_dtype) for v in (self.lora_a, self.lora_b))
            y = y + jnp.dot(jnp.dot(x, a), b)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.compute_dtype)
        return y


class RMSNorm(nnx.Module):
    """x / rms(x) × (offset + w), in float32: offset 0 (Llama, Qwen, Mistral) or 1 (Gemma, whose w starts at 0)."""

    def __init__(self, dim: int, *, config: ModelConfig):
        self.scale = nnx.Param(jnp.ones((dim,), _dtype(config.param_dtype)), axes=("norm",))
        self.eps = config.rms_norm_eps
        self.offset = float(config.norm_offset)
        self.compute_dtype = _dtype(config.dtype)

    def __call__(self, x):
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
        return ((self.scale[...].astype(jnp.float32) + self.offset) * xf).astype(self.compute_dtype)


def softcap(x, cap: float | None):
    """cap · tanh(x / cap) (Gemma-2's attention and final-logit soft-capping); identity when cap is None."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def attend(q, k, v, allowed, scale: float | None = None, cap: float | None = None, heads_first: bool = False):
    """Grouped-query attention. q (B,T,H,Dh), k/v (B,S,K,Dh) — or, with heads_first, the KV cache's layout: k
    (B,K,Dh,S) and v (B,K,S,Dh), read as stored (no per-step transpose of the cache) —, allowed (B,T,S) bool →
    (B,T,H,Dh). Keys stored (Dh, S) make the scores a plain (G × Dh)·(Dh × S) product per (b, k): XLA CPU ran the
    (G × Dh)·(S × Dh)ᵀ form of a B=32 decode step ~2.5× slower (docs/bench_decode_breakdown_cpu_b32.json).

    scale: query scaling (default Dh^-0.5); cap: logit soft-cap before the mask. Rows with no allowed key (left
    pads) get a uniform average instead of NaN.
    """
    b, t, h, dh = q.shape
    kh = k.shape[1 if heads_first else 2]
    keys, values = ("bkds", "bksd") if heads_first else ("bskd", "bskd")
    # one query (decode): the unit query axis dropped, so each (b, k) is one (G × Dh)·(Dh × S) product — XLA CPU runs
    # the five-axis form of the same contraction about twice as slowly
    tq = "" if t == 1 else "t"
    qg = q.reshape(b, t, kh, h // kh, dh)
    if t == 1:
        qg, allowed = qg[:, 0], allowed[:, 0]
    scale = dh ** -0.5 if scale is None else scale
    if heads_first and k.dtype != jnp.float32 and jax.default_backend() == "cpu":
        # XLA CPU runs the slots-last key product in a dot kernel without bf16 × bf16 → f32; bf16 arithmetic is
        # float32 on a CPU anyway, so the operands go in as float32 there (accelerators keep the cache's dtype)
        qg, k = qg.astype(jnp.float32), k.astype(jnp.float32)
    logits = jnp.einsum(f"b{tq}kgd,{keys}->bkg{tq}s", qg, k, preferred_element_type=jnp.float32)
    logits = softcap(logits * jnp.float32(scale), cap)
    mask = allowed[:, None, None, :] if t == 1 else allowed[:, None, None, :, :]
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum(f"bkg{tq}s,{values}->b{tq}kgd", probs, v)
    return out.reshape(b, t, h, dh)


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        e, dh = config.hidden_size, config.resolved_head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, dh
        qkv_bias = config.attention_bias or config.qkv_bias
        self.fused = config.fused_projections
        if self.fused:  # rollout layout: one (E, (H + 2K)·Dh) kernel, one matmul per token instead of three
            self.qkv_proj = Dense(e, (self.num_heads + 2 * self.num_kv_heads) * dh, bias=qkv_bias,
                                  axes=("embed", "qkv_fused"), config=config, rngs=rngs)
        else:
            self.q_proj = Dense(e, self.num_heads * dh, bias=qkv_bias, axes=("embed", "heads"), config=config,
                                rngs=rngs, name="q_proj")
            self.k_proj = Dense(e, self.num_kv_heads * dh, bias=qkv_bias, axes=("embed", "kv_heads"), config=config,
                                rngs=rngs, name="k_proj")
            self.v_proj = Dense(e, self.num_kv_heads * dh, bias=qkv_bias, axes=("embed", "kv_heads"), config=config,
                                rngs=rngs, name="v_proj")
        self.o_proj = Dense(self.num_heads * dh, e, bias=config.attention_bias, axes=("heads", "embed"),
                            config=config, rngs=rngs, name="o_proj")
        self.q_norm = RMSNorm(dh, config=config) if config.qk_norm else None
        self.k_norm = RMSNorm(dh, config=config) if config.qk_norm else None
        self.scale = None if config.query_pre_attn_scalar is None else float(config.query_pre_attn_scalar) ** -0.5
        self.cap = config.attn_logit_softcapping

    def __call__(self, x, cos, sin, allowed, kv_cache=None, cache_index=None):
        """x (B,T,E); allowed (B,T,S); kv_cache (k (B,K,Dh,S), v (B,K,S,Dh)) or None (then S = T).

        Returns (out (B,T,E), new kv_cache or None).
        """
        b, t, _ = x.shape
        if self.fused:
            q_end = self.num_heads * self.head_dim
            q, k, v = jnp.split(self.qkv_proj(x), [q_end, q_end + self.num_kv_heads * self.head_dim], axis=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.reshape(b, t, self.num_heads, self.head_dim)
        k = k.reshape(b, t, self.num_kv_heads, self.head_dim)
        v = v.reshape(b, t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:  # per head, before RoPE (Qwen3, Gemma-3)
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q = checkpoint_name(constrain(q, QUERIES), "query_proj")
        k = checkpoint_name(constrain(k, KEYS), "key_proj")
        v = checkpoint_name(constrain(v, KEYS), "value_proj")
        if kv_cache is not None:  # keys (B, K, Dh, S), values (B, K, S, Dh): this call's go in at slot cache_index
            ck, cv = kv_cache
            k = jax.lax.dynamic_update_slice_in_dim(ck, k.transpose(0, 2, 3, 1).astype(ck.dtype), cache_index, axis=3)
            v = jax.lax.dynamic_update_slice_in_dim(cv, v.swapaxes(1, 2).astype(cv.dtype), cache_index, axis=2)
            kv_cache = (k, v)
        out = attend(q, k.astype(q.dtype), v.astype(q.dtype), allowed, self.scale, self.cap,
                     heads_first=kv_cache is not None)
        out = checkpoint_name(constrain(out, QUERIES), "attention_out")
        return self.o_proj(out.reshape(b, t, -1)), kv_cache


@jax.custom_vjp
def swiglu(x, w_gate, w_up, w_down):
    """down(silu(x @ w_gate) · (x @ w_up)): x (..., E), w_gate/w_up (E, F), w_down (F, E) → (..., E).

    Same values as autodiff; the hand-written backward keeps the weight gradients as dot_generals contracting the
    leading (batch, token) axes directly. Autodiff's version fuses the SiLU derivative into a transposed copy of
    (…, F) that XLA CPU runs ~4× slower than the matmuls around it (≈20 % of a small model's train step).
    Residuals: x and the two (…, F) projections (as autodiff).
    """
    return jnp.dot(jax.nn.silu(jnp.dot(x, w_gate)) * jnp.dot(x, w_up), w_down)


def _swiglu_fwd(x, w_gate, w_up, w_down):
    gate, up = jnp.dot(x, w_gate), jnp.dot(x, w_up)
    return jnp.dot(jax.nn.silu(gate) * up, w_down), (x, w_gate, w_up, w_down, gate, up)


def _swiglu_bwd(residuals, d_out):
    x, w_gate, w_up, w_down, gate, up = residuals
    sig = jax.nn.sigmoid(gate)
    silu = gate * sig
    lead = tuple(range(x.ndim - 1))  # the (batch, token) axes contracted by the weight gradients

    def weight_grad(a, b):
        return jax.lax.dot_general(a, b, ((lead, lead), ((), ())))

    d_act = jnp.dot(d_out, w_down.T)
    d_up = d_act * silu
    d_gate = d_act * up * (sig * (1 + gate * (1 - sig)))
    d_x = jnp.dot(d_gate, w_gate.T) + jnp.dot(d_up, w_up.T)
    return (d_x, weight_grad(x, d_gate).astype(w_gate.dtype), weight_grad(x, d_up).astype(w_up.dtype),
            weight_grad(silu * up, d_out).astype(w_down.dtype))


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # Gemma's GeGLU
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


class MLP(nnx.Module):
    """down(act(gate(x)) · up(x)): SwiGLU (silu) or GeGLU (tanh-GELU)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        e, f, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.fused = config.fused_projections
        if self.fused:  # rollout layout: one (E, 2F) kernel
            self.gate_up_proj = Dense(e, 2 * f, bias=bias, axes=("embed", "mlp_fused"), config=config, rngs=rngs)
        else:
            self.gate_proj = Dense(e, f, bias=bias, axes=("embed", "mlp"), config=config, rngs=rngs, name="gate_proj")
            self.up_proj = Dense(e, f, bias=bias, axes=("embed", "mlp"), config=config, rngs=rngs, name="up_proj")
        self.down_proj = Dense(f, e, bias=bias, axes=("mlp", "embed"), config=config, rngs=rngs, name="down_proj")
        self.adapted = not self.fused and any(d.adapted for d in (self.gate_proj, self.up_proj, self.down_proj))
        self.act = config.hidden_act

    def __call__(self, x):
        if self.fused:
            gate, up = jnp.split(self.gate_up_proj(x), 2, axis=-1)
            y = self.down_proj(ACTIVATIONS[self.act](gate) * up)
        elif self.gate_proj.bias is not None or self.act != "silu" or self.adapted:
            # the hand-written backward is plain SwiGLU's
            y = self.down_proj(ACTIVATIONS[self.act](self.gate_proj(x)) * self.up_proj(x))
        else:
            dt = self.gate_proj.compute_dtype
            y = swiglu(x.astype(dt), *(layer.kernel[...].astype(dt)
                                       for layer in (self.gate_proj, self.up_proj, self.down_proj)))
        return checkpoint_name(y, "mlp_out")


class Block(nnx.Module):
    """Pre-norm decoder layer. With sandwich norms (Gemma) the attention and MLP outputs are normalised too, and the
    names follow HF: post_attention_layernorm is then the norm *after* attention, pre_feedforward_layernorm the one
    before the MLP (in Llama, post_attention_layernorm is the pre-MLP norm)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(config.hidden_size, config=config)
        self.self_attn = Attention(config, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config=config)
        self.mlp = MLP(config, rngs=rngs)
        self.sandwich = config.sandwich_norms
        if self.sandwich:
            self.pre_feedforward_layernorm = RMSNorm(config.hidden_size, config=config)
            self.post_feedforward_layernorm = RMSNorm(config.hidden_size, config=config)

    def __call__(self, x, cos, sin, allowed, kv_cache=None, cache_index=None):
        with jax.named_scope("attention"):
            h, kv_cache = self.self_attn(self.input_layernorm(x), cos, sin, allowed, kv_cache, cache_index)
        if self.sandwich:
            h = self.post_attention_layernorm(h)
        x = constrain(x + h, RESIDUAL)
        with jax.named_scope("mlp"):
            if self.sandwich:
                h = self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
            else:
                h = self.mlp(self.post_attention_layernorm(x))
            x = constrain(x + h, RESIDUAL)
        return x, kv_cache


class Embed(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(config.initializer_range)
        self.embedding = nnx.Param(
            init(rngs.params(), (config.vocab_size, config.hidden_size), _dtype(config.param_dtype)),
            axes=("vocab", "embed"))
        self.compute_dtype = _dtype(config.dtype)
        self.matmul_dtype = _dtype(config.matmul_dtype) if config.matmul_dtype else None
        # Gemma multiplies by √hidden, rounded to the weights' dtype as transformers does
        self.scale = float(np.asarray(config.hidden_size ** 0.5).astype(_dtype(config.param_dtype))) \
            if config.embed_scale else None

    def __call__(self, ids):
        # clip: ids past the table (e.g. a pad id appended to the tokenizer) sit on masked positions and must not
        # turn into NaN rows (the default out-of-bounds fill), which would leak through 0-weight attention
        x = jnp.take(self.embedding[...], ids, axis=0, mode="clip")
        if self.scale is not None:
            x = x * jnp.asarray(self.scale, x.dtype)
        return x.astype(self.compute_dtype)

    def attend(self, x):
        """Tied output projection: x (..., E) → (..., V)."""
        if self.matmul_dtype is None:
            return jnp.dot(x, self.embedding[...].astype(x.dtype).T)
        return project(x, self.embedding[...], True, x.dtype, self.matmul_dtype)


def _allowed(attention_mask, key_mask, query_slots, window: int | None = None):
    """(B,T,S) bool: key slot j is visible from query slot i when key_mask[j] and j ≤ i (and i − j < window).

    Slots, not positions: real tokens are contiguous (left pads, then prompt and response), so a slot distance is a
    token distance, as in transformers' sliding-window mask."""
    key_slots = jnp.arange(key_mask.shape[1])
    visible = key_slots[None, None, :] <= query_slots[None, :, None]
    if window is not None:
        visible = visible & (key_slots[None, None, :] > query_slots[None, :, None] - window)
    return visible & key_mask[:, None, :]


class Backbone(nnx.Module):
    """Embedding → decoder blocks → final norm. Hidden states (B, T, E) in the compute dtype."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = Embed(config, rngs=rngs)
        if config.scan_layers:
            @nnx.split_rngs(splits=config.num_hidden_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0,  # the stack adds a leading 'layers' axis to every parameter
                      transform_metadata={nnx.PARTITION_NAME: "layers", "axes": "layers"})
            def make_stack(rngs):
                return Block(config, rngs=rngs)

            self.layers = make_stack(rngs)
        else:
            self.layers = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config=config)

    def __call__(self, input_ids, attention_mask, positions=None, cache=None, cache_index=0):
        """input_ids, attention_mask (B, T). Without cache keys are this call's tokens.

        cache: a `KVCache` from `init_cache` — this call's tokens are written at slots
        [cache_index, cache_index + T); queries see every earlier valid slot.
        Returns (hidden (B, T, E), new cache or None).
        """
        attention_mask = attention_mask.astype(bool)
        t = input_ids.shape[1]
        config = self.config
        if positions is None:
            positions = mask_positions(attention_mask)
        query_slots = jnp.arange(t) if cache is None else cache_index + jnp.arange(t)
        key_mask = attention_mask if cache is None else jax.lax.dynamic_update_slice_in_dim(
            cache.mask, attention_mask, cache_index, axis=1)
        # per-layer attention inputs: the global ones, and (Mistral/Qwen windows, Gemma's alternating layers) the
        # sliding layers' — a window on the mask and, for Gemma-3, their own RoPE base
        local = tuple(config.layer_type(i) == "sliding_attention" for i in range(config.num_hidden_layers))
        glob = (*rope_angles(positions, inverse_frequencies(config)), _allowed(attention_mask, key_mask, query_slots))
        loc = glob
        if any(local):
            rope = rope_angles(positions, inverse_frequencies(config, local=True)) \
                if config.rope_local_theta is not None else glob[:2]
            loc = (*rope, _allowed(attention_mask, key_mask, query_slots, config.sliding_window))
        x = constrain(self.embed_tokens(input_ids), RESIDUAL)
        x, new_kv = self._run_layers(x, glob, loc, local, cache, cache_index)
        new_cache = None if cache is None else KVCache(new_kv[0], new_kv[1], key_mask)
        return constrain(self.norm(x), RESIDUAL), new_cache

    def _run_layers(self, x, glob, loc, local, cache, cache_index):
        """glob / loc: (cos, sin, allowed) of the full / sliding layers; local: per layer, which one it uses."""
        policy_name = self.config.remat_policy
        if policy_name not in REMAT_POLICIES:
            raise ValueError(f"remat_policy must be one of {sorted(REMAT_POLICIES)}, got {policy_name!r}")

        def run_block(block, x, kv, inputs):
            cos, sin, allowed = inputs
            return block(x, cos, sin, allowed, kv, cache_index)

        if policy_name != "none":
            run_block = nnx.remat(run_block, policy=REMAT_POLICIES[policy_name], prevent_cse=not self.config.scan_layers)

        if self.config.scan_layers:
            graphdef, stacked = nnx.split(self.layers)
            mixed = any(local) and not all(local)

            def body(h, xs):
                layer_state, kv, is_local = xs
                if mixed:
                    inputs = jax.tree.map(lambda g, l: jnp.where(is_local, l, g), glob, loc)
                else:
                    inputs = loc if all(local) else glob
                h, kv = run_block(nnx.merge(graphdef, layer_state), h, kv, inputs)
                return h, kv

            kv_in = None if cache is None else (cache.k, cache.v)
            x, kv_out = jax.lax.scan(body, x, (stacked, kv_in, jnp.asarray(local)))
            return x, kv_out
        ks, vs = [], []
        for i, block in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            with jax.named_scope(f"layer_{i}"):
                x, kv = run_block(block, x, kv, loc if local[i] else glob)
            if kv is not None:
                ks.append(kv[0])
                vs.append(kv[1])
        # per-layer tuples: no stacking copy of the whole cache per decode step
        return x, (None if cache is None else (tuple(ks), tuple(vs)))


class CausalLM(nnx.Module):
    """Backbone + LM head (tied to the embedding when configured). Logits are float32 (B, T, V)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.model = Backbone(config, rngs=rngs)
        self.lm_head = None if config.tie_word_embeddings else Dense(
            config.hidden_size, config.vocab_size, bias=False, axes=("embed", "vocab"), config=config, rngs=rngs)

    def __call__(self, input_ids, attention_mask, positions=None, cache=None, cache_index=0,
                 return_hidden: bool = False):
        """(logits (B, T, V) f32, cache); return_hidden=True: (final hidden states (B, T, E), cache) instead, for
        callers that project to the vocabulary in chunks (`ops.chunked_label_log_probs` with `head()`)."""
        h, cache = self.model(input_ids, attention_mask, positions, cache, cache_index)
        if return_hidden:
            return h, cache
        return self.logits(h), cache

    def logits(self, hidden):
        """Final hidden states (B, T, E) → logits (B, T, V) float32 (output projection and soft-cap)."""
        logits = self.model.embed_tokens.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
        logits = softcap(logits.astype(jnp.float32), self.config.final_logit_softcapping)
        return constrain(logits, LOGITS)

    def head(self):
        """(weight, vocab_axis): the output projection as stored — the embedding (V, E) when tied, axis 0; else the
        LM head kernel (E, V), axis 1 ((V, E), axis 0, in the rollout layout)."""
        if self.lm_head is None:
            return self.model.embed_tokens.embedding[...], 0
        return self.lm_head.kernel[...], 0 if self.lm_head.transposed else 1


class ScoreModel(nnx.Module):
    """Backbone + score head Dense(E → D, bias). Returns (scores (B, T, D), end_scores (B, D)), float32."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.model = Backbone(config, rngs=rngs)
        self.score_head = Dense(config.hidden_size, config.score_dim, bias=config.score_bias, axes=("embed", "score"),
                                config=config, rngs=rngs)
        self.normalizer = Normalizer(config.score_dim)  # parameters under NORMALIZER_KEY

    def __call__(self, input_ids, attention_mask, positions=None, normalize: bool = True):
        """normalize=False: raw scores even when do_normalize is set (training normalises after the stats update)."""
        h, _ = self.model(input_ids, attention_mask, positions)
        scores = self.score_head(h).astype(jnp.float32)
        end_scores = ops.take_at(scores, ops.end_index(attention_mask))
        if self.config.do_normalize and normalize:
            function = ops.SCORE_TYPE_TO_FUNCTION[self.config.score_type]
            stats = self.normalizer.state()
            scores = ops.normalize(scores, stats, function)
            end_scores = ops.normalize(end_scores, stats, function)
        return scores, end_scores


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer plus the slot mask. Keys are (B, K, Dh, S) and values (B, K, S, Dh) per layer:
    stacked (L, …) arrays when layers are scanned, else tuples of L arrays, so that a decode step updates each
    layer's buffer in place instead of copying a stacked cache. Heads before slots: a step writes one (B, K, Dh, 1)
    and one (B, K, 1, Dh) slice and attention reads the buffers as stored (a slots-first cache costs a transpose of
    the whole cache per layer and step); keys slots-last so that the scores are a plain matmul (`attend`). It
    declares its own logical axes (`logical_axes`) for the sampler's shardings."""

    k: Any
    v: Any
    mask: jax.Array  # (B, S) bool: slots written so far

    def logical_axes(self) -> "KVCache":
        """A KVCache of logical-axis tuples with this cache's structure."""
        def one(base):
            return lambda x: ("layers", *base) if x.ndim == 5 else base

        return KVCache(jax.tree.map(one(("batch", "kv_heads", "head_dim", "cache_seq")), self.k),
                       jax.tree.map(one(("batch", "kv_heads", "cache_seq", "head_dim")), self.v), ("batch", "cache_seq"))


def init_cache(config: ModelConfig, batch: int, slots: int, dtype: Any = None) -> KVCache:
    """Empty KV cache in `dtype` (default: compute dtype) and a (B, S) all-False slot mask."""
    dtype = jnp.dtype(dtype or config.dtype)
    k_shape = (batch, config.num_key_value_heads, config.resolved_head_dim, slots)
    v_shape = (batch, config.num_key_value_heads, slots, config.resolved_head_dim)
    if config.scan_layers:
        k = jnp.zeros((config.num_hidden_layers, *k_shape), dtype)
        v = jnp.zeros((config.num_hidden_layers, *v_shape), dtype)
    else:
        k = tuple(jnp.zeros(k_shape, dtype) for _ in range(config.num_hidden_layers))
        v = tuple(jnp.zeros(v_shape, dtype) for _ in range(config.num_hidden_layers))
    return KVCache(k, v, jnp.zeros((batch, slots), bool))
