"""The benchmark entry points run at tiny sizes and report ratios measured in the same process."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")


def test_generation_benchmark_reports_a_ratio(tmp_path):
    from benchmarks import generate

    out = tmp_path / "gen.json"
    assert generate.main(["--batch", "2", "--prompt_len", "8", "--new_tokens", "8", "--repeats", "1", "--hidden", "64",
                          "--layers", "2", "--vocab", "128", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["ours"] > 0 and r["baseline"] > 0 and r["ratio"] == pytest.approx(r["ours"] / r["baseline"], rel=1e-6)
    assert r["token_agreement"] == 1.0  # same weights, greedy, fp32: the same tokens


def test_benchmark_suite_runs_at_tiny_size(tmp_path, capsys):
    from benchmarks import run_all

    out = tmp_path / "all.json"
    assert run_all.main(["--size", "tiny", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["train_step_vs_transformers"]["ratio"] > 0 and r["generate_vs_hf"]["ratio"] > 0
    assert 0 < r["train_step_fraction_of_matmul_peak"]["ratio"] < 5
    assert "benchmark" in capsys.readouterr().out
