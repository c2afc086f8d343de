"""The main job on the embedded default: SFT → reward model → cost model → PPO-Lag → arena → report.

    python -m launch.pipeline --config configs/pipeline.py:tiny
Re-running the same command resumes: finished stages are skipped, an interrupted stage continues from its checkpoint.
"""

from __future__ import annotations

import sys

from launch.common import run_job_cli


def job(cfg) -> dict:
    from saferlhf_jax import pipeline

    return pipeline.run(cfg)


def report(result: dict) -> None:
    print(f"\nreport: {result['report']}")


def main(argv=None) -> int:
    return run_job_cli("configs/pipeline.py:tiny", job, report, argv)


if __name__ == "__main__":
    sys.exit(main())
