"""Basic reductions shared by every loss: masked means, log-prob gathering, end/divergence indices.

Spec §3.1, §3.2, §2.2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from saferlhf_jax.ops._checks import as_bool, as_f32, as_i32, check_rank, check_same_shape


def masked_mean(x, mask=None):
    """Per-row masked mean, then the mean over rows (§3.1). Not a global token mean.

    Args:
      x: (B, T) float.
      mask: (B, T) bool or None (plain mean). Every row needs at least one True; an empty row gives NaN.
    Returns:
      float32 scalar.
    """
    x = as_f32(x)
    if mask is None:
        return jnp.mean(x)
    mask = as_bool(mask)
    check_same_shape(x=x, mask=mask)
    m = mask.astype(jnp.float32)
    per_row = jnp.sum(x * m, axis=-1) / jnp.sum(m, axis=-1)
    return jnp.mean(per_row)


def gather_log_probs(logits, labels):
    """log_softmax(logits)[labels] in float32 (§3.2).

    Args:
      logits: (B, T, V).
      labels: (B, T) int.
    Returns:
      (B, T) float32.
    """
    logits = as_f32(logits)
    labels = as_i32(labels)
    if logits.ndim != labels.ndim + 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits must be (..., V) over labels' shape: logits {tuple(logits.shape)}, labels {tuple(labels.shape)}"
        )
    picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def end_index(mask):
    """Index of the last True per row (§2.2); works for left and right padding, no contiguity assumed.

    Args:
      mask: (B, T) bool; each row needs one True (an all-False row returns T-1).
    Returns:
      (B,) int32.
    """
    mask = as_bool(mask)
    check_rank("mask", mask, 2)
    t = mask.shape[-1]
    return (t - 1 - jnp.argmax(mask[:, ::-1], axis=-1)).astype(jnp.int32)


def first_divergence_index(ids_a, ids_b):
    """First index where two (B, L) id tensors differ, over the full padded row.

    Rows that never differ return L (callers filter such rows before training, §4.2).
    """
    ids_a, ids_b = as_i32(ids_a), as_i32(ids_b)
    check_rank("ids", ids_a, 2)
    check_same_shape(ids_a=ids_a, ids_b=ids_b)
    diff = ids_a != ids_b
    any_diff = jnp.any(diff, axis=-1)
    return jnp.where(any_diff, jnp.argmax(diff, axis=-1), ids_a.shape[-1]).astype(jnp.int32)


def take_at(x, index):
    """x (B, T, ...) gathered at per-row index (B,) → (B, ...)."""
    index = index.reshape(index.shape + (1,) * (x.ndim - 1))
    return jnp.take_along_axis(x, index, axis=1)[:, 0]
