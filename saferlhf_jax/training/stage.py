"""What a supervised-style training stage (SFT, RM, CM, DPO, moderation) contributes to the shared trainer."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

# loss_fn(apply, params, frozen, batch, cfg) -> (loss, {"metrics": {name: scalar}, "end_scores": (N, D) | None})
LossFn = Callable[..., tuple[Any, dict]]
# eval_fn(apply, params, frozen, batch, cfg) -> {name: (B, ...) per-example arrays}
EvalFn = Callable[..., dict]
# summarize(per_example: {name: (N, ...) numpy}, loss_cfg) -> {metric: float}
Summarize = Callable[[dict, Any], dict]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Static loss settings handed to the stage's loss function."""

    loss_type: str = "sequence-wise"
    regularization: float = 0.0
    beta: float = 0.02
    dpo_slicing: str = "standard"
    normalizer_type: str | None = None
    momentum: float | None = None
    safety_margin: float = 10.0   # SafeDPO's Δ


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    model_kind: str                  # 'causal_lm' | 'score' | 'moderation'
    train_kind: str                  # dataset kind of the training data
    loss_fn: LossFn
    eval_kind: str | None = None
    eval_fn: EvalFn | None = None
    summarize: Summarize | None = None
    needs_reference: bool = False    # DPO: a frozen copy of the initial policy
    score_type: str | None = None    # score models: reward | cost | moderation
    score_dim: int = 1
    data_options: Callable[[Any], dict] | None = None  # cfg → extra keyword arguments of the dataset builder


def token_count(batch: dict) -> int:
    """Real (non-pad) tokens in a host batch, for tokens/sec."""
    return int(sum(np.asarray(v).sum() for k, v in batch.items() if k.endswith("attention_mask")))


def concat_pair(batch: dict, first: str, second: str):
    """(2B, L) ids and masks of a jointly padded pair batch, first side on top."""
    import jax.numpy as jnp

    ids = jnp.concatenate([batch[f"{first}_input_ids"], batch[f"{second}_input_ids"]], axis=0)
    mask = jnp.concatenate([batch[f"{first}_attention_mask"], batch[f"{second}_attention_mask"]], axis=0)
    return ids, mask


def unbiased_std(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if x.size > 1 else float("nan")
