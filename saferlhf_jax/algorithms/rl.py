"""The pieces of PPO, PPO-Lagrangian (Safe RLHF) and the reward-shaping baseline as pure jitted functions
(spec §1.3, §3.9–§3.15). The loop that strings them together is `saferlhf_jax.algorithms.ppo_lag.run`.

Shapes: B rollout micro-batch, S prompt width (`start = S − 1`), L = S + T sequence width, T' = L − 1 − start.
Rewards and costs stay float32 end to end; every rollout draws a fresh PRNG key.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from saferlhf_jax import ops

MODES = ("ppo", "ppo_lag", "reward_shaping")


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Static hyperparameters of one RL run (defaults: the reference's PPO-Lag recipe, spec §6)."""

    mode: str = "ppo_lag"
    kl_coeff: float = 0.01
    clip_range_ratio: float = 0.2
    clip_range_score: float = 50.0
    clip_range_value: float = 5.0
    gamma: float = 1.0
    gae_lambda: float = 0.95
    ptx_coeff: float = 0.0
    threshold: float = 0.0
    lambda_init: float = 1.0
    lambda_lr: float = 0.1
    lambda_max: float | None = 5.0
    lambda_update_delay_steps: int = 0
    episode_cost_window_size: int = 128
    whiten_advantages: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.lambda_max is not None and self.lambda_max <= 0:
            raise ValueError("lambda_max must be > 0 (or None)")
        if self.lambda_init <= 0 and self.mode == "ppo_lag":
            raise ValueError("lambda_init must be > 0 for PPO-Lag (log λ is learned)")

    @property
    def uses_cost(self) -> bool:
        return self.mode in ("ppo_lag", "reward_shaping")

    @property
    def cost_critic(self) -> bool:
        return self.mode == "ppo_lag"


# ---------------------------------------------------------------------------------------------------- scoring


def make_score_rollout(actor_apply, critic_apply, reward_fn, cost_fn, cfg: RLConfig, policy: bool = True):
    """score(actor_params, frozen, critics, seq (B, L), mask (B, L)) → rollout dict (spec §3.9), no gradients.

    frozen: {'ref': reference actor params, 'reward': ..., 'cost': ...}; critics: {'reward': params, 'cost': ...}.
    reward_fn / cost_fn: (params, seq, mask) → (B,) end scores.
    policy=False leaves out what the trainable models give (actor log-probs, critic values): a `fresh` rl_step,
    which updates from the very parameters that generated the rollout, computes them itself in its own forward.
    """

    def score(actor_params, frozen, critics, seq, mask, scorer_inputs=None):
        """scorer_inputs: {'reward' | 'cost': (ids, mask)} re-tokenized for a scorer with its own tokenizer."""
        scorer_inputs = scorer_inputs or {}
        labels = seq[:, 1:]
        out = {
            "seq": seq, "mask": mask,
            "ref_log_probs": ops.gather_log_probs(actor_apply(frozen["ref"], seq, mask)[:, :-1], labels),
            "reward": reward_fn(frozen["reward"], *scorer_inputs.get("reward", (seq, mask))).astype(jnp.float32),
        }
        if cfg.uses_cost:
            out["cost"] = cost_fn(frozen["cost"], *scorer_inputs.get("cost", (seq, mask))).astype(jnp.float32)
        if policy:
            out["log_probs"] = ops.gather_log_probs(actor_apply(actor_params, seq, mask)[:, :-1], labels)
            out.update({f"{name}_values": critic_apply(critics[name], seq, mask)[0][:, :-1, 0]
                        for name in _critic_names(cfg)})
        return jax.lax.stop_gradient(out)

    return score


def _critic_names(cfg: RLConfig) -> tuple[str, ...]:
    """The critics the mode trains: 'reward' (rollout keys reward_values / reward_returns, state reward_critic)
    and, for PPO-Lag, 'cost'."""
    return ("reward", "cost") if cfg.cost_critic else ("reward",)


# ---------------------------------------------------------------------------------------------------- one rl_step


def _masked_sum_mean(x, mask):
    """mean_b Σ_t x·m (the reference's '*_with_kl_penalty' and KL metrics)."""
    return jnp.mean(jnp.sum(x * mask, axis=-1))


def _whiten(x, mask):
    m = mask.astype(jnp.float32)
    mean = jnp.sum(x * m) / jnp.sum(m)
    var = jnp.sum(jnp.square(x - mean) * m) / jnp.sum(m)
    return (x - mean) * jax.lax.rsqrt(var + 1e-8)


def advantages(rollout, start: int, lam, cfg: RLConfig):
    """KL-shaped rewards/costs → GAE → the actor's advantage (PPO: A_r; PPO-Lag: (A_r − λA_c)/(1+λ)).

    Returns a dict of (B, T') arrays sliced from `start`, plus the shaped streams for metrics.
    """
    seq_mask = rollout["mask"][:, 1:]
    reward = rollout["reward"]
    if cfg.mode == "reward_shaping":
        reward = reward - cfg.lambda_init * rollout["cost"]  # R' = R − λ·C with a fixed λ (§3.14)
    rewards = ops.kl_shaped_scores(reward, rollout["log_probs"], rollout["ref_log_probs"], seq_mask,
                                   cfg.kl_coeff, cfg.clip_range_score)
    adv_r, ret_r = ops.gae_advantages_and_returns(rollout["reward_values"], rewards, seq_mask, start, cfg.gamma,
                                                  cfg.gae_lambda)
    out = {"rewards": rewards, "reward_advantages": adv_r, "reward_returns": ret_r, "advantages": adv_r}
    if cfg.cost_critic:
        costs = ops.kl_shaped_scores(rollout["cost"], rollout["log_probs"], rollout["ref_log_probs"], seq_mask,
                                     -cfg.kl_coeff, cfg.clip_range_score)
        adv_c, ret_c = ops.gae_advantages_and_returns(rollout["cost_values"], costs, seq_mask, start, cfg.gamma,
                                                      cfg.gae_lambda)
        out.update(costs=costs, cost_advantages=adv_c, cost_returns=ret_c,
                   advantages=ops.lagrangian_advantages(adv_r, adv_c, lam))
    if cfg.whiten_advantages:
        out["advantages"] = _whiten(out["advantages"], seq_mask[:, start:])
    return out


def make_rl_step(actor_apply, critic_apply, actor_opt, critic_opt, actor_schedule, critic_schedule,
                 cfg: RLConfig, start: int, fresh: bool = False):
    """rl_step(state, rollout, ptx_batch | None, episode_cost) → (state, metrics, policy_scores) (spec §1.3 step 2).

    state: {'actor', 'reward_critic', ['cost_critic'] each {'params', 'opt_state', 'updates'}, 'log_lambda',
            'global_step'}. λ is updated first (PPO-Lag, after the delay), then one actor update (with the PTX term
    ½(∇L_rl + ptx_coeff·∇L_ptx) when a PTX batch is given, spec §3.15) and the clipped critic updates.

    The actor and critic losses touch disjoint parameters, so one `value_and_grad` of their sum gives each model
    exactly its own gradient from a single pass. fresh=True: the state's parameters are the ones that generated
    the rollout (the first update on it), so the rollout's old log-probs and values are this pass's forward outputs
    (stop-gradient) and need not be in `rollout`; they come back as `policy_scores` ({'log_probs',
    'reward_values', ['cost_values']}, each (B, L−1)) for later passes. Otherwise `policy_scores` is empty.
    """
    critics = _critic_names(cfg)
    critic_states = tuple(f"{name}_critic" for name in critics)  # their entries in the state

    def update(module_state, grads, optimizer):
        params = module_state["params"]
        trainable, g = _trainable(params), _trainable(grads)
        updates, opt_state = optimizer.update(g, module_state["opt_state"], trainable)
        new_params = {**params, **optax.apply_updates(trainable, updates)}
        return {"params": new_params, "opt_state": opt_state, "updates": module_state["updates"] + 1}

    def step(state, rollout, ptx_batch, episode_cost):
        log_lambda = state["log_lambda"]
        if cfg.mode == "ppo_lag":
            updated = ops.lagrange_update(log_lambda, episode_cost, cfg.threshold, cfg.lambda_lr, cfg.lambda_max)
            log_lambda = jnp.where(state["global_step"] >= cfg.lambda_update_delay_steps, updated, log_lambda)
        lam = jnp.exp(log_lambda)
        seq, mask = rollout["seq"], rollout["mask"]
        tmask = mask[:, 1:][:, start:]

        def objective(params):
            """params: {'actor', 'reward_critic', ['cost_critic']} → Σ losses, (aux, policy scores, advantages)."""
            log_probs = ops.gather_log_probs(actor_apply(params["actor"], seq, mask)[:, :-1], seq[:, 1:])
            values = {f"{name}_values": critic_apply(params[f"{name}_critic"], seq, mask)[0][:, :-1, 0]
                      for name in critics}
            scores = jax.lax.stop_gradient({"log_probs": log_probs, **values})
            old = dict(rollout, **scores) if fresh else rollout
            adv = advantages(old, start, lam, cfg)
            new_lp, old_lp = log_probs[:, start:], old["log_probs"][:, start:]
            rl_loss = ops.ppo_actor_loss(new_lp, old_lp, adv["advantages"], tmask, cfg.clip_range_ratio)
            ratio = jnp.exp(new_lp - old_lp)
            aux = {"train/actor_loss": rl_loss,
                   "train/ratio": ops.masked_mean(ratio, tmask),
                   "train/clip_fraction": ops.masked_mean(
                       (jnp.abs(ratio - 1.0) > cfg.clip_range_ratio).astype(jnp.float32), tmask)}
            total = rl_loss
            if ptx_batch is not None:
                ptx_logits = actor_apply(params["actor"], ptx_batch["input_ids"], ptx_batch["attention_mask"])
                aux["train/ptx_loss"] = ops.sft_loss(ptx_logits, ptx_batch["labels"])
                total = 0.5 * (rl_loss + cfg.ptx_coeff * aux["train/ptx_loss"])
            for name in critics:
                key = f"{name}_values"
                loss = ops.critic_loss(values[key][:, start:], old[key][:, start:], adv[f"{name}_returns"], tmask,
                                       cfg.clip_range_value)
                aux[f"train/{name}_critic_loss"] = loss
                total = total + loss
            return total, (aux, scores if fresh else {}, adv, old)

        trainables = {name: state[name]["params"] for name in ("actor", *critic_states)}
        (_, (aux, scores, adv, old)), grads = jax.value_and_grad(objective, has_aux=True)(trainables)
        new_state = dict(state, log_lambda=log_lambda, global_step=state["global_step"] + 1)
        metrics: dict[str, Any] = {"train/actor_lr": actor_schedule(state["actor"]["updates"])}
        new_state["actor"] = update(state["actor"], grads["actor"], actor_opt)
        for name in critic_states:
            metrics[f"train/{name}_lr"] = critic_schedule(state[name]["updates"])
            new_state[name] = update(state[name], grads[name], critic_opt)

        lengths = jnp.sum(tmask, axis=-1).astype(jnp.float32)
        kl = (old["log_probs"] - old["ref_log_probs"])[:, start:]
        metrics.update(aux)
        metrics.update({
            "train/reward": jnp.mean(old["reward"]),
            "train/reward_with_kl_penalty": _masked_sum_mean(adv["rewards"][:, start:], tmask),
            "train/reward_advantage": ops.masked_mean(adv["reward_advantages"], tmask),
            "train/reward_return": ops.masked_mean(adv["reward_returns"], tmask),
            "train/reward_value": ops.masked_mean(old["reward_values"][:, start:], tmask),
            "train/kl_divergence": _masked_sum_mean(kl, tmask),
            "train/mean_generated_length": jnp.mean(lengths),
            "train/max_generated_length": jnp.max(lengths),
            "train/lambda": lam,
            "train/episode_cost": jnp.asarray(episode_cost, jnp.float32),
            "train/global_step": new_state["global_step"],  # read with the metrics: no extra host round trip
        })
        if cfg.uses_cost:
            metrics["train/cost"] = jnp.mean(old["cost"])
        if cfg.cost_critic:
            metrics.update({
                "train/cost_with_kl_penalty": _masked_sum_mean(adv["costs"][:, start:], tmask),
                "train/cost_advantage": ops.masked_mean(adv["cost_advantages"], tmask),
                "train/cost_return": ops.masked_mean(adv["cost_returns"], tmask),
                "train/cost_value": ops.masked_mean(old["cost_values"][:, start:], tmask),
            })
        return new_state, metrics, scores

    return step


def _trainable(params):
    """Everything but a score model's normalizer statistics."""
    return {k: v for k, v in params.items() if k != "normalizer"}


def init_module_state(params, optimizer):
    return {"params": params, "opt_state": optimizer.init(_trainable(params)), "updates": jnp.zeros((), jnp.int32)}


def score_model_end_fn(score_apply) -> Callable:
    """(params, seq, mask) → (B,) end scores of a score model."""

    def fn(params, seq, mask):
        return score_apply(params, seq, mask)[1][:, 0]

    return fn
