"""LoRA (METHODS_BEYOND §4): low-rank adapters as a separate pytree, merged into the frozen base on the fly.

Our Dense computes y = x @ W with W (d_in, d_out), so the adapted kernel is W' = W + s·A@B with A (d_in, r),
B (r, d_out), s = α/r. A is drawn (kaiming-uniform U(±1/√d_in), PEFT's default, or N(0, 1/r²)); B = 0, so the
adapted model starts exactly at the base. Adapters are float32 master weights keyed by the kernel's path
("model/layers/3/self_attn/q_proj"); scanned layers (L, d_in, d_out) get stacked adapters (L, d_in, r).

    adapters = lora.init(base_params, rank=8)
    logits = model.apply(lora.merge(base_params, {"lora": adapters}, scale), ids, mask)

`merge` is the one place adapters touch the model: training differentiates through it with respect to the
adapters (and a score model's head) only, and the export writes merged, plain HF weights. The reference model of
DPO/SafeDPO is the base itself — the same arrays, no second copy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
INITS = ("kaiming_uniform", "gaussian")
KEY = "lora"  # the adapters' key in a trainable-parameter tree: {"lora": adapters, ["score_head", "normalizer"]}


def _names(path) -> list[str]:
    """A parameter's key path as names: ["model", "layers", "0", "self_attn", "q_proj", "kernel"]."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/").split("/")


def target_paths(params, targets=DEFAULT_TARGETS) -> dict[str, tuple]:
    """{"model/layers/0/self_attn/q_proj": (leading..., d_in, d_out)} for every targeted kernel of the decoder
    (never the embeddings, LM head or score head)."""
    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = _names(path)
        if names[0] == "model" and names[-1] == "kernel" and len(names) >= 2 and names[-2] in targets:
            out["/".join(names[:-1])] = tuple(x.shape)
    if not out:
        raise ValueError(f"lora.targets {list(targets)} match no kernel of the model (expected names like "
                         f"{list(DEFAULT_TARGETS)})")
    return out


def shapes(params, rank: int, targets=DEFAULT_TARGETS) -> dict:
    """The adapters' ShapeDtypeStructs {path: {"a": (..., d_in, r), "b": (..., r, d_out)}} (float32), without
    allocating: `params` may itself be abstract (the memory planner)."""
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    return {path: {"a": f32(*lead, d_in, rank), "b": f32(*lead, rank, d_out)}
            for path, (*lead, d_in, d_out) in sorted(target_paths(params, targets).items())}


def adapter_axes(param_axes, adapters) -> dict:
    """Logical axes of {KEY: adapters} from their kernels' declared axes: A (..., d_in, r) is split like W's d_in
    and B (..., r, d_out) like W's d_out, the rank axis never — so each adapter lives on the devices of its kernel
    and A@B needs no more communication than W. param_axes: `models.param_logical_axes` of the base."""
    kernels = {}
    for path, axes in jax.tree_util.tree_flatten_with_path(param_axes, is_leaf=lambda x: isinstance(x, tuple))[0]:
        names = _names(path)
        if names[-1] == "kernel":
            kernels["/".join(names[:-1])] = tuple(axes)
    out = {}
    for key in adapters:
        if key in kernels:
            *lead, axis_in, axis_out = kernels[key]
            out[key] = {"a": (*lead, axis_in, None), "b": (*lead, None, axis_out)}
    return {KEY: out}


def init(params, rank: int, targets=DEFAULT_TARGETS, seed: int = 0, init: str = "kaiming_uniform") -> dict:
    """Adapters {path: {"a": (..., d_in, r), "b": (..., r, d_out)}} in float32; B = 0 (drawn on the host)."""
    if rank < 1:
        raise ValueError(f"lora.rank must be ≥ 1 to build adapters, got {rank}")
    if init not in INITS:
        raise ValueError(f"lora.init must be one of {INITS}, got {init!r}")
    rng = np.random.default_rng(seed)
    out = {}
    for path, shape in sorted(target_paths(params, targets).items()):
        *lead, d_in, d_out = shape
        if init == "kaiming_uniform":
            a = rng.uniform(-1.0, 1.0, (*lead, d_in, rank)) / np.sqrt(d_in)
        else:
            a = rng.standard_normal((*lead, d_in, rank)) / rank
        out[path] = {"a": jnp.asarray(a, jnp.float32), "b": jnp.zeros((*lead, rank, d_out), jnp.float32)}
    return out


def scale(alpha: float, rank: int) -> float:
    return float(alpha) / float(rank)


def merge(base, trainable: dict, s: float):
    """The adapted parameters: `base` with every entry of `trainable` but the adapters taken as is (a score
    model's head and normalizer) and each adapted kernel W + s·A@B (float32 sum, cast back to W's dtype)."""
    adapters = trainable.get(KEY, {})
    merged = dict(base)
    merged.update({k: v for k, v in trainable.items() if k != KEY})

    def one(path, w):
        names = _names(path)
        ad = adapters.get("/".join(names[:-1])) if names[-1] == "kernel" else None
        if ad is None:
            return w
        delta = jnp.einsum("...ir,...ro->...io", ad["a"], ad["b"])
        return (w.astype(jnp.float32) + s * delta).astype(w.dtype)

    merged["model"] = jax.tree_util.tree_map_with_path(lambda p, w: one((jax.tree_util.DictKey("model"), *p), w),
                                                       base["model"])
    return merged


def split(params, kind: str) -> tuple[dict, dict]:
    """(the trainable part a LoRA run starts from, besides the adapters: a score model's head and normalizer;
    the frozen base). The base keeps its own head so that the base model alone still runs (the DPO reference)."""
    keep = ("score_head", "normalizer") if kind == "score" else ()
    return {k: params[k] for k in keep if k in params}, params


def parameter_count(adapters) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(adapters)))
