"""The main job end to end on the embedded default (the README's command (a)), then a resume that skips it all."""

from __future__ import annotations

import json

import pytest

from launch import pipeline


@pytest.mark.slow
def test_pipeline_tiny_end_to_end_and_resume(tmp_path):
    argv = ["prog", "--config=configs/pipeline.py:tiny", f"--config.output_dir={tmp_path}",
            "--config.logging.progress=False", "--config.logging.tensorboard=False",
            "--config.mesh.fsdp=1"]  # one device, as the README command runs on a CPU (conftest simulates 8)
    assert pipeline.main(argv) == 0
    for stage in ("sft", "reward", "cost", "ppo_lag"):
        summary = json.loads((tmp_path / stage / "summary.json").read_text())
        assert "export" in summary, stage
    arena = json.loads((tmp_path / "arena" / "summary.json").read_text())
    assert arena["prompts"] == 16 and sum(arena["counts"].values()) == 16
    report = (tmp_path / "report.md").read_text()
    for needle in ("## Stages", "| reward |", "| ppo_lag |", "## Arena", "stage_curves.png",
                   "ppo_lag/curves.png", "arena/cost_distribution.png"):
        assert needle in report, needle
    for png in ("stage_curves.png", "ppo_lag/curves.png", "arena/reward_distribution.png"):
        assert (tmp_path / png).stat().st_size > 1000
    # the reward model learned something on the shipped pairs (test split accuracy above chance)
    rm_eval = json.loads((tmp_path / "reward" / "summary.json").read_text())["eval"]
    assert rm_eval["pairs"] == 16
    # re-running the same command resumes: every stage is already done and is skipped
    mtime = (tmp_path / "sft" / "summary.json").stat().st_mtime
    assert pipeline.main(argv) == 0
    assert (tmp_path / "sft" / "summary.json").stat().st_mtime == mtime
