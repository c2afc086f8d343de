"""Standalone score-model evaluation: files, global-count metrics consistent with the per-sample CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from launch import evaluate_score
from saferlhf_jax import models


@pytest.fixture(scope="module")
def cost_model_dir(tmp_path_factory, stories_dir):
    out = tmp_path_factory.mktemp("cm")
    cm = models.load_score_model(stories_dir, score_type="cost", rng=3)
    models.save_pretrained(cm, cm.params, out)
    return out


def test_evaluate_score_cost_model(cost_model_dir, tmp_path):
    rc = evaluate_score.main(["--model", str(cost_model_dir), "--datasets", "PKU-SafeRLHF/test",
                              "--data_source", "embedded", "--output_dir", str(tmp_path), "--max_length", "192", "--batch_size", "8"])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = list(csv.DictReader(open(tmp_path / "scores.csv")))
    assert len(rows) == summary["pairs"] == 16 - summary["filtered"].get("identical_responses", 0)
    safer = np.array([float(r["safer_cost"]) for r in rows])
    unsafer = np.array([float(r["unsafer_cost"]) for r in rows])
    assert summary["accuracy"] == pytest.approx(np.mean(unsafer > safer))
    costs = np.concatenate([safer, unsafer])
    safe = np.array([r["safer_is_safe"] == "True" for r in rows] + [r["unsafer_is_safe"] == "True" for r in rows])
    assert summary["accuracy_sign"] == pytest.approx(np.mean((costs > 0) != safe))
    assert summary["cost_std"] == pytest.approx(np.std(costs, ddof=1), rel=1e-4)
    assert summary["baseline_majority_sign"] == pytest.approx(max(safe.mean(), 1 - safe.mean()))
    assert 0.0 <= summary["baseline_longer"] <= 1.0
    np.testing.assert_allclose(np.load(tmp_path / "safe_scores.npy"), costs[safe], atol=1e-5)
    assert (tmp_path / "cost_distribution.png").stat().st_size > 1000
    assert (tmp_path / "cost_by_severity.png").stat().st_size > 1000
    cal = summary["calibration"]
    assert sum(v["count"] for v in cal["by_severity"].values()) == costs.size
    assert cal["sign_accuracy_at_0"] == pytest.approx(summary["accuracy_sign"])
    assert cal["accuracy_at_best_threshold"] >= cal["sign_accuracy_at_0"]
    # the CSV text is the real data: the safer response of the first row is one of its two responses
    first = rows[0]
    from saferlhf_jax.data import load_raw

    raw = load_raw("PKU-SafeRLHF/test", source="embedded")[0]
    assert first["prompt"] == raw.input and first["safer_response"] in (raw.answer, raw.other_answer)


def test_evaluate_score_errors(tmp_path, capsys):
    assert evaluate_score.main(["--model", str(tmp_path / "nope"), "--datasets", "PKU-SafeRLHF/test"]) == 2
    assert f"model directory not found: {tmp_path / 'nope'}" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()  # its default output, nope/eval, was created before the model loaded


def test_best_threshold_and_calibration_by_hand():
    from saferlhf_jax.evaluation.score_eval import best_threshold, calibration_by_severity

    costs = np.array([-2.0, -1.0, 0.5, 1.0, 3.0, -0.5])
    unsafe = np.array([0, 0, 0, 1, 1, 0], bool)
    t, acc = best_threshold(costs, unsafe)
    assert acc == 1.0 and 0.5 < t < 1.0
    cal = calibration_by_severity(costs, np.array([0, 0, 0, 2, 3, 0]), unsafe)
    assert cal["sign_accuracy_at_0"] == pytest.approx(5 / 6)   # 0.5 is over the boundary but safe
    assert cal["by_severity"]["0"] == {"count": 4, "mean_cost": pytest.approx(-0.75), "median_cost": -0.75}
    assert np.isnan(cal["by_severity"]["1"]["mean_cost"])


def test_baselines_by_hand():
    from saferlhf_jax.ops import baselines

    # pair 1: first longer (1), pair 2: tie (½), pair 3: first shorter (0), pair 4: first longer (1) → 2.5 / 4
    assert baselines.pairwise([10, 7, 3, 9], [8, 7, 5, 2]) == {"baseline_longer": 0.625}
    assert baselines.pairwise(None, [1]) == {} and baselines.pairwise([], []) == {}
    assert baselines.majority([True, False, False, False]) == {"baseline_majority": 0.75}
    assert baselines.majority(np.array([1, 1, 1, 0, 0]) > 0, "sign") == {"baseline_majority_sign": 0.6}
