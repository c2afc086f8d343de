"""Training stages from the CLI on the shipped data: overfitting (gradients flow through the right formulas),
exact kill-and-resume, sharded == single-device trajectories, atomic checkpoints, HF export."""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from launch.common import parse_config, run_training_cli
from saferlhf_jax import models
from saferlhf_jax.algorithms import reward
from saferlhf_jax.training import trainer

FAST = ["--config.data.max_length=192", "--config.data.buckets=(192,)", "--config.logging.progress=False",
        "--config.mesh.fsdp=1",
        "--config.logging.tensorboard=False", "--config.train.lr_warmup_ratio=0.0"]


def _argv(stage, out, *extra):
    return ["prog", f"--config=configs/{stage}.py:tiny", f"--config.output_dir={out}", *FAST, *extra]


def _rows(out, prefix=None):
    rows = [json.loads(line) for line in (pathlib.Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if (prefix is None and not any(k.startswith("eval/") for k in r))
            or (prefix is not None and any(k.startswith(prefix) for k in r))]


OVERFIT = {
    "reward": ("accuracy", ["--config.train_datasets=PKU-SafeRLHF/train:16/-1",
                            "--config.eval_datasets=PKU-SafeRLHF/train:16/-1", "--config.loss.regularization=0.0"]),
    "cost": ("accuracy", ["--config.train_datasets=PKU-SafeRLHF/train:16/-1",
                          "--config.eval_datasets=PKU-SafeRLHF/train:16/-1"]),
    "dpo": ("reward_accuracy", ["--config.train_datasets=PKU-SafeRLHF/train:16/-1",
                                "--config.eval_datasets=PKU-SafeRLHF/train:16/-1"]),
}


# all slow: in CI the testbed of tests/test_pipeline.py trains a reward and a cost model through the same stages and
# asserts their held-out accuracy (> 0.8, sign accuracy included) on the world's pairs
@pytest.mark.parametrize("stage", [pytest.param("reward", marks=pytest.mark.slow),
                                   pytest.param("cost", marks=pytest.mark.slow),
                                   pytest.param("dpo", marks=pytest.mark.slow)])
def test_pair_stages_overfit_16_pairs(tmp_path, stage):
    metric, extra = OVERFIT[stage]
    rc = run_training_cli(stage, f"configs/{stage}.py:tiny", _argv(
        stage, tmp_path, *extra, "--config.train.max_steps=40", "--config.train.learning_rate=3e-3",
        "--config.train.lr_scheduler_type=constant", "--config.train.eval_every=40", "--config.checkpoint.every=0"))
    assert rc == 0
    train_rows = _rows(tmp_path)
    assert train_rows[-1]["loss"] < 0.5 * train_rows[0]["loss"], (train_rows[0], train_rows[-1])
    final_eval = _rows(tmp_path, "eval/")[-1]
    assert final_eval[f"eval/{metric}"] == 1.0, final_eval
    if stage == "cost":
        assert final_eval["eval/accuracy_sign"] >= 0.9  # the sign term learned the 0 boundary too
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 40 and (tmp_path / "export" / "model.safetensors").is_file()
    page = (tmp_path / "results.md").read_text()  # the per-run results page
    assert "## evaluation" in page and "![curves.png](curves.png)" in page and "## Settings" in page
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_sft_loss_decreases_and_exports_a_causal_lm(tmp_path):
    rc = run_training_cli("sft", "configs/sft.py:tiny", _argv(
        "sft", tmp_path, "--config.train_datasets=alpaca:16/-1", "--config.eval_datasets=alpaca:16/-1",
        "--config.train.max_steps=30", "--config.train.learning_rate=3e-3", "--config.train.lr_scheduler_type=constant"))
    assert rc == 0
    rows = _rows(tmp_path)
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"]
    evals = _rows(tmp_path, "eval/")
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    assert {"step", "loss", "lr", "tokens_per_sec", "grad_norm"} <= set(rows[0])
    lm = models.load_causal_lm(tmp_path / "export")
    assert lm.config.vocab_size == 513  # <pad> added, embeddings grown
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "export").pad_token == "<pad>"


def _params_of(out):
    return models.safetensors_io.load_dir(pathlib.Path(out) / "export")


def test_kill_and_resume_continues_the_same_trajectory(tmp_path):
    common = ["--config.train_datasets=PKU-SafeRLHF/train:32/-1", "--config.eval_datasets=PKU-SafeRLHF/test:8/-1",
              "--config.train.max_steps=6", "--config.checkpoint.every=3", "--config.train.eval_every=3"]
    a, b = tmp_path / "interrupted", tmp_path / "straight"
    assert run_training_cli("cost", "", _argv("cost", a, *common, "--config.train.stop_after_steps=3")) == 0
    assert not (a / "export").exists()
    assert json.loads((a / "summary.json").read_text())["steps"] == 3
    assert run_training_cli("cost", "", _argv("cost", a, *common)) == 0  # the same command resumes
    assert run_training_cli("cost", "", _argv("cost", b, *common)) == 0
    pa, pb = _params_of(a), _params_of(b)
    for k in pb:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "tokens_per_sec"} for r in rows]  # noqa: E731
    ra, rb = strip(_rows(a)), strip(_rows(b))
    assert len(ra) == 6 and ra == rb
    assert _rows(a, "eval/") == _rows(b, "eval/")
    # a different config in the same output_dir is refused, in one line, before anything runs
    assert run_training_cli("cost", "", _argv("cost", a, *common, "--config.train.learning_rate=0.5")) == 2


def test_killed_save_leaves_previous_checkpoint_restorable(tmp_path, capsys):
    common = ["--config.train_datasets=PKU-SafeRLHF/train:32/-1", "--config.eval_datasets=()",
              "--config.train.max_steps=4", "--config.checkpoint.every=2"]
    assert run_training_cli("reward", "", _argv("reward", tmp_path, *common, "--config.train.stop_after_steps=2")) == 0
    ckpts = tmp_path / "checkpoints"
    # a save of step 4 that died half-way: orbax only ever renames a finished temporary directory into place
    broken = ckpts / "4.orbax-checkpoint-tmp-1700000000"
    shutil.copytree(ckpts / "2", broken)
    for f in list(broken.rglob("*"))[:3]:
        if f.is_file():
            f.write_bytes(b"truncated")
    from saferlhf_jax.checkpoint import Checkpointer

    assert Checkpointer(ckpts).latest_step() == 2
    assert run_training_cli("reward", "", _argv("reward", tmp_path, *common)) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 4
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3, 4]
    # finished and exported: only the last state stays (checkpoint.keep_when_done=1), the export is the result
    assert Checkpointer(ckpts).all_steps() == [4] and (tmp_path / "export" / "config.json").is_file()


def _tiny_cfg(out, *extra):
    cfg, _ = parse_config(_argv("reward", out, "--config.train_datasets=PKU-SafeRLHF/train:32/-1",
                                "--config.eval_datasets=PKU-SafeRLHF/test:8/-1", "--config.train.max_steps=3",
                                "--config.checkpoint.every=0", *extra), "configs/reward.py:tiny")
    return cfg


@pytest.mark.parametrize("mesh", [("1", "8", "1"), pytest.param(("2", "2", "2"), marks=pytest.mark.slow)],
                         ids=["fsdp8", "d2f2t2"])
def test_sharded_trajectory_equals_single_device(tmp_path, mesh):
    if jax.device_count() < 8:
        pytest.skip("needs 8 simulated devices")
    single = trainer.train(reward.STAGE, _tiny_cfg(tmp_path / "one"))
    data, fsdp, tensor = mesh
    sharded = trainer.train(reward.STAGE, _tiny_cfg(tmp_path / "many", f"--config.mesh.data={data}",
                                                    f"--config.mesh.fsdp={fsdp}", f"--config.mesh.tensor={tensor}"))
    emb = sharded["state"]["params"]["model"]["embed_tokens"]["embedding"]
    assert len(emb.sharding.device_set) == 8
    r1, r8 = _rows(tmp_path / "one"), _rows(tmp_path / "many")
    for a, b in zip(r1, r8):
        for key in ("loss", "accuracy", "reward_mean"):
            assert abs(a[key] - b[key]) <= 1e-5, (key, a[key], b[key])
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4 * a["grad_norm"]  # a sum of squares: reduction order
    e1, e8 = _rows(tmp_path / "one", "eval/")[-1], _rows(tmp_path / "many", "eval/")[-1]
    assert abs(e1["eval/reward_mean"] - e8["eval/reward_mean"]) <= 1e-5
    assert single["eval"]["accuracy"] == sharded["eval"]["accuracy"]


def test_reward_export_reloads_with_identical_end_scores(tmp_path):
    summary = trainer.train(reward.STAGE, _tiny_cfg(tmp_path))
    state, model = summary["state"], summary["model"]
    assert float(state["params"]["normalizer"]["count"]) == 3 * 8 * 2  # EMA stats tracked in training
    again = models.load_score_model(tmp_path / "export")
    assert again.config.score_type == "reward" and again.config.normalizer_type == "ExponentialMovingAverage"
    np.testing.assert_allclose(np.asarray(again.params["normalizer"]["mean"]),
                               np.asarray(state["params"]["normalizer"]["mean"]))
    ids = np.array([[1, 403, 407, 261, 378, 2, 512, 512], [1, 403, 410, 261, 378, 432, 383, 2]])
    mask = ids != 512
    _, end_trained = model.apply(state["params"], ids, mask)
    _, end_loaded = again.apply(again.params, ids, mask)
    np.testing.assert_array_equal(np.asarray(end_trained), np.asarray(end_loaded))


def test_config_errors_are_one_line(tmp_path, capsys):
    assert run_training_cli("reward", "", _argv("reward", tmp_path, "--config.train.batchsize=3")) == 2
    assert "unknown config key 'train.batchsize'; did you mean batch_size" in capsys.readouterr().err
    assert run_training_cli("reward", "", _argv("reward", tmp_path, "--config.mesh.fsdp=16")) == 2
    assert "mesh:" in capsys.readouterr().err
    if jax.device_count() >= 8:
        assert run_training_cli("reward", "", _argv("reward", tmp_path, "--config.mesh.fsdp=8",
                                                    "--config.train.batch_size=12")) == 2
        assert "multiple of the data axes" in capsys.readouterr().err
    assert run_training_cli("reward", "", _argv("reward", tmp_path, "--config.train_datasets=PKU-SafeRLHF")) == 2
    assert "needs a split" in capsys.readouterr().err
    assert run_training_cli("reward", "", _argv("reward", tmp_path, "--config.loss.loss_type=pairwise")) == 2
    assert "loss_type" in capsys.readouterr().err
    err = capsys.readouterr().err
    assert "Traceback" not in err


@pytest.mark.parametrize("do_normalize", [True, False])
def test_score_normalizer_updates_on_raw_scores_then_normalizes_with_the_new_stats(do_normalize):
    """Spec §3.4: the step's raw end scores (all shards) update the EMA stats; the loss sees scores normalised with
    the *updated* stats. The stored stats start away from (0, 1) so that normalising at all changes the loss."""
    import jax.numpy as jnp
    import optax

    from saferlhf_jax import ops
    from saferlhf_jax.models import ModelConfig, init_model

    cfg = ModelConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, initializer_range=0.5, score_type="reward", do_normalize=do_normalize,
                      normalizer_type="ExponentialMovingAverage", momentum=0.9)
    model = init_model(cfg, "score", rng=4)
    params = dict(model.params, normalizer={"mean": jnp.asarray([0.7]), "var": jnp.asarray([2.5]),
                                            "count": jnp.asarray(10.0)})
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 16, (2, 4, 6)).astype(np.int32)
    mask = np.ones((2, 4, 6), bool)
    mask[:, 1, 4:] = False
    batch = {"better_input_ids": ids[0], "better_attention_mask": mask[0], "worse_input_ids": ids[1],
             "worse_attention_mask": mask[1]}
    lc = trainer.LossConfig(normalizer_type="ExponentialMovingAverage", momentum=0.9)
    opt = optax.sgd(0.0)
    state = {"step": jnp.int32(0), "updates": jnp.int32(0), "skipped": jnp.int32(0), "params": params,
             "opt_state": opt.init({k: v for k, v in params.items() if k != "normalizer"}),
             "rng": jax.random.PRNGKey(0)}
    step = jax.jit(trainer.make_train_step(reward.STAGE, model, opt, lambda s: 0.0, lc, 1))
    new_state, metrics = step(state, jax.tree.map(lambda x: x[None], batch), {})

    both_ids, both_mask = np.concatenate([ids[0], ids[1]]), np.concatenate([mask[0], mask[1]])
    scores, end = model.apply(params, both_ids, both_mask, normalize=False)  # raw
    stats = ops.normalizer_update(params["normalizer"], end, "ExponentialMovingAverage", 0.9)
    for k in ("mean", "var", "count"):
        np.testing.assert_allclose(new_state["params"]["normalizer"][k], stats[k], rtol=1e-6)
    if do_normalize:
        scores = ops.normalize(scores, stats, "affine")
    want, _ = ops.reward_model_loss(scores[:4, :, 0], mask[0], scores[4:, :, 0], mask[1], ids[0], ids[1])
    assert float(metrics["loss"]) == pytest.approx(float(want), rel=1e-5)
    stale = ops.normalize(model.apply(params, both_ids, both_mask, normalize=False)[0], params["normalizer"],
                          "affine")
    stale_loss, _ = ops.reward_model_loss(stale[:4, :, 0], mask[0], stale[4:, :, 0], mask[1], ids[0], ids[1])
    if do_normalize:  # the pre-batch stats (the old order) would give another loss
        assert abs(float(stale_loss) - float(want)) > 1e-4


def test_config_sections_added_later_do_not_strand_old_checkpoints():
    """A checkpoint written before `lora` / `rl.constraints` existed resumes while they are off, not when on."""
    from saferlhf_jax.training.run import added_while_off

    assert added_while_off("lora.alpha", {"lora.rank": 0}) and added_while_off("lora.rank", {"lora.rank": 0})
    assert not added_while_off("lora.alpha", {"lora.rank": 4})
    assert added_while_off("rl.cost_models.cm", {"rl.constraints": []})
    assert not added_while_off("rl.constraints", {"rl.constraints": [{"name": "x"}]})
    assert not added_while_off("train.max_steps", {"train.max_steps": 3})


def test_a_full_disk_at_a_checkpoint_is_one_line(tmp_path, monkeypatch, caplog):
    """orbax reports ENOSPC from its writer threads as a long ValueError, after logging each thread's traceback;
    the user gets one line saying what and how to resume (the run's earlier checkpoints are untouched). Any other
    failure keeps orbax's logged errors."""
    import logging

    from saferlhf_jax.checkpoint import Checkpointer
    from saferlhf_jax.errors import TrainingError

    ckpt = Checkpointer(tmp_path / "checkpoints")
    state = {"w": np.ones((4,), np.float32)}
    ckpt.save(1, state, {"step": 1})

    def full(*args, **kwargs):
        logging.getLogger("absl").error("[thread=array_type_handler] _SignalingThread.run() raised an exception: "
                                        "Traceback (most recent call last): ...")
        raise ValueError("RESOURCE_EXHAUSTED: Error writing \"w/0.0\" in OCDBT database: Failed to write 16 bytes to "
                         "file 23: No space left on device [os_error_code='28']")

    monkeypatch.setattr(ckpt.manager, "save", full)
    with pytest.raises(TrainingError, match=r"^checkpoint 2 could not be written to .*: no space left on device; "
                                            r"free space .* resumes from the last complete checkpoint$"):
        ckpt.save(2, state, {"step": 2})
    assert "_SignalingThread" not in caplog.text

    def other(*args, **kwargs):
        logging.getLogger("absl").error("_SignalingThread.run() raised an exception: other")
        raise ValueError("other")

    monkeypatch.setattr(ckpt.manager, "save", other)
    with pytest.raises(ValueError, match="other"):  # anything else is not re-labelled
        ckpt.save(3, state, {"step": 3})
    assert "raised an exception: other" in caplog.text
    assert ckpt.latest_step() == 1
    assert not logging.getLogger("absl").filters  # the hold ends with the save


def test_resume_refuses_a_base_model_that_changed(tmp_path):
    """METHODS_BEYOND §4.4: a checkpoint records the fingerprint of every model the run reads (a LoRA run's
    adapters mean nothing on other base weights); after the base is re-written in place, opening the run again is
    refused in one line, before anything in the directory is touched; the same weights again open it."""
    from safetensors.numpy import load_file, save_file

    from configs.common import DEFAULT_MODEL
    from saferlhf_jax.errors import ConfigError
    from saferlhf_jax.training.run import Run, model_fingerprint

    base = tmp_path / "base"
    shutil.copytree(DEFAULT_MODEL, base)
    cfg = _tiny_cfg(tmp_path / "run", f"--config.model_name_or_path={base}", "--config.lora.rank=4")
    with Run(cfg, "reward") as run:
        assert set(run.models) == {"model_name_or_path"}
        run.save(1, {"w": np.ones((2,), np.float32)}, {})
    original = (base / "model.safetensors").read_bytes()
    tensors = load_file(str(base / "model.safetensors"))
    name = sorted(tensors)[-1]
    tensors[name] = tensors[name] + np.float32(0.01).astype(tensors[name].dtype)  # re-trained in place
    save_file(tensors, str(base / "model.safetensors"), metadata={"format": "pt"})
    assert model_fingerprint(base) != model_fingerprint(DEFAULT_MODEL)
    with pytest.raises(ConfigError, match=r"built on other weights: model_name_or_path \(.*base\) changed"):
        Run(cfg, "reward")
    (base / "model.safetensors").write_bytes(original)
    with Run(cfg, "reward") as run:
        assert run.resuming


def test_checkpoint_saves_do_not_grow_the_resident_set(tmp_path):
    """Each save's compression and write buffers (~the state's size, on orbax/tensorstore threads) went back to
    glibc's arenas, not to the OS: the anonymous resident set grew by ~0.6× the state per save (the SmolLM2 PPO-Lag
    preset reached 16 GB with a save per iteration). Incompressible data, as real weights are."""
    import os
    import sys

    import jax
    import jax.numpy as jnp

    from benchmarks.peak_rss import process_rss_bytes
    from saferlhf_jax.checkpoint import Checkpointer

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")

    def anon_bytes():
        return process_rss_bytes(os.getpid())[1]

    rng = np.random.default_rng(0)
    state = {f"w{i}": jnp.asarray(rng.standard_normal((1024, 1024), dtype=np.float32)) for i in range(96)}
    step = jax.jit(lambda s: jax.tree.map(lambda x: x * 1.0001, s), donate_argnums=0)
    state = jax.block_until_ready(step(state))
    size = sum(x.nbytes for x in state.values())  # 384 MiB
    ckpt = Checkpointer(tmp_path / "ckpt", max_to_keep=1)
    ckpt.save(0, state, {})  # the first save's one-off costs (thread pools, compiled nothing)
    state = jax.block_until_ready(step(state))
    before = anon_bytes()
    for i in range(1, 4):
        ckpt.save(i, state, {})
        state = jax.block_until_ready(step(state))
    assert anon_bytes() - before < 0.25 * size, (anon_bytes() - before) / size
