"""Train the safedpo stage: python -m launch.safedpo --config configs/safedpo.py:tiny [--config.key=value ...]"""

import sys

from launch.common import run_training_cli

if __name__ == "__main__":
    sys.exit(run_training_cli("safedpo", "configs/safedpo.py:tiny"))
