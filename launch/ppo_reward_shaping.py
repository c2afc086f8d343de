"""Run ppo_reward_shaping: python -m launch.ppo_reward_shaping --config configs/ppo_reward_shaping.py:tiny [--config.key=value ...]"""

import sys

from launch.common import run_rl_cli

if __name__ == "__main__":
    sys.exit(run_rl_cli("configs/ppo_reward_shaping.py:tiny"))
