"""Activation sharding where activations are made: `constrain(x, logical_axes)` inside model code.

The models stay mesh-agnostic: a caller that runs them on a mesh opens `activation_sharding(mesh, rules)` around the
code it traces (`Model.apply` and the sampler do), and every `constrain` inside becomes a `with_sharding_constraint`
through the same logical-axis rules as the parameters. Without an active mesh (one device) it is the identity.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Sequence

import jax
from jax.sharding import NamedSharding

from saferlhf_jax.parallel.mesh import logical_to_spec

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("saferlhf_activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh, rules=None):
    """Constrain the activations traced inside this block on `mesh` (None: no constraints)."""
    token = _ACTIVE.set(None if mesh is None or mesh.size == 1 else (mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x, axes: Sequence[str | None]):
    """x with a sharding constraint from its logical axes (one name per dimension), or x itself off-mesh."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(axes, x.shape, mesh, rules,
                                                                                   quiet=True)))
