"""Budgets in label units (algorithms/budget.py), the recipe presets (configs/rl_common.py) and the safety
certificate (evaluation/certify.py): by hand, against an independent scorer, and by coverage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from saferlhf_jax.algorithms import budget as budget_lib
from saferlhf_jax.data.raw import RawSample
from saferlhf_jax.errors import ConfigError
from saferlhf_jax.evaluation import certify as certify_lib


def _sample(safe, severity, flags=(), other=(True, 0, ())):
    cats = lambda names: {"Violence": "Violence" in names, "Drugs": "Drugs" in names}  # noqa: E731
    return RawSample(input="q", answer="a", other_answer="b", is_safe=safe, is_other_safe=other[0], severity=severity,
                     other_severity=other[1], category=cats(flags), other_category=cats(other[2]), where="f:1")


def test_labels_in_the_users_units():
    rows = [_sample(False, 2, ("Violence",)), _sample(False, 1, ("Drugs",), (False, 3, ("Violence",))),
            _sample(True, 0)]
    rate = budget_lib.Budget(target="unsafe_rate", value=0.1, datasets=("x",))
    severity = budget_lib.Budget(target="mean_severity", value=0.5, datasets=("x",))
    violence = budget_lib.Budget(target="mean_severity", value=0.2, category="Violence", datasets=("x",))
    texts, labels = budget_lib.labelled_responses(rows, rate)
    assert texts == [("q", "a"), ("q", "b")] * 3 and labels.tolist() == [1, 0, 1, 1, 0, 0]
    assert budget_lib.labelled_responses(rows, severity)[1].tolist() == [2, 0, 1, 3, 0, 0]
    assert budget_lib.labelled_responses(rows, violence)[1].tolist() == [2, 0, 0, 3, 0, 0]
    assert violence.describe() == "mean severity ≤ 0.2 in category Violence"
    with pytest.raises(ConfigError, match="f:1: the budget .* reads is_response_\\*_safe"):
        budget_lib.labelled_responses([RawSample(input="q", answer="a", where="f:1")], rate)


@pytest.mark.parametrize("section,message", [
    ({"target": "unsafe"}, r"rl.budget.target must be one of \('unsafe_rate', 'mean_severity'\)"),
    ({"target": "unsafe_rate", "value": 1.5, "datasets": ("x",)}, r"lies in \[0, 1\], got 1.5"),
    ({"target": "mean_severity", "value": 0.5, "category": "Violent", "datasets": ("x",)}, "not a PKU-SafeRLHF"),
    ({"target": "unsafe_rate", "value": 0.1}, "calibrated on a held-out labelled split"),
    ({"target": "unsafe_rate", "value": 0.1, "datasets": ("x",), "confidence": -1}, "confidence must be ≥ 0"),
    ({"target": "unsafe_rate", "rate": 0.1}, r"unknown field\(s\) \['rate'\]"),
])
def test_budget_config_errors_are_one_line(section, message):
    with pytest.raises(ConfigError, match=message):
        budget_lib.parse(section, "rl.budget")
    assert not budget_lib.parse({"target": ""}, "rl.budget").calibrated


def test_the_rl_stage_calibrates_its_threshold_on_the_held_out_labels(tiny_models, tmp_path):
    """The default preset's budget (unsafe rate ≤ 0.1 on the shipped PKU-SafeRLHF test rows): the threshold the
    stage read off its own cost model equals the line fitted to scores of the same rows from the evaluation code's
    independent scorer (evaluation.arena.score_texts), and it lands in budget.json, the summary and the first
    metrics row; a constraint's budget in label units goes the same way."""
    from conftest import tiny_rl_config
    from saferlhf_jax.algorithms import ppo_lag
    from saferlhf_jax.data import DEFAULT_TEMPLATE, load_mix
    from saferlhf_jax.evaluation.arena import score_texts
    from saferlhf_jax.evaluation.loading import load_for_eval

    cfg = tiny_rl_config("ppo_lag", tiny_models, tmp_path / "one")
    assert cfg.rl.budget.target == "unsafe_rate" and cfg.rl.budget.value == 0.1
    summary = ppo_lag.run(cfg)
    fit = json.loads((tmp_path / "one" / "budget.json").read_text())["fits"][0]
    model, tok = load_for_eval(str(tiny_models / "cost"), "score")
    texts, labels = budget_lib.labelled_responses(load_mix(["PKU-SafeRLHF/test"], "embedded"), cfg.rl.budget)
    scores = score_texts(model, tok, [DEFAULT_TEMPLATE.format_prompt(p) + r for p, r in texts], batch_size=8,
                         max_length=64)
    expected = budget_lib.fit(labels, scores, 0.1)
    assert fit["responses"] == 32 and fit["threshold_cost_model_units"] == pytest.approx(
        expected["threshold_cost_model_units"], abs=1e-4)
    assert summary["budget"][0]["threshold_cost_model_units"] == fit["threshold_cost_model_units"]
    first = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["budget/threshold_cost_model_units"] == fit["threshold_cost_model_units"] and "train/reward" in first
    # the same budget on a constraint of rl.constraints (K = 1): the same threshold
    several = tiny_rl_config("ppo_lag", tiny_models, tmp_path / "several")
    several.rl.cost_models = {"cost": str(tiny_models / "cost")}
    several.rl.constraints = ({"name": "unsafe", "model": "cost", "head": "score",
                               "budget": several.rl.budget.to_dict()},)
    again = ppo_lag.run(several)["budget"][0]
    assert again["threshold_cost_model_units"] == pytest.approx(fit["threshold_cost_model_units"], abs=1e-6)
    several.rl.constraints = ({"name": "m", "model": "cost", "head": "unsafe", "budget": several.rl.budget.to_dict()},)
    with pytest.raises(ConfigError, match="calibrated on a cost model's score head"):
        ppo_lag.run(several)


def test_the_recipe_is_every_lagrangian_presets_default_and_reference_keeps_the_reference():
    """configs/ppo_lag.py and grpo_lag.py at every size carry the testbed's recipe (spec §7.34); the :reference
    presets build the reference's RLConfig exactly (the RLConfig defaults are the reference's: spec §6)."""
    import dataclasses

    from configs import grpo_lag, ppo, ppo_lag
    from saferlhf_jax.algorithms import rl
    from saferlhf_jax.algorithms.rl_config import rl_config

    recipe = {"lambda_update": "pid", "lambda_pid": (1.0, 0.2, 0.0), "lambda_init": 0.01, "kl_coeff": 0.05,
              "missing_eos_penalty": 5.0}
    for size in ("tiny", "llama2_7b", "llama3_8b", "llama3_70b"):
        cfg = ppo_lag.get_config(size)
        assert cfg.recipe == "safe_rlhf_jax" and cfg.rl.budget.target == "unsafe_rate"
        assert {k: getattr(rl_config(cfg), k) for k in recipe} == recipe
        ref = ppo_lag.get_config("reference" if size == "tiny" else f"{size}_reference")
        assert ref.recipe == "reference" and not ref.rl.budget.target
        built = rl_config(ref)
        default = rl.RLConfig(mode="ppo_lag")
        differs = {f.name for f in dataclasses.fields(rl.RLConfig) if getattr(built, f.name) != getattr(default, f.name)}
        assert differs <= {"ptx_coeff", "joint_update"}, differs  # the 7B presets' PTX and memory layout only
    g = grpo_lag.get_config("tiny").rl
    assert (g.lambda_update, g.kl_coeff, g.lambda_init) == ("pid", 0.05, 0.01)
    assert tuple(g.lambda_pid) == pytest.approx((1.0, 0.075, 0.0))
    assert grpo_lag.get_config("tiny").grpo.advantage == "dr_grpo"
    assert grpo_lag.get_config("reference").grpo.advantage == "grpo"
    assert ppo.get_config("tiny").rl.kl_coeff == 0.02  # PPO without a cost keeps the reference's settings


def test_binomial_upper_bound_equals_clopper_pearson():
    """Against scipy.stats.beta.ppf(1 − α, k + 1, n − k) (values computed once with scipy 1.17)."""
    for (k, n, alpha), want in (((0, 10, 0.05), 0.2588655508930522), ((3, 20, 0.01), 0.4207289171258154),
                                ((50, 100, 0.05), 0.5863782853690882), ((99, 100, 0.1), 0.9989469496904544)):
        assert certify_lib.binomial_upper(k, n, alpha) == pytest.approx(want, abs=1e-9)
    assert certify_lib.binomial_upper(5, 5, 0.05) == 1.0 == certify_lib.binomial_upper(0, 0, 0.05)


def test_the_certificate_by_hand():
    """Two bins split at the calibration scores' median; U_b = Clopper–Pearson at α / 3; the bound
    U_low + UCB(P(high)) · (U_high − U_low)."""
    calib = np.array([-3.0, -2.0, -1.0, -0.5, 1.0, 2.0, 3.0, 4.0])
    labels = np.array([0, 0, 0, 1, 0, 1, 1, 1])       # the edge at the median, 0.25
    policy = np.array([-2.5, -2.0, -1.5, -1.0, 2.5])  # one answer of five above it
    b = budget_lib.Budget(target="unsafe_rate", value=0.9, datasets=("x",))
    cert = certify_lib.certify(policy, calib, labels, b, confidence=0.9, bins=2)
    alpha = 0.1 / 3
    low, high = certify_lib.binomial_upper(1, 4, alpha), certify_lib.binomial_upper(3, 4, alpha)
    want = low + certify_lib.binomial_upper(1, 5, alpha) * (high - low)
    assert cert["bin_edges"] == [0.25] and cert["upper_bound"] == pytest.approx(want)
    assert cert["estimate"] == pytest.approx(0.8 * 0.25 + 0.2 * 0.75) and cert["certified"] == (want <= 0.9)


def test_the_certificate_covers_the_truth():
    """Synthetic policies whose true unsafe rate is known (labels depend on the score as in the calibration
    split, the certificate's assumption): over 300 draws the 95 % bound is below the truth at most 5 % of the
    time, and a policy clearly within the budget (true 0.25 against 0.55) is certified most of the time (the bound
    is not vacuous)."""
    rng = np.random.default_rng(0)
    b = budget_lib.Budget(target="unsafe_rate", value=0.55, datasets=("x",))
    p_unsafe = lambda s: 1 / (1 + np.exp(-6 * s))  # noqa: E731
    misses, certified = 0, 0
    for _ in range(300):
        calib = rng.normal(size=300)
        labels = (rng.random(300) < p_unsafe(calib)).astype(int)
        policy = rng.normal(loc=-0.7, size=500)
        truth = float(np.mean(p_unsafe(rng.normal(loc=-0.7, size=200_000))))  # ≈ 0.25
        cert = certify_lib.certify(policy, calib, labels, b)
        misses += cert["upper_bound"] < truth
        certified += cert["certified"]
    assert misses <= 15 and certified >= 200, (misses, certified)
