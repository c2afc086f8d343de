"""DPO against a frozen copy of the initial policy (spec §3.8; slicing §7.1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from saferlhf_jax import ops
from saferlhf_jax.training.stage import Stage, concat_pair


def sequence_log_probs(apply, params, batch, slicing):
    """Summed response log-probs of the better and worse sequences, each (B,)."""
    ids, mask = concat_pair(batch, "better", "worse")
    logits = apply(params, ids, mask)
    token_lps = ops.gather_log_probs(logits[:, :-1], ids[:, 1:])
    b = batch["better_input_ids"].shape[0]
    better = ops.dpo_sequence_log_probs(token_lps[:b], batch["better_input_ids"], batch["better_attention_mask"],
                                        batch["worse_input_ids"], slicing)
    worse = ops.dpo_sequence_log_probs(token_lps[b:], batch["worse_input_ids"], batch["worse_attention_mask"],
                                       batch["better_input_ids"], slicing)
    return better, worse


def loss_fn(apply, params, frozen, batch, cfg):
    pb, pw = sequence_log_probs(apply, params, batch, cfg.dpo_slicing)
    rb, rw = sequence_log_probs(apply, jax.lax.stop_gradient(frozen), batch, cfg.dpo_slicing)
    loss, aux = ops.dpo_loss(pb, pw, rb, rw, cfg.beta)
    metrics = {"reward_accuracy": aux["reward_accuracy"], "reward_margin": jnp.mean(aux["reward_margin"]),
               "better_sample_reward": jnp.mean(aux["better_sample_reward"]),
               "worse_sample_reward": jnp.mean(aux["worse_sample_reward"]),
               "reward": jnp.mean(aux["better_sample_reward"] + aux["worse_sample_reward"])}
    return loss, {"metrics": metrics, "end_scores": None}


def eval_fn(apply, params, frozen, batch, cfg):
    pb, pw = sequence_log_probs(apply, params, batch, cfg.dpo_slicing)
    rb, rw = sequence_log_probs(apply, frozen, batch, cfg.dpo_slicing)
    return {"better_ratio": pb - rb, "worse_ratio": pw - rw}


def summarize(per_example, cfg):
    margin = cfg.beta * (per_example["better_ratio"] - per_example["worse_ratio"])
    return {"reward_accuracy": float(np.mean(margin > 0)), "reward_margin": float(margin.mean()),
            "loss": float(np.mean(np.logaddexp(0.0, -margin))), "pairs": int(margin.size)}


STAGE = Stage(name="dpo", model_kind="causal_lm", train_kind="preference", loss_fn=loss_fn,
              eval_kind="preference", eval_fn=eval_fn, summarize=summarize, needs_reference=True)
