"""Model configuration: one frozen dataclass for Llama-family causal LMs and score models.

Reads both Hugging Face config forms — transformers 5 (`rope_parameters`) and the older one real checkpoints carry
(`rope_theta`, `rope_scaling`) — and writes a config.json that transformers 5 loads.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from saferlhf_jax.errors import ModelError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
SCORE_FIELDS = ("score_dim", "score_bias", "score_type", "normalizer_type", "momentum", "do_normalize")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture + score-head settings. Sizes follow HF names so config.json maps one to one."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | tuple | None = None  # {'rope_type': 'llama3'|'linear', 'factor', ...}; None = default
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | list | None = 2
    pad_token_id: int | None = None
    # score model (spec §3.4)
    score_dim: int = 1
    score_bias: bool = True
    score_type: str = "reward"
    normalizer_type: str | None = None
    momentum: float | None = None
    do_normalize: bool = False
    # execution (not part of the architecture; never written into config.json)
    scan_layers: bool = False
    remat_policy: str = "none"
    dtype: str = "float32"        # compute dtype
    param_dtype: str = "float32"

    def __post_init__(self):
        # keep the dataclass hashable (it is static metadata of jitted programs)
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

    @property
    def rope_scaling_dict(self) -> dict:
        return dict(self.rope_scaling or ())

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        eos = self.eos_token_id
        if eos is None:
            return ()
        return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)

    def replace(self, **kwargs) -> "ModelConfig":
        return dataclasses.replace(self, **kwargs)

    def validate(self) -> "ModelConfig":
        problems = []
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                            f"num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size={self.hidden_size} is not divisible by num_attention_heads")
        if self.resolved_head_dim % 2:
            problems.append(f"head_dim={self.resolved_head_dim} must be even for RoPE")
        rope_type = self.rope_scaling_dict.get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            problems.append(f"rope_type {rope_type!r} is not supported (supported: {SUPPORTED_ROPE_TYPES})")
        if self.score_type not in ("reward", "cost", "critic", "moderation"):
            problems.append(f"score_type must be reward|cost|critic|moderation, got {self.score_type!r}")
        if self.normalizer_type not in (None, "RunningMeanStd", "ExponentialMovingAverage"):
            problems.append(f"normalizer_type must be RunningMeanStd|ExponentialMovingAverage|None, "
                            f"got {self.normalizer_type!r}")
        if self.normalizer_type == "ExponentialMovingAverage" and self.momentum is None:
            problems.append("normalizer_type ExponentialMovingAverage needs a momentum")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))
        return self

    # ------------------------------------------------------------------ HF config.json

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], **overrides) -> "ModelConfig":
        """Build from a HF config dict (transformers 4 or 5 form); unknown keys are ignored."""
        model_type = raw.get("model_type", "llama")
        if model_type not in ("llama", "mistral", "qwen2"):
            raise ModelError(f"unsupported model_type {model_type!r}: saferlhf-jax loads llama, mistral and qwen2 "
                             "checkpoints")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in fields and k not in ("rope_scaling", "rope_theta")}
        rope_params = dict(raw.get("rope_parameters") or {})
        legacy = dict(raw.get("rope_scaling") or {})
        theta = rope_params.get("rope_theta", raw.get("rope_theta", 10000.0))
        scaling = {**legacy, **rope_params}
        scaling.pop("rope_theta", None)
        if "type" in scaling and "rope_type" not in scaling:
            scaling["rope_type"] = scaling.pop("type")
        scaling.pop("type", None)
        kwargs["rope_theta"] = float(theta)
        kwargs["rope_scaling"] = scaling if scaling.get("rope_type", "default") != "default" else None
        if "normalize_function" in raw and "score_type" not in raw:
            kwargs["score_type"] = {"affine": "reward", "scale": "cost"}.get(raw["normalize_function"], "critic")
        kwargs.update(overrides)
        return cls(**kwargs).validate()

    @classmethod
    def from_pretrained(cls, path: str | pathlib.Path, **overrides) -> "ModelConfig":
        config_file = pathlib.Path(path) / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"no config.json in {path}: expected a Hugging Face model directory")
        try:
            raw = json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ModelError(f"{config_file}: invalid JSON ({err})") from None
        return cls.from_hf_dict(raw, **overrides)

    def to_hf_dict(self, kind: str) -> dict[str, Any]:
        """config.json content; `kind` is 'causal_lm' or 'score'."""
        rope_parameters = {"rope_type": "default", "rope_theta": self.rope_theta}
        rope_parameters.update(self.rope_scaling_dict)
        out = {
            "architectures": ["LlamaForCausalLM" if kind == "causal_lm" else "LlamaForScore"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.resolved_head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": rope_parameters,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.param_dtype,
        }
        if kind == "score":
            out.update({k: getattr(self, k) for k in SCORE_FIELDS})
            out["normalize_function"] = {"reward": "affine", "cost": "scale"}.get(self.score_type, "identity")
        return out
