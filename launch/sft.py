"""Train the sft stage: python -m launch.sft --config configs/sft.py:tiny [--config.key=value ...]"""

import sys

from launch.common import run_training_cli

if __name__ == "__main__":
    sys.exit(run_training_cli("sft", "configs/sft.py:tiny"))
