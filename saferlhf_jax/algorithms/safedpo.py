"""SafeDPO (Kim et al. 2025, arXiv 2505.20065; METHODS_BEYOND §1): DPO on PKU-SafeRLHF's helpfulness pairs after a
safety transform — an unsafe response never wins (swapped behind a safe loser, dropped when both are unsafe) — with
the safety margin Δ on (safe, unsafe) pairs. No reward or cost model, no sampling: a policy and its frozen reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from saferlhf_jax import ops
from saferlhf_jax.algorithms.dpo import sequence_log_probs
from saferlhf_jax.training.stage import Stage


def loss_fn(apply, params, frozen, batch, cfg):
    pb, pw = sequence_log_probs(apply, params, batch, cfg.dpo_slicing)
    rb, rw = sequence_log_probs(apply, jax.lax.stop_gradient(frozen), batch, cfg.dpo_slicing)
    loss, aux = ops.safedpo_loss(pb, pw, rb, rw, batch["better_unsafe"], batch["worse_unsafe"], cfg.beta,
                                 cfg.safety_margin)
    metrics = {"reward_accuracy": aux["reward_accuracy"], "reward_margin": jnp.mean(aux["reward_margin"]),
               "better_sample_reward": jnp.mean(aux["better_sample_reward"]),
               "worse_sample_reward": jnp.mean(aux["worse_sample_reward"]),
               "safe_unsafe_fraction": aux["safe_unsafe_fraction"]}
    return loss, {"metrics": metrics, "end_scores": None}


def eval_fn(apply, params, frozen, batch, cfg):
    pb, pw = sequence_log_probs(apply, params, batch, cfg.dpo_slicing)
    rb, rw = sequence_log_probs(apply, frozen, batch, cfg.dpo_slicing)
    return {"better_ratio": pb - rb, "worse_ratio": pw - rw,
            "gap": (batch["worse_unsafe"] - batch["better_unsafe"]).astype(jnp.float32)}


def summarize(per_example, cfg):
    margin = cfg.beta * (per_example["better_ratio"] - per_example["worse_ratio"])
    gap = per_example["gap"]
    return {"reward_accuracy": float(np.mean(margin > 0)), "reward_margin": float(margin.mean()),
            "loss": float(np.mean(np.logaddexp(0.0, -(margin - gap * cfg.safety_margin)))),
            "safe_unsafe_fraction": float(gap.mean()), "pairs": int(margin.size)}


STAGE = Stage(name="safedpo", model_kind="causal_lm", train_kind="safedpo_preference", loss_fn=loss_fn,
              eval_kind="safedpo_preference", eval_fn=eval_fn, summarize=summarize, needs_reference=True,
              data_options=lambda cfg: {"both_unsafe": str(cfg.get("loss", {}).get("both_unsafe", "drop"))})
