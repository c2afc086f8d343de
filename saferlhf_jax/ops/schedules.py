"""Learning-rate schedules of the reference (§3.17) as optax-compatible callables k → lr."""

from __future__ import annotations

import math

import jax.numpy as jnp

from saferlhf_jax.ops._checks import check_choice

SCHEDULE_TYPES = ("cosine", "linear", "constant", "constant_with_warmup")


def lr_multiplier(schedule_type: str, total_steps: int, warmup_steps: int):
    """f(k) of §3.17; `constant` ignores warmup as the reference does (§7.7)."""
    check_choice("schedule_type", schedule_type, SCHEDULE_TYPES)
    total, warm = int(total_steps), int(warmup_steps)
    if warm < 0 or total < 0:
        raise ValueError(f"steps must be non-negative, got total={total} warmup={warm}")

    def warmup(k):
        return k / max(1, warm)

    def f(k):
        k = jnp.asarray(k, jnp.float32)
        if schedule_type == "constant":
            return jnp.ones_like(k)
        if schedule_type == "constant_with_warmup":
            return jnp.minimum(1.0, warmup(k)) if warm > 0 else jnp.ones_like(k)
        span = max(1, total - warm)
        if schedule_type == "cosine":
            after = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(math.pi * (k - warm) / span)))
        else:  # linear
            after = jnp.maximum(0.0, (total - k) / span)
        return jnp.where(k < warm, warmup(k), after) if warm > 0 else after

    return f


def lr_schedule(schedule_type: str, base_lr: float, total_steps: int, warmup_steps: int = 0):
    """k (0-based update count) → base_lr · f(k)."""
    f = lr_multiplier(schedule_type, total_steps, warmup_steps)
    return lambda k: base_lr * f(k)


def warmup_steps_from_ratio(total_steps: int, ratio: float) -> int:
    """W = int(ratio × T) (§3.18)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"warmup ratio must lie in [0, 1], got {ratio}")
    return int(ratio * total_steps)
