"""Run grpo: python -m launch.grpo --config configs/grpo.py:tiny [--config.key=value ...]"""

import sys

from launch.common import run_rl_cli

if __name__ == "__main__":
    sys.exit(run_rl_cli("configs/grpo.py:tiny"))
