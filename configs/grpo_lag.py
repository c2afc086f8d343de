"""Critic-free Lagrangian RL (GRPO-Lag; METHODS_BEYOND §2): `--config configs/grpo_lag.py:tiny` or `:llama2_7b`.

PPO-Lag's learned λ (window, threshold, delay, λ_max) with the two critics replaced by group-relative advantages over
G = generation.num_return_sequences responses per prompt: actor + reference + reward + cost models only.
"""

import ml_collections

from configs import rl_common


def critic_free(mode: str, preset: str):
    c = rl_common.get(mode, preset)
    c.generation.num_return_sequences = 4       # G
    c.grpo = ml_collections.ConfigDict(dict(
        advantage="grpo",                        # grpo | dr_grpo | rloo
        eps=1e-4,
        kl_mode="loss",                          # loss: β_kl·k3 in the loss | reward: −β·K in R̂, +β·K in Ĉ
        kl_loss_coeff=0.04,                      # β_kl (DeepSeekMath)
        aggregation="seq",                       # seq | token | constant
        loss_normalizer=0.0,                     # 'constant': L_norm (0 = the rollout width)
    ))
    if mode == "grpo_lag":
        c.rl.lambda_max = 5.0
    if c.recipe == "safe_rlhf_jax":  # the testbed's GRPO-Lag (spec §7.34; configs/testbed.py says why each)
        g = int(c.generation.num_return_sequences)
        # G λ updates per rollout batch (one per return group): PPO-Lag's k_p, 1.5× its k_i divided by G
        c.rl.lambda_pid = (c.rl.lambda_pid[0], 1.5 * c.rl.lambda_pid[1] / g, 0.0)
        c.grpo.kl_mode = "reward"                # PPO-Lag's objective: only the advantages differ
        c.grpo.advantage = "dr_grpo"             # x − group mean, in the models' own units (METHODS_BEYOND §2.3)
    return c


def get_config(preset: str = "tiny"):
    return critic_free("grpo_lag", preset)
