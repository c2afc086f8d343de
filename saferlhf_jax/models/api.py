"""Public model API: load / init / save Llama causal LMs and score models as (graphdef, params) pairs.

    lm = load_causal_lm("path/to/hf_dir")
    logits = lm.apply(lm.params, input_ids, attention_mask)          # (B, L, V) float32
    rm = load_score_model("path/to/sft_dir", score_type="reward")    # new score head on a causal LM checkpoint
    scores, end_scores = rm.apply(rm.params, input_ids, attention_mask)
    save_pretrained(rm, rm.params, "out_dir")

`params` is a plain nested dict of arrays (HF-like paths); `apply` is a pure jitted function of it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from saferlhf_jax import ops
from saferlhf_jax.errors import ModelError
from saferlhf_jax.models import lora, safetensors_io
from saferlhf_jax.models.config import ModelConfig
from saferlhf_jax.models.llama import NORMALIZER_KEY, CausalLM, ScoreModel
from saferlhf_jax.parallel import mesh as mesh_lib
from saferlhf_jax.parallel.constraints import activation_sharding

log = logging.getLogger(__name__)

KINDS = {"causal_lm": CausalLM, "score": ScoreModel}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "generation_config.json", "chat_template.jinja")
_NORMALIZER_KEYS = ("mean", "var", "count")


@dataclasses.dataclass
class Model:
    """A model definition plus its parameters. `apply` never reads `self.params`: pass the params you want."""

    config: ModelConfig
    kind: str
    graphdef: Any
    params: Any
    source: str | None = None  # directory the weights (and tokenizer files) came from
    mesh: Mesh | None = None
    rules: Any = None          # logical-axis rules the parameters were placed with (None: the defaults)

    def module(self, params):
        """The NNX module bound to `params` (for use inside a jitted function)."""
        return nnx.merge(self.graph_for(params), nnx.State(params))

    def graph_for(self, params):
        """The graph `params` run on: this model's, or for a tree with LoRA adapters beside its kernels
        (`lora.inject`) the same model with those projections adapted (`llama.Dense`)."""
        found = lora.injected(params)
        if found is None:
            return self.graphdef
        # validated: adapters are refused on a rollout (fused) layout, which the sampler reaches through merge
        return abstract_model(self.config.replace(lora_targets=found[0], lora_rank=found[1]).validate(), self.kind)[0]

    @functools.cached_property
    def apply(self):
        """Jitted pure forward. causal_lm: (params, ids, mask) → logits (B, L, V) f32;
        score: (params, ids, mask) → (scores (B, L, D), end_scores (B, D)) f32, normalised with the stored stats
        when the config's do_normalize is set (pass normalize=False for the raw scores)."""
        kind, mesh, rules = self.kind, self.mesh, self.rules

        def forward(params, input_ids, attention_mask, positions=None, normalize=True):
            module = self.module(params)
            with activation_sharding(mesh, rules):
                if kind == "causal_lm":
                    logits, _ = module(input_ids, attention_mask, positions)
                    return logits
                return module(input_ids, attention_mask, positions, normalize=normalize)

        return jax.jit(forward, static_argnames=("normalize",))

    @functools.cached_property
    def label_log_probs(self):
        """Jitted (params, ids (B, L), mask (B, L), labels (B, T), chunk) → log π(labels) (B, T) f32 of a causal LM,
        where labels[:, t] is the token after position t (T ≤ L; pass ids[:, 1:] for the spec's action space).
        chunk > 0 projects to the vocabulary `chunk` columns at a time (online log-sum-exp, rematerialised in the
        backward), so the float32 (B, T, V) logits never exist; chunk = 0 is the plain log-softmax."""
        mesh, rules = self.mesh, self.rules
        if self.kind != "causal_lm":
            raise ValueError("label_log_probs needs a causal LM")

        def forward(params, input_ids, attention_mask, labels, chunk=0):
            module = self.module(params)
            t = labels.shape[1]
            with activation_sharding(mesh, rules):
                if not chunk:
                    logits, _ = module(input_ids, attention_mask)
                    return ops.gather_log_probs(logits[:, :t], labels)
                hidden, _ = module(input_ids, attention_mask, return_hidden=True)
                weight, vocab_axis = module.head()
                return ops.chunked_label_log_probs(hidden[:, :t], weight, labels, chunk, vocab_axis)

        return jax.jit(forward, static_argnames=("chunk",))

    @property
    def rollout(self) -> "tuple[Model, Any]":
        """`rollout_as` the default rollout layout ("fused_out_in")."""
        return self.rollout_as(DEFAULT_ROLLOUT_LAYOUT)

    def rollout_as(self, layout: "str | bool", dtype: str = "float32") -> "tuple[Model, Any]":
        """(the same model in a rollout layout, jitted params → params in that layout); see `fuse_params`.

        layout (`rollout_layout`): "fused" (q|k|v and gate|up fused), "fused_out_in" (also every kernel (out, in)),
        "none" (the training layout as it is). The layout is made once per rollout from the training parameters
        (one concatenation per fused kernel), never per token; on a mesh the fused kernels keep their input axis's
        sharding and replicate their output axis. dtype (`rollout_dtype`): "bfloat16" also stores the copy's kernels
        and embedding in bf16, multiplied in bf16 and summed in the compute dtype (`ModelConfig.matmul_dtype`): half
        the bytes a decode step reads. Cached per (layout, dtype)."""
        layout, dtype = rollout_layout(layout), rollout_dtype(dtype)
        cache = self.__dict__.setdefault("_rollouts", {})
        narrow = dtype != "float32"
        if (layout, dtype) not in cache:
            if (layout == "none" or self.config.fused_projections) and not narrow:
                cache[layout, dtype] = self, lambda params: params
            else:
                fuse = layout != "none" and not self.config.fused_projections
                config = self.config
                if fuse:
                    config = config.replace(fused_projections=True, out_in_kernels=layout == "fused_out_in")
                if narrow:
                    config = config.replace(param_dtype=dtype, matmul_dtype=dtype)
                graphdef = abstract_model(config, self.kind)[0]
                fused = dataclasses.replace(self, config=config, graphdef=graphdef, params=None)
                out = None if self.mesh is None else param_shardings(config, self.kind, self.mesh, self.rules)

                def convert(params):
                    if fuse:
                        params = fuse_params(params, out_in=layout == "fused_out_in")
                    return narrow_weights(params, dtype) if narrow else params

                cache[layout, dtype] = fused, jax.jit(convert, out_shardings=out)
        return cache[layout, dtype]

    def param_shardings(self, mesh: Mesh | None = None, rules=None):
        return param_shardings(self.config, self.kind, mesh or self.mesh, self.rules if rules is None else rules)

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(trainable_params(self.params)))


# ---------------------------------------------------------------------------------------------------- structure


def _path_names(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)


def _declared_axes(path: str, variable) -> tuple:
    """The logical axes a parameter declared where it was created (`axes=` metadata; a scanned stack prepends
    'layers'). A parameter without axes is an error, never a silent replica."""
    axes = variable.get_metadata().get("axes")
    shape = np.shape(variable.get_value())
    if axes is None:
        raise ValueError(f"parameter {path} declares no logical axes: give it axes=(...) where it is created")
    if len(axes) != len(shape):
        raise ValueError(f"parameter {path} of shape {shape} declares {len(axes)} axes {axes}")
    return tuple(axes)


@functools.lru_cache(maxsize=128)
def abstract_model(config: ModelConfig, kind: str):
    """(graphdef, abstract params as ShapeDtypeStructs, logical axes) of a model kind — built once per config from
    `nnx.eval_shape`: nothing is allocated. The three trees have the same structure."""
    abstract_module = nnx.eval_shape(lambda: KINDS[kind](config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract_module)
    pure = nnx.to_pure_dict(state)
    variables = jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    flat, treedef = jax.tree_util.tree_flatten_with_path(pure)
    if len(variables) != len(flat):
        raise AssertionError("model state and its pure dict disagree")
    axes = [_declared_axes(jax.tree_util.keystr(path), v) for (path, x), v in zip(flat, variables)]
    for (path, x), v in zip(flat, variables):
        if np.shape(v.get_value()) != x.shape:
            raise AssertionError(f"model state and its pure dict disagree at {jax.tree_util.keystr(path)}")
    return graphdef, pure, jax.tree_util.tree_unflatten(treedef, axes)


def param_logical_axes(config: ModelConfig, kind: str = "causal_lm"):
    """Tree of logical-axis tuples matching the parameters of `kind` for `config` (declared in the modules)."""
    _check_kind(kind)
    return abstract_model(config, kind)[2]


def param_shardings(config: ModelConfig, kind: str, mesh: Mesh, rules=None):
    """NamedShardings of every parameter from its declared axes through the rules (config data)."""
    graphdef, abstract, axes = abstract_model(config, kind)
    return mesh_lib.tree_shardings(axes, abstract, mesh, rules)


_FUSED = ((("q_proj", "k_proj", "v_proj"), "qkv_proj"), (("gate_proj", "up_proj"), "gate_up_proj"))


ROLLOUT_LAYOUTS = ("none", "fused", "fused_out_in")
DEFAULT_ROLLOUT_LAYOUT = "fused_out_in"


def rollout_layout(value: "str | bool") -> str:
    """A `rollout_layout` setting → one of ROLLOUT_LAYOUTS (True: the default layout, False: "none")."""
    if isinstance(value, (bool, np.bool_)):
        return DEFAULT_ROLLOUT_LAYOUT if value else "none"
    text = str(value).strip().lower()
    text = {"true": DEFAULT_ROLLOUT_LAYOUT, "false": "none"}.get(text, text)
    if text not in ROLLOUT_LAYOUTS:
        raise ValueError(f"rollout_layout must be one of {ROLLOUT_LAYOUTS} (or a bool), got {value!r}")
    return text


ROLLOUT_DTYPES = ("float32", "bfloat16")


def rollout_dtype(value: str) -> str:
    """A `rollout_dtype` setting → one of ROLLOUT_DTYPES."""
    text = str(value).strip().lower()
    text = {"bf16": "bfloat16", "f32": "float32", "fp32": "float32"}.get(text, text)
    if text not in ROLLOUT_DTYPES:
        raise ValueError(f"rollout_dtype must be one of {ROLLOUT_DTYPES}, got {value!r}")
    return text


def narrow_weights(params, dtype: str):
    """Every matmul weight (Dense kernels, the embedding — also the tied LM head) in `dtype`; norms, biases and LoRA
    adapters as they are (they are small, and read in the compute dtype anyway)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x.astype(dtype) if _path_names(path)[-1] in ("kernel", "embedding") else x, params)


def fuse_params(params, out_in: bool = True):
    """Training layout → rollout layout (`ModelConfig.fused_projections`): in every layer the q, k, v kernels (and
    biases) become one qkv_proj and gate, up one gate_up_proj, concatenated on the output (last) axis — a scanned
    stack keeps its leading layer axis — and with `out_in` every kernel is then stored (out, in)
    (`ModelConfig.out_in_kernels`, `llama.Dense`). Pure and jit-able; the forward is the same function of the same
    numbers."""
    def walk(node):
        if not isinstance(node, dict):
            return node
        node = {k: walk(v) for k, v in node.items()}
        for parts, name in _FUSED:
            if all(p in node for p in parts):
                pieces = [node.pop(p) for p in parts]
                node[name] = {key: jnp.concatenate([piece[key] for piece in pieces], axis=-1) for key in pieces[0]}
        return node

    fused = walk(params)
    if not out_in:
        return fused
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.swapaxes(x, -1, -2) if _path_names(path)[-1] == "kernel" else x, fused)


def split_normalizer(params) -> tuple[dict, Any]:
    """(the trainable parameters, the normalizer statistics or None): the one place that tells them apart, for the
    trainer, the RL updates, LoRA and the export."""
    return {k: v for k, v in params.items() if k != NORMALIZER_KEY}, params.get(NORMALIZER_KEY)


def with_normalizer(trainable: dict, normalizer) -> dict:
    """The inverse of `split_normalizer` (no statistics: the trainable tree as it is)."""
    return trainable if normalizer is None else {**trainable, NORMALIZER_KEY: normalizer}


def trainable_params(params):
    """Drop the (non-trainable) normalizer statistics."""
    return split_normalizer(params)[0]


def _check_kind(kind: str):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")


HOST_INIT_MAX_PARAMS = 64_000_000  # below this, draw the initial values on the host: no XLA program to compile


def _host_init(abstract, config: ModelConfig, seed) -> dict:
    """The same distribution as the modules' initializers (N(0, initializer_range) kernels and embeddings, ones for
    norm scales and normalizer variances, zeros elsewhere), drawn with numpy in a fixed leaf order."""
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        names = _path_names(path)
        if names[-1] in ("kernel", "embedding"):
            return (rng.standard_normal(x.shape, np.float32) * config.initializer_range).astype(x.dtype)
        if names[-1] in ("scale", "var"):
            return np.ones(x.shape, x.dtype)
        return np.zeros(x.shape, x.dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract)


def init_model(config: ModelConfig, kind: str = "causal_lm", rng: int | jax.Array = 0, mesh: Mesh | None = None,
               rules=None) -> Model:
    """Randomly initialised model (N(0, initializer_range) kernels, ones for norms, zero biases), sharded on `mesh`.

    Small models are drawn on the host (compiling the initializer program costs seconds on a CPU); large ones by one
    jitted program whose outputs are born sharded, so no host ever holds the whole model."""
    _check_kind(kind)
    config.validate()
    graphdef, abstract, _ = abstract_model(config, kind)
    shardings = param_shardings(config, kind, mesh, rules) if mesh is not None else None
    size = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
    if size <= HOST_INIT_MAX_PARAMS:
        seed = rng if isinstance(rng, (int, np.integer)) else np.asarray(jax.random.key_data(rng)).ravel().tolist()
        host = _host_init(abstract, config, seed)
        if shardings is None:
            return Model(config, kind, graphdef, jax.tree.map(jnp.asarray, host), None, mesh, rules)
        return Model(config, kind, graphdef, jax.tree.map(_put, host, shardings), None, mesh, rules)
    key = jax.random.key(rng) if isinstance(rng, (int, np.integer)) else rng

    def make(key):
        return nnx.to_pure_dict(nnx.split(KINDS[kind](config, rngs=nnx.Rngs(params=key)))[1])

    params = jax.jit(make, out_shardings=shardings)(key)
    return Model(config, kind, graphdef, params, None, mesh, rules)


# ---------------------------------------------------------------------------------------------------- HF import


def hf_name(path: tuple) -> tuple[str, bool]:
    """Our param path (layer index included) → (HF tensor name, transpose?)."""
    *head, leaf = path
    names = [str(p) for p in head] + ["weight" if leaf in ("kernel", "scale", "embedding") else str(leaf)]
    return ".".join(names), leaf == "kernel"


def _hf_layout(params) -> list[tuple[tuple, int | None]]:
    """(path, stacked layer count or None) for every leaf."""
    out = []
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        out.append((_path_names(path), x))
    return out


def _layer_paths(path: tuple, config: ModelConfig):
    """Per-layer paths of a leaf: one path when unscanned, L paths (index inserted) when stacked."""
    if config.scan_layers and path[:2] == ("model", "layers"):
        return [path[:2] + (i,) + path[2:] for i in range(config.num_hidden_layers)]
    return [path]


def _oriented(array: np.ndarray, transpose: bool, shape: tuple, name: str) -> np.ndarray:
    """A file tensor as our layout's view ((in, out) kernels: HF stores (out, in)); no copy yet."""
    view = array.T if transpose else array
    if view.shape != tuple(shape):
        raise ValueError(f"tensor {name}: shape {view.shape} does not match the config's {tuple(shape)}")
    return view


def _put(value: np.ndarray, sharding, dtype=None):
    """A host array → a device array in `dtype` placed by `sharding` (None: the default device). Each device's
    shard is copied and converted on its own, so no converted copy of the whole tensor ever exists."""
    dtype = value.dtype if dtype is None else dtype
    if sharding is None:
        return jnp.asarray(np.asarray(value, dtype))
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: np.array(value[idx], dtype=dtype))


def _layer_sharding(sharding):
    """The sharding of one layer of a stacked (L, ...) leaf: its spec without the leading layer axis."""
    if sharding is None:
        return None
    spec = tuple(sharding.spec)
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec[1:]))


@functools.lru_cache(maxsize=None)
def _zeros_program(shape: tuple, dtype, sharding):
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


@functools.lru_cache(maxsize=None)
def _set_layer_program(sharding):
    # donated: the stacked leaf is updated in place, so filling it layer by layer never holds two copies
    return jax.jit(lambda stacked, layer, i: jax.lax.dynamic_update_index_in_dim(stacked, layer, i, 0),
                   donate_argnums=0, out_shardings=sharding)


def _put_stacked(layers, shape: tuple, dtype, sharding):
    """Host layers (an iterator of (L-1)-rank arrays, read one at a time) → the stacked (L, ...) device leaf: a
    zero leaf in place, each layer sent to its shards and written into it, so host memory holds one layer."""
    stacked = _zeros_program(tuple(shape), jnp.dtype(dtype), sharding)()
    layer_sharding = _layer_sharding(sharding)
    write = _set_layer_program(sharding)
    for i, layer in enumerate(layers):
        stacked = write(stacked, _put(layer, layer_sharding, dtype), jnp.int32(i))
    return stacked


def _normalizer_from(tensors: safetensors_io.Index, raw_config: dict, score_dim: int) -> dict[str, np.ndarray]:
    stats = {}
    for key in _NORMALIZER_KEYS:
        if f"normalizer.{key}" in tensors:
            stats[key] = np.asarray(tensors.read(f"normalizer.{key}"), np.float32)
        elif key in raw_config and raw_config[key] is not None:
            stats[key] = np.asarray(raw_config[key], np.float32)
    default = {"mean": np.zeros(score_dim, np.float32), "var": np.ones(score_dim, np.float32),
               "count": np.zeros((), np.float32)}
    return {k: stats.get(k, default[k]).reshape(default[k].shape) for k in _NORMALIZER_KEYS}


def _load(path, kind: str, dtype, mesh: Mesh | None, rules, overrides: dict, rng: int = 0,
          require_head: bool = False) -> Model:
    _check_kind(kind)
    path = pathlib.Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model directory not found: {path}")
    raw_config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    dtype_name = jnp.dtype(dtype).name
    compute = overrides.pop("compute_dtype", None)
    overrides = {"dtype": jnp.dtype(compute or dtype).name, "param_dtype": dtype_name, **overrides}
    # headers only: each tensor is read when its leaf is placed, then dropped (peak host memory: a few tensors)
    tensors = safetensors_io.Index(path)
    alias = {}  # our name → the file's
    if kind == "score" and "score.weight" in tensors and "score_head.weight" not in tensors:
        # a transformers *ForSequenceClassification head (reward-bench models, our layout='hf' exports): no bias
        alias["score_head.weight"] = "score.weight"
        overrides = {"score_bias": False, "score_dim": int(tensors.infos["score.weight"].shape[0]), **overrides}
    config = ModelConfig.from_pretrained(path, **overrides)
    graphdef, abstract, _ = abstract_model(config, kind)
    shardings = param_shardings(config, kind, mesh, rules) if mesh is not None else None
    flat_shard = dict(jax.tree_util.tree_flatten_with_path(shardings)[0]) if shardings is not None else {}
    flat_shard = {_path_names(k): v for k, v in flat_shard.items()}

    has_head = "score_head.weight" in tensors or "score_head.weight" in alias
    # as a policy a score checkpoint's tied embeddings would "generate" from a reward model's backbone, silently
    if kind == "causal_lm" and (has_head or "score.weight" in tensors):
        raise ModelError(f"{path} is a score model ({', '.join(raw_config.get('architectures') or ['score head'])}: "
                         "a reward/cost or moderation model), not a causal LM to generate with or train as a policy "
                         "— point to an SFT/RL export or a base model")
    fresh_head = kind == "score" and not has_head
    if fresh_head and require_head:
        raise ModelError(f"{path} has no score head (no score_head.weight): it is a causal LM, not a trained "
                         f"{config.score_type} model — point to a reward/cost model export (or opt in to a fresh, "
                         "random head with allow_new_head=True)")
    if fresh_head:
        log.info("%s has no score head: initialising a new one N(0, %g), zero bias", path, config.initializer_range)
    head_rng = np.random.default_rng(rng)  # host draw: no initializer program to compile
    normalizer = _normalizer_from(tensors, raw_config, config.score_dim) if kind == "score" else None

    leaves, used = {}, {f"normalizer.{k}" for k in _NORMALIZER_KEYS}
    for p, x in _hf_layout(abstract):
        sharding = flat_shard.get(p)
        if p[0] == NORMALIZER_KEY:
            leaves[p] = _put(normalizer[p[1]].astype(x.dtype), sharding)
            continue
        if p[0] == "score_head" and fresh_head:
            value = (head_rng.standard_normal(x.shape, np.float32) * config.initializer_range
                     if p[-1] == "kernel" else np.zeros(x.shape, np.float32))
            leaves[p] = _put(value.astype(x.dtype), sharding)
            continue
        layer_paths = _layer_paths(p, config)
        names = [(alias.get(n, n), t) for n, t in map(hf_name, layer_paths)]
        missing = [n for n, _ in names if n not in tensors]
        if missing:
            raise ModelError(f"{path}: tensor {missing[0]!r} is missing from the safetensors weights "
                             f"(a {config.model_type} {kind} needs it)")
        used.update(n for n, _ in names)
        if len(layer_paths) == 1:
            name, transpose = names[0]
            leaves[p] = _put(_oriented(tensors.read(name), transpose, x.shape, name), sharding, x.dtype)
        else:  # scanned layers: one (L, ...) leaf filled layer by layer
            layers = (_oriented(tensors.read(n), t, x.shape[1:], n) for n, t in names)
            leaves[p] = _put_stacked(layers, x.shape, x.dtype, sharding)

    unused = sorted(set(tensors) - used - _ignorable(kind, config))
    if unused:  # every tensor is used or refused: a dropped bias or norm would silently change the model
        raise ModelError(f"{path}: {len(unused)} tensor(s) this {config.model_type} {kind} would not use, e.g. "
                         f"{', '.join(unused[:3])} — refusing rather than dropping them (unsupported architecture "
                         "variant or a mislabelled config.json)")
    treedef = jax.tree_util.tree_structure(abstract)
    ordered = [leaves[_path_names(k)] for k, _ in jax.tree_util.tree_flatten_with_path(abstract)[0]]
    params = jax.tree_util.tree_unflatten(treedef, ordered)
    return Model(config, kind, graphdef, params, str(path), mesh, rules)


def _ignorable(kind: str, config: ModelConfig) -> set[str]:
    """Tensors a checkpoint may carry that this model kind legitimately does not read."""
    out = {"lm_head.weight"} if (kind == "score" or config.tie_word_embeddings) else set()
    out |= {f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(config.num_hidden_layers)}
    return out


def load_causal_lm(path, dtype=jnp.float32, mesh: Mesh | None = None, rules=None, **config_overrides) -> Model:
    """HF-format Llama directory → causal LM (`.apply(params, ids, mask) → logits (B, L, V) f32`).

    `dtype` is the parameter dtype (and the compute dtype unless `compute_dtype=` is given, e.g. bf16 compute with
    fp32 master weights); other keyword arguments override config fields (scan_layers, remat_policy, ...)."""
    return _load(path, "causal_lm", dtype, mesh, rules, config_overrides)


def load_score_model(path, dtype=jnp.float32, mesh: Mesh | None = None, rules=None, rng: int = 0,
                     require_head: bool = False, **score_overrides) -> Model:
    """HF-format directory → score model. A causal-LM checkpoint gets a fresh head (refused with a ModelError when
    `require_head`: reward/cost models in RL and evaluation); a score checkpoint keeps its head and normalizer
    stats. `score_overrides`: score_dim, score_bias, score_type, normalizer_type, momentum, do_normalize (and
    execution keys such as scan_layers, remat_policy)."""
    return _load(path, "score", dtype, mesh, rules, score_overrides, rng, require_head)


def resize_token_embeddings(model: Model, params, new_vocab_size: int):
    """Grow the vocabulary (spec §2.5): every new row of the input embedding and of an untied LM head is the mean of
    the pre-existing rows. Returns (new Model, new params); shrinking is refused."""
    old = model.config.vocab_size
    if new_vocab_size < old:
        raise ValueError(f"cannot shrink the vocabulary from {old} to {new_vocab_size}")
    if new_vocab_size == old:
        return model, params

    def grow(x, axis):
        x = jnp.asarray(x)
        mean = jnp.mean(x.astype(jnp.float32), axis=axis, keepdims=True).astype(x.dtype)
        extra = jnp.repeat(mean, new_vocab_size - old, axis=axis)
        return jnp.concatenate([x, extra], axis=axis)

    params = jax.tree.map(lambda x: x, params)  # shallow copy of the containers
    params["model"]["embed_tokens"]["embedding"] = grow(params["model"]["embed_tokens"]["embedding"], 0)
    if "lm_head" in params:
        params["lm_head"]["kernel"] = grow(params["lm_head"]["kernel"], 1)
    config = model.config.replace(vocab_size=new_vocab_size)
    graphdef, _, _ = abstract_model(config, model.kind)
    if model.mesh is not None:
        params = jax.device_put(params, param_shardings(config, model.kind, model.mesh, model.rules))
    return Model(config, model.kind, graphdef, params, model.source, model.mesh, model.rules), params


def replace_score_head(model: Model, kernel, bias=None) -> Model:
    """The same backbone with a new score head: kernel (E, D), bias (D,) (None: no bias). The normalizer stats
    restart at mean 0, var 1 for the D outputs (e.g. the K-output cost critic of several constraints)."""
    if model.kind != "score":
        raise ValueError("replace_score_head needs a score model")
    kernel = np.asarray(kernel, np.float32)
    dim = int(kernel.shape[1])
    config = model.config.replace(score_dim=dim, score_bias=bias is not None)
    graphdef, _, _ = abstract_model(config, model.kind)
    params = jax.tree.map(lambda x: x, model.params)  # shallow copy of the containers
    dtype = params["score_head"]["kernel"].dtype
    params["score_head"] = {"kernel": jnp.asarray(kernel, dtype)}
    if bias is not None:
        params["score_head"]["bias"] = jnp.asarray(np.asarray(bias, np.float32), dtype)
    params[NORMALIZER_KEY] = {"mean": jnp.zeros((dim,), jnp.float32), "var": jnp.ones((dim,), jnp.float32),
                            "count": jnp.zeros((), jnp.float32)}
    if model.mesh is not None:
        params = jax.device_put(params, param_shardings(config, model.kind, model.mesh, model.rules))
    return Model(config, model.kind, graphdef, params, model.source, model.mesh, model.rules)


# ---------------------------------------------------------------------------------------------------- HF export


def to_hf_tensors(model: Model, params, layout: str = "reference") -> dict[str, np.ndarray]:
    """Gather params to host and name them as HF does (kernels transposed back to (out, in)). Score models: layout
    'hf' writes the head as `score.weight` without normalizer tensors (a transformers *ForSequenceClassification)."""
    out = {}
    for p, x in _hf_layout(params):
        host = np.asarray(jax.device_get(x))
        if p[0] == NORMALIZER_KEY:
            if layout != "hf":
                out[f"normalizer.{p[1]}"] = host.astype(np.float32)
            continue
        paths = _layer_paths(p, model.config)
        for i, lp in enumerate(paths):
            name, transpose = hf_name(lp)
            value = host[i] if len(paths) > 1 else host
            out[name] = np.ascontiguousarray(value.T if transpose else value)
    if model.kind == "score" and layout == "hf":
        bias = out.pop("score_head.bias", None)
        if bias is not None and np.any(bias != 0):
            raise ModelError("the score head has a bias; transformers' *ForSequenceClassification head has none, so "
                             "an 'hf' export would shift every score — train the score model with "
                             "model.score_bias=False (set by export_format=hf) or export the reference layout")
        out["score.weight"] = out.pop("score_head.weight")
    return out


EXPORT_LAYOUTS = ("reference", "hf")


def save_pretrained(model: Model, params, path, tokenizer_dir: str | None = None,
                    layout: str = "reference", pad_token_id: int | None = None) -> pathlib.Path:
    """Write an HF-format directory: config.json, model.safetensors, and tokenizer files when known.

    A causal LM loads with `transformers.AutoModelForCausalLM.from_pretrained` and gives equal logits.
    A score model: layout 'reference' (default) is the reference's `LlamaForScore` layout — its head and normalizer
    stats (safetensors `normalizer.*` and config `mean`/`var`/`count`); layout 'hf' a `*ForSequenceClassification`
    directory (`score.weight`, num_labels, pad_token_id for its last-token pooling) that
    `transformers.AutoModelForSequenceClassification` loads with the same end scores. Either layout loads back here.
    """
    if layout not in EXPORT_LAYOUTS:
        raise ValueError(f"layout must be one of {EXPORT_LAYOUTS}, got {layout!r}")
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = to_hf_tensors(model, params, layout)
    config = model.config.to_hf_dict(model.kind, layout)
    if model.kind == "score" and NORMALIZER_KEY in params:
        for key in _NORMALIZER_KEYS:
            config[key] = np.asarray(jax.device_get(params[NORMALIZER_KEY][key]), np.float32).tolist()
    if pad_token_id is not None:  # the tokenizer's pad id (HF sequence classification pools on it)
        config["pad_token_id"] = int(pad_token_id)
    safetensors_io.save_file(tensors, path / "model.safetensors")
    tmp = path / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(path / "config.json")
    src = tokenizer_dir or model.source
    if src:
        for name in TOKENIZER_FILES:
            f = pathlib.Path(src) / name
            if f.is_file() and f.resolve() != (path / name).resolve():
                shutil.copyfile(f, path / name)
    return path
