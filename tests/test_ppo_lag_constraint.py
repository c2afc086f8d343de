"""The semantic test of Safe RLHF: a tiny policy over a toy vocabulary with known reward and cost functions.

reward = #A + 2·#B in the response, cost = #B − 2 (budget: two B's). B is the most rewarding token, so reward-only
PPO learns to violate the budget; PPO-Lagrangian must raise λ while the episode cost is above the threshold (0) and
end near the budget while keeping most of the reward. Also rules out the defects seen in JAX peers: float rewards
truncated, one sampling seed for every rollout, `update_iters` ignored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from saferlhf_jax.algorithms import rl
from saferlhf_jax.algorithms.rl_runner import RLRunner
from saferlhf_jax.generation import GenerationConfig
from saferlhf_jax.training.optim import OptimConfig
from saferlhf_jax.generation import generate
from saferlhf_jax.models import ModelConfig, init_model

PAD, BOS, EOS, A, B, C = 0, 1, 2, 3, 4, 5
PROMPT_LEN, RESPONSE_LEN, BATCH = 2, 8, 64


def toy_reward(params, seq, mask):
    resp = seq[:, PROMPT_LEN:]
    return (jnp.sum(resp == A, axis=-1) + 2.0 * jnp.sum(resp == B, axis=-1)).astype(jnp.float32)


def toy_cost(params, seq, mask):
    return jnp.sum(seq[:, PROMPT_LEN:] == B, axis=-1).astype(jnp.float32) - 2.0


def _runner(mode, seed=0, update_iters=2, iters=None, kl=0.01, lambda_lr=0.1, actor_lr=3e-3, pid=None):
    actor_cfg = ModelConfig(vocab_size=6, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, initializer_range=0.02,
                            eos_token_id=EOS, pad_token_id=PAD)
    actor = init_model(actor_cfg, "causal_lm", rng=seed)
    critic_cfg = actor_cfg.replace(score_type="critic")
    reward_critic = init_model(critic_cfg, "score", rng=seed + 1)
    cost_critic = init_model(critic_cfg, "score", rng=seed + 2) if mode == "ppo_lag" else None
    cfg = rl.RLConfig(mode=mode, kl_coeff=kl, lambda_init=1.0, lambda_lr=lambda_lr, lambda_max=10.0, threshold=0.0,
                      episode_cost_window_size=BATCH, **({"lambda_update": "pid", "lambda_pid": pid} if pid else {}))
    runner = RLRunner(
        actor=actor, reward_critic=reward_critic, cost_critic=cost_critic, reward_fn=toy_reward,
        cost_fn=toy_cost if mode != "ppo" else None,
        frozen={"ref": jax.tree.map(jnp.copy, actor.params), "reward": {}, "cost": {}}, cfg=cfg,
        gen=GenerationConfig(max_length=PROMPT_LEN + RESPONSE_LEN, top_k=0, eos_token_ids=(), pad_token_id=PAD),
        actor_optim=OptimConfig(learning_rate=actor_lr, lr_scheduler_type="constant"),
        critic_optim=OptimConfig(learning_rate=3e-3, lr_scheduler_type="constant"),
        total_rl_steps=1000, train_batch_size=BATCH, update_iters=update_iters)
    return runner, runner.init_state(seed)


def _prompts():
    return np.tile([[BOS, C]], (BATCH, 1)), np.ones((BATCH, PROMPT_LEN), np.int32)


def _policy_stats(runner, state, seed=123):
    ids, mask = _prompts()
    out = generate(runner.actor, state.actor.params, np.tile(ids, (4, 1)), np.tile(mask, (4, 1)),
                   max_new_tokens=RESPONSE_LEN, top_k=0, eos_token_ids=(), rng=seed)
    seq = jnp.asarray(out["sequences"])
    return float(jnp.mean(toy_reward(None, seq, None))), float(jnp.mean(toy_cost(None, seq, None)))


def _train(mode, iterations, **kwargs):
    runner, state = _runner(mode, **kwargs)
    ids, mask = _prompts()
    rows = []
    for _ in range(iterations):
        state, r = runner.iteration(state, ids, mask)
        rows.extend(r)
    return runner, state, rows


@pytest.fixture(scope="module")
def initial():
    runner, state = _runner("ppo")
    return _policy_stats(runner, state)


@pytest.fixture(scope="module")
def ppo_run():
    return _train("ppo", 60)


@pytest.fixture(scope="module")
def lag_run():
    # λ learning rate 0.02: at 0.1 this toy problem shows the classic Lagrangian oscillation around the boundary
    return _train("ppo_lag", 80, lambda_lr=0.02)


def test_reward_only_ppo_violates_the_constraint(initial, ppo_run):
    runner, state, rows = ppo_run
    reward, cost = _policy_stats(runner, state)
    r0, c0 = initial
    assert c0 < 0  # the random policy starts within budget
    assert reward > r0 + 4.0  # PPO really learned
    assert cost > 1.0, (reward, cost)  # … by spending far over the budget on B


def test_ppo_lagrangian_satisfies_the_constraint_and_keeps_reward(initial, ppo_run, lag_run):
    runner, state, rows = lag_run
    reward, cost = _policy_stats(runner, state)
    r0, _ = initial
    assert cost <= 0.0 + 0.5, (reward, cost)  # episode cost ≤ threshold + tolerance
    assert reward >= r0 + 2.0, (reward, r0)  # it still improved the reward a lot (the feasible optimum is 10)
    lam = np.array([r["train/lambda"] for r in rows])
    jc = np.array([r["train/episode_cost"] for r in rows])
    assert lam.max() > 1.05  # λ was driven up at some point …
    change, above, below = np.diff(lam), jc[1:] > 0, jc[1:] < 0  # row i: λ after the update that used J_c[i]
    assert above.any() and (change[above] > 0).any()
    assert np.all(change[above] >= 0)  # λ rises exactly while the episode cost is above the threshold …
    assert np.all(change[below] < 0)   # … and falls while it is below (no lower clamp)
    ppo_reward, ppo_cost = _policy_stats(*ppo_run[:2])
    assert cost < ppo_cost - 1.0


def test_pid_lagrangian_satisfies_the_constraint_and_keeps_reward(initial, ppo_run):
    """lambda_update='pid' (spec §7.27) in the loop: the same toy budget kept, the reward still raised, and every
    logged λ is exactly the PID's output on the logged J_c, within [0, λ_max]."""
    runner, state, rows = _train("ppo_lag", 80, pid=(1.0, 0.1, 0.0))
    reward, cost = _policy_stats(runner, state)
    r0, _ = initial
    assert cost <= 0.0 + 0.5, (reward, cost)
    assert reward >= r0 + 2.0, (reward, r0)
    assert cost < _policy_stats(*ppo_run[:2])[1] - 1.0
    lam = np.array([r["train/lambda"] for r in rows])
    jc = np.array([r["train/episode_cost"] for r in rows])
    assert lam.max() > 1.05 and lam.min() >= 0.0 and lam.max() <= 10.0
    # replay the controller on the logged J_c: the state's λ is exactly the formula's
    integral, expect = 1.0, []
    for j in jc:
        integral = max(0.0, integral + 0.1 * j)
        expect.append(max(0.0, j + integral))
    np.testing.assert_allclose(lam, np.minimum(expect, 10.0), rtol=1e-5, atol=1e-6)


def test_rewards_stay_float_and_every_rollout_draws_a_fresh_key():
    def fractional_reward(params, seq, mask):
        return 0.37 * jnp.sum(seq[:, PROMPT_LEN:] == A, axis=-1) + 0.01

    runner, state = _runner("ppo")
    runner.reward_fn = fractional_reward  # before the first rollout compiles the scoring
    ids, mask = _prompts()
    state, first = runner.rollout(state, ids, mask)
    state, second = runner.rollout(state, ids, mask)
    r = np.asarray(first[0].reward)
    assert r.dtype == np.float32
    counts = np.sum(np.asarray(first[0].seq)[:, PROMPT_LEN:] == A, axis=-1)
    np.testing.assert_allclose(r, 0.37 * counts + 0.01, rtol=1e-6)
    assert (np.asarray(first[0].seq) != np.asarray(second[0].seq)).any()  # fresh PRNG key per rollout


def test_update_iters_runs_several_ppo_epochs_on_one_rollout():
    runner, state = _runner("ppo_lag", update_iters=4)
    ids, mask = _prompts()
    state, rows = runner.iteration(state, ids, mask)
    assert len(rows) == 4 and [r["step"] for r in rows] == [1, 2, 3, 4]
    assert abs(rows[0]["train/ratio"] - 1.0) < 1e-5  # first pass: new policy == rollout policy
    assert abs(rows[-1]["train/ratio"] - 1.0) > 1e-3  # later passes: the ratio moved off 1 …
    assert rows[-1]["train/clip_fraction"] > 0.0     # … and clipping engaged
    # the advantages come from the stored rollout, so the reward statistics are identical in every pass
    assert len({round(r["train/reward"], 6) for r in rows}) == 1


# ---------------------------------------------------------------------------------------------------- two constraints

D_A = 3.0  # second budget: at most three A's (the first: at most two B's)


def toy_costs(params, seq, mask):
    """(B, 2): [#B − 2, #A − 3] — two harms, each with its own budget (METHODS_BEYOND §3)."""
    resp = seq[:, PROMPT_LEN:]
    return jnp.stack([jnp.sum(resp == B, axis=-1) - 2.0, jnp.sum(resp == A, axis=-1) - D_A], -1).astype(jnp.float32)


def toy_summed_cost(params, seq, mask):
    return jnp.sum(toy_costs(params, seq, mask), axis=-1)


def _two_constraint_runner(seed=0, lambda_lr=0.02, actor_lr=3e-3):
    """PPO-Lag with K = 2 (a 2-output cost critic) on the toy vocabulary."""
    actor_cfg = ModelConfig(vocab_size=6, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, initializer_range=0.02,
                            eos_token_id=EOS, pad_token_id=PAD)
    actor = init_model(actor_cfg, "causal_lm", rng=seed)
    reward_critic = init_model(actor_cfg.replace(score_type="critic"), "score", rng=seed + 1)
    cost_critic = init_model(actor_cfg.replace(score_type="critic", score_dim=2), "score", rng=seed + 2)
    cfg = rl.RLConfig(mode="ppo_lag", kl_coeff=0.01, episode_cost_window_size=BATCH, constraints=("b", "a"),
                      thresholds=(0.0, 0.0), lambda_inits=(1.0, 1.0), lambda_lrs=(lambda_lr, lambda_lr),
                      lambda_maxes=(10.0, 10.0))
    runner = RLRunner(
        actor=actor, reward_critic=reward_critic, cost_critic=cost_critic, reward_fn=toy_reward, cost_fn=toy_costs,
        frozen={"ref": jax.tree.map(jnp.copy, actor.params), "reward": {}, "cost": {}}, cfg=cfg,
        gen=GenerationConfig(max_length=PROMPT_LEN + RESPONSE_LEN, top_k=0, eos_token_ids=(), pad_token_id=PAD),
        actor_optim=OptimConfig(learning_rate=actor_lr, lr_scheduler_type="constant"),
        critic_optim=OptimConfig(learning_rate=3e-3, lr_scheduler_type="constant"),
        total_rl_steps=1000, train_batch_size=BATCH, update_iters=2)
    return runner, runner.init_state(seed)


def _both_costs(runner, state, seed=123):
    ids, mask = _prompts()
    out = generate(runner.actor, state.actor.params, np.tile(ids, (4, 1)), np.tile(mask, (4, 1)),
                   max_new_tokens=RESPONSE_LEN, top_k=0, eos_token_ids=(), rng=seed)
    seq = jnp.asarray(out["sequences"])
    return float(jnp.mean(toy_reward(None, seq, None))), np.asarray(jnp.mean(toy_costs(None, seq, None), axis=0))


ITERS_2C = 120


def _second_half_costs(runner, state, cost_fn=None):
    """Train ITERS_2C iterations; the mean [#B − 2, #A − 3] of fresh samples every 10 iterations of the second half
    (a Lagrangian policy circles its budget: its time average, not one snapshot, is what the method controls)."""
    if cost_fn is not None:
        runner.cost_fn = cost_fn  # before the first rollout compiles the scoring
    ids, mask = _prompts()
    rows, snaps, rewards = [], [], []
    for it in range(ITERS_2C):
        state, r = runner.iteration(state, ids, mask)
        rows.extend(r)
        if it >= ITERS_2C // 2 and it % 10 == 9:
            reward, costs = _both_costs(runner, state, seed=it)
            snaps.append(costs)
            rewards.append(reward)
    return rows, np.mean(snaps, axis=0), float(np.mean(rewards))


def test_two_constraints_each_budget_kept_and_each_lambda_moves_alone():
    """METHODS_BEYOND §3 on ground truth: one λ per harm keeps both budgets (#B ≤ 2 and #A ≤ 3) on average over
    the second half of training while the reward rises to near the feasible optimum 3·1 + 2·2 = 7."""
    runner, state = _two_constraint_runner(actor_lr=1e-3)
    assert state.log_lambda.shape == (2,) and state.cost_window.values.shape == (1, BATCH, 2)
    rows, costs, reward = _second_half_costs(runner, state)
    assert np.all(costs <= 0.5), (costs, reward)
    assert reward >= 5.0, (costs, reward)  # the initial policy's is ≈ 4
    lam = np.array([[r["train/lambda/b"], r["train/lambda/a"]] for r in rows])
    jc = np.array([[r["train/episode_cost/b"], r["train/episode_cost/a"]] for r in rows])
    change = np.diff(lam, axis=0)
    for k in range(2):  # λ_k moves with its own J_ck only: up while above its budget, down while below
        above, below = jc[1:, k] > 0, jc[1:, k] < 0
        assert above.any() and np.all(change[above & (lam[1:, k] < 10.0), k] > 0), k
        assert np.all(change[below, k] < 0), k


@pytest.mark.slow  # the comparison run; the two-constraint behaviour itself is checked in CI above
def test_a_summed_cost_breaks_the_budget_two_constraints_keep():
    """PPO-Lag on the summed cost (#B − 2) + (#A − 3) ≤ 0 may trade one harm for the other: with B worth twice A
    it spends the joint budget on B (the B budget broken by > 1 on average), which the two-constraint run does
    not. Margins from the measured spread between machines of one kind (docs/cross_machine_spread.json: the same
    run with XLA's CPU code generation limited to AVX2 or AVX): the summed cost ends at 0.51 / 0.54 / 0.88
    (AVX-512 / AVX2 / AVX; 0.755 on another 2-core machine, issue #35), so "kept" is ≤ 1.0; B's cost at 3.28-3.37."""
    runner, state = _runner("ppo_lag", lambda_lr=0.02, actor_lr=1e-3)
    _, costs, _ = _second_half_costs(runner, state, toy_summed_cost)
    assert costs.sum() <= 1.0 and costs[0] > 1.0, costs
