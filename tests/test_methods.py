"""Methods beyond PPO-Lag (METHODS_BEYOND.md): SafeDPO's transform and stage; critic-free Lagrangian RL."""

from __future__ import annotations

import json

import numpy as np
import pytest

from saferlhf_jax import data
from saferlhf_jax.data.examples import safedpo_transform


def test_safedpo_transform_worked_example_s1():
    """better_response_id [0, 0, 1, 1], is_response_0_safe [T, F, F, T], is_response_1_safe [F, T, F, T]."""
    rows = [(0, True, False), (0, False, True), (1, False, False), (1, True, True)]
    got = []
    for better_id, safe0, safe1 in rows:
        winner_safe, loser_safe = (safe0, safe1) if better_id == 0 else (safe1, safe0)
        got.append(safedpo_transform(better_id == 0, winner_safe, loser_safe))
    keep = [g[0] for g in got]
    win = [(1 - b if g[1] else b) for (b, _, _), g in zip(rows, got)]
    assert keep == [True, True, False, True] and win[:2] + win[3:] == [0, 1, 1]
    assert [g[2] for g in got] == [0, 0, 1, 0] and [g[3] for g in got] == [1, 1, 1, 0]
    kept_all = [safedpo_transform(b == 0, *(((s0, s1) if b == 0 else (s1, s0))), both_unsafe="keep")[0]
                for b, s0, s1 in rows]
    assert kept_all == [True, True, True, True]


def test_safedpo_dataset_counts_and_flags(stories_dir):
    from saferlhf_jax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(stories_dir)
    s = [data.RawSample(input="q", answer=f"a{i}", other_answer=f"b{i}", better=b, is_safe=s0, is_other_safe=s1,
                        where=f"row {i}")
         for i, (b, s0, s1) in enumerate([(True, True, False), (True, False, True), (False, False, False),
                                          (False, True, True)])]
    ds = data.build_dataset("safedpo_preference", s, tok, 64)
    assert ds.counts == {"kept_unchanged": 2, "swapped": 1, "dropped_both_unsafe": 1}
    flags = [(int(e["better_unsafe"]), int(e["worse_unsafe"])) for e in ds.examples]
    assert flags == [(0, 1), (0, 1), (0, 0)]
    swapped = ds.examples[1]  # row 1: the unsafe winner a1 now loses to the safe b1
    assert tok.decode(swapped["better_input_ids"]).rstrip("</s>").endswith("b1")
    batch = data.collate("safedpo_preference", ds.examples, tok.pad_token_id, (64,))
    assert batch["better_unsafe"].tolist() == [0, 0, 0] and batch["worse_unsafe"].tolist() == [1, 1, 0]


def test_safedpo_stage_from_the_cli(tmp_path):
    from launch.common import run_training_cli

    argv = ["prog", "--config=configs/safedpo.py:tiny", f"--config.output_dir={tmp_path}",
            "--config.train_datasets=PKU-SafeRLHF/train:32/-1", "--config.eval_datasets=PKU-SafeRLHF/train:32/-1",
            "--config.train.max_steps=3", "--config.data.max_length=192", "--config.data.buckets=(192,)",
            "--config.logging.progress=False", "--config.logging.tensorboard=False", "--config.mesh.fsdp=1"]
    assert run_training_cli("safedpo", "", argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    counts = summary["data_counts"]
    assert sum(counts.get(k, 0) for k in ("swapped", "kept_unchanged", "dropped_both_unsafe")) == 32
    assert counts["dropped_both_unsafe"] > 0 and summary["train_examples"] == 32 - counts["dropped_both_unsafe"] \
        - counts.get("identical_responses", 0)
    evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "eval/loss" in line]
    first = evals[0]  # at step 0 the policy is its reference: loss = mean softplus(Δ·gap) (log 2 on safe pairs)
    want = first["eval/safe_unsafe_fraction"] * np.logaddexp(0, 10.0) + (1 - first["eval/safe_unsafe_fraction"]) \
        * np.log(2)
    assert first["eval/loss"] == pytest.approx(want, rel=1e-4)
    assert (tmp_path / "export" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------- critic-free


def test_group_advantages_worked_examples_g1_g2():
    from saferlhf_jax import ops

    r = [1, 2, 3, 6, 0.5, 0.5, 0.5, 0.5]
    np.testing.assert_allclose(ops.group_advantages(r, 4, "grpo"),
                               [-0.925777, -0.462889, 0, 1.388666, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(ops.group_advantages(r, 4, "dr_grpo"), [-2, -1, 0, 3, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(ops.group_advantages(r, 4, "rloo"),
                               [-2.666667, -1.333333, 0, 4, 0, 0, 0, 0], atol=1e-6)
    c = [-3, 1, 2, 0, 4, -1, 0, 1]
    a_c = ops.group_advantages(c, 4, "grpo")
    np.testing.assert_allclose(a_c, [-1.388666, 0.462889, 0.925777, 0, 1.388666, -0.925777, -0.462889, 0],
                               atol=1e-6)
    np.testing.assert_allclose(ops.lagrangian_advantages(ops.group_advantages(r, 4, "grpo"), a_c, 1.5),
                               [0.462889, -0.462889, -0.555466, 0.555466, -0.8332, 0.555466, 0.277733, 0], atol=1e-6)


def test_grpo_actor_loss_worked_example_g3():
    from saferlhf_jax import ops

    adv = [0.8, -0.5, 1.2]
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], bool)
    old = [[-1, -2, -0.5, 0], [-1.5, -0.7, 0, 0], [-0.2, -3, -1, -2]]
    lp = [[-0.9, -2.3, -0.25, 0], [-1.45, -0.5, 0, 0], [-0.3, -2.7, -1, -1.85]]
    ref = [[-0.8, -1.9, -0.6, 0], [-1.8, -0.7, 0, 0], [-0.2, -2.5, -1.2, -1.9]]
    loss, aux = ops.grpo_actor_loss(lp, old, ref, adv, mask, 0.2, 0.04, "seq")
    assert float(loss) == pytest.approx(-0.506714, abs=1e-6) and float(aux["pg_loss"]) == pytest.approx(-0.508032,
                                                                                                        abs=1e-6)
    assert float(aux["kl_k3"]) == pytest.approx(0.032968, abs=1e-6)
    assert float(aux["clip_fraction"]) == pytest.approx(0.444444, abs=1e-6)
    assert float(ops.grpo_actor_loss(lp, old, ref, adv, mask, 0.2, 0.04, "token")[0]) == pytest.approx(-0.712177,
                                                                                                      abs=1e-6)
    assert float(ops.grpo_actor_loss(lp, old, ref, adv, mask, 0.2, 0.04, "constant", 8)[0]) == pytest.approx(
        -0.267066, abs=1e-6)
    assert float(ops.grpo_actor_loss(lp, old, ref, adv, mask, 0.2, 0.0, "seq")[0]) == pytest.approx(-0.508032,
                                                                                                   abs=1e-6)


def test_group_advantages_in_the_runner_follow_the_group_layout():
    """G return-ordered micro-batches of one chunk: group p is row p of each; the runner's advantages equal
    ops.group_advantages on the prompt-major scores, and the step uses them (no critics in the state)."""
    import sys

    import jax

    sys.path.insert(0, "tests")
    from test_rl_core import _prompts, _runner

    from saferlhf_jax import ops
    from saferlhf_jax.algorithms import rl

    runner, state = _runner("grpo_lag", batch=8, group_size=4, advantage_estimator="rloo", kl_mode="reward")
    runner.gen = runner.gen.__class__(**{**runner.gen.__dict__, "num_return_sequences": 4})
    assert state.reward_critic is None and state.cost_critic is None
    ids, mask = _prompts(8)
    state, micro = runner.rollout(state, ids, mask)
    assert len(micro) == 4 and all(m.log_probs is not None and m.reward_values is None for m in micro)
    rewards = np.stack([np.asarray(m.reward) for m in micro])  # (G, B)
    costs = np.stack([np.asarray(m.cost) for m in micro])
    kls = np.stack([np.asarray(rl.sequence_kl(m)) for m in micro])
    for scores, got, sign in ((rewards, "reward_advantage", -1), (costs, "cost_advantage", +1)):
        want = ops.group_advantages((scores + sign * 0.01 * kls).T.reshape(-1), 4, "rloo").reshape(-1, 4).T
        np.testing.assert_allclose(np.stack([np.asarray(getattr(m, got)) for m in micro]), want, atol=1e-5)
    new_state, metrics, _ = jax.jit(rl.make_rl_step(runner.models))(state, micro[0], None)
    assert int(new_state.global_step) == 1 and float(metrics["train/clip_fraction"]) == 0.0
    assert "train/reward_critic_loss" not in metrics and np.isfinite(float(metrics["train/actor_loss"]))


@pytest.mark.parametrize("config", ["configs/grpo_lag.py:tiny", "configs/grpo.py:tiny"])
def test_critic_free_rl_from_the_cli(tiny_models, tmp_path, config):
    from launch.common import run_rl_cli

    argv = ["prog", f"--config={config}", f"--config.output_dir={tmp_path}",
            f"--config.actor_model_name_or_path={tiny_models / 'sft'}",
            f"--config.reward_model_name_or_path={tiny_models / 'reward'}",
            f"--config.cost_model_name_or_path={tiny_models / 'cost'}" if "lag" in config else
            "--config.cost_model_name_or_path=", "--config.generation.max_length=64",
            "--config.data.max_prompt_length=32", "--config.data.prompt_buckets=(32,)",
            "--config.train.max_steps=1", "--config.train.prompt_batch_size=4", "--config.train.train_batch_size=4",
            "--config.logging.progress=False", "--config.logging.tensorboard=False", "--config.mesh.fsdp=1"]
    assert run_rl_cli("", argv) == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4  # G = 4 micro-batches of the 4 prompts, one rl_step each
    assert "train/pg_loss" in rows[0] and "train/reward_critic_loss" not in rows[0]
    assert ("train/cost" in rows[0]) == ("lag" in config)
    from saferlhf_jax.checkpoint import Checkpointer

    flat = Checkpointer(tmp_path / "checkpoints", read_only=True).restore_raw()
    assert not any("critic" in k for k in flat)  # four models only: actor (+ its optimizer) in the state


# ---------------------------------------------------------------------------------------------------- several constraints


def _rl_section(**extra):
    import ml_collections

    from configs import ppo_lag as ppo_lag_config

    r = ppo_lag_config.get_config("tiny").rl
    r.cost_models = ml_collections.ConfigDict({"cost": "CM", "moderation": "MOD"})
    r.constraints = tuple(extra.pop("constraints"))
    return r


def test_constraint_config_errors_are_one_line():
    from saferlhf_jax.algorithms import constraints
    from saferlhf_jax.errors import ConfigError

    ok = constraints.parse(_rl_section(constraints=[
        dict(name="unsafe", model="cost", head="score"),
        dict(name="violence", model="moderation", head="category:6", threshold=0.02, lambda_max=0)]))
    assert [c.name for c in ok] == ["unsafe", "violence"] and ok[0].threshold == 0.0 and ok[0].lambda_max == 5.0
    assert ok[1].lambda_max is None and ok[1].transform == ""  # 0 = no clamp; '' = prob for moderation heads
    for bad, needle in (
            (dict(name="x", model="nope"), "not in rl.cost_models"),
            (dict(name="x", model="moderation", head="category:20"), "moderation head must be"),
            (dict(name="x", model="cost", head="score", transform="prob"), "transform 'identity'"),
            (dict(name="x", model="cost", limit=1.0), "unknown field"),
            (dict(model="cost"), "needs a name")):
        with pytest.raises(ConfigError, match=needle):
            constraints.parse(_rl_section(constraints=[bad]))
    with pytest.raises(ConfigError, match="has 1 output"):
        constraints.make_cost_fn({"cost": None}, {"cost": 1}, [constraints.Constraint("x", "cost", "score:1")])
    with pytest.raises(ConfigError, match="24 end logits"):
        constraints.make_cost_fn({"cost": None}, {"cost": 1}, [constraints.Constraint("x", "cost", "unsafe")])


def test_cost_fn_reads_each_head_and_critic_head_copies_score_rows():
    from saferlhf_jax import ops
    from saferlhf_jax.algorithms import constraints

    rng = np.random.default_rng(0)
    cm_end, mod_end = rng.normal(size=(3, 1)).astype(np.float32), rng.normal(size=(3, 24)).astype(np.float32)
    applies = {"cost": lambda p, s, m: (None, cm_end), "moderation": lambda p, s, m: (None, mod_end)}
    cs = [constraints.Constraint("unsafe", "cost"), constraints.Constraint("sev", "moderation", "severity>=2"),
          constraints.Constraint("viol", "moderation", "category:6", "logit")]
    got = np.asarray(constraints.make_cost_fn(applies, {"cost": 1, "moderation": 24}, cs)(
        {"cost": {}, "moderation": {}}, None, None))
    np.testing.assert_allclose(got[:, 0], cm_end[:, 0])
    np.testing.assert_allclose(got[:, 1], ops.moderation_cost(mod_end, "severity>=2", "prob"), rtol=1e-6)
    np.testing.assert_allclose(got[:, 2], mod_end[:, 6])
    kernel, bias = constraints.critic_head(np.arange(8.0).reshape(4, 2), np.array([0.5, -0.5]),
                                           [constraints.Constraint("a", "cost", "score:1"), cs[1]], "cost", 0.02)
    np.testing.assert_array_equal(kernel[:, 0], [1, 3, 5, 7])
    np.testing.assert_array_equal(bias, [-0.5, 0])
    assert np.all(np.abs(kernel[:, 1]) < 0.1) and np.any(kernel[:, 1] != 0)  # N(0, 0.02) row for another model


# GRPO-Lag's K-constraint path is also covered by the group-advantage test below
@pytest.mark.parametrize("mode", ["ppo_lag", pytest.param("grpo_lag", marks=pytest.mark.slow)])
def test_two_constraints_from_a_config(tiny_models, tmp_path, mode):
    """A cost model and a moderation head as two constraints: λ, windows and metrics per constraint; PPO-Lag's cost
    critic has one head row per constraint, row 0 copied from the cost model."""
    import ml_collections

    from conftest import tiny_rl_config
    from saferlhf_jax import models
    from saferlhf_jax.algorithms import ppo_lag

    c = tiny_rl_config(mode, tiny_models, tmp_path)
    c.rl.lambda_update = "log_sgd"  # the per-constraint log-λ step checked below (the presets' PID: test_rl_core)
    c.rl.lambda_init = 1.0          # the formula below starts from λ = 1 (the recipe starts at 0.01)
    c.cost_model_name_or_path = ""
    c.rl.cost_models = ml_collections.ConfigDict({"cm": str(tiny_models / "cost"),
                                                  "moderation": str(tiny_models / "moderation")})
    c.rl.constraints = (dict(name="unsafe", model="cm", head="score", threshold=0.0),
                        dict(name="violence", model="moderation", head="category:6", threshold=0.02, lambda_lr=0.5))
    summary = ppo_lag.run(c)
    state = summary["state"]
    assert state.log_lambda.shape == (2,)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for key in ("lambda", "episode_cost", "cost"):
        assert f"train/{key}/unsafe" in rows[0] and f"train/{key}/violence" in rows[0], key
    assert "train/lambda" not in rows[0]
    # λ_violence after the first update: log λ + 0.5·(J − 0.02)·λ from λ = 1 (no delay), J = the first window
    # mean
    first = rows[0]
    assert first["train/lambda/violence"] == pytest.approx(np.exp(0.5 * (first["train/episode_cost/violence"] - 0.02)),
                                                           rel=1e-5)
    assert 0.0 < first["train/cost/violence"] < 1.0  # a probability (transform 'prob')
    if mode == "ppo_lag":
        cm = models.load_score_model(tiny_models / "cost")
        head = np.asarray(state.cost_critic.params["score_head"]["kernel"])
        assert head.shape == (cm.config.hidden_size, 2)
        assert rows[0]["train/cost_value/unsafe"] is not None
        # row 0 started as the cost model's column; one critic update moved it only a little
        np.testing.assert_allclose(head[:, 0], np.asarray(cm.params["score_head"]["kernel"])[:, 0], atol=0.05)
    else:
        assert state.cost_critic is None


def test_group_advantages_per_constraint_and_the_combined_advantage():
    """K = 2 costs: each constraint's cost is group-normalised on its own (kl_mode 'reward' adds +β·K to each),
    and the step combines them as (A_r − Σλ_k A_ck)/(1 + Σλ_k) (example M1's formula)."""
    from saferlhf_jax import ops
    from saferlhf_jax.algorithms import rl

    cfg = rl.RLConfig(mode="grpo_lag", group_size=4, kl_mode="reward", kl_coeff=0.1, constraints=("a", "b"),
                      thresholds=(0.0, 0.0), lambda_inits=(1.0, 1.0), lambda_lrs=(0.1, 0.1), lambda_maxes=(5.0, 5.0))
    rng = np.random.default_rng(1)
    rewards, kls = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    costs = rng.normal(size=(4, 3, 2))
    a_r, a_c = rl.make_group_advantages(cfg)(rewards, costs, kls)
    assert a_c.shape == (4, 3, 2)
    for k in range(2):
        want = ops.group_advantages((costs[..., k] + 0.1 * kls).T.reshape(-1), 4).reshape(-1, 4).T
        np.testing.assert_allclose(np.asarray(a_c[..., k]), want, atol=1e-5)
    lam = np.array([1.0, 0.5])
    combined = ops.lagrangian_advantages_multi(a_r[0], np.moveaxis(np.asarray(a_c[0]), -1, 0), lam)
    np.testing.assert_allclose(combined, (np.asarray(a_r[0]) - np.asarray(a_c[0]) @ lam) / 2.5, atol=1e-5)
