"""RL formulas: KL-shaped scores, GAE, PPO clip losses, the Lagrangian advantage and λ update.

Spec §3.10 – §3.13. All inputs in action space (length T = L−1), see §2.1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from saferlhf_jax.ops._checks import as_bool, as_f32, as_static_int, check_rank, check_same_shape
from saferlhf_jax.ops.core import end_index, masked_mean


def kl_shaped_scores(end_scores, log_probs, ref_log_probs, sequence_mask, kl_coeff, clip_range_score):
    """r_t = −kl_coeff·(log_probs − ref_log_probs) at every t, end score added at the end, then clipped.

    Args:
      end_scores: (B,) reward R (or cost C for the PPO-Lag cost stream, with kl_coeff = −β).
      log_probs, ref_log_probs: (B, T) rollout-time actor / reference log-probs.
      sequence_mask: (B, T) bool = attention_mask[:, 1:]; its last True is the end action.
      kl_coeff, clip_range_score: scalars.
    Returns:
      (B, T) float32.
    """
    log_probs, ref_log_probs = as_f32(log_probs), as_f32(ref_log_probs)
    sequence_mask = as_bool(sequence_mask)
    end_scores = as_f32(end_scores)
    check_rank("log_probs", log_probs, 2)
    check_same_shape(log_probs=log_probs, ref_log_probs=ref_log_probs, sequence_mask=sequence_mask)
    if end_scores.shape != log_probs.shape[:1]:
        raise ValueError(f"end_scores must be (B,) = {log_probs.shape[:1]}, got {tuple(end_scores.shape)}")
    kl_coeff = as_f32(kl_coeff)
    clip = as_f32(clip_range_score)
    rewards = -kl_coeff * (log_probs - ref_log_probs)
    at_end = jax.nn.one_hot(end_index(sequence_mask), log_probs.shape[1], dtype=jnp.float32)
    rewards = rewards + end_scores[:, None] * at_end
    return jnp.clip(rewards, -clip, clip)


def _reverse_gae(deltas_tb, discount):
    """A_t = δ_t + discount·A_{t+1} as a reverse scan over time; deltas (T, B)."""

    def step(next_adv, delta):
        adv = delta + discount * next_adv
        return adv, adv

    _, advs = jax.lax.scan(step, jnp.zeros_like(deltas_tb[0]), deltas_tb, reverse=True)
    return advs


def gae_advantages_and_returns(values, rewards, sequence_mask, start, gamma=1.0, gae_lambda=0.95):
    """Generalised advantage estimation from `start` (§3.11).

    Values and rewards are zeroed outside the mask, the bootstrap after the last action is 0.

    Args:
      values, rewards: (B, T) float; sequence_mask: (B, T) bool; start: static int (= S − 1).
    Returns:
      (advantages, returns), each (B, T − start) float32; advantages carry no gradient.
    """
    start = as_static_int("start", start)
    values, rewards = as_f32(values), as_f32(rewards)
    sequence_mask = as_bool(sequence_mask)
    check_rank("values", values, 2)
    check_same_shape(values=values, rewards=rewards, sequence_mask=sequence_mask)
    if not 0 <= start < values.shape[1]:
        raise ValueError(f"start must lie in [0, {values.shape[1]}), got {start}")
    m = sequence_mask.astype(jnp.float32)
    values = values * m
    rewards = rewards * m
    values = values[:, start:]
    rewards = rewards[:, start:]
    next_values = jnp.pad(values[:, 1:], ((0, 0), (0, 1)))
    gamma = as_f32(gamma)
    deltas = rewards + gamma * next_values - values
    advantages = _reverse_gae(deltas.T, gamma * as_f32(gae_lambda)).T
    returns = advantages + values
    return jax.lax.stop_gradient(advantages), returns


def ppo_actor_loss(log_probs, old_log_probs, advantages, mask, clip_range_ratio):
    """PPO-clip surrogate: −masked_mean(min(A·ρ, A·clip(ρ, 1±ε)), mask) (§3.12). Inputs (B, T) sliced from start."""
    log_probs, old_log_probs, advantages = as_f32(log_probs), as_f32(old_log_probs), as_f32(advantages)
    mask = as_bool(mask)
    check_rank("log_probs", log_probs, 2)
    check_same_shape(log_probs=log_probs, old_log_probs=old_log_probs, advantages=advantages, mask=mask)
    eps = as_f32(clip_range_ratio)
    ratio = jnp.exp(log_probs - old_log_probs)
    surrogate = jnp.minimum(advantages * ratio, advantages * jnp.clip(ratio, 1.0 - eps, 1.0 + eps))
    return -masked_mean(surrogate, mask)


def critic_loss(values, old_values, returns, mask, clip_range_value):
    """Clipped value loss 0.5·masked_mean(max((v−G)², (clip(v, v_old±c)−G)²)) (§3.12). Inputs (B, T) sliced."""
    values, old_values, returns = as_f32(values), as_f32(old_values), as_f32(returns)
    mask = as_bool(mask)
    check_rank("values", values, 2)
    check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    c = as_f32(clip_range_value)
    clipped = jnp.clip(values, old_values - c, old_values + c)
    loss = jnp.maximum(jnp.square(values - returns), jnp.square(clipped - returns))
    return 0.5 * masked_mean(loss, mask)


def lagrangian_advantages(reward_advantages, cost_advantages, lam):
    """(A_r − λ·A_c)/(1 + λ) with λ (not log λ) held constant (§3.13). (B, T) → (B, T)."""
    reward_advantages, cost_advantages = as_f32(reward_advantages), as_f32(cost_advantages)
    check_same_shape(reward_advantages=reward_advantages, cost_advantages=cost_advantages)
    lam = jax.lax.stop_gradient(as_f32(lam))
    return (reward_advantages - lam * cost_advantages) / (1.0 + lam)


def lagrange_update(log_lambda, episode_cost, threshold, lambda_lr, lambda_max=None):
    """One SGD step on log λ for −(J_c − d)·λ, then the optional upper clamp (§3.13).

    Scalars → scalar, or (K,) → (K,) elementwise for K constraints (METHODS_BEYOND §3.2): λ_k moves only with
    J_ck.
    lambda_max: None (no clamp), a scalar, or (K,) with +inf for an unclamped constraint."""
    log_lambda = as_f32(log_lambda)
    new = log_lambda + as_f32(lambda_lr) * (as_f32(episode_cost) - as_f32(threshold)) * jnp.exp(log_lambda)
    if lambda_max is not None:
        new = jnp.minimum(new, jnp.log(as_f32(lambda_max)))
    # a float32 guard, not a clamp: the step grows with λ, so an unclamped λ over budget overflows to inf within a
    # few steps and the combined advantage becomes NaN; at λ = e^30 ≈ 1e13 it is already −A_c to f32 precision
    return jnp.minimum(new, LOG_LAMBDA_CEILING)


LOG_LAMBDA_CEILING = 30.0


def pid_lagrange_update(integral, previous_cost, episode_cost, threshold, gains, lambda_max=None, first=False):
    """PID Lagrangian (Stooke, Achiam & Abbeel, ICML 2020, Algorithm 2): an option beside the reference's log-λ SGD
    (§3.13 of docs/SAFE_RLHF_SPEC.md, §7.27). With e = J_c − d:

        I ← max(0, I + k_i·e)                       the integral, never negative (no wind-up below 0)
        λ = clip(k_p·e + I + k_d·max(0, J_c − J_c,prev), 0, lambda_max)

    λ moves by k_i·e per step whatever its size (log-λ SGD moves log λ by lr·e·λ: slowly once λ is small, so λ
    lags a cost that rises after a long stretch inside the budget), the proportional term answers the current
    violation at once, and the derivative term only a rising cost. On the `first` update there is no previous J_c
    (the derivative term is 0).

    Scalars, or (K,) elementwise for K constraints; gains = (k_p, k_i, k_d). Returns (λ, I)."""
    cost = as_f32(episode_cost)
    error = cost - as_f32(threshold)
    kp, ki, kd = (as_f32(g) for g in gains)
    integral = jnp.maximum(as_f32(integral) + ki * error, 0.0)
    rise = jnp.where(first, 0.0, jnp.maximum(cost - as_f32(previous_cost), 0.0))
    lam = jnp.maximum(kp * error + integral + kd * rise, 0.0)
    if lambda_max is not None:
        lam = jnp.minimum(lam, as_f32(lambda_max))
    return lam, integral


def lagrangian_advantages_multi(reward_advantages, cost_advantages, lams):
    """(A_r − Σ_k λ_k·A_ck) / (1 + Σ_k λ_k) (METHODS_BEYOND §3.3), λ held constant.

    reward_advantages (...), cost_advantages (K, ...), lams (K,) = λ (not log λ). K = 1 is `lagrangian_advantages`."""
    reward_advantages, cost_advantages = as_f32(reward_advantages), as_f32(cost_advantages)
    lams = jax.lax.stop_gradient(as_f32(lams))
    check_rank("lams", lams, 1)
    if cost_advantages.shape != (lams.shape[0], *reward_advantages.shape):
        raise ValueError(f"cost_advantages must be (K, ...) = {(lams.shape[0], *reward_advantages.shape)}, "
                         f"got {cost_advantages.shape}")
    weighted = jnp.tensordot(lams, cost_advantages, axes=1)
    return (reward_advantages - weighted) / (1.0 + jnp.sum(lams))


MODERATION_HEADS = ("unsafe", "category:<k>", "severity>=<j>", "severity_expected")


def moderation_cost(end_logits, head: str, transform: str = "prob"):
    """A per-response cost from the moderation model's end logits (METHODS_BEYOND §3.1).

    end_logits (N, 24) = [unsafe | 19 harm categories (k = 1..19) | severity safe, minor, moderate, severe].
    head: 'unsafe' | 'category:<k>' | 'severity>=<j>' (j = 1..3: log-odds of level ≥ j) | 'severity_expected'
    (E[level] ∈ [0, 3], transform ignored). transform: 'logit' (> 0 ⇔ p > ½) | 'prob'. Returns (N,) float32."""
    z = as_f32(end_logits)
    check_rank("end_logits", z, 2)
    if z.shape[1] != 24:
        raise ValueError(f"moderation end logits must be (N, 24), got {z.shape}")
    severity = z[:, 20:24]
    if head == "severity_expected":
        return jax.nn.softmax(severity, axis=-1) @ jnp.arange(4, dtype=jnp.float32)
    if head == "unsafe":
        logit = z[:, 0]
    elif head.startswith("category:") and head.split(":", 1)[1].isdigit() and 1 <= int(head.split(":")[1]) <= 19:
        logit = z[:, int(head.split(":")[1])]
    elif head.startswith("severity>=") and head.split(">=", 1)[1] in ("1", "2", "3"):
        j = int(head.split(">=")[1])
        logit = (jax.nn.logsumexp(severity[:, j:], axis=-1) - jax.nn.logsumexp(severity[:, :j], axis=-1))
    else:
        raise ValueError(f"moderation head must be one of {MODERATION_HEADS} (k = 1..19, j = 1..3), got {head!r}")
    if transform == "logit":
        return logit
    if transform == "prob":
        return jax.nn.sigmoid(logit)
    raise ValueError(f"transform must be 'logit' or 'prob', got {transform!r}")


GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo")
AGGREGATIONS = ("seq", "token", "constant")


def group_advantages(scores, group_size: int, estimator: str = "grpo", eps: float = 1e-4):
    """Critic-free sequence advantages (METHODS_BEYOND §2.3). scores (N,) prompt-major (row p·G + g), N = B_p·G.

    grpo: (x − mean)/(std_ddof1 + eps) (DeepSeekMath); dr_grpo: x − mean (Dr. GRPO); rloo: x − mean of the other
    G − 1 (leave-one-out). A constant group gives 0. Returns (N,) float32. G ≥ 2."""
    x = as_f32(scores).reshape(-1, int(group_size))
    mean = jnp.mean(x, axis=1, keepdims=True)
    if estimator == "grpo":
        a = (x - mean) / (jnp.std(x, axis=1, ddof=1, keepdims=True) + eps)
    elif estimator == "dr_grpo":
        a = x - mean
    elif estimator == "rloo":
        a = x - (jnp.sum(x, axis=1, keepdims=True) - x) / (group_size - 1)
    else:
        raise ValueError(f"estimator must be one of {GROUP_ESTIMATORS}, got {estimator!r}")
    return a.reshape(-1)


def aggregate(x, mask, aggregation: str = "seq", loss_normalizer: float | None = None):
    """'seq': masked_mean (per sequence, then over sequences); 'token': Σx·m/Σm; 'constant': Σx·m/(N·normalizer)."""
    m = as_bool(mask).astype(jnp.float32)
    if aggregation == "seq":
        return masked_mean(x, mask)
    if aggregation == "token":
        return jnp.sum(x * m) / jnp.sum(m)
    if aggregation == "constant":
        return jnp.sum(x * m) / (m.shape[0] * float(loss_normalizer))
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def grpo_actor_loss(log_probs, old_log_probs, ref_log_probs, advantages, mask, clip_range_ratio=0.2, kl_coeff=0.04,
                    aggregation: str = "seq", loss_normalizer: float | None = None):
    """Per-token clipped surrogate + kl_coeff·k3 to the reference (DeepSeekMath Eq. 3–4), aggregated (§2.4).

    log_probs, old_log_probs, ref_log_probs, mask (N, T); advantages (N,) sequence-level (already combined).
    Returns (loss, {'pg_loss', 'kl_k3', 'clip_fraction'})."""
    lp, old, ref = as_f32(log_probs), as_f32(old_log_probs), as_f32(ref_log_probs)
    a = as_f32(advantages)[:, None]
    ratio = jnp.exp(lp - old)
    pg = -jnp.minimum(ratio * a, jnp.clip(ratio, 1 - clip_range_ratio, 1 + clip_range_ratio) * a)
    log_r = ref - lp
    k3 = jnp.exp(log_r) - log_r - 1.0
    loss = aggregate(pg + kl_coeff * k3, mask, aggregation, loss_normalizer)
    aux = {"pg_loss": aggregate(pg, mask, aggregation, loss_normalizer),
           "kl_k3": aggregate(k3, mask, "seq"),
           "clip_fraction": aggregate((jnp.abs(ratio - 1) > clip_range_ratio).astype(jnp.float32), mask, "token")}
    return loss, aux
