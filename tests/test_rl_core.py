"""The RL core's wiring, pinned with hand-computed numbers: each test fails when one connection is broken.

Toy models (vocab 6, 2 layers) and exact reward/cost functions keep these at unit-test speed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from saferlhf_jax import ops
from saferlhf_jax.algorithms import rl
from saferlhf_jax.errors import ConfigError
from saferlhf_jax.algorithms.rl_runner import RLRunner
from saferlhf_jax.generation import GenerationConfig
from saferlhf_jax.training.optim import OptimConfig
from saferlhf_jax.models import ModelConfig, init_model
from saferlhf_jax.parallel import make_mesh

PAD, BOS, EOS, A, B = 0, 1, 2, 3, 4


def toy_reward(params, seq, mask):
    return jnp.sum((seq == A) & mask, axis=-1).astype(jnp.float32) * 0.5 + 0.25


def toy_cost(params, seq, mask):
    return jnp.sum((seq == B) & mask, axis=-1).astype(jnp.float32) - 1.5


def _config(**kw):
    return ModelConfig(vocab_size=6, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, initializer_range=0.3, eos_token_id=EOS, pad_token_id=PAD, **kw)


_MODELS: dict = {}


def _models(mesh):
    """One set of toy models per mesh for the whole module: the sampler programs compile once."""
    if mesh not in _MODELS:
        cfg = _config()
        critic_cfg = cfg.replace(score_type="critic")
        _MODELS[mesh] = (init_model(cfg, "causal_lm", rng=0, mesh=mesh), init_model(critic_cfg, "score", rng=1, mesh=mesh),
                         init_model(critic_cfg, "score", rng=2, mesh=mesh),
                         init_model(cfg, "causal_lm", rng=3, mesh=mesh).params)  # ref ≠ actor: a non-zero KL
    return _MODELS[mesh]


def _runner(mode="ppo_lag", mesh=None, batch=8, max_length=12, window=5, **cfg_kw):
    actor, reward_critic, cost_critic, ref = _models(mesh)
    cost_critic = cost_critic if mode == "ppo_lag" else None
    rl_cfg = rl.RLConfig(mode=mode, episode_cost_window_size=window, **cfg_kw)
    runner = RLRunner(actor=actor, reward_critic=reward_critic, cost_critic=cost_critic, reward_fn=toy_reward,
                      cost_fn=toy_cost if mode != "ppo" else None, frozen={"ref": ref, "reward": {}, "cost": {}},
                      cfg=rl_cfg, gen=GenerationConfig(max_length=max_length, top_k=0, eos_token_ids=(EOS,),
                                                       pad_token_id=PAD),
                      actor_optim=OptimConfig(learning_rate=1e-2, lr_scheduler_type="constant"),
                      critic_optim=OptimConfig(learning_rate=1e-2, lr_scheduler_type="constant"),
                      total_rl_steps=100, train_batch_size=batch, mesh=mesh)
    return runner, runner.init_state(0)


def _prompts(batch=8, width=4):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, width + 1, batch)
    ids = np.full((batch, width), PAD, np.int32)
    mask = np.zeros((batch, width), bool)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = [BOS] + list(rng.integers(3, 6, n - 1))
        mask[i, width - n:] = True
    return ids, mask


def _close(a, b, tol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol), a, b)


# ---------------------------------------------------------------------------------------------------- the step


def test_fresh_first_update_equals_the_prescored_path():
    """rl_step(fresh=True) takes the old log-probs/values from its own forward: same update as scoring first."""
    import dataclasses

    runner, state = _runner()
    ids, mask = _prompts()
    state, micro = runner.rollout(state, ids, mask)
    assert micro[0].log_probs is None  # the first micro-batch is left for the fresh step
    critics = {"reward": state.reward_critic.params, "cost": state.cost_critic.params}
    scores = jax.jit(lambda *a: rl.policy_scores(runner.models, *a))(state.actor.params, critics, micro[0].seq,
                                                                       micro[0].mask)
    scored = micro[0].replace(**scores.fields())
    # plain SGD: the parameter change is the gradient itself (Adam's first step is ≈ lr·sign(g), which turns
    # last-bit differences of near-zero gradients into lr-sized ones)
    sgd = dataclasses.replace(runner.models, actor_opt=optax.sgd(1.0), critic_opt=optax.sgd(1.0))
    state = state.replace(**{k: rl.init_module_state(getattr(state, k).params, optax.sgd(1.0))
                             for k in ("actor", "reward_critic", "cost_critic")})
    a_state, a_metrics, a_out = jax.jit(rl.make_rl_step(sgd, fresh=True))(state, micro[0], None)
    b_state, b_metrics, b_out = jax.jit(rl.make_rl_step(sgd, fresh=False))(state, scored, None)
    assert b_out is None
    _close(a_state, b_state, 1e-5)
    _close({k: a_metrics[k] for k in b_metrics}, b_metrics, 1e-5)
    _close(a_out.log_probs, scored.log_probs, 1e-5)
    assert float(a_metrics["train/ratio"]) == pytest.approx(1.0, abs=1e-6)


def _rollout(seq, mask, start, reward, cost, lp, ref, vr, vc):
    f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return rl.Rollout(seq=jnp.asarray(seq), mask=jnp.asarray(mask, bool), start=jnp.asarray(start, jnp.int32),
                      ref_log_probs=f(ref), reward=f(reward), cost=f(cost), log_probs=f(lp), reward_values=f(vr),
                      cost_values=f(vc))


def test_kl_shaping_signs_and_reward_shaping_numbers():
    """Reward stream r_t = −β·kl_t (+R at the end), cost stream c_t = +β·kl_t (+C); reward shaping R' = R − λ₀·C."""
    lp = np.array([[-1.0, -2.0, -0.5, -1.5]])
    ref = np.array([[-1.5, -1.0, -0.5, -2.5]])  # kl = [0.5, −1, 0, 1]
    args = dict(seq=[[1, 3, 4, 3, 2]], mask=[[1, 1, 1, 1, 1]], start=[1], reward=[2.0], cost=[0.7], lp=lp, ref=ref,
                vr=np.zeros((1, 4)), vc=np.zeros((1, 4)))
    beta = 0.1
    lag = rl.advantages(_rollout(**args), 1.0, rl.RLConfig(mode="ppo_lag", kl_coeff=beta))
    kl = lp - ref
    np.testing.assert_allclose(lag.rewards, -beta * kl + np.array([[0, 0, 0, 2.0]]), atol=1e-6)
    np.testing.assert_allclose(lag.costs, +beta * kl + np.array([[0, 0, 0, 0.7]]), atol=1e-6)
    shaping = rl.advantages(_rollout(**args), 1.0, rl.RLConfig(mode="reward_shaping", kl_coeff=beta,
                                                                lambda_init=2.0))
    np.testing.assert_allclose(shaping.rewards, -beta * kl + np.array([[0, 0, 0, 2.0 - 2.0 * 0.7]]), atol=1e-6)
    assert shaping.costs is None  # no cost critic, no λ in the advantage
    # with zero values and γ = 1, the advantages are the discounted (λ_GAE) sums of the shaped rewards
    g = 0.95
    r = np.asarray(lag.rewards)[0]
    want = [sum(r[t + k] * g ** k for k in range(4 - t)) for t in range(4)]
    np.testing.assert_allclose(np.asarray(lag.reward_advantages)[0], want, rtol=1e-5)


def test_dynamic_start_equals_the_static_slice():
    """Advantages/returns over every position, masked from `start`, equal the spec's slice [start:] (§3.11)."""
    rng = np.random.default_rng(1)
    b, a = 3, 9
    mask = np.ones((b, a + 1), bool)
    mask[0, :2] = False  # a left pad
    mask[1, 7:] = False  # an early end
    vals, rews = rng.normal(size=(b, a)).astype(np.float32), rng.normal(size=(b, a)).astype(np.float32)
    for start in (0, 3, 5):
        full_a, full_r = ops.gae_advantages_and_returns(vals, rews, mask[:, 1:], 0)
        sl_a, sl_r = ops.gae_advantages_and_returns(vals, rews, mask[:, 1:], start)
        np.testing.assert_allclose(np.asarray(full_a)[:, start:], sl_a, atol=1e-6)
        np.testing.assert_allclose(np.asarray(full_r)[:, start:], sl_r, atol=1e-6)
        resp = np.asarray(rl.response_mask(jnp.asarray(mask[:, 1:]), jnp.full((b,), start)))
        x = rng.normal(size=(b, a)).astype(np.float32)
        assert float(ops.masked_mean(x, resp)) == pytest.approx(float(ops.masked_mean(x[:, start:],
                                                                                     mask[:, 1:][:, start:])))


def test_lambda_delay_clamp_and_no_update_in_ppo():
    cfg = rl.RLConfig(mode="ppo_lag", lambda_lr=0.5, lambda_max=3.0, lambda_update_delay_steps=3, threshold=0.5)
    window = rl.CostWindow.empty(1, 4).push(jnp.asarray([2.5, 1.5]))  # J_c = 2.0
    base = dict(actor=None, reward_critic=None, cost_critic=None, skipped=jnp.int32(0), rng=jax.random.PRNGKey(0),
                cost_window=window)
    state = rl.RLState(log_lambda=jnp.float32(0.0), global_step=jnp.int32(2), **base)
    assert float(rl.lambda_step(state, cfg)[0]) == 0.0  # step 2 < delay 3: unchanged
    state = state.replace(global_step=jnp.int32(3))
    expect = 0.0 + 0.5 * (2.0 - 0.5) * np.exp(0.0)  # log λ + lr·(J_c − d)·λ
    assert float(rl.lambda_step(state, cfg)[0]) == pytest.approx(expect)
    state = state.replace(log_lambda=jnp.float32(0.6))
    assert float(rl.lambda_step(state, cfg)[0]) == pytest.approx(np.log(3.0))  # clamped at log λ_max
    for mode in ("ppo", "reward_shaping"):
        assert float(rl.lambda_step(state, rl.RLConfig(mode=mode))[0]) == pytest.approx(0.6)


def test_missing_eos_penalty_lowers_only_cut_off_responses():
    """rl.missing_eos_penalty: the same rollout (same key) scored with and without it — the reward drops by the
    penalty exactly for the rows whose response holds no EOS (cut off by the budget); costs are untouched."""
    ids, mask = _prompts()
    runner, state = _runner(max_length=9)
    plain = runner.rollout(state, ids, mask)[1]
    runner, state = _runner(max_length=9, missing_eos_penalty=1.5)  # EOS: the sampler's (GenerationConfig)
    penalised = runner.rollout(state, ids, mask)[1]
    for a, b in zip(plain, penalised):
        np.testing.assert_array_equal(a.seq, b.seq)
        seq, m, start = np.asarray(a.seq), np.asarray(a.mask), np.asarray(a.start)
        ended = np.array([np.any((seq[i, 1:] == EOS) & m[i, 1:] & (np.arange(seq.shape[1] - 1) >= start[i]))
                          for i in range(seq.shape[0])])
        assert 0 < ended.sum() < len(ended)  # both kinds of rows are in the test
        np.testing.assert_allclose(np.asarray(b.reward), np.asarray(a.reward) - 1.5 * ~ended, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(b.cost), np.asarray(a.cost))
    with pytest.raises(ValueError, match="missing_eos_penalty must be ≥ 0"):
        rl.RLConfig(missing_eos_penalty=-1.0)
    with pytest.raises(ValueError, match="needs the sampler's EOS token ids"):  # none known: every row would pay
        rl.make_score_rollout(runner.models, toy_reward, toy_cost)


def test_unclamped_log_lambda_stays_finite():
    """lambda_max=None: the log-λ step grows with λ, so 20 steps over budget would overflow λ to inf (and the
    combined advantage to NaN); log λ stops at the f32 guard (e^30) where (A_r − λA_c)/(1 + λ) is −A_c."""
    log_lam = jnp.float32(0.0)
    for _ in range(20):
        log_lam = ops.lagrange_update(log_lam, 5.0, 0.0, 0.5, None)
    assert float(log_lam) == ops.rl.LOG_LAMBDA_CEILING
    a_r, a_c = jnp.asarray([[1.0, -2.0]]), jnp.asarray([[0.5, 3.0]])
    np.testing.assert_allclose(ops.lagrangian_advantages(a_r, a_c, jnp.exp(log_lam)), -a_c, rtol=1e-6)
    assert float(ops.lagrange_update(jnp.float32(1.0), 2.0, 0.0, 0.1, None)) == pytest.approx(1.0 + 0.2 * np.e)


def test_pid_lambda_by_hand_delay_rise_floor_and_clamp():
    """lambda_update='pid' (spec §7.27): I ← max(0, I + k_i·e), λ = clip(k_p·e + I + k_d·max(0, ΔJ_c), 0, λ_max),
    e = J_c − d, through lambda_step with hand-computed numbers; (K,) constraints move each λ_k alone."""
    cfg = rl.RLConfig(mode="ppo_lag", lambda_update="pid", lambda_pid=(0.5, 0.25, 2.0), lambda_init=1.0,
                      lambda_max=3.0, lambda_update_delay_steps=1, threshold=0.5)
    empty = dict(actor=None, reward_critic=None, cost_critic=None, skipped=jnp.int32(0), rng=jax.random.PRNGKey(0))

    def step(state, costs):
        state = state.replace(cost_window=rl.CostWindow.empty(1, 2, cfg.num_constraints).push(jnp.asarray(costs)))
        log_lambda, pid, _ = rl.lambda_step(state, cfg)
        return state.replace(log_lambda=log_lambda, lambda_pid=pid, global_step=state.global_step + 1)

    state = rl.RLState(log_lambda=jnp.float32(0.0), global_step=jnp.int32(0), cost_window=None,
                       lambda_pid=rl.LagrangePID(jnp.float32(1.0), jnp.float32(0.0)), **empty)
    lam = lambda s: float(np.exp(s.log_lambda))  # noqa: E731
    state = step(state, [3.0, 3.0])  # global_step 0 < delay 1: nothing moves
    assert lam(state) == 1.0 and float(state.lambda_pid.integral) == 1.0
    state = step(state, [1.5, 0.5])  # J_c 1.0, e 0.5, the first update: no derivative term
    assert float(state.lambda_pid.integral) == pytest.approx(1.0 + 0.25 * 0.5)
    assert lam(state) == pytest.approx(0.5 * 0.5 + 1.125)
    state = step(state, [2.0, 2.0])  # J_c 2.0 rose by 1.0: e 1.5, I 1.5, λ = 0.75 + 1.5 + 2.0 → clamp 3.0
    assert float(state.lambda_pid.integral) == pytest.approx(1.5) and lam(state) == pytest.approx(3.0)
    state = step(state, [-9.5, -9.5])  # J_c −9.5: I floors at 0, λ at 0 (stored as log 1e-30)
    assert float(state.lambda_pid.integral) == 0.0 and lam(state) == pytest.approx(0.0, abs=1e-29)
    assert float(state.lambda_pid.previous_cost) == -9.5
    state = step(state, [0.5, 1.5])  # J_c 1.0, rise 10.5 → λ = 0.25 + 0.125 + 21 → 3.0
    assert lam(state) == pytest.approx(3.0) and float(state.lambda_pid.integral) == pytest.approx(0.125)
    # two constraints: each λ_k from its own J_ck (the second one far inside its budget stays at 0)
    cfg2 = rl.RLConfig(mode="grpo_lag", group_size=2, lambda_update="pid", lambda_pid=(1.0, 0.5, 0.0),
                       constraints=("a", "b"), thresholds=(0.0, 0.0), lambda_inits=(1.0, 1.0), lambda_lrs=(0.1, 0.1),
                       lambda_maxes=(None, 5.0))
    state = rl.RLState(log_lambda=jnp.zeros(2), global_step=jnp.int32(0), lambda_pid=rl.LagrangePID(
        jnp.ones(2), jnp.zeros(2)), cost_window=rl.CostWindow.empty(1, 2, 2).push(jnp.asarray([[1.0, -4.0]] * 2)),
        **empty)
    log_lambda, pid, _ = rl.lambda_step(state, cfg2)
    np.testing.assert_allclose(np.exp(log_lambda), [1.0 + 1.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(pid.integral, [1.5, 0.0])
    with pytest.raises(ValueError, match="lambda_update"):
        rl.RLConfig(mode="ppo_lag", lambda_update="adam")


def test_lambda_max_and_normalize_flags_come_from_the_config():
    from configs import ppo_lag as ppo_lag_cfg
    from saferlhf_jax.algorithms.rl_config import rl_config

    cfg = ppo_lag_cfg.get_config("tiny")
    assert rl_config(cfg).lambda_max == 5.0
    cfg.rl.lambda_max = 0.0
    assert rl_config(cfg).lambda_max is None
    cfg.rl.lambda_max = 7.5
    cfg.rl.lambda_update_delay_steps = 4
    got = rl_config(cfg)
    assert (got.lambda_max, got.lambda_update_delay_steps) == (7.5, 4)
    assert cfg.rl.normalize_reward is False and cfg.rl.normalize_cost is False  # the reference's defaults
    assert got.missing_eos_penalty == 5.0  # the recipe's (spec §7.34); off in the reference's preset
    assert rl_config(ppo_lag_cfg.get_config("reference")).missing_eos_penalty == 0.0
    cfg.rl.missing_eos_penalty = 2.5
    assert rl_config(cfg).missing_eos_penalty == 2.5
    cfg.rl.missing_eos_penalty = -1.0
    with pytest.raises(ConfigError, match="rl: missing_eos_penalty must be ≥ 0"):
        rl_config(cfg)


@pytest.mark.parametrize("key,value,message", [
    ("lambda_lr", -0.1, "lambda_lr must be ≥ 0"), ("kl_coeff", -0.01, "kl_coeff must be ≥ 0"),
    ("gamma", 1.5, "gamma must be in [0, 1]"), ("gae_lambda", -0.1, "gae_lambda must be in [0, 1]"),
    ("clip_range_ratio", 0.0, "clip_range_ratio must be > 0"), ("ptx_coeff", -1.0, "ptx_coeff must be ≥ 0")])
def test_rl_settings_outside_their_domain_are_one_line_errors(key, value, message):
    """A negative λ learning rate, for one, trained without complaint and moved λ away from the budget."""
    from configs import ppo_lag as ppo_lag_cfg
    from saferlhf_jax.algorithms.rl_config import rl_config

    cfg = ppo_lag_cfg.get_config("tiny")
    cfg.rl[key] = value
    with pytest.raises(ConfigError, match=f"rl: {message.replace('[', '.').replace(']', '.')}"):
        rl_config(cfg)


def test_ptx_gradient_is_half_of_rl_plus_coeff_times_ptx():
    """The actor update equals the optimizer fed ½(∇L_rl + c·∇L_ptx) computed by hand (spec §3.15)."""
    coeff = 4.0
    runner, state = _runner(ptx_coeff=coeff)
    ids, mask = _prompts()
    state, micro = runner.rollout(state, ids, mask)
    critics = {"reward": state.reward_critic.params, "cost": state.cost_critic.params}
    scores = jax.jit(lambda *a: rl.policy_scores(runner.models, *a))(state.actor.params, critics, micro[0].seq,
                                                                       micro[0].mask)
    rollout = micro[0].replace(**scores.fields())
    rng = np.random.default_rng(3)
    ptx_ids = rng.integers(1, 6, (8, 7)).astype(np.int32)
    ptx = {"input_ids": ptx_ids, "attention_mask": np.ones_like(ptx_ids, bool),
           "labels": np.where(rng.random((8, 7)) < 0.3, -100, ptx_ids).astype(np.int32)}
    new_state, metrics, _ = jax.jit(rl.make_rl_step(runner.models))(state, rollout, ptx)

    lam = jnp.exp(rl.lambda_step(state, runner.cfg)[0])
    adv = jax.jit(lambda r: rl.advantages(r, lam, runner.cfg).advantages)(rollout)
    resp = rl.response_mask(rollout.mask[:, 1:], rollout.start)
    apply = runner.actor.apply

    def l_rl(p):
        lp = ops.gather_log_probs(apply(p, rollout.seq, rollout.mask)[:, :-1], rollout.seq[:, 1:])
        return ops.ppo_actor_loss(lp, rollout.log_probs, adv, resp, runner.cfg.clip_range_ratio)

    def l_ptx(p):
        return ops.sft_loss(apply(p, ptx["input_ids"], ptx["attention_mask"]), ptx["labels"])

    @jax.jit
    def by_hand(params, opt_state):
        g = jax.tree.map(lambda a, b: 0.5 * (a + coeff * b), jax.grad(l_rl)(params), jax.grad(l_ptx)(params))
        updates, _ = runner.models.actor_opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), l_rl(params), l_ptx(params)

    want, rl_loss, ptx_loss = by_hand(state.actor.params, state.actor.opt_state)
    _close(new_state.actor.params, want, 2e-5)
    assert float(metrics["train/ptx_loss"]) == pytest.approx(float(ptx_loss), rel=1e-5)
    assert float(metrics["train/actor_loss"]) == pytest.approx(float(rl_loss), rel=1e-5, abs=1e-7)


def test_non_finite_update_is_skipped_and_counted():
    runner, state = _runner()
    ids, mask = _prompts()
    state, micro = runner.rollout(state, ids, mask)
    bad = micro[0].replace(reward=micro[0].reward.at[0].set(jnp.nan))
    before = jax.tree.map(np.asarray, state.actor.params)
    new_state, metrics, _ = jax.jit(rl.make_rl_step(runner.models, fresh=True))(state, bad, None)
    assert int(new_state.skipped) == 1 and int(new_state.global_step) == 1
    _close(new_state.actor.params, before, 0)
    assert int(new_state.actor.updates) == 0


# ---------------------------------------------------------------------------------------------------- the window


def _reference_window(pushes, shards, size):
    """The reference's semantics by hand: a deque of `size` per data-parallel rank, J_c = mean of the ranks' means."""
    import collections

    windows = [collections.deque(maxlen=size) for _ in range(shards)]
    means = []
    for costs in pushes:
        for s, part in enumerate(np.split(np.asarray(costs), shards)):
            windows[s].extend(part.tolist())
        means.append(np.mean([np.mean(w) for w in windows]))
    return means


@pytest.mark.parametrize("per_shard,size", [(1, 3), (2, 5), (4, 3)])
def test_cost_window_is_per_data_parallel_shard_on_8_devices(per_shard, size):
    if jax.device_count() < 8:
        pytest.skip("needs 8 simulated devices")
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = make_mesh(data=2, fsdp=4)
    rng = np.random.default_rng(per_shard)
    pushes = [rng.normal(size=8 * per_shard).astype(np.float32) for _ in range(5)]
    window = rl.CostWindow.empty(8, size)
    push = jax.jit(lambda w, c: w.push(c))
    got = []
    for costs in pushes:
        window = push(window, jax.device_put(costs, NamedSharding(mesh, P(("data", "fsdp")))))
        got.append(float(window.mean()))
    np.testing.assert_allclose(got, _reference_window(pushes, 8, size), rtol=1e-6)
    # … which is not what one global window of `size` fed with every row would give (the old, wrong statistic)
    assert abs(got[-1] - np.concatenate(pushes)[-size:].mean()) > 1e-4


def test_rollouts_fill_the_window_per_shard_on_8_devices():
    if jax.device_count() < 8:
        pytest.skip("needs 8 simulated devices")
    mesh = make_mesh(fsdp=8)
    runner, state = _runner(mesh=mesh, batch=16, window=3)
    assert state.cost_window.values.shape == (8, 3)
    ids, mask = _prompts(32)
    state, micro = runner.rollout(state, ids, mask)  # two micro-batches of 16 rows: 2 per shard each
    pushes = [np.asarray(m.cost) for m in micro]
    assert float(state.cost_window.mean()) == pytest.approx(_reference_window(pushes, 8, 3)[-1], rel=1e-6)
    assert int(state.cost_window.filled) == 3


# ---------------------------------------------------------------------------------------------------- budgets


def test_long_prompt_gets_max_length_minus_its_length():
    """A 150-token prompt under max_length 256 generates up to 106 tokens (the bucket would have left 0)."""
    runner, state = _runner("ppo", max_length=256, batch=2)
    ids = np.full((2, 160), PAD, np.int32)
    mask = np.zeros((2, 160), bool)
    ids[0, 10:] = np.r_[BOS, np.tile([A, B, 5], 50)[:149]]
    mask[0, 10:] = True  # 150 real tokens
    ids[1, -20:], mask[1, -20:] = np.r_[BOS, [A] * 19], True
    never_eos = GenerationConfig(max_length=256, top_k=0, eos_token_ids=(), pad_token_id=PAD)
    runner.gen = never_eos
    seq, seq_mask, start = runner.sample(runner.sampler_params(state.actor.params), ids, mask, jax.random.PRNGKey(0))
    assert seq.shape == (2, 256) and (start == 149).all()
    assert seq_mask[:, 150:].sum(axis=1).tolist() == [106, 106]  # exactly the reference's budget, no EOS cut
    assert seq_mask[0, :150].all() and seq_mask[1, :130].sum() == 0  # the short prompt stays left-padded
    state, micro = runner.rollout(state, ids, mask)
    new_state, metrics, _ = jax.jit(rl.make_rl_step(runner.models, fresh=True))(state, micro[0], None)
    assert float(metrics["train/mean_generated_length"]) == 106.0


# ---------------------------------------------------------------------------------------------------- data and eval


def test_last_partial_prompt_batch_is_kept():
    from saferlhf_jax.data import BatchIterator, TokenizedDataset

    ds = TokenizedDataset("prompt_only", [{"input_ids": np.asarray([1, 3 + i % 3], np.int32)} for i in range(10)],
                          {}, PAD, 8)
    it = BatchIterator(ds, 4, seed=5, drop_last=False)
    assert it.batches_per_epoch == 3
    order = it.order(0)
    assert it.global_indices(0, 2).tolist() == [order[8], order[9], order[0], order[1]]  # completed, not dropped
    seen = set()
    for _ in range(3):
        seen.update(next(it)["input_ids"][:, -1].tolist())
    assert it.state_dict() == {"epoch": 0, "position": 3}
    assert BatchIterator(ds, 4, seed=5).batches_per_epoch == 2  # the supervised stages keep drop_last


def test_model_generation_config_drives_eval_and_arena_sampling(tmp_path):
    from saferlhf_jax.evaluation.arena import model_sampling
    from saferlhf_jax.generation import model_sampling_defaults

    assert model_sampling_defaults(tmp_path) == {"temperature": 1.0, "top_k": 50, "top_p": 1.0}
    (tmp_path / "generation_config.json").write_text('{"temperature": 0.6, "top_p": 0.9, "do_sample": true}')
    assert model_sampling_defaults(tmp_path) == {"temperature": 0.6, "top_k": 50, "top_p": 0.9}

    class M:
        source = str(tmp_path)

    assert model_sampling(M(), {"temperature": None, "top_k": 7, "top_p": None}) == {
        "temperature": 0.6, "top_k": 7, "top_p": 0.9}
