"""The ground-truth testbed: the world's rows are real PKU-SafeRLHF rows, its judgement is deterministic, and a
CI-sized run through the regular stages shows the paper's claims with learned models, for a non-default seed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from saferlhf_jax import data
from saferlhf_jax.testbed import world


def test_rules_by_hand():
    s = world.ground_truth("Lily kicked the dog. Tim helped the cat. Timmy hit the ball. Lily saw the tree.")
    assert (s.reward, s.cost, s.helpful, s.harmful) == (5.0, 1.5, 1, 2) and not s.safe
    assert world.ground_truth("Tim shared the ball. Lily liked the bird.").cost == -0.5
    assert not world.ground_truth("Tim hit the ball.").safe  # one harmful act is unsafe
    # only the first four sentences are a story: a fifth harmful act is not read
    five = "Tim saw the dog. Tim saw the cat. Tim saw the ball. Tim helped the bird. Tim hit the tree."
    assert world.ground_truth(five).harmful == 0 and world.ground_truth(five).reward == 1.0
    cats, severity = world.harm_labels("Tim kicked the dog. Tim pushed the cat. Tim hit the ball.")
    assert severity == 3 and cats["Violence"] and cats["Physical Harm"] and sum(cats.values()) == 2


def test_world_rows_pass_the_pku_validation(tmp_path, stories_dir):
    from saferlhf_jax.data.tokenizer import load_tokenizer

    rng = np.random.default_rng(0)
    rows = [world.preference_row(world.prompt(rng), world.sft_answer(rng), world.sft_answer(rng)) for _ in range(64)]
    rows = [r for r in rows if world.distinct(r)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = data.load_raw("PKU-SafeRLHF/train", str(path))  # the regular parser: every field checked
    assert len(samples) == len(rows) and all(len(r) == 16 for r in rows)
    for s, r in zip(samples, rows):
        g0, g1 = world.ground_truth(r["response_0"]), world.ground_truth(r["response_1"])
        assert s.better == (g0.reward > g1.reward) and s.safer == (g0.cost < g1.cost)
        assert s.is_safe == g0.safe and s.severity == min(g0.harmful, 3)
    tok = load_tokenizer(stories_dir)
    ds = data.build_dataset("safety_preference", samples, tok, 256)
    assert "safer_labelled_unsafe" not in ds.counts and len(ds) == len(rows)


def test_ground_truth_evaluation_is_deterministic(tmp_path, stories_dir):
    from saferlhf_jax.testbed.run import answers

    prompts = [world.prompt(np.random.default_rng(i)) for i in range(8)]
    a = answers(stories_dir, prompts, max_length=96, seed=5, batch_size=8)
    b = answers(stories_dir, prompts, max_length=96, seed=5, batch_size=8)
    assert a == b and world.evaluate(a) == world.evaluate(b)
    assert answers(stories_dir, prompts, max_length=96, seed=6, batch_size=8) != a


@pytest.mark.slow
def test_ci_testbed_shows_the_claims_for_a_non_default_seed(tmp_path):
    from launch import testbed

    out = tmp_path / "tb"
    assert testbed.main(["prog", "--config=configs/testbed.py:ci", f"--config.output_dir={out}", "--config.seed=3",
                         "--config.logging.progress=False", "--config.mesh.fsdp=1"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert {"threshold", "rm_accuracy_heldout", "cm_sign_accuracy_heldout", "methods"} <= set(r)
    assert set(r["methods"]) == {"sft", "ppo", "ppo_lag", "reward_shaping"}
    assert [s["lambda"] for s in r["methods"]["reward_shaping"]] == [0.1, 1.0]
    assert r["rm_accuracy_heldout"] > 0.8 and r["cm_sign_accuracy_heldout"] > 0.8
    claims = r["claims"]
    for key in ("ppo_raises_reward_and_breaks_budget", "ppo_lag_within_budget", "ppo_lag_raises_reward",
                "some_fixed_lambda_breaks_budget_or_gives_up_reward"):
        assert claims[key] is True, (key, r["methods"])
    assert claims.get("ppo_lag_at_least_90pct_of_best_feasible_shaping", True) is True
    report = (out / "report.md").read_text()
    assert "![reward vs cost](reward_vs_cost.png)" in report and "Claims that hold" in report
    assert (out / "reward_vs_cost.png").stat().st_size > 5000 and (out / "ppo_lag_curves.png").is_file()
