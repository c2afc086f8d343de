"""Cost model: pairwise + sign terms on safety-preference pairs; cost 0 is the safety boundary (spec §3.7, §5.1)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from saferlhf_jax import ops
from saferlhf_jax.ops import baselines
from saferlhf_jax.training.stage import Stage, concat_pair, unbiased_std


def _scores(apply, params, batch):
    ids, mask = concat_pair(batch, "safer", "unsafer")
    scores, end_scores = apply(params, ids, mask)
    b = batch["safer_input_ids"].shape[0]
    return scores[..., 0], end_scores, b


def loss_fn(apply, params, frozen, batch, cfg):
    scores, end_scores, b = _scores(apply, params, batch)
    loss, aux = ops.cost_model_loss(
        scores[:b], batch["safer_attention_mask"], batch["safer_safety_sign"],
        scores[b:], batch["unsafer_attention_mask"], batch["unsafer_safety_sign"],
        batch["safer_input_ids"], batch["unsafer_input_ids"], loss_type=cfg.loss_type,
        regularization=cfg.regularization)
    metrics = {"accuracy": aux["accuracy"], "accuracy_sign": aux["accuracy_sign"],
               "cost_mean": jnp.mean(end_scores)}
    return loss, {"metrics": metrics, "end_scores": end_scores}


def eval_fn(apply, params, frozen, batch, cfg):
    _, end_scores, b = _scores(apply, params, batch)
    return {"safer": end_scores[:b, 0], "unsafer": end_scores[b:, 0],
            "safer_sign": batch["safer_safety_sign"], "unsafer_sign": batch["unsafer_safety_sign"],
            "safer_length": jnp.sum(batch["safer_attention_mask"], -1),
            "unsafer_length": jnp.sum(batch["unsafer_attention_mask"], -1)}


def summarize(per_example, cfg=None):
    safer, unsafer = per_example["safer"], per_example["unsafer"]
    costs = np.concatenate([safer, unsafer])
    signs = np.concatenate([per_example["safer_sign"], per_example["unsafer_sign"]])
    return {"accuracy": float(np.mean(unsafer > safer)), "accuracy_sign": float(np.mean(costs * signs < 0)),
            "cost_mean": float(costs.mean()), "cost_std": unbiased_std(costs), "pairs": int(safer.size),
            "scores": float(safer.mean()),  # legacy 'scores': mean of the safer side only (spec §5.1)
            **baselines.pairwise(per_example.get("unsafer_length"), per_example.get("safer_length")),
            **baselines.majority(signs > 0, "sign")}


STAGE = Stage(name="cost", model_kind="score", train_kind="safety_preference", loss_fn=loss_fn,
              eval_kind="safety_preference", eval_fn=eval_fn, summarize=summarize, score_type="cost")
