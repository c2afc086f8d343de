"""The layout of a train / RL state and its shardings, built once from `jax.eval_shape` before anything is allocated.

    layout = state_layout(init_fn, params_a, params_b, ..., axes=[axes_a, axes_b], mesh=mesh, rules=rules)
    state = jax.jit(init_fn, out_shardings=shardings_of_layout(layout))(params_a, ...)   # born sharded

Every leaf of the state whose path ends with a parameter's path (the parameters themselves, and the optimizer
moments that mirror them: `...opt_state.0.mu.model.layers.q_proj.kernel`) takes that parameter's declared logical
axes through the rules; everything else (counters, log λ, the RNG, the episode-cost window) is replicated. The same
layout serves the trainer and the RL loop (allocation), the checkpointer (restore targets) and the planner (compile
on abstract state), so what the planner measures is what the runs allocate.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
from jax.sharding import Mesh, NamedSharding

from saferlhf_jax.checkpoint import key_name
from saferlhf_jax.parallel import mesh as mesh_lib


def _path(path) -> tuple[str, ...]:
    return tuple(key_name(k) for k in path)


def _is_axes(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(a, str) or a is None for a in x)


def axes_table(axes_trees: Sequence[Any]) -> dict[tuple[str, ...], tuple]:
    """{parameter path: logical axes} over the given parameter-axes trees."""
    table = {}
    for tree in axes_trees:
        for path, axes in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_axes)[0]:
            table[_path(path)] = axes
    return table


def leaf_axes(path: tuple[str, ...], ndim: int, table: dict) -> tuple | None:
    """The axes of the longest parameter path that `path` ends with (and whose rank matches), else None."""
    for start in range(len(path)):
        axes = table.get(path[start:])
        if axes is not None and len(axes) == ndim:
            return axes
    return None


OPTIMIZER_MEMORY = ("device", "pinned_host")


def state_shardings(abstract_state, axes_trees: Sequence[Any], mesh: Mesh | None, rules=None,
                    optimizer_memory: str = "device"):
    """NamedShardings for every leaf of `abstract_state` (see the module docstring); None without a mesh.
    optimizer_memory='pinned_host' keeps every leaf under an `opt_state` in host memory (the step brings it to the
    device for the update only; `saferlhf_jax.algorithms.rl`, `training.trainer`)."""
    if mesh is None:
        return None
    table = axes_table(axes_trees)
    rep = mesh_lib.replicated(mesh)

    def one(path, x):
        names = _path(path)
        axes = leaf_axes(names, len(x.shape), table)
        sharding = rep if axes is None else NamedSharding(mesh, mesh_lib.logical_to_spec(axes, x.shape, mesh, rules))
        if optimizer_memory != "device" and "opt_state" in names:
            sharding = sharding.with_memory_kind(optimizer_memory)
        return sharding

    return jax.tree_util.tree_map_with_path(one, abstract_state)


def to_device(tree, on_host: bool):
    """Inside a jitted step: host-resident leaves → device memory (identity when nothing is offloaded)."""
    return jax.tree.map(lambda x: jax.device_put(x, jax.memory.Space.Device), tree) if on_host else tree


def to_host(tree, on_host: bool):
    return jax.tree.map(lambda x: jax.device_put(x, jax.memory.Space.Host), tree) if on_host else tree


def state_layout(init_fn: Callable, *args, axes: Sequence[Any], mesh: Mesh | None, rules=None,
                 optimizer_memory: str = "device"):
    """ShapeDtypeStructs of `init_fn(*args)` carrying their shardings (args may be abstract: nothing runs)."""
    abstract = jax.eval_shape(init_fn, *args)
    shardings = state_shardings(abstract, axes, mesh, rules, optimizer_memory)
    if shardings is None:
        return abstract
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract, shardings)


def shardings_of_layout(layout):
    return jax.tree.map(lambda s: getattr(s, "sharding", None), layout)


def allocate(init_fn: Callable, *args, axes: Sequence[Any], mesh: Mesh | None, rules=None, donate=(),
             optimizer_memory: str = "device"):
    """Run `init_fn(*args)` jitted with the layout's out_shardings: the state is born sharded."""
    layout = state_layout(init_fn, *args, axes=axes, mesh=mesh, rules=rules, optimizer_memory=optimizer_memory)
    if mesh is None:
        return jax.jit(init_fn, donate_argnums=donate)(*args)
    return jax.jit(init_fn, out_shardings=shardings_of_layout(layout), donate_argnums=donate)(*args)


__all__ = ["OPTIMIZER_MEMORY", "allocate", "to_device", "to_host", "axes_table", "leaf_axes", "shardings_of_layout", "state_layout", "state_shardings"]
