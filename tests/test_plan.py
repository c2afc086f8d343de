"""The memory planner compiles real steps on abstract parameters; its numbers match the analytic bytes."""

from __future__ import annotations

import json
import pathlib

import jax
import pytest

from launch import plan

STORIES = "saferlhf_jax/assets/stories260K"


@pytest.fixture(autouse=True)
def _eight_devices():
    if jax.device_count() < 8:
        pytest.skip("needs 8 simulated devices")


def test_plan_supervised_matches_analytic_bytes(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert plan.main(["plan", "--target", "cpu:8", "--output", str(out), "--device_memory_gib", "1",
                      "--config=configs/reward.py:tiny", "--config.mesh.fsdp=8"]) == 0
    p = json.loads(out.read_text())
    analytic = p["analytic_param_optimizer_bytes_per_device"]
    # arguments = parameters + optimizer state (+ a small token batch, itself split over the 8 devices)
    assert abs(p["argument_bytes_per_device"] - analytic) <= 0.1 * analytic
    assert p["total_bytes_per_device"] >= p["argument_bytes_per_device"] and p["mesh"]["fsdp"] == 8
    assert "fits in 1.0 GiB per device: yes" in capsys.readouterr().out


def tiny_ppo_lag_plan(out, *overrides) -> dict:
    """launch.plan of the tiny PPO-Lag step on cpu:8 (stories260K as all six models, 128 tokens)."""
    assert plan.main(["plan", "--target", "cpu:8", "--output", str(out), "--config=configs/ppo_lag.py:tiny",
                      "--config.mesh.fsdp=8", f"--config.actor_model_name_or_path={STORIES}",
                      f"--config.reward_model_name_or_path={STORIES}", f"--config.cost_model_name_or_path={STORIES}",
                      "--config.generation.max_length=128", "--config.data.max_prompt_length=64", *overrides]) == 0
    return json.loads(pathlib.Path(out).read_text())


@pytest.fixture(scope="module")
def full_plan(tmp_path_factory):
    """The full fine-tuning plan, shared by the tests below (one compile)."""
    return tiny_ppo_lag_plan(tmp_path_factory.mktemp("plan") / "plan.json")


def test_plan_ppo_lag_reports_every_model(full_plan):
    p = full_plan
    assert set(p["models"]) == {"actor", "reference", "reward_model", "cost_model", "reward_critic", "cost_critic"}
    trained = p["models"]["actor"] + p["models"]["reward_critic"] + p["models"]["cost_critic"]
    assert abs(p["argument_bytes_per_device"] - trained) <= 0.1 * trained + 64 * 1024
    assert p["models"]["actor"] == pytest.approx(3 * p["models"]["reference"], rel=0.01)  # params + 2 Adam moments


def _lora_plan(tmp_path, critics):
    return tiny_ppo_lag_plan(tmp_path / f"plan{critics}.json", "--config.lora.rank=4",
                             f"--config.lora.critics={critics}")


def test_plan_ppo_lag_with_lora(tmp_path, full_plan):
    """LoRA (METHODS_BEYOND §4) in the planner: the actor's state is the adapters and their moments; its base is the
    reference, an argument of the step (counted once, not also as a resident frozen model); with lora.critics (the
    default) the critics' bases are the reward and cost models, arguments too."""
    from saferlhf_jax import models
    from saferlhf_jax.models import lora

    full, both = full_plan, _lora_plan(tmp_path, True)
    adapters = lora.shapes(models.load_causal_lm(STORIES).params, 4)
    adapter_bytes = 4 * sum(x.size for x in jax.tree.leaves(adapters))  # float32, before sharding
    # adapters + 2 Adam moments, split over 8 devices like their kernels: A on W's fsdp-split input axis; B on its
    # rank axis where W's output axis is not split — not at rank 4 on 8 devices, which does not divide
    assert adapter_bytes * 3 / 8 <= both["models"]["actor"] <= adapter_bytes * 3
    assert both["models"]["actor"] < full["models"]["actor"] / 2 and both["levers"]["lora_rank"] == 4
    # LoRA critics: adapters + a head each; every frozen model is a step argument, none resident beside it
    m = both["models"]
    assert m["reward_critic"] == m["cost_critic"] < full["models"]["reward_critic"] / 2
    assert both["resident_frozen_bytes_per_device"] == 0 and both["levers"]["lora_critics"] is True
    expected = sum(m.values())
    assert abs(both["argument_bytes_per_device"] - expected) <= 0.1 * expected + 64 * 1024


@pytest.mark.slow  # a third compile of the PPO-Lag step; the LoRA actor's accounting is asserted above
def test_plan_ppo_lag_with_a_lora_actor_and_full_critics(tmp_path, full_plan):
    """lora.critics=False: the reference leaves the resident frozen models (it is the actor's base, a step
    argument); the critics stay full."""
    full, low = full_plan, _lora_plan(tmp_path, False)
    assert low["resident_frozen_bytes_per_device"] == full["resident_frozen_bytes_per_device"] \
        - full["models"]["reference"]
    assert low["models"]["reward_critic"] == full["models"]["reward_critic"]
    m = low["models"]
    expected = m["actor"] + m["reward_critic"] + m["cost_critic"] + m["reference"]  # the base rides along
    assert abs(low["argument_bytes_per_device"] - expected) <= 0.1 * expected + 64 * 1024


def test_plan_errors(capsys):
    assert plan.main(["plan", "--target", "gpu:8", "--config=configs/reward.py:tiny"]) == 2
    assert "cpu:N or tpu" in capsys.readouterr().err
    assert plan.main(["plan", "--target", "cpu:8", "--config=configs/reward.py:llama2_7b",
                      "--config.model_name_or_path=/nope/model", "--config.architecture="]) == 2
    assert "known architecture" in capsys.readouterr().err
    # the run's own batch checks, not JAX's "implies that array axis 0 is partitioned 3 times" from the compiler
    for config, key in (("ppo_lag", "train.train_batch_size=128"), ("reward", "train.batch_size=128")):
        assert plan.main(["plan", "--target", "cpu:8", f"--config=configs/{config}.py:llama2_7b",
                          "--config.mesh.fsdp=3"]) == 2
        assert f"{key} must be a" in capsys.readouterr().err


def test_tiny_ppo_lag_plan_is_stable(full_plan):
    """Regression: the planner's numbers for the tiny model on cpu:8 (recorded with jax 0.10.2; arguments are
    parameters + optimizer state + the batch, temporaries XLA CPU's schedule)."""
    p = full_plan
    assert p["argument_bytes_per_device"] == pytest.approx(1_199_404, rel=0.02)
    assert p["temp_bytes_per_device"] == pytest.approx(30_919_928, rel=0.10)
    assert p["resident_frozen_bytes_per_device"] == pytest.approx(397_536, rel=0.01)
    assert p["levers"] == {"frozen_dtype": "float32", "logits_chunk": 0, "optimizer_memory": "device",
                           "joint_update": True, "remat_policy": "none", "rollout_batch": 8, "max_length": 128,
                           "ptx": False, "lora_rank": 0, "lora_critics": False}


def test_refusal_names_the_biggest_part_and_its_levers(full_plan):
    """A plan over the device memory is refused in one line: how much, the biggest part, the settings that shrink it."""
    from configs import ppo_lag
    from saferlhf_jax import planner

    cfg = ppo_lag.get_config("tiny")
    line = planner.refusal(cfg, "cpu:8", 2**20, full_plan)
    assert "\n" not in line and line.startswith("does not fit on cpu:8: ")
    assert f"{full_plan['total_bytes_per_device'] / 2**30:.1f} GiB per device > 0.0 GiB" in line
    assert "the biggest part is temporaries" in line  # 30 MB of activations against 1 MB of parameters
    assert "--config.train.train_batch_size=4" in line and "--config.model.remat_policy=full" in line
    assert "add --gpu_estimate" in line and "gpu_estimate" not in planner.refusal(
        cfg, "cpu:8", 2**20, {**full_plan, "gpu_estimate": True})
    # the TPU compiler's refusal carries no breakdown: the per-model bytes decide; while they fit the activations
    # may be what overflows, so the micro-batch lever comes first
    line = planner.refusal(cfg, "tpu:v5p-8", 95 * 2**30, {"models": {"actor": 9 * 2**30, "reference": 3 * 2**30}},
                           compiler="Ran out of memory in memory space hbm")
    assert "hbm; the models need 12.0 GiB per device, the largest part parameters and optimizer state" in line
    assert line.index("train_batch_size=4") < line.index("--config.lora.rank=64")
    assert "optimizer_memory=pinned_host" in line
    line = planner.refusal(cfg, "tpu:v5p-8", 95 * 2**30, {"models": {"reference": 50 * 2**30,
                                                                        "reward_model": 50 * 2**30}}, compiler="OOM")
    assert "the models alone need 100.0 GiB per device, the largest part frozen models" in line
    assert "train_batch_size" not in line and "more devices" in line


def test_plan_grpo_lag_critic_free_with_lora(tmp_path):
    """GRPO-Lag (four models, no critics) plans with its own rollout (group advantages, no values): the LoRA actor's
    base is a step argument, the reward and cost models stay resident beside the step."""
    out = tmp_path / "grpo.json"
    assert plan.main(["plan", "--target", "cpu:8", "--output", str(out), "--config=configs/grpo_lag.py:tiny",
                      "--config.mesh.fsdp=8", f"--config.actor_model_name_or_path={STORIES}",
                      f"--config.reward_model_name_or_path={STORIES}", f"--config.cost_model_name_or_path={STORIES}",
                      "--config.generation.max_length=128", "--config.data.max_prompt_length=64",
                      "--config.lora.rank=4"]) == 0
    p = json.loads(out.read_text())
    m = p["models"]
    assert set(m) == {"actor", "reference", "reward_model", "cost_model"}
    assert p["resident_frozen_bytes_per_device"] == m["reward_model"] + m["cost_model"]
    assert abs(p["argument_bytes_per_device"] - m["actor"] - m["reference"]) <= 0.1 * m["reference"] + 64 * 1024


def test_70b_presets_and_adapter_sharding():
    """The 70B presets are the recipe with rank-64 adapters on every device; a LoRA B whose output axis is not
    split by fsdp is split on its rank instead (at 70B the replicated B's were ~5 GiB per device)."""
    from configs import grpo_lag, ppo_lag
    from saferlhf_jax import planner
    from saferlhf_jax.models import lora
    from saferlhf_jax.parallel import make_mesh
    from saferlhf_jax.parallel.mesh import logical_to_spec

    for c in (ppo_lag.get_config("llama3_70b"), grpo_lag.get_config("llama3_70b")):
        assert c.recipe == "safe_rlhf_jax" and c.lora.rank == 64 and c.mesh.fsdp == -1
        arch = planner.model_config(c.actor_model_name_or_path, c.model, c.architecture)
        assert (arch.hidden_size, arch.num_hidden_layers, arch.num_key_value_heads) == (8192, 80, 8)
    axes = lora.adapter_axes({"q": {"kernel": ("embed", "heads")}, "down": {"kernel": ("mlp", "embed")}},
                             {"q": None, "down": None})[lora.KEY]
    mesh = make_mesh(fsdp=8)
    spec = lambda ax, shape: tuple(logical_to_spec(ax, shape, mesh, quiet=True))  # noqa: E731
    assert spec(axes["q"]["a"], (64, 16)) == ("fsdp", None) and spec(axes["q"]["b"], (16, 64)) == ("fsdp", None)
    assert spec(axes["down"]["a"], (128, 16)) == (None, "fsdp") and spec(axes["down"]["b"], (16, 64)) == ("fsdp", None)
