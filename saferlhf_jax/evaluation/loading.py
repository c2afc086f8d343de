"""Load a model for evaluation from an HF-format directory or a training run's orbax checkpoint.

    load_for_eval("runs/ppo_lag/export", "causal_lm")       # HF directory
    load_for_eval("runs/ppo_lag", "causal_lm")              # the run's latest checkpoint
    load_for_eval("runs/reward@20", "score")                # step 20 of a run
"""

from __future__ import annotations

import json
import pathlib

import jax.numpy as jnp
import numpy as np

from saferlhf_jax import models
from saferlhf_jax.checkpoint import Checkpointer, key_name
from saferlhf_jax.data.tokenizer import load_tokenizer

# where a run's config names its base model, and where its state keeps the parameters, per stage kind
_BASE_KEYS = ("model_name_or_path", "actor_model_name_or_path")
_PARAM_PREFIXES = ("params", "actor.params")


def _split_step(spec: str) -> tuple[pathlib.Path, int | None]:
    if "@" in spec:
        path, _, step = spec.rpartition("@")
        if step.isdigit():
            return pathlib.Path(path).expanduser(), int(step)
    return pathlib.Path(spec).expanduser(), None


def is_hf_dir(path: pathlib.Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def load_for_eval(spec: str, kind: str, mesh=None):
    """(Model with params, tokenizer) for `kind` 'causal_lm' or 'score'."""
    path, step = _split_step(str(spec))
    load = models.load_causal_lm if kind == "causal_lm" else models.load_score_model
    if step is None and is_hf_dir(path):
        # an HF score directory must bring its trained head: a causal LM would get a random one
        extra = {} if kind == "causal_lm" else {"require_head": True}
        model, tokenizer = load(path, mesh=mesh, **extra), load_tokenizer(path)
        if len(tokenizer) > model.config.vocab_size:  # special tokens were added (spec §2.5)
            model, model.params = models.resize_token_embeddings(model, model.params, len(tokenizer))
        return model, tokenizer
    ckpt_dir = path / "checkpoints"
    run_config = path / "config.json"
    if not ckpt_dir.is_dir() or not run_config.is_file():
        raise FileNotFoundError(f"{spec}: neither an HF model directory (config.json + *.safetensors) nor a "
                                f"training run directory (config.json + checkpoints/)")
    cfg = json.loads(run_config.read_text())
    base = next((cfg[k] for k in _BASE_KEYS if cfg.get(k)), None)
    if base is None:
        raise ValueError(f"{run_config}: no base model path in the run's config")
    tokenizer = load_tokenizer(base)
    overrides = {}
    if kind == "score" and cfg.get("stage") in ("reward", "cost"):
        overrides["score_type"] = cfg["stage"]
    model = load(base, mesh=mesh, **overrides)  # its parameters are replaced by the checkpoint's below
    if len(tokenizer) > model.config.vocab_size:
        model, model.params = models.resize_token_embeddings(model, model.params, len(tokenizer))
    flat = Checkpointer(ckpt_dir, read_only=True).restore_raw(step)
    import jax

    leaves, treedef = jax.tree_util.tree_flatten_with_path(model.params)
    for prefix in _PARAM_PREFIXES:
        keys = [prefix + "." + ".".join(key_name(k) for k in p) for p, _ in leaves]
        if all(k in flat for k in keys):
            new = [jnp.asarray(np.asarray(flat[k]), dtype=leaf.dtype) for k, (_, leaf) in zip(keys, leaves)]
            if mesh is not None:
                new = jax.device_put(new, [leaf.sharding for _, leaf in leaves])
            model.params = jax.tree_util.tree_unflatten(treedef, new)
            return model, tokenizer
    raise ValueError(f"{spec}: the checkpoint holds no {kind} parameters matching {base}")
