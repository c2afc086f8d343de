"""The two-rule world end to end (configs/testbed.py:multi): its own file, so that the test workers (pytest-xdist,
one file per worker at a time) run it beside the other long testbed runs, not after them."""

import pytest


# Marked slow (not in CI): 13-37 minutes here (seven score models, five RL runs, two rounds) — over a third of the
# whole suite's work, and what kept CI over its 40 minutes. Every piece it joins runs in CI on its own: the two-rule
# world's rules and rows (tests/test_testbed.py, by hand), its claims and report on given numbers
# (test_two_rule_claims_and_report), a constraint per rule in PPO-Lag and GRPO-Lag (test_methods.py,
# test_ppo_lag_constraint.py), the second round (test_a_second_round_...); the claim itself is measured on fresh
# seeds (README, docs/testbed_fresh_multi_seeds*.json). `pytest -m slow` runs it.
@pytest.mark.slow
def test_two_constraints_keep_every_budget_where_a_summed_cost_does_not(tmp_path):
    """configs/testbed.py:multi (issue: methods beyond PPO-Lag, item 5): PPO-Lag with a cost model and a λ per rule
    keeps both budgets; PPO-Lag held to one summed cost spends the allowance in the mix it writes and breaks the
    tighter violence budget. A non-default seed (docs/testbed_multi_seeds.json: seeds 1-3 from the command line)."""
    from configs import testbed as testbed_config
    from saferlhf_jax.testbed.run import run

    cfg = testbed_config.get_config("multi")
    cfg.output_dir = str(tmp_path)
    cfg.seed = 1
    cfg.logging.progress = False
    cfg.mesh.fsdp = 1
    r = run(cfg)
    assert [c["name"] for c in r["constraints"]] == ["violence", "pushing"]
    assert all(len(m["gt_costs"]) == 2 for m in r["methods"].values())
    assert [e["round"] for e in r["rounds"]["ppo_lag"]] == [1, 2] and len(r["rounds"]["ppo_lag_summed"]) == 2
    assert r["claims"]["ppo_breaks_some_rule_budget"]["status"] == "holds", (r["methods"], r["claims"])
    assert (tmp_path / "rule_costs.png").stat().st_size > 5000
    per_rule, summed = r["methods"]["ppo_lag"], r["methods"]["ppo_lag_summed"]
    claim = r["claims"]["two_constraints_keep_every_budget_where_summed_does_not"]
    assert claim["status"] == "holds", (per_rule, summed, r["claims"])
    tolerance = r["claims"]["ppo_lag_summed_breaks_some_rule_budget"]["tolerance"]
    assert summed["gt_costs"][0] > tolerance  # the summed cost breaks violence
    # each rule's budget was calibrated by its stage on that rule's own held-out labels (mean severity ≤ allowance)
    assert [c["allowance_mean_severity"] for c in r["constraints"]] == [0.35, 1.0]
    assert all(c["standard_error"] > 0 for c in r["constraints"])
