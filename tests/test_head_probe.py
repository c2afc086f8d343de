"""The linear probe of a fresh score head (train.head_probe_steps; saferlhf_jax/training/head_probe.py)."""

from __future__ import annotations

import importlib

import jax.numpy as jnp
import numpy as np
import pytest

from saferlhf_jax import data as data_lib
from saferlhf_jax.errors import ConfigError
from saferlhf_jax.training import head_probe, trainer


def _setup(stage_name):
    stage = importlib.import_module(f"saferlhf_jax.algorithms.{stage_name}").STAGE
    cfg = importlib.import_module(f"configs.{stage_name}").get_config("tiny")
    from saferlhf_jax.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(cfg.model_name_or_path)
    train_ds, _ = trainer.build_data(stage, cfg, tokenizer)
    model = trainer.load_model(stage, cfg, None, tokenizer)
    return stage, cfg, trainer.loss_config(cfg), train_ds, model


@pytest.mark.parametrize("stage_name", ["cost", "moderation"])
def test_probed_head_scores_like_the_fit_and_lowers_the_stage_loss(stage_name):
    stage, cfg, lc, train_ds, model = _setup(stage_name)
    table, rows = head_probe.end_features(model, train_ds, 16, None, None)
    head, info = head_probe.fit(stage, lc, table, rows, 150, 1e-2, 16, 0)
    assert info["loss_after"] < info["loss_before"] - 0.1, info
    assert info["sequences"] == len(table) == (2 if stage_name == "cost" else 1) * len(train_ds)

    # the real model with the folded head on the first real batch gives the loss the probe computes on its rows
    model.params["score_head"] = {k: jnp.asarray(v) for k, v in head.items()}
    batch = next(data_lib.iterate_once(train_ds, 16))
    assert batch.pop("valid").all()
    real, _ = stage.loss_fn(model.apply, model.params, {}, {k: jnp.asarray(v) for k, v in batch.items()}, lc)

    def raw(h, ids, mask):
        end = jnp.asarray(table)[ids[:, 0]] @ h["kernel"] + h["bias"]
        return end[:, None, :], end

    side_rows = {k: v[:16] for k, v in rows.items()}
    if stage_name == "cost":  # the second side's 16 features follow the first side's in the table
        second = [k for k in rows if k.endswith("input_ids")][1]
        side_rows[second] = rows[second][:16]
    probe_loss, _ = stage.loss_fn(raw, {k: jnp.asarray(v) for k, v in head.items()}, {}, side_rows, lc)
    np.testing.assert_allclose(float(real), float(probe_loss), rtol=1e-4, atol=1e-5)


def test_head_probe_refusals(tmp_path):
    stage, cfg, lc, _, model = _setup("reward")
    lc_token = trainer.LossConfig(loss_type="token-wise")
    with pytest.raises(ConfigError, match="sequence-wise"):
        head_probe.check(stage, model, lc_token)
    sft = importlib.import_module("saferlhf_jax.algorithms.sft").STAGE
    with pytest.raises(ConfigError, match="applies to score models"):
        head_probe.check(sft, model, lc)
    # a trained score model (its export has a head) is not re-fitted
    from saferlhf_jax import models

    exported = tmp_path / "rm"
    models.save_pretrained(model, model.params, exported)
    trained = models.load_score_model(exported)
    with pytest.raises(ConfigError, match="already has a trained score head"):
        head_probe.check(stage, trained, lc)


def test_reward_stage_with_a_probe_records_it_and_resumes_without_refitting(tmp_path):
    cfg = importlib.import_module("configs.reward").get_config("tiny")
    cfg.output_dir = str(tmp_path / "rm")
    cfg.train.max_steps, cfg.train.stop_after_steps, cfg.train.head_probe_steps = 4, 2, 50
    cfg.logging.progress = cfg.logging.tensorboard = False
    cfg.mesh.fsdp = 1
    stage = importlib.import_module("saferlhf_jax.algorithms.reward").STAGE
    first = trainer.train(stage, cfg)
    assert first["head_probe"]["steps"] == 50 and first["steps"] == 2
    assert first["head_probe"]["loss_after"] < first["head_probe"]["loss_before"]  # log 2 at the zero head
    cfg.train.stop_after_steps = 0
    second = trainer.train(stage, cfg)
    assert second["steps"] == 4 and "head_probe" not in second  # resumed from the checkpoint's probed head
