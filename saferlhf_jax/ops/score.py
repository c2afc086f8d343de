"""Score-model formulas: reward (Bradley–Terry) and cost (pairwise + sign) losses, normalizers.

Spec §3.4 – §3.7.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from saferlhf_jax.ops._checks import as_bool, as_f32, as_i32, check_choice, check_rank, check_same_shape
from saferlhf_jax.ops.core import end_index, first_divergence_index, take_at

LOSS_TYPES = ("sequence-wise", "token-wise")
NORMALIZER_TYPES = ("RunningMeanStd", "ExponentialMovingAverage", None)
NORMALIZE_FUNCTIONS = ("affine", "scale", "translate", "identity")
SCORE_TYPE_TO_FUNCTION = {"reward": "affine", "cost": "scale", "critic": "identity", "moderation": "identity"}

_EPS = 1e-8


def _neg_log_sigmoid(x):
    return jax.nn.softplus(-x)


def _masked_row_mean(x, window):
    """Σ_t x·w / Σ_t w per row: (B, L) → (B,)."""
    w = window.astype(jnp.float32)
    return jnp.sum(x * w, axis=-1) / jnp.sum(w, axis=-1)


def _token_window(ids_a, ids_b, mask_a, mask_b):
    """w[b, t] = d_b ≤ t ≤ max(end_a, end_b) (§3.6 token-wise)."""
    last = jnp.maximum(end_index(mask_a), end_index(mask_b))
    first = first_divergence_index(ids_a, ids_b)
    t = jnp.arange(ids_a.shape[1])[None, :]
    return (t >= first[:, None]) & (t <= last[:, None])


def _pair_inputs(scores_a, mask_a, scores_b, mask_b, ids_a, ids_b, loss_type):
    check_choice("loss_type", loss_type, LOSS_TYPES)
    scores_a, scores_b = as_f32(scores_a), as_f32(scores_b)
    if scores_a.ndim == 3 and scores_a.shape[-1] == 1:  # (B, L, 1) score-model output
        scores_a, scores_b = scores_a[..., 0], scores_b[..., 0]
    mask_a, mask_b = as_bool(mask_a), as_bool(mask_b)
    ids_a, ids_b = as_i32(ids_a), as_i32(ids_b)
    check_rank("scores", scores_a, 2)
    check_same_shape(scores_a=scores_a, scores_b=scores_b, mask_a=mask_a, mask_b=mask_b, ids_a=ids_a, ids_b=ids_b)
    return scores_a, mask_a, scores_b, mask_b, ids_a, ids_b


def reward_model_loss(
    better_scores, better_mask, worse_scores, worse_mask, better_ids, worse_ids,
    loss_type="sequence-wise", regularization=0.0,
):
    """Bradley–Terry reward loss (§3.6).

    Args:
      better_scores, worse_scores: (B, L) per-token scores (or (B, L, 1)).
      better_mask, worse_mask: (B, L) bool; ends are their last True.
      better_ids, worse_ids: (B, L) int (token-wise window only).
    Returns:
      (loss, {'accuracy'}) float32 scalars.
    """
    s_pos, m_pos, s_neg, m_neg, ids_pos, ids_neg = _pair_inputs(
        better_scores, better_mask, worse_scores, worse_mask, better_ids, worse_ids, loss_type)
    reg = as_f32(regularization)
    r_pos = take_at(s_pos, end_index(m_pos))
    r_neg = take_at(s_neg, end_index(m_neg))
    if loss_type == "sequence-wise":
        loss = jnp.mean(_neg_log_sigmoid(r_pos - r_neg)) + reg * jnp.mean(
            jnp.square(jnp.concatenate([r_neg, r_pos])))
    else:
        window = _token_window(ids_pos, ids_neg, m_pos, m_neg)
        per_pair = _masked_row_mean(_neg_log_sigmoid(s_pos - s_neg), window) + reg * _masked_row_mean(
            0.5 * (jnp.square(s_pos) + jnp.square(s_neg)), window)
        loss = jnp.mean(per_pair)
    accuracy = jnp.mean((r_pos > r_neg).astype(jnp.float32))
    return loss, {"accuracy": accuracy}


def cost_model_loss(
    safer_scores, safer_mask, safer_safety_sign, unsafer_scores, unsafer_mask, unsafer_safety_sign,
    safer_ids, unsafer_ids, loss_type="sequence-wise", regularization=0.0,
):
    """Pairwise + sign cost loss (§3.7). Safety signs are +1 safe / −1 unsafe; cost sign κ = −safety sign.

    Returns:
      (loss, {'accuracy', 'accuracy_sign'}) float32 scalars.
    """
    a, m_a, u, m_u, ids_a, ids_u = _pair_inputs(
        safer_scores, safer_mask, unsafer_scores, unsafer_mask, safer_ids, unsafer_ids, loss_type)
    kappa_s = -as_f32(safer_safety_sign)
    kappa_u = -as_f32(unsafer_safety_sign)
    if kappa_s.shape != a.shape[:1] or kappa_u.shape != a.shape[:1]:
        raise ValueError(f"safety signs must be (B,) = {a.shape[:1]}, got "
                         f"{tuple(kappa_s.shape)} and {tuple(kappa_u.shape)}")
    reg = as_f32(regularization)
    c_s = take_at(a, end_index(m_a))
    c_u = take_at(u, end_index(m_u))
    if loss_type == "sequence-wise":
        loss = jnp.mean(
            _neg_log_sigmoid(c_u - c_s) + _neg_log_sigmoid(kappa_s * c_s) + _neg_log_sigmoid(kappa_u * c_u)
        ) + reg * jnp.mean(jnp.square(jnp.concatenate([c_s, c_u])))
    else:
        w = _token_window(ids_a, ids_u, m_a, m_u)
        per_pair = (
            _masked_row_mean(_neg_log_sigmoid(u - a), w)
            + _masked_row_mean(_neg_log_sigmoid(kappa_s[:, None] * a), w)
            + _masked_row_mean(_neg_log_sigmoid(kappa_u[:, None] * u), w)
            + reg * _masked_row_mean(0.5 * (jnp.square(a) + jnp.square(u)), w)
        )
        loss = jnp.mean(per_pair)
    accuracy = jnp.mean((c_u > c_s).astype(jnp.float32))
    signed = jnp.concatenate([kappa_s * c_s, kappa_u * c_u])
    accuracy_sign = jnp.mean((signed > 0).astype(jnp.float32))
    return loss, {"accuracy": accuracy, "accuracy_sign": accuracy_sign}


def init_normalizer_state(score_dim: int = 1):
    """Fresh normalizer state: mean 0, var 1, count 0."""
    return {
        "mean": jnp.zeros((score_dim,), jnp.float32),
        "var": jnp.ones((score_dim,), jnp.float32),
        "count": jnp.zeros((), jnp.float32),
    }


def normalizer_update(state, scores, normalizer_type, momentum=None):
    """Fold a batch of end scores (N, D) into the normalizer state (§3.5; unbiased batch variance).

    Args:
      state: {'mean': (D,), 'var': (D,), 'count': ()}.
      scores: (N, D), N ≥ 2.
      normalizer_type: 'RunningMeanStd' | 'ExponentialMovingAverage' | None (count only).
      momentum: required for 'ExponentialMovingAverage'.
    Returns:
      new state dict, float32.
    """
    check_choice("normalizer_type", normalizer_type, NORMALIZER_TYPES)
    scores = as_f32(scores)
    check_rank("scores", scores, 2)
    mean, var, count = as_f32(state["mean"]), as_f32(state["var"]), as_f32(state["count"])
    n = jnp.float32(scores.shape[0])
    batch_mean = jnp.mean(scores, axis=0)
    batch_var = jnp.var(scores, axis=0, ddof=1)
    if normalizer_type == "RunningMeanStd":
        delta = batch_mean - mean
        total = count + n
        new_mean = mean + delta * n / total
        new_var = (var * count + batch_var * n + jnp.square(delta) * count * n / total) / total
    elif normalizer_type == "ExponentialMovingAverage":
        if momentum is None:
            raise ValueError("normalizer_type 'ExponentialMovingAverage' requires a momentum")
        m = as_f32(momentum)
        new_mean = m * mean + (1.0 - m) * batch_mean
        new_var = m * var + (1.0 - m) * batch_var
    else:
        new_mean, new_var = mean, var
    return {"mean": new_mean, "var": new_var, "count": count + n}


def normalize(x, state, function):
    """Apply a normalize function with (stop-gradient) stats; x (..., D) → same shape."""
    check_choice("function", function, NORMALIZE_FUNCTIONS)
    x = as_f32(x)
    mean = jax.lax.stop_gradient(as_f32(state["mean"]))
    std = jnp.sqrt(jax.lax.stop_gradient(as_f32(state["var"])))
    if function == "affine":
        return (x - mean) / (std + _EPS)
    if function == "scale":
        return x / (std + _EPS)
    if function == "translate":
        return x - mean
    return x
