"""The public Safe RLHF formula contract (spec §8): pure, jittable jnp functions, float32 results.

    from saferlhf_jax import ops
    ops.gae_advantages_and_returns(values, rewards, mask, start=S - 1)

String, None and Python-int arguments (loss types, normalizer types, `start`) are static under `jax.jit`.
Trainers call these functions, never private copies, so the golden fixtures cover the training path.
"""

from saferlhf_jax.ops.core import end_index, first_divergence_index, gather_log_probs, masked_mean, take_at
from saferlhf_jax.ops.lm import (
    DPO_SLICINGS,
    IGNORE_INDEX,
    chunked_label_log_probs,
    dpo_action_window,
    dpo_loss,
    dpo_sequence_log_probs,
    safedpo_loss,
    sft_loss,
    sft_loss_from_log_probs,
    sft_token_losses,
    shift_labels,
)
from saferlhf_jax.ops.rl import (
    AGGREGATIONS,
    GROUP_ESTIMATORS,
    aggregate,
    critic_loss,
    group_advantages,
    grpo_actor_loss,
    gae_advantages_and_returns,
    kl_shaped_scores,
    lagrange_update,
    MODERATION_HEADS,
    pid_lagrange_update,
    lagrangian_advantages,
    lagrangian_advantages_multi,
    moderation_cost,
    ppo_actor_loss,
)
from saferlhf_jax.ops.schedules import SCHEDULE_TYPES, lr_multiplier, lr_schedule, warmup_steps_from_ratio
from saferlhf_jax.ops.score import (
    LOSS_TYPES,
    NORMALIZE_FUNCTIONS,
    NORMALIZER_TYPES,
    SCORE_TYPE_TO_FUNCTION,
    cost_model_loss,
    init_normalizer_state,
    normalize,
    normalizer_update,
    reward_model_loss,
)

__all__ = [
    "masked_mean", "gather_log_probs", "end_index", "first_divergence_index", "take_at",
    "kl_shaped_scores", "gae_advantages_and_returns", "ppo_actor_loss", "critic_loss",
    "lagrangian_advantages", "lagrange_update", "pid_lagrange_update",
    "group_advantages", "grpo_actor_loss", "aggregate",
    "lagrangian_advantages_multi", "moderation_cost", "MODERATION_HEADS",
    "GROUP_ESTIMATORS", "AGGREGATIONS",
    "reward_model_loss", "cost_model_loss", "normalizer_update", "normalize", "init_normalizer_state",
    "dpo_loss", "dpo_action_window", "dpo_sequence_log_probs", "sft_loss", "sft_token_losses", "shift_labels",
    "chunked_label_log_probs", "sft_loss_from_log_probs", "safedpo_loss",
    "lr_multiplier", "lr_schedule", "warmup_steps_from_ratio",
    "IGNORE_INDEX", "DPO_SLICINGS", "LOSS_TYPES", "NORMALIZER_TYPES", "NORMALIZE_FUNCTIONS",
    "SCORE_TYPE_TO_FUNCTION", "SCHEDULE_TYPES",
]
