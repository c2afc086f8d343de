"""Reward model: Bradley–Terry on helpfulness preference pairs (spec §3.6, §5.1)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from saferlhf_jax import ops
from saferlhf_jax.ops import baselines
from saferlhf_jax.training.stage import Stage, concat_pair, unbiased_std


def _scores(apply, params, batch):
    ids, mask = concat_pair(batch, "better", "worse")
    scores, end_scores = apply(params, ids, mask)
    b = batch["better_input_ids"].shape[0]
    return scores[..., 0], end_scores, b


def loss_fn(apply, params, frozen, batch, cfg):
    scores, end_scores, b = _scores(apply, params, batch)
    loss, aux = ops.reward_model_loss(
        scores[:b], batch["better_attention_mask"], scores[b:], batch["worse_attention_mask"],
        batch["better_input_ids"], batch["worse_input_ids"], loss_type=cfg.loss_type,
        regularization=cfg.regularization)
    metrics = {"accuracy": aux["accuracy"], "reward_mean": jnp.mean(end_scores),
               "better_mean": jnp.mean(end_scores[:b]), "worse_mean": jnp.mean(end_scores[b:])}
    return loss, {"metrics": metrics, "end_scores": end_scores}


def eval_fn(apply, params, frozen, batch, cfg):
    _, end_scores, b = _scores(apply, params, batch)
    return {"better": end_scores[:b, 0], "worse": end_scores[b:, 0],
            "better_length": jnp.sum(batch["better_attention_mask"], -1),
            "worse_length": jnp.sum(batch["worse_attention_mask"], -1)}


def summarize(per_example, cfg=None):
    better, worse = per_example["better"], per_example["worse"]
    both = np.concatenate([better, worse])
    return {"accuracy": float(np.mean(better > worse)), "reward_mean": float(both.mean()),
            "reward_std": unbiased_std(both), "pairs": int(better.size),
            "scores": float(better.mean()),  # legacy 'scores': mean of the better side only (spec §5.1)
            **baselines.pairwise(per_example.get("better_length"), per_example.get("worse_length"))}


STAGE = Stage(name="reward", model_kind="score", train_kind="preference", loss_fn=loss_fn,
              eval_kind="preference", eval_fn=eval_fn, summarize=summarize, score_type="reward")
