"""Rollout sampling settings of an RL stage, built once from its config and its actor's tokenizer."""

from __future__ import annotations

import dataclasses

from saferlhf_jax.errors import ConfigError
from saferlhf_jax.models.api import rollout_dtype, rollout_layout


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Rollout sampling (spec §5.3: total max_length, top_k 50 by default)."""

    max_length: int = 512
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1
    eos_token_ids: tuple[int, ...] | None = None
    pad_token_id: int | None = None
    unk_token_id: int | None = None
    prompt_buckets: tuple[int, ...] = ()   # prompt widths the sampler compiles for (() = powers of two)
    length_buckets: tuple[int, ...] = ()   # rollout widths (() = max_length only: one compiled step)
    rollout_layout: str = "fused_out_in"   # sample from fused q|k|v and gate|up kernels (`Model.rollout_as`)
    rollout_dtype: str = "float32"         # "bfloat16": the rollout copy's weights in bf16 (half the bytes read)
    prefill_chunk: int = 512               # prompts wider than this are prefilled in chunks (0: one pass)
    decode_segment: int = 32               # the decode loop's cache grows this many slots at a time (0: whole)


    @classmethod
    def from_config(cls, cfg, tokenizer) -> "GenerationConfig":
        """An RL config's `generation` section (and `data.prompt_buckets`), with the tokenizer's EOS / pad / unk."""
        g = cfg.generation
        try:
            layout = rollout_layout(g.get("rollout_layout", True))
            dtype = rollout_dtype(g.get("rollout_dtype", "float32"))
        except ValueError as e:
            raise ConfigError(f"generation.{e}") from None
        return cls(max_length=int(g.max_length), temperature=float(g.temperature), top_k=int(g.top_k),
                   top_p=float(g.top_p), repetition_penalty=float(g.repetition_penalty),
                   num_return_sequences=int(g.num_return_sequences), eos_token_ids=(tokenizer.eos_token_id,),
                   pad_token_id=tokenizer.pad_token_id, unk_token_id=tokenizer.unk_token_id,
                   prompt_buckets=tuple(int(b) for b in cfg.data.prompt_buckets),
                   length_buckets=tuple(int(b) for b in g.get("length_buckets", ())), rollout_layout=layout,
                   rollout_dtype=dtype, prefill_chunk=int(g.get("prefill_chunk", 512)),
                   decode_segment=int(g.get("decode_segment", 32)))


__all__ = ["GenerationConfig"]
