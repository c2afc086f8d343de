"""PPO-Lag from the CLI on tiny real models: metric names, kill-and-resume, sharded == single device; PPO and the
reward-shaping baseline run through the same pieces."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest

from launch.common import parse_config, run_rl_cli
from saferlhf_jax import models
from saferlhf_jax.algorithms import ppo_lag

transformers = pytest.importorskip("transformers")

METRICS = ["train/reward", "train/cost", "train/lambda", "train/episode_cost", "train/kl_divergence",
           "train/reward_advantage", "train/reward_return", "train/reward_value", "train/cost_advantage",
           "train/cost_return", "train/cost_value", "train/actor_loss", "train/reward_critic_loss",
           "train/cost_critic_loss", "train/actor_lr", "train/reward_critic_lr", "train/cost_critic_lr",
           "train/reward_with_kl_penalty", "train/cost_with_kl_penalty", "train/mean_generated_length",
           "train/max_generated_length"]


def _argv(models_dir, out, config="configs/ppo_lag.py:tiny", *extra):
    return ["prog", f"--config={config}", f"--config.output_dir={out}",
            f"--config.actor_model_name_or_path={models_dir / 'sft'}",
            f"--config.reward_model_name_or_path={models_dir / 'reward'}",
            f"--config.cost_model_name_or_path={models_dir / 'cost'}",
            "--config.generation.max_length=96", "--config.data.max_prompt_length=64",
            "--config.data.prompt_buckets=(64,)", "--config.logging.progress=False",
            "--config.logging.tensorboard=False", "--config.mesh.fsdp=1", *extra]


def _rows(out):
    return [json.loads(line) for line in (pathlib.Path(out) / "metrics.jsonl").read_text().splitlines()]


def _strip(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_ppo_lag_cli_metrics_and_kill_and_resume(tiny_models, tmp_path):
    a, b = tmp_path / "interrupted", tmp_path / "straight"
    # the PID λ (spec §7.27): its memory (integral, last J_c) must come back from the checkpoint for the resumed
    # run's second λ to equal the straight run's (log λ, the only λ state of log-λ SGD, is restored in both modes)
    # λ from 1 (the recipe's 0.01 leaves it at 0 on both iterations here): the integral then has memory to restore
    common = ["--config.train.max_steps=2", "--config.checkpoint.every=1", "--config.rl.lambda_update=pid",
              "--config.rl.lambda_init=1.0"]
    assert run_rl_cli("", _argv(tiny_models, a, "configs/ppo_lag.py:tiny", *common,
                                "--config.train.stop_after_steps=1")) == 0
    assert not (a / "export").exists() and len(_rows(a)) == 1
    assert run_rl_cli("", _argv(tiny_models, a, "configs/ppo_lag.py:tiny", *common)) == 0  # resumes
    assert run_rl_cli("", _argv(tiny_models, b, "configs/ppo_lag.py:tiny", *common)) == 0
    ra, rb = _strip(_rows(a)), _strip(_rows(b))
    assert len(ra) == 2 and ra == rb
    assert ra[0]["train/lambda"] != ra[1]["train/lambda"]  # λ moved between the two iterations
    for name in METRICS:
        assert name in ra[0], name
    assert all(isinstance(ra[0][k], float) for k in METRICS)
    pa = models.safetensors_io.load_dir(a / "export")
    pb = models.safetensors_io.load_dir(b / "export")
    for k in pb:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    assert (b / "curves.png").stat().st_size > 1000
    again = models.load_causal_lm(b / "export")  # the aligned actor is a loadable HF model
    assert again.config.vocab_size == 513


def test_progress_bar_shows_a_pid_lambda_of_zero_as_0():
    """A PID λ of 0 is stored as log 1e-30; read back in f32 it is ~1.0000000032e-30, which the bar printed."""
    import jax.numpy as jnp

    from saferlhf_jax.algorithms import ppo_lag, rl

    stored = float(jnp.exp(jnp.log(jnp.maximum(jnp.float32(0.0), rl.PID_LAMBDA_FLOOR))))
    assert stored != 0.0 and ppo_lag._postfix(stored) == "0"
    assert [ppo_lag._postfix(x) for x in (0.5931, -1.372, 1e-5)] == ["0.593", "-1.37", "1e-05"]


def test_scanned_layers_with_full_remat_equal_unrolled(tiny_models, tmp_path):
    """The SmolLM2 preset runs PPO-Lag with scanned layers and full remat (its update step's temporaries 8.2 → 2.2
    GiB on CPU): every model of the run (actor, reference, reward, cost, both critics) loads stacked, samples,
    trains and exports the same as unrolled, over two iterations."""
    runs = {}
    for name, extra in (("unrolled", ()), ("scanned", ("--config.model.scan_layers=True",
                                                       "--config.model.remat_policy=full"))):
        out = tmp_path / name
        assert run_rl_cli("", _argv(tiny_models, out, "configs/ppo_lag.py:tiny", "--config.train.max_steps=2",
                                    *extra)) == 0
        runs[name] = (_strip(_rows(out)), models.safetensors_io.load_dir(out / "export"))
    (rows_u, export_u), (rows_s, export_s) = runs["unrolled"], runs["scanned"]
    assert len(rows_u) == len(rows_s) == 2
    for ru, rs in zip(rows_u, rows_s):
        assert ru.keys() == rs.keys()
        for key in ru:
            assert rs[key] == pytest.approx(ru[key], rel=1e-4, abs=1e-5), key
    assert export_u.keys() == export_s.keys()
    for k in export_u:  # HF layout: the stacked layers come back out one per layer
        # 3e-5: the recipe's λ is 0 here, so the actor's update is not halved by (1 + λ) as it was with λ from 1,
        # and the op-order noise of the two layouts with it (one of 11008 weights differed by 1.02e-5 at 1e-5)
        np.testing.assert_allclose(export_s[k], export_u[k], atol=3e-5, err_msg=k)


@pytest.mark.slow
def test_ppo_lag_sharded_equals_single_device(tiny_models, tmp_path):
    if jax.device_count() < 8:
        pytest.skip("needs 8 simulated devices")
    ppo_lag.run(parse_config(_argv(tiny_models, tmp_path / "one", "configs/ppo_lag.py:tiny",
                                   "--config.train.max_steps=1"), "")[0])
    many = ppo_lag.run(parse_config(_argv(tiny_models, tmp_path / "many", "configs/ppo_lag.py:tiny",
                                          "--config.train.max_steps=1", "--config.mesh.fsdp=8"), "")[0])
    emb = many["state"].actor.params["model"]["embed_tokens"]["embedding"]
    assert len(emb.sharding.device_set) == 8
    r1, r8 = _rows(tmp_path / "one")[0], _rows(tmp_path / "many")[0]
    for key in ("train/actor_loss", "train/reward_critic_loss", "train/cost_critic_loss", "train/lambda",
                "train/reward", "train/cost", "train/kl_divergence"):
        assert abs(r1[key] - r8[key]) <= 1e-5, (key, r1[key], r8[key])


@pytest.mark.parametrize("config,absent", [("configs/ppo.py:tiny", "train/cost"),
                                           ("configs/ppo_reward_shaping.py:tiny", "train/cost_critic_loss")])
def test_ppo_and_reward_shaping_run(tiny_models, tmp_path, config, absent):
    assert run_rl_cli("", _argv(tiny_models, tmp_path, config, "--config.train.max_steps=1")) == 0
    row = _rows(tmp_path)[0]
    assert absent not in row and "train/reward_critic_loss" in row
    if "shaping" in config:
        assert "train/cost" in row and row["train/lambda"] == pytest.approx(1.0)  # fixed λ, costs logged


def test_rollouts_from_a_bf16_copy_of_the_actor(tiny_models, tmp_path):
    """generation.rollout_dtype=bfloat16: the sampler reads a bf16 copy of the actor (made once per rollout), the
    update and the log-probs it uses stay f32 — the iteration runs and logs every metric, finite."""
    assert run_rl_cli("", _argv(tiny_models, tmp_path, "configs/ppo_lag.py:tiny", "--config.train.max_steps=1",
                                "--config.generation.rollout_dtype=bfloat16")) == 0
    row = _rows(tmp_path)[0]
    assert all(np.isfinite(row[k]) for k in METRICS), row
    assert abs(row["train/kl_divergence"]) < 1e-4  # the first update: the actor is still the reference


def test_rl_config_errors(tiny_models, tmp_path, capsys):
    assert run_rl_cli("", _argv(tiny_models, tmp_path, "configs/ppo_lag.py:tiny",
                                "--config.train.train_batch_size=3")) == 2
    assert "multiple of train.train_batch_size" in capsys.readouterr().err
    assert run_rl_cli("", _argv(tiny_models, tmp_path, "configs/ppo_lag.py:tiny",
                                f"--config.reward_model_name_or_path={tmp_path / 'missing'}")) == 2
    assert "error:" in capsys.readouterr().err


def test_reward_model_with_its_own_tokenizer_is_fed_retokenized_text(tiny_models, tmp_path, stories_dir):
    from saferlhf_jax.algorithms.rl_runner import make_retokenizer

    foreign = tmp_path / "foreign_rm"
    tok = transformers.AutoTokenizer.from_pretrained(tiny_models / "reward")
    tok.add_special_tokens({"additional_special_tokens": ["<extra>"]})  # another vocabulary than the actor's
    rm = models.load_score_model(tiny_models / "reward")
    rm, params = models.resize_token_embeddings(rm, rm.params, len(tok))
    models.save_pretrained(rm, params, foreign)
    tok.save_pretrained(foreign)
    actor_tok = transformers.AutoTokenizer.from_pretrained(tiny_models / "sft")
    retok = make_retokenizer(actor_tok, tok, 64)
    seq = np.array([[512, 1, 403, 407, 261, 2, 512]], np.int32)
    mask = np.array([[0, 1, 1, 1, 1, 1, 0]], bool)
    ids, m = retok(seq, mask)
    text = actor_tok.decode([1, 403, 407, 261, 2], skip_special_tokens=True) + tok.eos_token
    expected = tok(text).input_ids
    assert ids[0, :m[0].sum()].tolist() == expected and not m[0, m[0].sum():].any()
    assert ids.shape[1] >= len(expected)
    out = tmp_path / "run"
    argv = _argv(tiny_models, out, "configs/ppo.py:tiny", "--config.train.max_steps=1",
                 f"--config.reward_model_name_or_path={foreign}")
    assert run_rl_cli("", argv) == 0
    assert np.isfinite(_rows(out)[0]["train/reward"])


def test_rl_evaluation_ptx_reuse_and_normalize_flags(tiny_models, tmp_path):
    """eval/* rows at the start and the end with an answers table; PTX batches drawn once per iteration and reused
    on every update_iters pass; normalize_reward applies the reward model's stored stats."""
    from saferlhf_jax.checkpoint import Checkpointer

    out = tmp_path / "run"
    argv = _argv(tiny_models, out, "configs/ppo_lag.py:tiny", "--config.train.max_steps=1",
                 "--config.eval_datasets=PKU-SafeRLHF/test:4/-1", "--config.train.eval_batch_size=4",
                 "--config.ptx_datasets=alpaca:16/-1", "--config.rl.ptx_coeff=2.0", "--config.train.update_iters=2",
                 "--config.train.train_batch_size=4")
    assert run_rl_cli("", argv) == 0
    rows = _rows(out)
    evals = [r for r in rows if "eval/reward" in r]
    assert [r["iteration"] for r in evals] == [0, 1] and evals[0]["eval/prompts"] == 4
    assert {"eval/cost", "eval/unsafe_rate", "eval/mean_length"} <= set(evals[0])
    train = [r for r in rows if "train/ptx_loss" in r]
    assert len(train) == 4  # 2 micro-batches × 2 passes
    meta = Checkpointer(out / "checkpoints").read_meta()
    assert meta["ptx"]["position"] == 2 and meta["prompts"]["position"] == 1  # 2 PTX batches, not 4
    page = (out / "results.md").read_text()
    assert "## evaluation answers" in page and "| prompt | answer | reward | cost |" in page
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["eval/prompts"] == 4


@pytest.mark.parametrize("normalize", [False, True])
def test_critics_start_from_the_score_heads_and_normalize_flags_override_the_checkpoint(tiny_models, tmp_path,
                                                                                         normalize):
    import jax.numpy as jnp

    from saferlhf_jax.algorithms.rl_config import rl_config
    from saferlhf_jax.algorithms.rl_models import load_models
    from saferlhf_jax.data.tokenizer import load_tokenizer

    rm = models.load_score_model(tiny_models / "reward", score_type="reward", do_normalize=True)  # saved with stats
    rm.params["normalizer"] = {"mean": jnp.asarray([0.5]), "var": jnp.asarray([4.0]), "count": jnp.asarray(9.0)}
    models.save_pretrained(rm, rm.params, tmp_path / "rm")
    argv = _argv(tiny_models, tmp_path / "out", "configs/ppo_lag.py:tiny", f"--config.rl.normalize_reward={normalize}",
                 f"--config.rl.normalize_cost={normalize}", f"--config.reward_model_name_or_path={tmp_path / 'rm'}")
    cfg = parse_config(argv, "")[0]
    tok = load_tokenizer(cfg.actor_model_name_or_path)
    actor, reward_critic, cost_critic, frozen, reward_fn, cost_fn = load_models(cfg, rl_config(cfg), tok, None)
    for critic, scorer in ((reward_critic, frozen["reward"]), (cost_critic, frozen["cost"])):
        assert critic.config.score_type == "critic" and not critic.config.do_normalize
        np.testing.assert_array_equal(critic.params["score_head"]["kernel"], scorer["score_head"]["kernel"])
        np.testing.assert_array_equal(critic.params["model"]["norm"]["scale"], scorer["model"]["norm"]["scale"])
    ids = np.array([[1, 403, 407, 261, 2]], np.int32)
    mask = np.ones_like(ids, bool)
    raw = float(rm.apply(rm.params, ids, mask, normalize=False)[1][0, 0])
    got = float(reward_fn(frozen["reward"], ids, mask)[0])
    assert got == pytest.approx((raw - 0.5) / (2.0 + 1e-8) if normalize else raw, rel=1e-5)
    critic_end = float(reward_critic.apply(reward_critic.params, ids, mask)[1][0, 0])
    assert critic_end == pytest.approx(raw, rel=1e-5)  # identity normalisation, whatever the checkpoint says


@pytest.mark.slow
def test_bf16_frozen_models_match_float32_within_tolerance(tiny_models, tmp_path):
    """model.frozen_dtype=bfloat16 (the 7B presets' default) holds the reference, reward and cost models in bf16:
    the same rollouts (the actor is float32 in both) get scores and KLs within a stated tolerance."""
    rows = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        assert run_rl_cli("", _argv(tiny_models, out, "configs/ppo_lag.py:tiny", "--config.train.max_steps=1",
                                    f"--config.model.frozen_dtype={dtype}")) == 0
        rows[dtype] = _rows(out)[0]
    a, b = rows["float32"], rows["bfloat16"]
    assert a["train/mean_generated_length"] == b["train/mean_generated_length"]  # the same rollouts
    for key in ("train/reward", "train/cost", "train/actor_loss", "train/reward_critic_loss"):
        assert abs(a[key] - b[key]) <= 0.02 + 0.02 * abs(a[key]), (key, a[key], b[key])
    # the KL is a sum over response tokens of log π − log π_ref: bf16's unit roundoff (2^-8) per token's log-prob
    kl_tol = 2.0 ** -8 * a["train/mean_generated_length"]
    assert abs(a["train/kl_divergence"]) < 1e-4 and abs(b["train/kl_divergence"]) <= kl_tol, (b, kl_tol)
