"""Supervised fine-tuning: cross-entropy over response tokens, a global token mean (spec §3.3)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from saferlhf_jax import ops
from saferlhf_jax.training.stage import Stage


def loss_fn(apply, params, frozen, batch, cfg):
    logits = apply(params, batch["input_ids"], batch["attention_mask"])
    loss = ops.sft_loss(logits, batch["labels"])
    return loss, {"metrics": {}, "end_scores": None}


def eval_fn(apply, params, frozen, batch, cfg):
    logits = apply(params, batch["input_ids"], batch["attention_mask"])
    ce, valid = ops.sft_token_losses(logits, batch["labels"])
    return {"ce_sum": jnp.sum(ce, axis=-1), "tokens": jnp.sum(valid, axis=-1)}


def summarize(per_example, cfg=None):
    tokens = per_example["tokens"].sum()
    loss = float(per_example["ce_sum"].sum() / max(tokens, 1))
    return {"loss": loss, "perplexity": float(np.exp(min(loss, 50.0))), "tokens": int(tokens)}


STAGE = Stage(name="sft", model_kind="causal_lm", train_kind="supervised", loss_fn=loss_fn,
              eval_kind="supervised", eval_fn=eval_fn, summarize=summarize)
