"""Rollout engine: jitted KV-cache sampler with bucketed prompt shapes."""

from saferlhf_jax.generation.config import GenerationConfig
from saferlhf_jax.generation.sampler import (
    DEFAULT_BUCKETS,
    SamplingSettings,
    bucket_length,
    generate,
    stream_generate,
)
from saferlhf_jax.generation.sampling import (
    SAMPLING_DEFAULTS,
    apply_repetition_penalty,
    choose_tokens,
    model_sampling_defaults,
    top_k_filter,
    top_p_filter,
)

__all__ = ["DEFAULT_BUCKETS", "GenerationConfig", "SAMPLING_DEFAULTS", "model_sampling_defaults", "SamplingSettings", "apply_repetition_penalty", "bucket_length", "choose_tokens",
           "generate", "stream_generate", "top_k_filter", "top_p_filter"]
