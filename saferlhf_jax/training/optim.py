"""Optimizer (spec §3.16–3.18): global-norm clip 1.0 → AdamW(b1 0.9, b2 0.95, eps 1e-8) with the decay mask, and the
reference's LR schedules. Built from optax; nothing hand-written."""

from __future__ import annotations

import dataclasses
import math

import jax
import optax

from saferlhf_jax import ops
from saferlhf_jax.errors import ConfigError


def decay_mask(params):
    """True where weight decay applies: everything except biases and normalisation scales (spec §7.8)."""

    def keep(path, _):
        leaf = getattr(path[-1], "key", path[-1])
        return leaf not in ("bias", "scale")

    return jax.tree_util.tree_map_with_path(keep, params)


def make_schedule(schedule_type: str, learning_rate: float, total_steps: int, warmup_ratio: float):
    warmup = ops.warmup_steps_from_ratio(total_steps, warmup_ratio)
    return ops.lr_schedule(schedule_type, learning_rate, total_steps, warmup)


def make_optimizer(learning_rate: float, total_steps: int, *, schedule_type: str = "cosine",
                   warmup_ratio: float = 0.0, weight_decay: float = 0.0, max_grad_norm: float | None = 1.0,
                   b1: float = 0.9, b2: float = 0.95, eps: float = 1e-8):
    """(optax transformation, schedule). The schedule advances once per optimizer update."""
    schedule = make_schedule(schedule_type, learning_rate, total_steps, warmup_ratio)
    parts = []
    if max_grad_norm is not None and max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask))
    return optax.chain(*parts), schedule


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """One optimizer's settings (a config's `train`, `actor` or `critic` section); `make(total)` builds it."""

    learning_rate: float = 1e-5
    lr_scheduler_type: str = "cosine"
    lr_warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0

    @classmethod
    def from_config(cls, section) -> "OptimConfig":
        return cls(learning_rate=float(section.learning_rate), lr_scheduler_type=section.lr_scheduler_type,
                   lr_warmup_ratio=float(section.lr_warmup_ratio), weight_decay=float(section.weight_decay),
                   max_grad_norm=float(section.max_grad_norm))

    def make(self, total_steps: int):
        """(optax transformation, schedule) over `total_steps` optimizer updates."""
        return make_optimizer(self.learning_rate, total_steps, schedule_type=self.lr_scheduler_type,
                              warmup_ratio=self.lr_warmup_ratio, weight_decay=self.weight_decay,
                              max_grad_norm=self.max_grad_norm)


def validate(section, name: str) -> None:
    """One-line ConfigError for optimizer settings that cannot train: a learning rate ≤ 0 or not finite, negative
    weight decay / clip norm, a warmup ratio outside [0, 1], an unknown schedule. `section` has the fields of
    `make_optimizer` (ml_collections or dict)."""
    get = section.get
    lr, wd = float(get("learning_rate")), float(get("weight_decay", 0.0))
    if not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"{name}.learning_rate must be a positive number, got {lr}")
    if not math.isfinite(wd) or wd < 0:
        raise ConfigError(f"{name}.weight_decay must be ≥ 0, got {wd}")
    if float(get("max_grad_norm", 1.0)) < 0:
        raise ConfigError(f"{name}.max_grad_norm must be ≥ 0 (0 = no clipping), got {get('max_grad_norm')}")
    if not 0.0 <= float(get("lr_warmup_ratio", 0.0)) <= 1.0:
        raise ConfigError(f"{name}.lr_warmup_ratio must lie in [0, 1], got {get('lr_warmup_ratio')}")
    if get("lr_scheduler_type", "cosine") not in ops.SCHEDULE_TYPES:
        raise ConfigError(f"{name}.lr_scheduler_type must be one of {ops.SCHEDULE_TYPES}, "
                          f"got {get('lr_scheduler_type')!r}")


def updates_per_epoch(batches_per_epoch: int, grad_accum: int) -> int:
    """ceil(micro-batches / GA) (spec §3.18)."""
    return math.ceil(batches_per_epoch / grad_accum)
