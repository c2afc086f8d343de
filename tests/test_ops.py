"""The ops contract against the golden fixtures (spec §9), jitted and not, plus invariances."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saferlhf_jax import ops

FIXTURES = json.loads((pathlib.Path(__file__).parent / "golden_fixtures.json").read_text())
TOL = FIXTURES["_meta"]["tolerance"]

MASK_ARGS = {"mask", "sequence_mask", "better_mask", "worse_mask", "safer_mask", "unsafer_mask"}
INT_ARGS = {"labels", "better_ids", "worse_ids", "safer_ids", "unsafer_ids", "safer_safety_sign", "unsafer_safety_sign",
            "better_unsafe", "worse_unsafe"}
STATIC_ARGS = {"loss_type", "normalizer_type", "function", "start", "head", "transform"}
# Python scalars the contract also accepts as 0-d numpy arrays (spec §8).
SCALAR_ARGS = {"kl_coeff", "clip_range_score", "clip_range_ratio", "clip_range_value", "lam", "beta", "momentum",
               "lambda_max", "threshold", "lambda_lr", "log_lambda", "episode_cost", "gamma", "gae_lambda",
               "regularization", "delta"}


def _cast(name, value, zero_d):
    if value is None or isinstance(value, str):
        return value
    if name == "state":
        return {k: np.asarray(v, np.float32) for k, v in value.items()}
    if name in MASK_ARGS:
        return np.asarray(value).astype(bool)
    if name in INT_ARGS:
        return np.asarray(value, np.int32)
    if name == "start":
        return np.asarray(value, np.int32) if zero_d else int(value)
    if name in SCALAR_ARGS and isinstance(value, list):  # (K,) for K constraints; null = +inf (no clamp)
        return np.asarray([np.inf if v is None else v for v in value], np.float32)
    if name in SCALAR_ARGS:
        return np.asarray(value, np.float32) if zero_d else float(value)
    return np.asarray(value, np.float32)


def _cases():
    for fn_name, block in FIXTURES.items():
        if fn_name == "_meta":
            continue
        for case in block["cases"]:
            yield pytest.param(fn_name, case, id=f"{fn_name}-{case['id']}")


def _call(fn_name, inputs, jit, zero_d):
    fn = getattr(ops, fn_name)
    kwargs = {k: _cast(k, v, zero_d) for k, v in inputs.items()}
    if not jit:
        return fn(**kwargs)
    static = {k: (int(v) if k == "start" else v) for k, v in kwargs.items() if k in STATIC_ARGS or v is None}
    dynamic = {k: v for k, v in kwargs.items() if k not in static}
    return jax.jit(lambda dyn: fn(**dyn, **static))(dynamic)


def _assert_tree_close(actual, expected, path=""):
    if isinstance(expected, dict):
        assert set(actual) >= set(expected), f"{path}: missing keys {set(expected) - set(actual)}"
        for key in expected:
            _assert_tree_close(actual[key], expected[key], f"{path}/{key}")
        return
    actual = np.asarray(actual)
    assert actual.dtype == np.float32, f"{path}: dtype {actual.dtype}"
    np.testing.assert_allclose(actual, np.asarray(expected, np.float32), rtol=TOL["rtol"], atol=TOL["atol"],
                               err_msg=path)


def _as_tree(fn_name, result):
    if fn_name == "gae_advantages_and_returns":
        return {"advantages": result[0], "returns": result[1]}
    if fn_name in ("reward_model_loss", "cost_model_loss", "dpo_loss", "safedpo_loss"):
        return {"loss": result[0], "aux": result[1]}
    return result


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("fn_name,case", list(_cases()))
def test_golden(fn_name, case, jit):
    result = _call(fn_name, case["inputs"], jit, zero_d=False)
    _assert_tree_close(_as_tree(fn_name, result), case["expected"], fn_name)


@pytest.mark.parametrize("fn_name,case", list(_cases()))
def test_golden_zero_d_scalars(fn_name, case):
    result = _call(fn_name, case["inputs"], jit=False, zero_d=True)
    _assert_tree_close(_as_tree(fn_name, result), case["expected"], fn_name)


def test_fixture_coverage_is_complete():
    """Every contract function has cases, and every case id ran above (guards against an empty parametrization)."""
    names = [k for k in FIXTURES if k != "_meta"]
    # the 13 base-spec functions (45 cases) + SafeDPO's loss (5 cases from METHODS_BEYOND §1.5) + several
    # constraints (METHODS_BEYOND §3.7: 2 combined-advantage, 3 vector λ-update, 6 moderation-cost cases)
    assert len(names) == 16 and sum(len(FIXTURES[n]["cases"]) for n in names) == 61


# --------------------------------------------------------------------------- DPO slicing helper


@pytest.mark.parametrize("case", FIXTURES["dpo_loss"]["cases"], ids=lambda c: c["id"])
def test_dpo_slicing_helper_reproduces_fixture_sums(case):
    prov = case["provenance"]
    slicing = case["slicing"]
    pairs = [("policy_better_logps", "policy_better_token_logps", "better", "worse"),
             ("policy_worse_logps", "policy_worse_token_logps", "worse", "better"),
             ("ref_better_logps", "ref_better_token_logps", "better", "worse"),
             ("ref_worse_logps", "ref_worse_token_logps", "worse", "better")]
    for out_name, lp_name, side, other in pairs:
        summed = ops.dpo_sequence_log_probs(
            np.asarray(prov[lp_name], np.float32), np.asarray(prov[f"{side}_ids"]),
            np.asarray(prov[f"{side}_mask"]), np.asarray(prov[f"{other}_ids"]), slicing=slicing)
        np.testing.assert_allclose(summed, case["inputs"][out_name], atol=1e-6)
    # and the windows equal the stored half-open slices
    for b, sl in enumerate(prov["slices"]):
        for side, other in (("better", "worse"), ("worse", "better")):
            window = np.asarray(ops.dpo_action_window(np.asarray(prov[f"{side}_ids"]), np.asarray(prov[f"{side}_mask"]),
                                                      np.asarray(prov[f"{other}_ids"]), slicing))[b]
            lo, hi = sl[f"{side}_action_slice"]
            assert np.flatnonzero(window).tolist() == list(range(lo, hi))


# --------------------------------------------------------------------------- invariances


def _rl_fixture():
    return FIXTURES["gae_advantages_and_returns"]["cases"][0]["inputs"]


def _pad_right(x, n, value=0.0):
    x = np.asarray(x)
    return np.pad(x, [(0, 0), (0, n)] + [(0, 0)] * (x.ndim - 2), constant_values=value)


def test_right_padding_invariance_rl():
    inp = _rl_fixture()
    values, rewards, mask, start = (np.asarray(inp["values"], np.float32), np.asarray(inp["rewards"], np.float32),
                                    np.asarray(inp["sequence_mask"]).astype(bool), inp["start"])
    adv, ret = ops.gae_advantages_and_returns(values, rewards, mask, start)
    rng = np.random.default_rng(0)
    pv, pr = _pad_right(values, 5), _pad_right(rewards, 5)
    pv[:, -5:] = rng.normal(size=(2, 5))  # garbage under the mask must not matter
    pr[:, -5:] = rng.normal(size=(2, 5))
    pmask = _pad_right(mask, 5, False)
    padv, pret = ops.gae_advantages_and_returns(pv, pr, pmask, start)
    np.testing.assert_allclose(padv[:, : adv.shape[1]], adv, atol=1e-6)
    np.testing.assert_allclose(pret[:, : ret.shape[1]], ret, atol=1e-6)

    tm = mask[:, start:]
    new_lp = rng.normal(size=adv.shape).astype(np.float32)
    old_lp = rng.normal(size=adv.shape).astype(np.float32)
    loss = ops.ppo_actor_loss(new_lp, old_lp, adv, tm, 0.2)
    loss_p = ops.ppo_actor_loss(_pad_right(new_lp, 5), _pad_right(old_lp, 5), padv, _pad_right(tm, 5, False), 0.2)
    np.testing.assert_allclose(loss_p, loss, atol=1e-6)
    closs = ops.critic_loss(new_lp, old_lp, ret, tm, 5.0)
    closs_p = ops.critic_loss(_pad_right(new_lp, 5), _pad_right(old_lp, 5), pret, _pad_right(tm, 5, False), 5.0)
    np.testing.assert_allclose(closs_p, closs, atol=1e-6)

    kl = FIXTURES["kl_shaped_scores"]["cases"][0]["inputs"]
    base = ops.kl_shaped_scores(kl["end_scores"], kl["log_probs"], kl["ref_log_probs"],
                                np.asarray(kl["sequence_mask"]).astype(bool), 0.02, 50.0)
    padded = ops.kl_shaped_scores(kl["end_scores"], _pad_right(kl["log_probs"], 3), _pad_right(kl["ref_log_probs"], 3),
                                  _pad_right(np.asarray(kl["sequence_mask"]).astype(bool), 3, False), 0.02, 50.0)
    np.testing.assert_allclose(padded[:, :-3], base, atol=1e-6)


@pytest.mark.parametrize("fn_name", ["reward_model_loss", "cost_model_loss"])
@pytest.mark.parametrize("loss_type", ["sequence-wise", "token-wise"])
def test_right_padding_invariance_score_losses(fn_name, loss_type):
    case = next(c for c in FIXTURES[fn_name]["cases"] if c["inputs"]["loss_type"] == loss_type)
    kwargs = {k: _cast(k, v, False) for k, v in case["inputs"].items()}
    padded = {}
    for k, v in kwargs.items():
        if isinstance(v, np.ndarray) and v.ndim == 2:
            fill = False if v.dtype == bool else (0 if v.dtype == np.int32 else 123.0)
            padded[k] = _pad_right(v, 4, fill)
        else:
            padded[k] = v
    base = getattr(ops, fn_name)(**kwargs)
    out = getattr(ops, fn_name)(**padded)
    _assert_tree_close({"loss": out[0], "aux": out[1]}, {"loss": float(base[0]),
                                                          "aux": {k: float(v) for k, v in base[1].items()}})


def test_sft_loss_padding_and_global_mean():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 6, 11)).astype(np.float32)
    labels = np.array([[-100, -100, 3, 4, 5, -100], [-100, 1, 2, 3, 4, 5]], np.int32)
    loss = float(ops.sft_loss(logits, labels))
    # by hand: CE of logits[:, :-1] vs labels[:, 1:], global mean over valid labels
    lp = np.asarray(jax.nn.log_softmax(logits[:, :-1], axis=-1))
    tgt = labels[:, 1:]
    ce = [-lp[b, t, tgt[b, t]] for b in range(2) for t in range(5) if tgt[b, t] != -100]
    np.testing.assert_allclose(loss, np.mean(ce), rtol=1e-6)
    padded = ops.sft_loss(_pad_right(logits, 3, 0.0), _pad_right(labels, 3, -100))
    np.testing.assert_allclose(padded, loss, rtol=1e-6)
    assert np.isnan(ops.sft_loss(logits, np.full_like(labels, -100)))


# --------------------------------------------------------------------------- GAE property test


def _gae_numpy(values, rewards, mask, start, gamma, lam):
    values = values * mask
    rewards = rewards * mask
    b, t = values.shape
    adv = np.zeros((b, t), np.float64)
    last = np.zeros(b)
    for i in range(t - 1, start - 1, -1):
        nxt = values[:, i + 1] if i < t - 1 else 0.0
        delta = rewards[:, i] + gamma * nxt - values[:, i]
        last = delta + gamma * lam * last
        adv[:, i] = last
    return adv[:, start:], adv[:, start:] + values[:, start:]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 4), t=st.integers(2, 12),
       gamma=st.floats(0.5, 1.0), lam=st.floats(0.0, 1.0), data=st.data())
def test_gae_matches_numpy_loop(seed, b, t, gamma, lam, data):
    start = data.draw(st.integers(0, t - 1))
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(b, t)).astype(np.float32)
    rewards = rng.normal(size=(b, t)).astype(np.float32)
    mask = rng.random((b, t)) < 0.7  # arbitrary, not necessarily contiguous
    adv, ret = ops.gae_advantages_and_returns(values, rewards, mask, start, gamma=gamma, gae_lambda=lam)
    exp_adv, exp_ret = _gae_numpy(values.astype(np.float64), rewards.astype(np.float64), mask, start, gamma, lam)
    np.testing.assert_allclose(adv, exp_adv, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ret, exp_ret, rtol=1e-4, atol=1e-4)


def test_gae_is_a_scan_not_unrolled():
    """The lowered program of a long sequence has one while loop, not T unrolled steps."""
    x = jnp.zeros((2, 256))
    text = jax.jit(lambda v, r, m: ops.gae_advantages_and_returns(v, r, m, 3)).lower(
        x, x, jnp.ones((2, 256), bool)).as_text()
    assert text.count("stablehlo.while") == 1


# --------------------------------------------------------------------------- validation and dtypes


def test_validation_errors_are_clear():
    z = np.zeros((2, 4), np.float32)
    m = np.ones((2, 4), bool)
    with pytest.raises(ValueError, match="loss_type"):
        ops.reward_model_loss(z, m, z, m, z, z, loss_type="pairwise")
    with pytest.raises(ValueError, match="shapes must match"):
        ops.ppo_actor_loss(z, z[:, :3], z, m, 0.2)
    with pytest.raises(ValueError, match="rank 2"):
        ops.gae_advantages_and_returns(z[0], z[0], m[0], 0)
    with pytest.raises(ValueError, match="start"):
        ops.gae_advantages_and_returns(z, z, m, 4)
    with pytest.raises(ValueError, match="momentum"):
        ops.normalizer_update(ops.init_normalizer_state(), z[:, :1], "ExponentialMovingAverage")
    with pytest.raises(ValueError, match="normalizer_type"):
        ops.normalizer_update(ops.init_normalizer_state(), z[:, :1], "ema")
    with pytest.raises(ValueError, match="function"):
        ops.normalize(z, ops.init_normalizer_state(), "zscore")
    with pytest.raises(ValueError, match="end_scores"):
        ops.kl_shaped_scores(np.zeros(3), z, z, m, 0.1, 1.0)


def test_results_are_float32_for_bf16_inputs():
    x = jnp.ones((2, 3), jnp.bfloat16)
    m = jnp.ones((2, 3), bool)
    assert ops.masked_mean(x, m).dtype == jnp.float32
    assert ops.gather_log_probs(jnp.ones((2, 3, 5), jnp.bfloat16), jnp.zeros((2, 3), jnp.int32)).dtype == jnp.float32
    adv, ret = ops.gae_advantages_and_returns(x, x, m, 0)
    assert adv.dtype == ret.dtype == jnp.float32
    assert ops.critic_loss(x, x, x, m, 1.0).dtype == jnp.float32


# --------------------------------------------------------------------------- schedules


def test_schedules_follow_spec_table():
    t, w = 10, 2
    cos = ops.lr_multiplier("cosine", t, w)
    lin = ops.lr_multiplier("linear", t, w)
    const = ops.lr_multiplier("constant", t, w)
    cww = ops.lr_multiplier("constant_with_warmup", t, w)
    ks = np.arange(12)
    exp_cos = [k / w if k < w else max(0.0, 0.5 * (1 + np.cos(np.pi * (k - w) / (t - w)))) for k in ks]
    exp_lin = [k / w if k < w else max(0.0, (t - k) / (t - w)) for k in ks]
    np.testing.assert_allclose([float(cos(k)) for k in ks], exp_cos, atol=1e-6)
    np.testing.assert_allclose([float(lin(k)) for k in ks], exp_lin, atol=1e-6)
    np.testing.assert_allclose([float(const(k)) for k in ks], 1.0)
    np.testing.assert_allclose([float(cww(k)) for k in ks], [min(1.0, k / w) for k in ks], atol=1e-6)
    assert float(cos(0)) == 0.0  # with warmup the first update uses rate 0
    assert ops.warmup_steps_from_ratio(100, 0.03) == 3
