"""Run ppo: python -m launch.ppo --config configs/ppo.py:tiny [--config.key=value ...]"""

import sys

from launch.common import run_rl_cli

if __name__ == "__main__":
    sys.exit(run_rl_cli("configs/ppo.py:tiny"))
