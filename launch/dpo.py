"""Train the dpo stage: python -m launch.dpo --config configs/dpo.py:tiny [--config.key=value ...]"""

import sys

from launch.common import run_training_cli

if __name__ == "__main__":
    sys.exit(run_training_cli("dpo", "configs/dpo.py:tiny"))
