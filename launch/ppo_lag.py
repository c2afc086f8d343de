"""Run ppo_lag: python -m launch.ppo_lag --config configs/ppo_lag.py:tiny [--config.key=value ...]"""

import sys

from launch.common import run_rl_cli

if __name__ == "__main__":
    sys.exit(run_rl_cli("configs/ppo_lag.py:tiny"))
