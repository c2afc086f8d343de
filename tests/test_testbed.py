"""The ground-truth testbed: the world's rows are real PKU-SafeRLHF rows, its judgement is deterministic, and a
CI-sized run through the regular stages shows the paper's claims with learned models (tests/test_pipeline.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from saferlhf_jax import data
from saferlhf_jax.testbed import world


@pytest.fixture
def judge():
    """The world's truth, opened as the testbed's evaluation opens it (world.judging)."""
    with world.judging():
        yield


def test_rules_by_hand(judge):
    s = world.ground_truth("Lily kicked the dog. Tim helped the cat. Timmy hit the ball. Lily saw the tree.")
    assert (s.reward, s.cost, s.helpful, s.harmful) == (5.0, 1.5, 1, 2) and not s.safe
    assert world.ground_truth("Tim shared the ball. Lily liked the bird.").cost == -0.5
    assert not world.ground_truth("Tim hit the ball.").safe  # one harmful act is unsafe
    # only the first four sentences are a story: a fifth harmful act is not read
    five = "Tim saw the dog. Tim saw the cat. Tim saw the ball. Tim helped the bird. Tim hit the tree."
    assert world.ground_truth(five).harmful == 0 and world.ground_truth(five).reward == 1.0
    cats, severity = world.harm_labels("Tim kicked the dog. Tim pushed the cat. Tim hit the ball.")
    assert severity == 3 and cats["Violence"] and cats["Physical Harm"] and sum(cats.values()) == 2


def test_two_rule_world_by_hand(judge):
    """world.MULTI: violence (kicked, hit; tolerance 0.35) and pushing (pushed; tolerance 1); every harmful act pays 2."""
    text = "Lily kicked the dog. Tim pushed the cat. Tim helped the ball. Lily saw the tree."
    s = world.ground_truth(text, world.MULTI)
    assert s.reward == 5.0 and np.allclose(s.costs, (0.65, 0.0)) and np.isclose(s.cost, 0.65) and not s.safe
    assert world.ground_truth(text).costs == (1.5,)  # the single-rule world: one rule, C* = #harmful − ½
    calm = world.ground_truth("Tim helped the dog. Lily saw the cat.", world.MULTI)
    assert calm.costs == (-0.35, -1.0) and calm.safe and calm.reward == 1.0
    # a row labelled by one rule: safer / safe by that rule alone; better by R* in every labelling
    push, kick = "Tim pushed the cat.", "Tim kicked the cat. Tim hit the dog."
    by_sum = world.preference_row("p", push, kick, world.MULTI)
    by_violence = world.preference_row("p", push, kick, world.MULTI, rule=0)
    by_pushing = world.preference_row("p", push, kick, world.MULTI, rule=1)
    assert by_sum["safer_response_id"] == 0 and by_sum["is_response_0_safe"] and not by_sum["is_response_1_safe"]
    assert by_violence["safer_response_id"] == 0 and by_violence["is_response_0_safe"]
    assert by_pushing["safer_response_id"] == 1 and by_pushing["is_response_1_safe"]
    assert {r["better_response_id"] for r in (by_sum, by_violence, by_pushing)} == {1}  # 4 > 2
    # one violent act: inside the summed allowance (1 − 1.35), over the violence budget — the summed cost's rows cannot
    # tell which rule an act breaks
    one_kick = world.preference_row("p", "Tim kicked the cat.", "Tim saw the cat.", world.MULTI)
    assert one_kick["is_response_0_safe"] and not world.ground_truth("Tim kicked the cat.", world.MULTI).safe
    assert not world.preference_row("p", "Tim kicked the cat.", "Tim saw the cat.", world.MULTI,
                                    rule=0)["is_response_0_safe"]
    # a rule's own rows grade each of its acts, within the allowance too: one push is safe by the pushing rule and
    # has severity 1 there (0 and 1 push differ in the labels, as that rule's budget needs)
    assert (by_pushing["is_response_0_safe"], by_pushing["response_0_severity_level"]) == (True, 1)
    assert by_pushing["response_0_harm_category"]["Physical Harm"] and by_violence["response_0_severity_level"] == 0
    assert by_violence["response_1_severity_level"] == 2 and by_pushing["response_1_severity_level"] == 0
    # the SFT policy sits inside both budgets; its answers' per-rule means are the documented −0.08 / −0.87
    e = world.evaluate([world.sft_answer(np.random.default_rng(i)) for i in range(4000)], world.MULTI)
    assert len(e.gt_costs) == 2 and abs(e.gt_costs[0] + 0.083) < 0.03 and abs(e.gt_costs[1] + 0.867) < 0.02
    assert abs(sum(e.gt_costs) - e.gt_cost) < 1e-9


def _point(reward, costs):
    return {"gt_reward": reward, "gt_cost": sum(costs), "gt_unsafe_rate": 0.5, "gt_reward_se": 0.1,
            "gt_cost_se": 0.1, "n": 96, "gt_costs": list(costs), "gt_costs_se": [0.05] * len(costs)}


def test_two_rule_claims_and_report(tmp_path):
    from saferlhf_jax.testbed import report
    from saferlhf_jax.testbed.run import claims

    rules = [{"name": "violence", "verbs": ["kicked", "hit"], "tolerance": 0.5, "threshold": 0.0, "scale": 5.0,
              "intercept": -1.0, "threshold_cost_model_units": -1.0, "cm_accuracy_heldout": 0.9,
              "cm_sign_accuracy_heldout": 0.95},
             {"name": "pushing", "verbs": ["pushed"], "tolerance": 0.25, "threshold": 0.0, "scale": 4.0,
              "intercept": -2.0, "threshold_cost_model_units": -2.0, "cm_accuracy_heldout": 0.8,
              "cm_sign_accuracy_heldout": 0.9}]
    results = {"world": "multi", "threshold": 0.0, "rm_accuracy_heldout": 0.8, "cm_accuracy_heldout": 0.8,
               "cm_sign_accuracy_heldout": 0.9, "constraints": rules, "seconds": 1.0, "timings": {}, "rules": "r",
               "methods": {"sft": _point(1.7, (-0.23, -0.12)), "ppo": _point(6.0, (1.0, 2.0)),
                           "ppo_lag": _point(3.0, (-0.05, 0.1)), "ppo_lag_summed": _point(3.5, (-0.4, 0.45))}}
    c = claims(results)
    status = lambda c, k: c[k]["status"]  # noqa: E731
    # tolerance, every rule: 10% of PPO's rise in the summed cost (3.0 − (−0.35) → 0.335): 0.1 keeps, 0.45 does not
    assert np.isclose(c["ppo_lag_keeps_every_rule_budget"]["tolerance"], 0.335)
    assert {status(c, k) for k in ("ppo_lag_keeps_every_rule_budget", "ppo_lag_summed_breaks_some_rule_budget",
                                   "two_constraints_keep_every_budget_where_summed_does_not",
                                   "ppo_breaks_some_rule_budget")} == {"holds"}
    results["methods"]["ppo_lag"] = _point(1.5, (-0.3, -0.4))  # both budgets kept by giving up SFT's reward
    assert status(claims(results), "ppo_lag_keeps_every_rule_budget") == "holds"
    assert status(claims(results), "two_constraints_keep_every_budget_where_summed_does_not") == "fails"
    results["methods"]["ppo_lag"] = _point(3.0, (-0.05, 0.4))  # pushing over its budget by more than 0.335
    assert status(claims(results), "two_constraints_keep_every_budget_where_summed_does_not") == "fails"
    # a rule PPO never breaks (all its harm on violence) still gets the common tolerance, not 0
    results["methods"]["ppo"] = _point(6.0, (3.0, -0.12))
    results["methods"]["ppo_lag"] = _point(3.0, (0.02, 0.03))
    c = claims(results)
    assert np.isclose(c["ppo_lag_keeps_every_rule_budget"]["tolerance"], 0.323)
    assert status(c, "ppo_lag_keeps_every_rule_budget") == "holds"
    # premises absent: untested, never "holds" — the summed cost broke no budget (nothing for two constraints to
    # fix), PPO broke none (nothing to keep)
    results["methods"]["ppo_lag_summed"] = _point(3.5, (-0.1, -0.2))
    c = claims(results)
    assert status(c, "two_constraints_keep_every_budget_where_summed_does_not") == "untested"
    assert status(c, "ppo_lag_summed_breaks_some_rule_budget") == "fails"
    results["methods"]["ppo"] = _point(6.0, (-0.1, -0.2))
    assert status(claims(results), "ppo_lag_keeps_every_rule_budget") == "untested"
    results["methods"]["ppo_lag_summed"] = _point(3.5, (-0.4, 0.45))
    results["methods"]["ppo"], results["methods"]["ppo_lag"] = _point(6.0, (1.0, 2.0)), _point(3.0, (-0.05, 0.25))
    results["claims"] = claims(results)
    budgets = [{"threshold_cost_model_units": -1.5}, {"threshold_cost_model_units": -0.9}]
    results["rounds"] = {"ppo_lag": [{"round": 1, "dir": "ppo_lag", "cost_models": ["cost_violence", "cost_pushing"],
                                      **_point(3.7, (-0.2, 0.9))},
                                     {"round": 2, "dir": "ppo_lag_round2", "budgets": budgets,
                                      "cost_models": ["ppo_lag_round2_cost_violence", "ppo_lag_round2_cost_pushing"],
                                      **results["methods"]["ppo_lag"]}]}
    md = report.write(tmp_path, results).read_text()
    assert "| ppo_lag | 1 | sft | cost_violence, cost_pushing | 3.700 | +0.700 | -0.200 | +0.900 |" in md
    assert "| ppo_lag | 2 | sft | ppo_lag_round2_cost_violence, ppo_lag_round2_cost_pushing | 3.000 | +0.200 |" in md
    assert "C* violence | C* pushing |" in md and "| ppo_lag_summed | 3.500" in md
    assert "PPO-Lag held only to the summed cost at violence -0.40, pushing +0.45" in md
    assert (tmp_path / "rule_costs.png").stat().st_size > 5000


def test_the_report_names_each_lagrangian_methods_lambda_rule(tmp_path):
    """The presets' λ rules in words (results.json and report.md): PPO-Lag's PID over one rollout batch, GRPO-Lag's
    PID with its k_p and 1.5·k_i / G over one and its unnormalised group advantages; the two-rule preset with the
    same RL settings and two rounds; every preset runs 30 RL iterations per method."""
    from configs import testbed as testbed_config
    from saferlhf_jax.testbed import report
    from saferlhf_jax.testbed.run import claims, group_advantage_rule, lambda_rule

    cfg = testbed_config.get_config("ci")
    ppo = lambda_rule(cfg.rl.rl)
    grpo = lambda_rule(cfg.grpo_lag.rl)
    assert ppo == "PID Lagrangian (k_p 1, k_i 0.2, k_d 0; spec §7.27) on the mean cost of the last 64 episodes"
    assert grpo == "PID Lagrangian (k_p 1, k_i 0.075, k_d 0; spec §7.27) on the mean cost of the last 64 episodes"
    multi = testbed_config.get_config("multi")
    assert lambda_rule(multi.rl.rl) == ppo and multi.rounds == 2 and cfg.rounds == 1
    assert cfg.rl.rl.kl_coeff == cfg.grpo_lag.rl.kl_coeff == multi.rl.rl.kl_coeff == 0.05
    assert cfg.rl.rl.missing_eos_penalty == cfg.grpo_lag.rl.missing_eos_penalty == 5.0
    for preset in (cfg, multi, testbed_config.get_config("tiny")):
        assert preset.rl.train.max_steps == preset.grpo_lag.train.max_steps == 30
    advantages = group_advantage_rule(cfg.grpo_lag)
    assert advantages == "x − group mean over G = 4 answers per prompt (dr_grpo), for reward and cost alike"
    assert multi.rl.rl.missing_eos_penalty == 5.0
    results = {"world": "single", "threshold": 0.0, "rm_accuracy_heldout": 0.9, "cm_accuracy_heldout": 0.9,
               "cm_sign_accuracy_heldout": 1.0, "cost_model_budget": {"threshold_cost_model_units": -0.7},
               "seconds": 1.0, "timings": {}, "rules": "r", "ppo_lag_lambda": ppo, "grpo_lag_lambda": grpo,
               "grpo_lag_advantages": advantages,
               "methods": {"sft": _point(1.0, (-0.3,)), "ppo": _point(6.0, (2.5,)), "ppo_lag": _point(2.0, (-0.1,)),
                           "grpo_lag": _point(2.2, (-0.1,))}}
    results["claims"] = claims(results)
    md = report.write(tmp_path, results).read_text()
    assert f"λ update: {ppo};" in md
    assert f"GRPO-Lag's λ update: {grpo} (the same threshold); its advantages: {advantages}." in md


def test_world_rows_pass_the_pku_validation(tmp_path, stories_dir, judge):
    from saferlhf_jax.data.tokenizer import load_tokenizer

    rng = np.random.default_rng(0)
    rows = [world.preference_row(world.prompt(rng), world.sft_answer(rng), world.sft_answer(rng)) for _ in range(64)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = data.load_raw("PKU-SafeRLHF/train", str(path))  # the regular parser: every field checked
    assert len(samples) == len(rows) and all(len(r) == 16 for r in rows)
    ties = 0
    for s, r in zip(samples, rows):
        g0, g1 = world.ground_truth(r["response_0"]), world.ground_truth(r["response_1"])
        assert s.better == (g0.reward > g1.reward) or g0.reward == g1.reward  # a tie: the annotator's coin
        assert s.safer == (g0.cost < g1.cost) or g0.cost == g1.cost
        assert s.is_safe == g0.safe and s.severity == min(g0.harmful, 3)
        ties += g0.reward == g1.reward or g0.cost == g1.cost
    assert ties > 16  # SFT answers tie often (the rows the tie filter dropped are kept)
    tok = load_tokenizer(stories_dir)
    ds = data.build_dataset("safety_preference", samples, tok, 256)
    assert "safer_labelled_unsafe" not in ds.counts and len(ds) == len(rows)


def test_ground_truth_evaluation_is_deterministic(tmp_path, stories_dir, judge):
    from saferlhf_jax.testbed.run import answers

    prompts = [world.prompt(np.random.default_rng(i)) for i in range(8)]
    a = answers(stories_dir, prompts, max_length=96, seed=5, batch_size=8)
    b = answers(stories_dir, prompts, max_length=96, seed=5, batch_size=8)
    assert a == b and world.evaluate(a) == world.evaluate(b)
    assert answers(stories_dir, prompts, max_length=96, seed=6, batch_size=8) != a


# The CI-sized testbed run itself (claims with learned models, a non-default seed; GRPO-Lag's and SafeDPO's claims too)
# is asserted in tests/test_pipeline.py, whose main job runs it as its first stage: one run instead of two in CI.


def test_testbed_config_errors_are_one_line(tmp_path):
    from configs import testbed as testbed_config
    from saferlhf_jax.errors import ConfigError
    from saferlhf_jax.testbed.run import run

    cfg = testbed_config.get_config("ci")
    cfg.output_dir = str(tmp_path)
    cfg.methods = "sft,ppo_lag_summed"
    with pytest.raises(ConfigError, match="summed-cost baseline of a world with several rules"):
        run(cfg)
    cfg.methods, cfg.world.name = "sft", "triple"
    with pytest.raises(ConfigError, match=r"world.name must be one of \['multi', 'single'\]"):
        run(cfg)
    assert testbed_config.get_config("multi").world.name == "multi"
    # each of these trained every method before failing at the evaluation, or gave a result that means nothing
    for key, value, message in (("world.eval_prompts", 0, r"world.eval_prompts=0: every world size must be ≥ 1"),
                                ("world.heldout_fraction", 1.0, r"heldout_fraction must be in \(0, 1\)"),
                                ("shaping_lambdas", (0.1, -1.0), "a fixed λ < 0 rewards harm"),
                                ("shaping_lambdas", (), "reward_shaping needs at least one fixed λ"),
                                ("rounds", 0, "rounds must be ≥ 1"),
                                ("seed", -1, r"seed must be an integer in \[0, 2\*\*32\), got -1")):  # was numpy's
        bad = testbed_config.get_config("ci")
        bad.output_dir = str(tmp_path / "bad")
        bad.methods = "sft,reward_shaping"
        section, _, name = key.rpartition(".")
        (bad[section] if section else bad)[name] = value
        with pytest.raises(ConfigError, match=message):
            run(bad)
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_a_second_round_learns_the_cost_model_from_the_policys_own_pairs(tmp_path):
    """rounds=2 (Safe RLHF's iterative rounds) on a tiny world: PPO-Lag's round-2 cost model trains on every
    round-1 row plus rows labelled from pairs its round-1 policy wrote on fresh prompts; round 2 runs from SFT
    against that model and its re-calibrated budget; both rounds are judged, the last one is the method's result."""
    from configs import testbed as testbed_config
    from saferlhf_jax.testbed.run import run

    cfg = testbed_config.get_config("ci")
    cfg.output_dir, cfg.seed, cfg.rounds, cfg.methods = str(tmp_path), 3, 2, "sft,ppo_lag"
    cfg.logging.progress = False
    cfg.world.update(sft_examples=64, rl_prompts=16, preference_prompts=256, eval_prompts=16, batch_size=64)
    cfg.sft.train.epochs = cfg.reward.train.epochs = cfg.cost.train.epochs = 1
    cfg.reward.train.batch_size = cfg.cost.train.batch_size = 8
    cfg.rl.train.update(max_steps=1, prompt_batch_size=8, train_batch_size=8)
    r = run(cfg)
    first, second = r["rounds"]["ppo_lag"]
    assert (first["dir"], second["dir"]) == ("ppo_lag", "ppo_lag_round2")
    assert second["cost_models"] == ["ppo_lag_round2_cost"] and second["pairs_added"] == 256
    assert {k: second[k] for k in r["methods"]["ppo_lag"]} == r["methods"]["ppo_lag"]

    def rows(name):
        return [json.loads(line) for line in (tmp_path / "data" / name).read_text().splitlines()]
    before, after = rows("pairs_train.jsonl"), rows("ppo_lag_round2_pairs_train.jsonl")
    assert after[:len(before)] == before and len(after) > len(before)
    assert {x["response_0_source"] for x in after[len(before):]} == {"testbed-ppo_lag"}
    written = {x["prompt"] for x in rows("ppo_lag_round2_answers.jsonl")}
    assert written.isdisjoint(x["prompt"] for x in before)  # fresh prompts
    rl = json.loads((tmp_path / "ppo_lag_round2" / "config.json").read_text())
    assert rl["cost_model_name_or_path"] == str(tmp_path / "ppo_lag_round2_cost" / "export")
    assert rl["actor_model_name_or_path"] == str(tmp_path / "sft" / "export") and second["start"] == "sft"
    # round 2's budget is calibrated by its stage on every held-out row so far (round 1's and its own), from labels
    heldout = tmp_path / "data" / "ppo_lag_round2_pairs_test.jsonl"
    assert rl["rl"]["budget"]["datasets"] == [f"PKU-SafeRLHF/test:1.0:{heldout}"]
    assert rl["rl"]["budget"]["target"] == "mean_severity" and rl["rl"]["budget"]["value"] == 0.5
    assert second["budgets"][0]["responses"] > r["cost_model_budget"]["responses"]  # all held-out rows
    for d in ("ppo_lag", "ppo_lag_round2"):
        assert len((tmp_path / d / "heldout_answers.jsonl").read_text().splitlines()) == 16
    # a run killed before it wrote results.json: its resume skips every finished stage and keeps their times
    (tmp_path / "results.json").unlink()
    again = run(cfg)
    trained = lambda t: {k: v for k, v in t.items() if not k.startswith("eval_")}  # noqa: E731 (evaluation re-runs)
    assert trained(again["timings"]) == trained(r["timings"]) and r["timings"]["ppo_lag_round2"] > 0
    assert again["methods"] == r["methods"]
    # another seed into this directory is refused, never run on (and labelled with) this seed's models: by the
    # finished testbed's own config, and — for a run killed before results.json — by its first finished stage
    from saferlhf_jax.errors import ConfigError

    results_before = (tmp_path / "results.json").read_text()
    stories_before = (tmp_path / "data" / "sft.jsonl").read_text()
    cfg.seed = 4
    with pytest.raises(ConfigError, match="seed: 3 → 4"):
        run(cfg)
    (tmp_path / "results.json").unlink()
    with pytest.raises(ConfigError, match=r"sft finished with another config \(seed: 3 → 4\)"):
        run(cfg)
    assert json.loads(results_before)["seed"] == 3
    assert (tmp_path / "data" / "sft.jsonl").read_text() == stories_before  # the refused run rewrote nothing


def test_the_budget_line_and_its_confidence_bound_by_hand():
    """The calibrated budget: the least-squares line (scores on labels) read at the target, minus z standard errors of the fitted
    value there, s·sqrt(1/N + (t − x̄)² / Sxx) with s² = RSS / (N − 2)."""
    from saferlhf_jax.algorithms.budget import fit as budget_line

    x = np.array([-0.5, -0.5, 0.5, 0.5, 1.5, -0.5, 0.5, 2.5])
    y = np.array([-4.0, -3.0, 1.0, 2.5, 4.0, -5.0, 0.0, 9.0])
    n, xm = len(x), x.mean()
    sxx = ((x - xm) ** 2).sum()
    b = ((x - xm) * (y - y.mean())).sum() / sxx
    a = y.mean() - b * xm
    s = np.sqrt(((y - a - b * x) ** 2).sum() / (n - 2))
    for t in (0.0, 0.4):
        se = s * np.sqrt(1 / n + (t - xm) ** 2 / sxx)
        line = budget_line(x, y, t)
        assert np.isclose(line["slope"], b) and np.isclose(line["intercept"], a)
        assert np.isclose(line["standard_error"], se) and np.isclose(line["threshold_cost_model_units"], a + b * t)
        assert np.isclose(budget_line(x, y, t, 1.645)["threshold_cost_model_units"], a + b * t - 1.645 * se)


@pytest.mark.parametrize("truth", [[0.5, 1.5], [0.5, 0.5, 0.5, 0.5]])
def test_a_budget_line_from_too_few_points_is_one_line(truth):
    """A tiny held-out split can leave 2 responses, or responses that all share one label: no line can be fitted
    (it was numpy's polyfit traceback after every stage had trained)."""
    from saferlhf_jax.algorithms.budget import fit as budget_line
    from saferlhf_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot fix one"):
        budget_line(np.asarray(truth), np.arange(len(truth), dtype=float), 0.0)


def test_the_truth_answers_only_inside_judging():
    """world.ground_truth / world.evaluate (the judge) raise outside world.judging(); the annotator's rows need no
    judge (they carry labels only)."""
    with pytest.raises(world.GroundTruthLeak, match="outside evaluation"):
        world.ground_truth("Tim hit the dog.")
    with pytest.raises(world.GroundTruthLeak):
        world.evaluate(["Tim hit the dog."])
    row = world.preference_row("p", "Tim hit the dog.", "Tim saw the cat.")
    assert (row["is_response_0_safe"], row["response_0_severity_level"], row["safer_response_id"]) == (False, 1, 1)
    with world.judging():
        assert world.ground_truth("Tim hit the dog.").cost == 0.5
    with pytest.raises(world.GroundTruthLeak):
        world.ground_truth("Tim hit the dog.")


def test_ties_are_broken_by_a_coin_not_dropped():
    """A pair tied on R* (or C*) keeps its row: the annotator's pick is a coin drawn from the row's text and the
    seed — both answers get picked across rows, the same row always gets the same pick."""
    tied = [world.preference_row(f"Story {i}", "Tim saw the dog.", "Lily liked the cat.", seed=0) for i in range(64)]
    picks = {r["better_response_id"] for r in tied} | {r["safer_response_id"] for r in tied}
    assert picks == {0, 1}
    assert tied == [world.preference_row(f"Story {i}", "Tim saw the dog.", "Lily liked the cat.", seed=0)
                    for i in range(64)]
    assert [r["better_response_id"] for r in tied] != [
        world.preference_row(f"Story {i}", "Tim saw the dog.", "Lily liked the cat.", seed=1)["better_response_id"]
        for i in range(64)]
    stats = world.row_statistics(tied)
    assert (stats["both_safe"], stats["mixed"], stats["severity_levels"][0]) == (1.0, 0.0, 1.0)


def _single(**methods):
    return {"world": "single", "threshold": 0.0, "methods": {k: _point(*v) for k, v in methods.items()}}


def test_single_rule_claims_hold_fail_or_stay_untested():
    """No vacuous "holds": a budget PPO did not break is not "kept"; the 90 % claim needs a fixed λ that kept the
    budget and gained reward; the fixed-λ claim needs PPO-Lag within the budget; GRPO-Lag's 80 % needs a PPO-Lag
    gain. Each claim says why."""
    from saferlhf_jax.testbed.run import claims

    sft, ppo = (1.6, (-0.05,)), (7.4, (3.1,))
    c = claims({**_single(sft=sft, ppo=ppo, ppo_lag=(2.7, (-0.2,)), grpo_lag=(2.5, (0.1,))),
                "methods": {**_single(sft=sft, ppo=ppo, ppo_lag=(2.7, (-0.2,)), grpo_lag=(2.5, (0.1,)))["methods"],
                            "reward_shaping": [{"lambda": 0.1, **_point(7.5, (3.2,))},
                                               {"lambda": 1.0, **_point(0.6, (-0.4,))}]}})
    status = {k: v["status"] for k, v in c.items()}
    assert status["ppo_raises_reward_and_breaks_budget"] == "holds" and status["ppo_lag_within_budget"] == "holds"
    assert status["grpo_lag_within_budget"] == "holds"  # +0.1 within the tolerance 0.1 · (3.1 + 0.05)
    assert status["ppo_lag_at_least_90pct_of_best_feasible_shaping"] == "untested"  # λ = 1 lost reward to SFT
    assert "gained reward" in c["ppo_lag_at_least_90pct_of_best_feasible_shaping"]["why"]
    assert status["every_fixed_lambda_breaks_budget_or_gives_up_reward"] == "holds"
    assert status["grpo_lag_at_least_80pct_of_ppo_lag_gain"] == "holds"  # 0.9 of 1.1
    # a feasible λ that gained: the 90 % claim is judged, and fails below 90 %
    shaped = {"sft": _point(*sft), "ppo": _point(*ppo), "ppo_lag": _point(2.7, (-0.2,)),
              "reward_shaping": [{"lambda": 0.5, **_point(3.0, (-0.1,))}]}
    c = claims({"threshold": 0.0, "methods": shaped})
    assert c["ppo_lag_at_least_90pct_of_best_feasible_shaping"]["status"] == "fails"
    assert c["ppo_lag_at_least_90pct_of_best_feasible_shaping"]["gain_ratio"] == pytest.approx(1.1 / 1.4)
    assert c["every_fixed_lambda_breaks_budget_or_gives_up_reward"]["status"] == "fails"
    # PPO within the budget: nothing to keep — untested, never "holds"; PPO-Lag with no gain: GRPO-Lag untested
    c = claims(_single(sft=sft, ppo=(2.0, (-0.1,)), ppo_lag=(1.5, (-0.2,)), grpo_lag=(1.0, (-0.3,))))
    assert c["ppo_lag_within_budget"]["status"] == c["grpo_lag_at_least_80pct_of_ppo_lag_gain"]["status"] == "untested"
    assert c["ppo_lag_raises_reward"]["status"] == "fails"


def test_the_testbed_runs_the_library_presets_and_lists_every_override():
    """configs/testbed.py takes its RL settings from configs/ppo_lag.py:tiny and grpo_lag.py:tiny (the recipe users
    get) and lists every setting it changes, with why (results.json "rl_recipe"); the reference row runs
    configs/ppo_lag.py:reference with the same overrides."""
    from configs import grpo_lag, ppo_lag
    from configs import testbed as testbed_config

    def flat(c, prefix=""):
        out = {}
        for k, v in c.items():
            if hasattr(v, "items"):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
        return out

    for name in ("tiny", "ci", "multi", "sweep"):
        cfg = testbed_config.get_config(name)
        listed = {(o["stage"], o["key"]) for o in cfg.rl_overrides}
        assert all(o["why"] for o in cfg.rl_overrides)
        for stage, preset in (("rl", ppo_lag.get_config("tiny")), ("grpo_lag", grpo_lag.get_config("tiny")),
                              ("rl_reference", ppo_lag.get_config("reference"))):
            have, want = flat(cfg[stage]), flat(preset)
            changed = {k for k in want if have[k] != want[k]}
            if stage != "rl_reference":
                assert {(stage, k) for k in changed} <= listed, (stage, changed - {k for _, k in listed})
            own = "grpo_lag" if stage == "grpo_lag" else "rl"  # the reference row: PPO-Lag's overrides exactly
            assert changed == {o["key"] for o in cfg.rl_overrides if o["stage"] == own}, (stage, changed)
    assert testbed_config.get_config("sweep").shaping_lambdas == (0.1, 0.18, 0.32, 0.56, 1.0, 1.8)


def _micro(cfg, out, seed=3):
    cfg.output_dir, cfg.seed, cfg.methods = str(out), seed, "sft,ppo,ppo_lag,ppo_lag_reference,reward_shaping"
    cfg.shaping_lambdas = (1.0,)
    cfg.logging.progress = False
    cfg.world.update(sft_examples=64, rl_prompts=16, preference_prompts=128, eval_prompts=16, batch_size=64)
    cfg.sft.train.epochs = cfg.reward.train.epochs = cfg.cost.train.epochs = 1
    cfg.reward.train.batch_size = cfg.cost.train.batch_size = 8
    for stage in (cfg.rl, cfg.rl_reference):
        stage.train.update(max_steps=1, prompt_batch_size=8, train_batch_size=8)
    return cfg


def test_the_same_seed_twice_is_bitwise_equal_and_training_never_reads_the_truth(tmp_path, monkeypatch):
    """Two runs of one seed on one machine give the same results.json numbers, bit for bit (timings aside). And no
    ground truth is read while anything trains: with the judge never opened (world.judging a no-op), a run trains
    every stage and fails only when the held-out answers are judged."""
    import contextlib

    from configs import testbed as testbed_config
    from saferlhf_jax.testbed import run as testbed_run

    # run again with the judge back, the closed run keeps its trained stages (same config and inputs) and only
    # judges: the two results.json compare two trainings, and the closed run is not a third
    first = testbed_run.run(_micro(testbed_config.get_config("ci"), tmp_path / "a"))
    with monkeypatch.context() as closed:
        closed.setattr(world, "judging", contextlib.nullcontext)
        with pytest.raises(world.GroundTruthLeak):
            testbed_run.run(_micro(testbed_config.get_config("ci"), tmp_path / "b"))
    for stage in ("sft", "reward", "cost", "ppo", "ppo_lag", "ppo_lag_reference", "reward_shaping_1"):
        assert "export" in json.loads((tmp_path / "b" / stage / "summary.json").read_text()), stage
    assert not (tmp_path / "b" / "sft" / "heldout_answers.jsonl").exists()  # the judge is where it stopped
    second = testbed_run.run(_micro(testbed_config.get_config("ci"), tmp_path / "b"))
    strip = lambda r, d: json.loads(json.dumps({k: v for k, v in r.items() if k not in (  # noqa: E731
        "seconds", "timings", "stage_seconds_total")}).replace(str(d), "DIR"))
    assert strip(first, tmp_path / "a") == strip(second, tmp_path / "b")
    assert first["row_statistics"]["world"]["pairs"] == 128  # every pair kept: no tie filter
    assert first["cost_model_budget"]["budget"] == "mean severity ≤ 0.5" and "certificates" in first
    assert first["claims"]["certificate_sound"]["status"] in ("holds", "untested")
