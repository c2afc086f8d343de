"""The benchmark entry points run at tiny sizes and report ratios measured in the same process."""

from __future__ import annotations

import json
import sys

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
    assert r["layouts_agree"] and set(r["ratio_by_layout"]) == {"fused_out_in", "fused", "none"}
    assert r["ratio"] == r["ratio_by_layout"]["fused_out_in"] and r["fastest_layout"] in r["ratio_by_layout"]


def test_generation_benchmark_on_two_cpu_devices():
    """--cpu_devices: the batch split over a 2-device data axis gives HF's greedy tokens in every layout."""
    from benchmarks import generate

    r = generate.run(batch=4, prompt_len=8, new_tokens=8, repeats=1, hidden=64, layers=2, vocab=128, cpu_devices=2)
    assert r["cpu_devices"] == 2 and r["token_agreement"] == 1.0 and r["layouts_agree"]
    with pytest.raises(ValueError, match="batch divisible"):
        generate.run(batch=3, prompt_len=8, new_tokens=8, repeats=1, hidden=64, layers=2, vocab=128, cpu_devices=2)


def test_benchmark_suite_runs_at_tiny_size(tmp_path, capsys):
    from benchmarks import run_all

    out = tmp_path / "all.json"
    assert run_all.main(["--size", "tiny", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["train_step_vs_transformers"]["ratio"] > 0 and r["generate_vs_hf"]["ratio"] > 0
    assert 0 < r["train_step_fraction_of_matmul_peak"]["ratio"] < 5
    assert r["decode_step_matmul_share"]["matmul_only_step_ms"] > 0  # (the share itself is noise at this size)
    assert "ratio" in r["decode_matmul_only_vs_hf"]
    assert "benchmark" in capsys.readouterr().out


def test_tunix_rule_reward_matches_the_harness_formula():
    """Our jitted token-space reward equals the peer harness's `count('a') / max(len, 1)` on decoded text."""
    import numpy as np

    from benchmarks.ppo_step import byte_fraction_reward

    rng = np.random.default_rng(0)
    prompt_len = 4
    # special ids (decode to nothing) and ASCII bytes (one character each)
    pool = np.concatenate([[0, 1, 2], np.arange(3, 131), np.arange(259, 264), np.full(40, ord("a") + 3)])
    seq = rng.choice(pool, (16, prompt_len + 12)).astype(np.int32)
    mask = np.ones_like(seq, bool)
    mask[3, prompt_len + 5:] = False  # a finished row
    mask[4, prompt_len:] = False  # an empty response
    got = np.asarray(byte_fraction_reward(prompt_len)(None, seq, mask))

    def harness(ids):  # ByteTokenizer.decode + reward_fn of ../shared/peers/tunix_ppo_tiny.py
        text = bytes(i - 3 for i in ids if 3 <= i < 259).decode("utf-8", "replace")
        return text.count("a") / max(len(text), 1)

    want = [harness([int(t) for t, m in zip(row[prompt_len:], keep[prompt_len:]) if m]) for row, keep in zip(seq, mask)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.dtype == np.float32 and got[4] == 0.0 and got.max() > 0.1


def test_vs_tunix_needs_a_tunix_python(capsys, monkeypatch):
    from benchmarks import vs_tunix

    monkeypatch.delenv("TUNIX_PYTHON", raising=False)
    assert vs_tunix.main(["--size", "tiny"]) == 2
    assert "google-tunix" in capsys.readouterr().err


def test_planner_vs_device_runs_at_tiny_size(tmp_path):
    """The prediction and the run share one program; on CPU there is no peak to read, so only the prediction."""
    from benchmarks import planner_vs_device

    out = tmp_path / "pvd.json"
    assert planner_vs_device.main(["--size", "tiny", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["predicted_total_bytes"] > r["predicted"]["argument_bytes_per_device"] > 0
    assert r["parameters_per_model"] > 100_000 and r["step_seconds"] > 0
    assert r["measured_peak_bytes"] is None or r["measured_over_predicted"] > 0


@pytest.mark.slow  # a benchmark script at tiny size (CI budget); `pytest -m slow` runs it
def test_gpu_suite_runs_at_tiny_size(tmp_path):
    """The prepared accelerator script end to end on CPU: every row present and internally consistent."""
    from benchmarks import gpu_suite

    out = tmp_path / "suite.json"
    assert gpu_suite.main(["--size", "tiny", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["copy_bandwidth_bytes_per_sec"] > 0 and r["matmul_peak_flops_per_sec"] > 0
    for b, row in r["decode"].items():
        assert row["batch"] == int(b) and row["decode_tokens_per_sec"] > 0
        assert row["roofline_seconds"] > 0 and row["fraction_of_hbm_roofline"] > 0
        assert "skipped" in row["vs_transformers"]  # CPU: the transformers comparison is GPU-only
    assert 0 < r["train_step"]["mfu"] < 5
    ppo = r["ppo_lag_iteration"]
    assert min(ppo["generation_seconds"], ppo["update_seconds"]) > 0 and ppo["scoring_seconds"] >= 0


def test_decode_roofline_counts_weights_and_the_live_cache():
    """Worked example: 2 steps after a 3-token prompt read the weights twice and 3 + 4 cache slots per row."""
    import jax.numpy as jnp

    from benchmarks import gpu_suite

    cfg = gpu_suite.model_config(dict(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1))
    params = {"w": jnp.zeros((10,), jnp.bfloat16)}  # 20 bytes
    per_slot = 2 * 2 * 1 * 4 * 2  # k and v × layers × kv heads × head_dim × bf16 bytes
    assert gpu_suite.decode_roofline_bytes(cfg, params, batch=5, prompt_len=3, new_tokens=2) == 2 * 20 + 5 * per_slot * 7


def test_testbed_seed_table_counts_the_claims_each_seed_reports():
    from benchmarks import testbed_seeds

    point = lambda r, c: {"gt_reward": r, "gt_cost": c}  # noqa: E731
    state = lambda s: {"status": s, "why": "…"}  # noqa: E731
    run = {"seed": 4, "threshold": 0.0, "rm_accuracy_heldout": 0.9, "cm_sign_accuracy_heldout": 0.85,
           "stage_seconds_total": 390.0,
           "methods": {"sft": point(1.5, -0.1), "ppo": point(6.0, 2.2), "ppo_lag": point(4.0, 0.05),
                       "reward_shaping": [{"lambda": 0.1, **point(6.1, 2.1)}, {"lambda": 1.0, **point(2.5, -0.4)}]},
           "claims": {"ppo_raises_reward_and_breaks_budget": state("holds"), "ppo_lag_within_budget": state("holds"),
                      "ppo_lag_raises_reward": state("holds"),
                      "every_fixed_lambda_breaks_budget_or_gives_up_reward": state("fails"),
                      "ppo_lag_at_least_90pct_of_best_feasible_shaping": state("untested")},
           "certificates": {"sft": {"certified": False, "truly_within_budget": True, "true_mean_cost": -0.1},
                            "shaping": {"certified": True, "truly_within_budget": True, "true_mean_cost": -0.4}}}
    lines = testbed_seeds.table([run]).splitlines()
    assert lines[0].split(" | ")[4:7] == ["ppo", "ppo_lag", "shaping_0.1"]
    assert lines[2] == ("| 4 | 0.90 | 0.85 | 1.50 / -0.10 | 6.00 / +2.20 | **4.00 / +0.05** | 6.10 / +2.10 | "
                        "2.50 / -0.40 | 3 / 1 / 1 | 6.5 min |")
    other = json.loads(json.dumps(run))
    other.update(seed=5, methods={**run["methods"], "ppo_lag": point(3.0, 0.25)})
    other["claims"]["ppo_lag_within_budget"] = state("fails")
    summary = testbed_seeds.spread([run, other])
    assert summary["claims"]["ppo_lag_within_budget"] == {"holds": 1, "fails": 1, "untested": 0, "runs": 2,
                                                          "failed_seeds": [5], "untested_seeds": []}
    assert summary["cells"]["ppo_lag"]["gt_reward"] == {"median": 3.5, "min": 3.0, "max": 4.0}
    assert summary["certificate"]["certified"] == 2 == summary["certificate"]["certified_truly_within_budget"]
    assert summary["certificate"]["clearly_within_budget"] == 2  # the shaping policy, C* −0.4, in both runs
    assert "| ppo_lag_within_budget | 1 of 2 | 1 | 0 | 5 |" in testbed_seeds.claims_table(summary)
    assert "| ppo_lag | 3.50 [3.00, 4.00] | +0.15 [+0.05, +0.25] |" in testbed_seeds.cells_table(summary)


def test_spread_between_machines_is_the_largest_difference_of_each_cell():
    from benchmarks import spread

    point = lambda r, c: {"gt_reward": r, "gt_cost": c}  # noqa: E731
    runs = {"a": {"methods": {"sft": point(1.5, -0.1), "ppo_lag": point(4.0, -0.4),
                              "reward_shaping": [{"lambda": 0.1, **point(4.3, -0.1)}]}},
            "b": {"methods": {"sft": point(1.5, -0.1), "ppo_lag": point(3.7, -0.3),
                              "reward_shaping": [{"lambda": 0.1, **point(4.4, 0.0)}]}}}
    d = spread.differences(runs)
    assert d["sft"] == {"gt_reward": 0.0, "gt_cost": 0.0}
    assert d["ppo_lag"] == pytest.approx({"gt_reward": 0.3, "gt_cost": 0.1})
    assert d["shaping_0.1"] == pytest.approx({"gt_reward": 0.1, "gt_cost": 0.1})


def test_testbed_seed_table_of_the_two_rule_preset():
    from benchmarks import testbed_seeds

    point = lambda r, *c: {"gt_reward": r, "gt_cost": sum(c), "gt_costs": list(c)}  # noqa: E731
    state = lambda s: {"status": s, "why": "…"}  # noqa: E731
    run = {"seed": 2, "rm_accuracy_heldout": 0.97, "stage_seconds_total": 600.0,
           "constraints": [{"name": "violence"}, {"name": "pushing"}],
           "methods": {"sft": point(1.4, -0.1, -0.9), "ppo": point(7.0, 3.2, -1.0),
                       "ppo_lag": point(3.9, 0.03, 0.03), "ppo_lag_summed": point(4.0, 0.9, -0.8)},
           "claims": {"ppo_breaks_some_rule_budget": state("holds"), "ppo_lag_keeps_every_rule_budget": state("holds"),
                      "ppo_lag_raises_reward": state("holds"),
                      "ppo_lag_summed_breaks_some_rule_budget": state("fails"),
                      "two_constraints_keep_every_budget_where_summed_does_not": state("untested")}}
    lines = testbed_seeds.table([run]).splitlines()
    assert lines[0].split(" | ")[2] == "SFT (R* / C* violence / C* pushing)"
    assert lines[2] == ("| 2 | 0.97 | 1.40 / -0.10 / -0.90 | 7.00 / +3.20 / -1.00 | **3.90 / +0.03 / +0.03** | "
                        "4.00 / +0.90 / -0.80 | 3 / 1 / 1 | 10.0 min |")


def test_decode_breakdown_runs_at_tiny_size(tmp_path):
    """The CPU decode-step breakdown (sampler step, its matmuls alone in XLA and in PyTorch, transformers' step, one
    matmul in XLA and PyTorch) at tiny size:
    it runs and reports positive times; speed itself lives in the benchmark's JSON."""
    from benchmarks import decode_breakdown

    out = tmp_path / "bd.json"
    assert decode_breakdown.main(["--batch", "2", "--prompt_len", "8", "--new_tokens", "4", "--repeats", "1",
                                  "--hidden", "64", "--layers", "2", "--vocab", "256", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    # (a step is a difference of two timings: at this size it may come out ≤ 0, so only its presence is checked)
    assert r["tokens_per_second"] > 0 and r["matmul_only_step_ms"] > 0 and "decode_step_ms" in r
    assert r["torch_matmul_only_step_ms"] > 0 and {"hf_step_ms", "step_vs_hf", "matmul_only_vs_hf"} <= set(r)
    assert r["attention_layer_ms"] > 0 and r["attention_cache_gbytes_per_s"] > 0
    assert r["command"]  # the command that produced it (how it reads depends on the launcher)
    assert set(r["head_matmul_gflops"]) == {"xla", "torch_1_threads", "torch_2_threads"}


def test_peak_rss_sees_a_child_process_allocation(tmp_path):
    """The sampler follows the command's child processes and catches a short peak: a 600 MB buffer held 1 s by a
    grandchild (the shell's python) shows in the peak, and the command's exit status comes back."""
    from benchmarks import peak_rss

    out = tmp_path / "rss.json"
    script = "import time; b = bytearray(600_000_000); b[::4096] = b'x' * len(b[::4096]); time.sleep(1)"
    rc = peak_rss.main(["--output", str(out), "--interval", "0.05", "--", "sh", "-c",
                        f"{sys.executable} -c \"{script}\"; exit 3"])
    result = json.loads(out.read_text())
    assert rc == 1 and result["returncode"] == 3
    assert 0.6 <= result["peak_gb"] < 1.5 and 0.6 <= result["peak_anon_gb"] <= result["peak_gb"]
    assert result["measured"].startswith("sh -c")
    assert peak_rss.main(["--", str(tmp_path / "no-such-program")]) == 2  # one line, no traceback


def test_rerun_of_one_method_keeps_the_other_stages(tmp_path, monkeypatch):
    """`testbed_seeds --rerun ppo_lag`: the old stage and results are kept aside, only SFT and the method run again,
    the method's new numbers replace the old in the full results (the other methods' untouched), and a rerun killed
    half-way can be started again."""
    from benchmarks import testbed_seeds
    from saferlhf_jax.testbed import run as testbed_run

    out = tmp_path / "single_7"
    (out / "ppo_lag").mkdir(parents=True)
    (out / "ppo_lag" / "old.txt").write_text("old")
    (out / "config.json").write_text("{}")
    point = lambda r, c: {"gt_reward": r, "gt_cost": c}  # noqa: E731
    old = {"world": "single", "seed": 7, "methods": {"sft": point(1.0, -0.1), "ppo": point(6.0, 2.0),
                                                     "ppo_lag": point(3.0, -0.4)}, "rl_recipe": {"old": 1}}
    (out / "results.json").write_text(json.dumps(old))
    calls = []

    def fake_run_seed(preset, seed, path, extra, env=None, refresh=False):
        calls.append(extra)
        assert not (path / "ppo_lag").exists() and not (path / "config.json").exists()
        (path / "ppo_lag").mkdir()
        return {"methods": {"sft": point(1.0, -0.1), "ppo_lag": point(3.5, -0.2)}, "rl_recipe": {"new": 1},
                "ppo_lag_lambda": "pid"}

    def fake_refresh(path):
        return json.loads((path / "results.json").read_text())

    monkeypatch.setattr(testbed_seeds, "run_seed", fake_run_seed)
    monkeypatch.setattr(testbed_run, "refresh", fake_refresh)
    r = testbed_seeds.rerun_method("ci", 7, out, "ppo_lag")
    assert calls == [["--config.methods=sft,ppo_lag"]]
    assert r["methods"]["ppo_lag"] == point(3.5, -0.2) and r["methods"]["ppo"] == point(6.0, 2.0)
    assert r["rl_recipe"] == {"new": 1} and r["rerun"] == "ppo_lag"
    assert (out / "ppo_lag_before" / "old.txt").read_text() == "old"
    assert json.loads((out / "results_before.json").read_text()) == old
    # again (as after a kill): the kept originals are not overwritten by the new stage
    testbed_seeds.rerun_method("ci", 7, out, "ppo_lag")
    assert (out / "ppo_lag_before" / "old.txt").is_file() and json.loads((out / "results_before.json").read_text()) == old
    with pytest.raises(SystemExit, match="not a finished single-rule run"):
        testbed_seeds.rerun_method("ci", 7, out, "grpo_lag")


def test_load_memory_benchmark_at_tiny_size(tmp_path):
    """The load benchmark end to end on a tiny random checkpoint: sharded files written, loaded onto 8 devices and
    restored from orbax onto another mesh, each in a fresh process, every shard compared with the file."""
    from benchmarks import load_memory

    out = tmp_path / "load.json"
    assert load_memory.main(["--size", "tiny", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert len(r["files"]) >= 2 and r["load"]["shards_equal_file"] and r["restore"]["shards_equal_file"]
    assert r["load"]["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1} and r["restore"]["mesh"]["tensor"] == 2
    assert r["load"]["peak_gb"] >= r["load"]["baseline_gb"] > 0


def test_fit_table_tries_the_levers_in_order():
    from benchmarks import fit_table

    names = [n for n, _ in fit_table.variants("configs/ppo_lag.py:llama2_7b", 16, 4, "tpu")]
    assert names[:3] == ["preset", "+ optimizer state in host memory", "+ LoRA r64 (actor and critics)"]
    assert names[-1] == "+ 4 sequences per device, LoRA r64"  # never below 4 per chip for a full model on TPU
    lora = fit_table.variants("configs/ppo_lag.py:llama3_70b", 4, 16, "gpu")
    assert [n for n, _ in lora] == ["preset", "+ 2 sequences per device", "+ 1 sequences per device"]
    assert "--config.train.train_batch_size=32" in lora[1][1] and "--config.mesh.fsdp=-1" in lora[1][1]
    assert sum("train_batch_size" in f for f in lora[1][1]) == 1
    assert round(fit_table.params_of(80), 1) == 70.6  # Llama-3-70B


def test_planner_cells_plan_and_run_the_same_config():
    """Every cell of the planner-vs-measured benchmark is a config the stage accepts; the null cells are the stage at
    its smallest shapes; the SmolLM2 cells of the pipeline's stages are the pipeline's own."""
    from benchmarks import planner_cells
    from configs import pipeline

    for size in ("null", "tiny", "smollm2"):
        for stage in planner_cells.STAGES:
            c = planner_cells.get_config(f"{size}_{stage}")
            assert (c.mesh.data, c.mesh.fsdp, c.mesh.tensor) == (1, 1, 1) and c.train.max_steps > 0
            assert c.get("stage", c.get("mode")) == stage.removesuffix("_lora")
            assert planner_cells.launcher(stage) == f"launch.{stage.removesuffix('_lora')}"
    assert planner_cells.get_config("null_sft").data.max_length == 96
    assert planner_cells.get_config("null_ppo").generation.max_length == 32
    p = pipeline.smollm2()
    for stage in ("reward", "cost", "moderation"):
        c = planner_cells.get_config(f"smollm2_{stage}")
        assert (c.data.template, c.data.max_length, c.train.batch_size) == (
            "chat", p[stage].data.max_length, p[stage].train.batch_size)
    lag = planner_cells.get_config("smollm2_ppo_lag_lora")
    assert lag.lora.rank == planner_cells.LORA_RANK and lag.generation.max_length == p.ppo_lag.generation.max_length
    grpo = planner_cells.get_config("smollm2_grpo_lag")  # G rollouts per prompt: as many rollouts per update
    assert grpo.train.train_batch_size * grpo.generation.num_return_sequences == p.ppo_lag.train.train_batch_size
    with pytest.raises(ValueError, match="cell must be"):
        planner_cells.get_config("huge_sft")


def test_planner_vs_measured_row():
    from benchmarks import planner_vs_measured

    plan = {"argument_bytes_per_device": 2e9, "temp_bytes_per_device": 1e9, "total_bytes_per_device": 3e9}
    row = planner_vs_measured.cell_row("smollm2_x", plan, {"peak_gb": 4.4, "peak_anon_gb": 4.0, "peaks_gb": [4.4],
                                                           "seconds": 9.0}, 1.0)
    assert row["predicted_peak_gb"] == 4.0 and row["measured_over_predicted"] == 1.1 and row["within_20pct"]
    assert row["plan"] == {"argument_gb": 2.0, "temp_gb": 1.0, "total_gb": 3.0}
    far = planner_vs_measured.cell_row("x", plan, {"peak_gb": 5.0, "peak_anon_gb": 5, "peaks_gb": [5.0],
                                                   "seconds": 1}, 1.0)
    assert not far["within_20pct"]


def test_real_model_benchmark_counts_the_matmul_parameters_and_the_copys_bytes(tmp_path):
    """benchmarks.real_model at tiny size: FLOPs from the model's own kernels (the head only where it is used: DPO),
    fractions against the peak and roofline measured in the same run, and a bf16 rollout copy of half the kernel
    bytes whose greedy tokens are compared with f32's."""
    import jax

    from benchmarks import real_model
    from benchmarks.common import tiny_llama_dir
    from saferlhf_jax.models import load_causal_lm

    path = tiny_llama_dir(hidden=64, layers=2, heads=4, kv_heads=2, vocab=128)
    model = load_causal_lm(path)
    kernels = sum(x.size for p, x in jax.tree_util.tree_leaves_with_path(model.params)
                  if getattr(p[-1], "key", None) == "kernel")
    head = model.params["model"]["embed_tokens"]["embedding"].size if "lm_head" not in model.params else 0
    assert real_model.matmul_params(model.config, with_head=True) == kernels + head
    assert real_model.matmul_params(model.config, with_head=False) == kernels - (0 if head else 64 * 128)
    out = tmp_path / "real.json"
    assert real_model.main(["--model", str(path), "--pairs", "2", "--length", "16", "--batch", "2", "--prompt_len",
                            "8", "--new_tokens", "4", "--repeats", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for kind in ("rm", "dpo"):
        step = r[f"{kind}_step"]
        assert step["tokens_per_step"] == 64
        assert step["fraction_of_matmul_peak"] == pytest.approx(step["gflops_per_second"] / r["matmul_peak_gflops"])
    f32, bf16 = r["decode_float32"], r["decode_bfloat16"]
    assert bf16["weight_bytes_per_step"] < 0.6 * f32["weight_bytes_per_step"]
    assert f32["fraction_of_f32_roofline"] == pytest.approx(f32["fraction_of_roofline"])
    assert 0 <= bf16["greedy_token_agreement_with_f32"] <= 1


def test_dpo_step_against_trl_trains_on_the_same_shapes(stories_dir):
    """benchmarks.dpo_step on stories260K (a model with its tokenizer): TRL's DPOTrainer gets 2·pairs sequences of
    exactly `length` tokens per step (checked inside), like ours; both times are positive."""
    pytest.importorskip("trl")
    from benchmarks import dpo_step

    r = dpo_step.run(str(stories_dir), pairs=2, length=24, steps=2)
    assert r["ours"] > 0 and r["baseline"] > 0 and r["ratio"] == pytest.approx(r["baseline"] / r["ours"])
