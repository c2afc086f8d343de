"""ppo_lag config: `--config configs/ppo_lag.py:tiny` (CPU; takes the tiny SFT/RM/CM exports) or `:llama2_7b`."""

from configs import rl_common


def get_config(preset: str = "tiny"):
    return rl_common.get("ppo_lag", preset)
