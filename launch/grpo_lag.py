"""Run grpo_lag: python -m launch.grpo_lag --config configs/grpo_lag.py:tiny [--config.key=value ...]"""

import sys

from launch.common import run_rl_cli

if __name__ == "__main__":
    sys.exit(run_rl_cli("configs/grpo_lag.py:tiny"))
