"""The ground-truth testbed: python -m launch.testbed --config configs/testbed.py:tiny [--config.output_dir=DIR]
[--config.seed=N] [--config.methods=sft,ppo,ppo_lag,reward_shaping]

Writes DIR/results.json, DIR/report.md, DIR/reward_vs_cost.png and DIR/ppo_lag_curves.png; re-running resumes.
"""

from __future__ import annotations

import json
import sys

from launch.common import run_job_cli


def report(results: dict) -> None:
    from saferlhf_jax.testbed.report import verdict

    print(verdict(results))
    print(json.dumps({k: v for k, v in results.items() if k not in ("rules", "timings")}, indent=2))


def main(argv=None) -> int:
    from saferlhf_jax.testbed.run import run

    return run_job_cli("configs/testbed.py:tiny", run, report, argv)


if __name__ == "__main__":
    sys.exit(main())
