"""Train the cost stage: python -m launch.cost --config configs/cost.py:tiny [--config.key=value ...]"""

import sys

from launch.common import run_training_cli

if __name__ == "__main__":
    sys.exit(run_training_cli("cost", "configs/cost.py:tiny"))
