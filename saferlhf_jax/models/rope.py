"""Rotary position embeddings in the HF rotate-half convention, with Llama-3 and linear scaling."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from saferlhf_jax.models.config import ModelConfig


def inverse_frequencies(config: ModelConfig, local: bool = False) -> np.ndarray:
    """(head_dim/2,) float32 inverse frequencies after the configured scaling (computed on host, static).
    local=True: the sliding layers' (Gemma-3's rope_local_theta, unscaled)."""
    dim = config.resolved_head_dim
    theta = config.rope_local_theta if local and config.rope_local_theta is not None else config.rope_theta
    inv = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scaling = {} if local else config.rope_scaling_dict
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "linear":
        inv = inv / float(scaling["factor"])
    elif rope_type == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_len = float(scaling.get("original_max_position_embeddings", 8192))
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(is_medium, smoothed, scaled)
    return inv.astype(np.float32)


def rope_angles(positions, inv_freq):
    """positions (B, T) int → (cos, sin), each (B, T, head_dim) float32 (frequencies repeated, rotate-half)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
    """x (B, T, H, Dh); cos/sin (B, T, Dh). Computed in float32, returned in x's dtype."""
    half = x.shape[-1] // 2
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


def mask_positions(attention_mask):
    """Mask-aware positions cumsum(mask) − 1, clamped at 0 on pads (spec §2.4). (B, T) → (B, T) int32."""
    m = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=-1) - 1, 0)
