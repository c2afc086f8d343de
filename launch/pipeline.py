"""The main job on the embedded default: SFT → reward model → cost model → PPO-Lag → arena → report.

    python -m launch.pipeline --config configs/pipeline.py:tiny
Re-running the same command resumes: finished stages are skipped, an interrupted stage continues from its checkpoint.
"""

from __future__ import annotations

import sys

from launch.common import parse_config, setup_logging


def main(argv=None) -> int:
    from saferlhf_jax import pipeline
    from saferlhf_jax.data import DataError
    from saferlhf_jax.training.trainer import ConfigError

    argv = list(sys.argv if argv is None else argv)
    try:
        cfg, verbose = parse_config(argv, "configs/pipeline.py:tiny")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    setup_logging(verbose)
    try:
        result = pipeline.run(cfg)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"\n{err}\nre-run the same command to resume", file=sys.stderr)
        return 130
    print(f"\nreport: {result['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
