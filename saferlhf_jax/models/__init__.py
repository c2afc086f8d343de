"""Llama-family models in Flax NNX as pure functions of parameter pytrees, with HF import/export."""

from saferlhf_jax.models.api import (
    Model,
    fuse_params,
    init_model,
    load_causal_lm,
    load_score_model,
    param_logical_axes,
    param_shardings,
    replace_score_head,
    resize_token_embeddings,
    rollout_dtype,
    rollout_layout,
    save_pretrained,
    to_hf_tensors,
    split_normalizer,
    trainable_params,
    with_normalizer,
)
from saferlhf_jax.models.config import ModelConfig
from saferlhf_jax.models.llama import init_cache

__all__ = ["Model", "ModelConfig", "fuse_params", "init_cache", "init_model", "load_causal_lm", "load_score_model",
           "param_logical_axes", "param_shardings", "replace_score_head", "resize_token_embeddings", "rollout_dtype",
           "rollout_layout", "save_pretrained", "to_hf_tensors", "split_normalizer", "trainable_params",
           "with_normalizer"]
