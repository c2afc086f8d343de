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
