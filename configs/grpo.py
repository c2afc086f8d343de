"""Reward-only critic-free RL (GRPO / RLOO with grpo.advantage=rloo): `--config configs/grpo.py:tiny`."""

from configs import grpo_lag


def get_config(preset: str = "tiny"):
    return grpo_lag.critic_free("grpo", preset)
