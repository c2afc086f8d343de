"""LoRA (METHODS_BEYOND §4): low-rank adapters as a separate pytree, merged into the frozen base on the fly.

Our Dense computes y = x @ W with W (d_in, d_out), so the adapted kernel is W' = W + s·A@B with A (d_in, r),
B (r, d_out), s = α/r. A is drawn (kaiming-uniform U(±1/√d_in), PEFT's default, or N(0, 1/r²)); B = 0, so the
adapted model starts exactly at the base. Adapters are float32 master weights keyed by the kernel's path
("model/layers/3/self_attn/q_proj"); scanned layers (L, d_in, d_out) get stacked adapters (L, d_in, r).

    adapters = lora.init(base_params, rank=8)
    logits = model.apply(lora.inject(base_params, {"lora": adapters}, scale), ids, mask)   # training
    plain = lora.merge(base_params, {"lora": adapters}, scale)                               # sampler, export

Training runs the adapters where they are, beside each frozen kernel: `inject` puts A and s·B into the
parameter tree next to W and `Model.apply` of such a tree computes x @ W + (x @ A) @ (s·B) in every adapted
projection (`llama.Dense`), differentiated with respect to the adapters (and a score model's head) only. `merge`
(W + s·A@B) is for what runs without gradients: a rollout's sampler and the export of plain HF weights. The
reference model of DPO/SafeDPO is the base itself — the same arrays, no second copy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from saferlhf_jax.errors import ConfigError
from saferlhf_jax.models.llama import NORMALIZER_KEY

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
    paths = sorted(target_paths(params, targets).items())
    too_big = [(path, d_in, d_out) for path, (*_, d_in, d_out) in paths if rank > min(d_in, d_out)]
    if too_big:  # A (d_in, r) and B (r, d_out) would hold more numbers than W, and A@B cannot use the extra rank
        path, d_in, d_out = too_big[0]
        limit = min(min(shape[-2:]) for _, shape in paths)
        raise ConfigError(f"lora.rank={rank} exceeds the smaller dimension of {path} ({d_in}×{d_out}): its adapter "
                          f"would train more parameters than the weight itself; use lora.rank ≤ {limit}")
    return {path: {"a": f32(*lead, d_in, rank), "b": f32(*lead, rank, d_out)} for path, (*lead, d_in, d_out) in paths}


def adapter_axes(param_axes, adapters) -> dict:
    """Logical axes of {KEY: adapters} from their kernels' declared axes: A (..., d_in, r) is split like W's d_in
    and B (..., r, d_out) like W's d_out; the rank axis is 'lora_rank' (→ fsdp), which takes a mesh axis only where
    the other axis left it free (parallel.mesh.logical_to_spec: the first claim wins; B's rank axis comes first, so
    B of down_proj is split on its rank, not on d_out), so no adapter is whole on every fsdp device.
    param_axes: `models.param_logical_axes` of the base."""
    kernels = {}
    for path, axes in jax.tree_util.tree_flatten_with_path(param_axes, is_leaf=lambda x: isinstance(x, tuple))[0]:
        names = _names(path)
        if names[-1] == "kernel":
            kernels["/".join(names[:-1])] = tuple(axes)
    out = {}
    for key in adapters:
        if key in kernels:
            *lead, axis_in, axis_out = kernels[key]
            out[key] = {"a": (*lead, axis_in, "lora_rank"), "b": (*lead, "lora_rank", axis_out)}
    return {KEY: out}


def init(params, rank: int, targets=DEFAULT_TARGETS, seed: int = 0, init: str = "kaiming_uniform") -> dict:
    """Adapters {path: {"a": (..., d_in, r), "b": (..., r, d_out)}} in float32; B = 0 (drawn on the host)."""
    if rank < 1:
        raise ValueError(f"lora.rank must be ≥ 1 to build adapters, got {rank}")
    if init not in INITS:
        raise ValueError(f"lora.init must be one of {INITS}, got {init!r}")
    rng = np.random.default_rng(seed)
    out = {}
    for path, ab in shapes(params, rank, targets).items():  # sorted paths: the draws do not depend on dict order
        a_shape = ab["a"].shape
        if init == "kaiming_uniform":
            a = rng.uniform(-1.0, 1.0, a_shape) / np.sqrt(a_shape[-2])
        else:
            a = rng.standard_normal(a_shape) / rank
        out[path] = {"a": jnp.asarray(a, jnp.float32), "b": jnp.zeros(ab["b"].shape, jnp.float32)}
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


A_NAME, B_NAME = "lora_a", "lora_b"  # the adapters' names inside an adapted projection (`llama.Dense`)


def _child_key(node: dict, name: str):
    """The key of `node` that a path component names (a layer list's keys may be ints)."""
    if name in node:
        return name
    if name.isdigit() and int(name) in node:
        return int(name)
    raise KeyError(f"LoRA adapter path component {name!r} is not in the model (keys {sorted(map(str, node))[:8]})")


def inject(base, trainable: dict, s: float):
    """The parameters a LoRA train step runs on: `base` with every entry of `trainable` but the adapters taken as
    is (a score model's head and normalizer) and, in each adapted projection, lora_a = A and lora_b = s·B beside
    the untouched kernel (the base's arrays are shared, not copied). `Model.apply` runs such a tree on the
    adapted graph: the same function as `merge`'s parameters up to float rounding."""
    adapters = trainable.get(KEY, {})
    out = dict(base)
    out.update({k: v for k, v in trainable.items() if k != KEY})
    for path, ab in adapters.items():
        node = out
        for name in path.split("/"):  # copy each dict on the way down, never the arrays
            key = _child_key(node, name)
            node[key] = dict(node[key])
            node = node[key]
        node[A_NAME], node[B_NAME] = ab["a"], s * ab["b"]
    return out


def injected(params) -> tuple[tuple[str, ...], int] | None:
    """(the adapted projections' names, the rank) of a tree from `inject`; None for plain parameters."""
    names, rank = set(), 0

    def walk(node, name):
        nonlocal rank
        if isinstance(node, dict):
            if A_NAME in node:
                names.add(str(name))
                rank = int(node[A_NAME].shape[-1])
            for key, child in node.items():
                walk(child, key)

    walk(params, "")
    return (tuple(sorted(names)), rank) if names else None


def split(params, kind: str) -> tuple[dict, dict]:
    """(the trainable part a LoRA run starts from, besides the adapters: a score model's head and normalizer;
    the frozen base). The base keeps its own head so that the base model alone still runs (the DPO reference)."""
    keep = ("score_head", NORMALIZER_KEY) if kind == "score" else ()
    return {k: params[k] for k in keep if k in params}, params


def parameter_count(adapters) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(adapters)))


EXPORTS = ("merged", "both")  # lora.export: merged HF weights; 'both' adds export/adapter/ in PEFT's format


def peft_tensors(adapters) -> dict[str, np.ndarray]:
    """The adapters under PEFT's names: `base_model.model.<module>.lora_A.weight` = Aᵀ (r, d_in) and `lora_B.weight`
    = Bᵀ (d_out, r), so PEFT's W + (α/r)·B_peft@A_peft is our (W + s·A@B)ᵀ; a scanned stack (L, …) becomes the L
    modules model.layers.<i>.… (our kernel paths are the HF module names)."""
    out = {}
    for key, ab in adapters.items():
        a, b = np.asarray(ab["a"], np.float32), np.asarray(ab["b"], np.float32)
        names = key.split("/")
        if a.ndim == 3:  # scanned layers: model/layers/<block>/<proj> holds every layer
            at = names.index("layers") + 1
            modules = [(".".join(names[:at] + [str(i)] + names[at:]), a[i], b[i]) for i in range(a.shape[0])]
        else:
            modules = [(".".join(names), a, b)]
        for module, a_i, b_i in modules:
            out[f"base_model.model.{module}.lora_A.weight"] = np.ascontiguousarray(a_i.T)
            out[f"base_model.model.{module}.lora_B.weight"] = np.ascontiguousarray(b_i.T)
    return out


def save_peft(directory, adapters, *, rank: int, alpha: float, targets, base_model: str,
              extra: dict[str, np.ndarray] | None = None) -> None:
    """A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) for a causal LM:
    `PeftModel.from_pretrained(base, directory)` gives the merged export's logits. `extra`: full tensors under their
    HF names (the embedding and LM head when a pad token grew the vocabulary: resize the base to the tokenizer's
    length before loading, as PEFT's docs say)."""
    import json
    import pathlib

    from safetensors.numpy import save_file

    path = pathlib.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tensors = peft_tensors(adapters)
    tensors.update({f"base_model.model.{name}": np.ascontiguousarray(x) for name, x in (extra or {}).items()})
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": int(rank), "lora_alpha": float(alpha),
              "target_modules": sorted(targets), "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
              "inference_mode": True, "init_lora_weights": True, "use_rslora": False, "modules_to_save": None,
              "base_model_name_or_path": str(base_model)}
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
