"""The top layer: jobs made of stages. `main` is the main job (testbed → SFT → RM → CM → PPO-Lag → arena), `report`
its report.md."""

from saferlhf_jax.pipeline.main import STAGES, parse_stages, run

__all__ = ["STAGES", "parse_stages", "run"]
