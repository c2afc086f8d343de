"""Cheap, static input validation shared by the ops (shapes and ranks only; never values)."""

from __future__ import annotations

import jax.numpy as jnp


def as_f32(x):
    """Any array-like → float32 jnp array."""
    return jnp.asarray(x).astype(jnp.float32)


def as_bool(x):
    """0/1 or bool array-like → bool jnp array."""
    return jnp.asarray(x).astype(bool)


def as_i32(x):
    return jnp.asarray(x).astype(jnp.int32)


def check_rank(name: str, x, rank: int) -> None:
    if x.ndim != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {tuple(x.shape)}")


def check_same_shape(**arrays) -> None:
    shapes = {name: tuple(a.shape) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{n}={s}" for n, s in shapes.items())
        raise ValueError(f"shapes must match: {listing}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(map(str, choices))}, got {value!r}")


def as_static_int(name: str, value) -> int:
    """Python int or 0-d integer array → Python int (usable as a static slice bound)."""
    try:
        out = int(value)
    except TypeError as err:  # a traced value cannot be a static bound
        raise ValueError(f"{name} must be a static integer, got {value!r}") from err
    return out
