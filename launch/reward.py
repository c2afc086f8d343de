"""Train the reward stage: python -m launch.reward --config configs/reward.py:tiny [--config.key=value ...]"""

import sys

from launch.common import run_training_cli

if __name__ == "__main__":
    sys.exit(run_training_cli("reward", "configs/reward.py:tiny"))
