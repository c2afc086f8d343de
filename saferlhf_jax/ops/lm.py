"""Language-model losses: SFT cross-entropy (global token mean) and DPO (§3.3, §3.8, §7.1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from saferlhf_jax.ops._checks import as_bool, as_f32, as_i32, check_choice, check_rank, check_same_shape
from saferlhf_jax.ops.core import end_index, first_divergence_index

IGNORE_INDEX = -100
DPO_SLICINGS = ("standard", "reference")


def shift_labels(labels):
    """labels (B, L) → next-token targets (B, L): position t holds labels[t+1], the last is IGNORE.

    Lets the loss run on full-length logits without a `logits[:, :-1]` copy.
    """
    labels = as_i32(labels)
    return jnp.pad(labels[:, 1:], ((0, 0), (0, 1)), constant_values=IGNORE_INDEX)


def sft_token_losses(logits, labels):
    """Per-token cross-entropy of logits (B, L, V) against shifted labels; returns (ce (B, L), valid (B, L))."""
    logits = as_f32(logits)
    targets = shift_labels(labels)
    if logits.shape[:2] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(targets.shape)} disagree on (B, L)")
    valid = targets != IGNORE_INDEX
    safe_targets = jnp.where(valid, targets, 0)
    picked = jnp.take_along_axis(logits, safe_targets[..., None], axis=-1)[..., 0]
    ce = jax.nn.logsumexp(logits, axis=-1) - picked
    return jnp.where(valid, ce, 0.0), valid


def sft_loss(logits, labels):
    """Σ CE·[label ≠ −100] / Σ [label ≠ −100] over the whole micro-batch (§3.3). A batch with no label is NaN."""
    ce, valid = sft_token_losses(logits, labels)
    return jnp.sum(ce) / jnp.sum(valid.astype(jnp.float32))


def dpo_loss(policy_better_logps, policy_worse_logps, ref_better_logps, ref_worse_logps, beta):
    """DPO on summed response log-probs (B,) each (§3.8).

    Returns:
      (loss, {'reward_accuracy': (), 'better_sample_reward': (B,), 'worse_sample_reward': (B,),
              'reward_margin': (B,)}).
    """
    pb, pw, rb, rw = (as_f32(x) for x in (policy_better_logps, policy_worse_logps, ref_better_logps, ref_worse_logps))
    check_rank("policy_better_logps", pb, 1)
    check_same_shape(policy_better_logps=pb, policy_worse_logps=pw, ref_better_logps=rb, ref_worse_logps=rw)
    beta = as_f32(beta)
    better_reward = beta * (pb - rb)
    worse_reward = beta * (pw - rw)
    margin = better_reward - worse_reward
    loss = jnp.mean(jax.nn.softplus(-margin))
    aux = {
        "reward_accuracy": jnp.mean((better_reward > worse_reward).astype(jnp.float32)),
        "better_sample_reward": jax.lax.stop_gradient(better_reward),
        "worse_sample_reward": jax.lax.stop_gradient(worse_reward),
        "reward_margin": jax.lax.stop_gradient(margin),
    }
    return loss, aux


def dpo_action_window(ids, mask, other_ids, slicing="standard"):
    """Action-space (B, L−1) window of the response log-probs that DPO sums (§7.1).

    d = first index where `ids` and `other_ids` differ, end = last real token of `mask`.
      standard:  actions [d − 1, end − 1]   (every response token from the divergence through the last real one)
      reference: actions [d, min(end, L − 2)] (the reference's off-by-one)
    """
    check_choice("slicing", slicing, DPO_SLICINGS)
    ids, other_ids, mask = as_i32(ids), as_i32(other_ids), as_bool(mask)
    check_rank("ids", ids, 2)
    check_same_shape(ids=ids, other_ids=other_ids, mask=mask)
    length = ids.shape[1]
    first = first_divergence_index(ids, other_ids)
    last = end_index(mask)
    if slicing == "standard":
        lo, hi = first - 1, last - 1
    else:
        lo, hi = first, jnp.minimum(last, length - 2)
    t = jnp.arange(length - 1)[None, :]
    return (t >= lo[:, None]) & (t <= hi[:, None])


def dpo_sequence_log_probs(token_log_probs, ids, mask, other_ids, slicing="standard"):
    """Summed response log-prob per row: token_log_probs (B, L−1) action space → (B,)."""
    token_log_probs = as_f32(token_log_probs)
    window = dpo_action_window(ids, mask, other_ids, slicing)
    if token_log_probs.shape != window.shape:
        raise ValueError(f"token_log_probs must be (B, L-1) = {tuple(window.shape)}, got {tuple(token_log_probs.shape)}")
    return jnp.sum(jnp.where(window, token_log_probs, 0.0), axis=-1)


def chunked_label_log_probs(hidden, weight, labels, chunk: int, vocab_axis: int = 1):
    """log_softmax(hidden @ W)[labels] in float32 without materialising the (B, T, V) logits.

    Args:
      hidden: (B, T, E) final hidden states (compute dtype).
      weight: the output projection, (E, V) with vocab_axis=1 (an LM head kernel) or (V, E) with vocab_axis=0 (a tied
        embedding).
      labels: (B, T) int token ids (any value in [0, V) on positions the caller masks out).
      chunk: vocabulary columns per step. The scan keeps a running max, a running Σ exp and the label's logit
        (online log-sum-exp); its body is rematerialised in the backward, so the peak is O(B·T·chunk), not O(B·T·V).
    Returns:
      (B, T) float32, equal to `gather_log_probs(hidden @ W, labels)` up to rounding.
    """
    labels = as_i32(labels)
    vocab = weight.shape[vocab_axis]
    chunk = int(min(chunk, vocab))
    steps = -(-vocab // chunk)
    pad = steps * chunk - vocab
    if pad:
        widths = [(0, 0), (0, 0)]
        widths[vocab_axis] = (0, pad)
        weight = jnp.pad(weight, widths)

    @jax.checkpoint
    def body(carry, i):
        running_max, running_sum, picked = carry
        start = i * chunk
        w = jax.lax.dynamic_slice_in_dim(weight, start, chunk, axis=vocab_axis).astype(hidden.dtype)
        logits = (jnp.dot(hidden, w) if vocab_axis == 1 else jnp.dot(hidden, w.T)).astype(jnp.float32)
        columns = start + jnp.arange(chunk)
        logits = jnp.where(columns < vocab, logits, -jnp.inf)  # padded columns add nothing
        new_max = jnp.maximum(running_max, jnp.max(logits, axis=-1))
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(jnp.exp(logits - new_max[..., None]),
                                                                               axis=-1)
        index = labels - start
        inside = (index >= 0) & (index < chunk)
        label_logit = jnp.take_along_axis(logits, jnp.clip(index, 0, chunk - 1)[..., None], axis=-1)[..., 0]
        picked = picked + jnp.where(inside, label_logit, 0.0)
        return (new_max, running_sum, picked), None

    b, t = labels.shape
    init = (jnp.full((b, t), -1e30, jnp.float32), jnp.zeros((b, t), jnp.float32), jnp.zeros((b, t), jnp.float32))
    (running_max, running_sum, picked), _ = jax.lax.scan(body, init, jnp.arange(steps))
    return picked - (running_max + jnp.log(running_sum))


def sft_loss_from_log_probs(label_log_probs, labels):
    """The SFT loss (§3.3) from next-token log-probs: label_log_probs (B, L−1) = log π(labels[:, t+1] | ≤ t) (any
    value where labels[:, t+1] = −100). Σ −lp·valid / Σ valid."""
    valid = as_i32(labels)[:, 1:] != IGNORE_INDEX
    return -jnp.sum(jnp.where(valid, label_log_probs, 0.0)) / jnp.sum(valid.astype(jnp.float32))


def safedpo_loss(policy_better_logps, policy_worse_logps, ref_better_logps, ref_worse_logps, better_unsafe,
                 worse_unsafe, beta, delta):
    """SafeDPO (Kim et al. 2025, arXiv 2505.20065, Eq. 12) on safety-transformed pairs (METHODS_BEYOND §1.2).

    ℓ_b = −log σ(β·(Δ⁺_b − Δ⁻_b) − (h̃_l − h̃_w)_b·Δ): the safety margin Δ is subtracted inside the sigmoid, not scaled
    by β; Δ = 0 is `dpo_loss` on the transformed pairs. better_unsafe / worse_unsafe (B,) int: h̃_w, h̃_l.
    Returns (loss, aux) with dpo_loss's aux (all without Δ) and 'safe_unsafe_fraction' = mean(h̃_l − h̃_w).
    """
    pb, pw, rb, rw = (as_f32(x) for x in (policy_better_logps, policy_worse_logps, ref_better_logps, ref_worse_logps))
    check_same_shape(policy_better_logps=pb, policy_worse_logps=pw, ref_better_logps=rb, ref_worse_logps=rw)
    gap = as_i32(worse_unsafe).astype(jnp.float32) - as_i32(better_unsafe).astype(jnp.float32)
    beta = as_f32(beta)
    better_reward, worse_reward = beta * (pb - rb), beta * (pw - rw)
    margin = better_reward - worse_reward
    loss = jnp.mean(jax.nn.softplus(-(margin - gap * as_f32(delta))))
    aux = {
        "reward_accuracy": jnp.mean((better_reward > worse_reward).astype(jnp.float32)),
        "better_sample_reward": jax.lax.stop_gradient(better_reward),
        "worse_sample_reward": jax.lax.stop_gradient(worse_reward),
        "reward_margin": jax.lax.stop_gradient(margin),
        "safe_unsafe_fraction": jnp.mean(gap),
    }
    return loss, aux
