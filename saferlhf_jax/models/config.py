"""Model configuration: one frozen dataclass for the decoder families we run — Llama, Mistral, Qwen2, Qwen3,
Gemma-2 and Gemma-3 (text) — as causal LMs and score models. The family differences are data here (norm kind,
activation, biases, q/k norm, sandwich norms, embedding scale, soft-caps, per-layer sliding windows and RoPE bases),
read by one model module (`saferlhf_jax.models.llama`).

Reads both Hugging Face config forms — transformers 5 (`rope_parameters`) and the older one real checkpoints carry
(`rope_theta`, `rope_scaling`) — and writes a config.json that transformers 5 loads. Every config field that changes
the computation is either honoured or refused with a one-line ModelError (never silently ignored).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from saferlhf_jax.errors import ModelError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
SCORE_FIELDS = ("score_dim", "score_bias", "score_type", "normalizer_type", "momentum", "do_normalize")
ACTIVATIONS = ("silu", "gelu_pytorch_tanh", "gelu_new", "gelu")
LAYER_TYPES = ("full_attention", "sliding_attention")
# model_type → (causal-LM class, score class for the reference layout, sequence-classification class)
FAMILIES = {
    "llama": ("LlamaForCausalLM", "LlamaForScore", "LlamaForSequenceClassification"),
    "mistral": ("MistralForCausalLM", "MistralForScore", "MistralForSequenceClassification"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2ForScore", "Qwen2ForSequenceClassification"),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3ForScore", "Qwen3ForSequenceClassification"),
    "gemma2": ("Gemma2ForCausalLM", "Gemma2ForScore", "Gemma2ForSequenceClassification"),
    "gemma3_text": ("Gemma3ForCausalLM", "Gemma3ForScore", "Gemma3TextForSequenceClassification"),
}


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
    attention_bias: bool = False   # q, k, v and o projections (Llama's attention_bias)
    mlp_bias: bool = False
    initializer_range: float = 0.02
    # family (all Llama defaults): see the module docstring
    model_type: str = "llama"
    hidden_act: str = "silu"
    qkv_bias: bool = False         # q, k, v only (Qwen2)
    norm_offset: float = 0.0       # RMSNorm multiplies by (offset + w): Gemma's (1 + w)
    sandwich_norms: bool = False   # Gemma: norms after attention and MLP too (pre/post_feedforward_layernorm)
    qk_norm: bool = False          # Qwen3 / Gemma-3: RMSNorm over head_dim on queries and keys
    embed_scale: bool = False      # Gemma: embeddings × √hidden_size
    query_pre_attn_scalar: float | None = None   # attention scale scalar^-0.5 instead of head_dim^-0.5
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    sliding_window: int | None = None
    layer_types: tuple | None = None             # per layer: full_attention | sliding_attention (None: all full)
    rope_local_theta: float | None = None        # RoPE base of the sliding layers (Gemma-3); None: rope_theta
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
    fused_projections: bool = False  # rollout layout: q|k|v and gate|up as one kernel each (`models.fuse_params`)
    out_in_kernels: bool = False     # every Dense kernel stored (out, in) instead of (in, out) (`llama.Dense`)
    # a narrow rollout copy (`Model.rollout_as(..., dtype="bfloat16")`): the weights are stored in this dtype and
    # every projection multiplies in it, summing in the compute dtype — never an upcast copy of a kernel per call
    matmul_dtype: str | None = None
    # LoRA adapters inside these projections (`llama.Dense`, `models.lora.inject`): set by `Model.apply` for a
    # parameter tree that carries adapters, never by hand; the rank only sizes the abstract shapes
    lora_targets: tuple = ()
    lora_rank: int = 0

    def __post_init__(self):
        # keep the dataclass hashable (it is static metadata of jitted programs)
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if isinstance(self.layer_types, list):
            object.__setattr__(self, "layer_types", tuple(self.layer_types))

    def layer_type(self, i: int) -> str:
        return self.layer_types[i] if self.layer_types else "full_attention"

    @property
    def sliding_layers(self) -> tuple[bool, ...]:
        """Per layer: attends within `sliding_window` tokens."""
        return tuple(self.sliding_window is not None and self.layer_type(i) == "sliding_attention"
                     for i in range(self.num_hidden_layers))

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
        if self.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act {self.hidden_act!r} is not supported (supported: {ACTIVATIONS})")
        if self.model_type not in FAMILIES:
            problems.append(f"model_type {self.model_type!r} is not supported (supported: {sorted(FAMILIES)})")
        if self.layer_types is not None and (len(self.layer_types) != self.num_hidden_layers
                                             or any(t not in LAYER_TYPES for t in self.layer_types)):
            problems.append(f"layer_types must list {LAYER_TYPES} for each of the {self.num_hidden_layers} layers")
        if self.lora_targets and (self.fused_projections or self.out_in_kernels):
            problems.append("LoRA adapters run in the training layout (the rollout layout merges them first)")
        if self.sliding_window is not None and self.sliding_window < 1:
            problems.append(f"sliding_window must be ≥ 1, got {self.sliding_window}")
        if problems:
            raise ModelError("invalid model config: " + "; ".join(problems))
        return self

    # ------------------------------------------------------------------ HF config.json

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], **overrides) -> "ModelConfig":
        """Build from a HF config dict (transformers 4 or 5 form). Fields that change the computation are honoured
        or refused (`family_fields`); the others (dropout-free training settings, token ids) are read as they are."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in fields and k not in FAMILY_KEYS}
        kwargs.update(family_fields(raw))
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

    def to_hf_dict(self, kind: str, layout: str = "reference") -> dict[str, Any]:
        """config.json content; `kind` is 'causal_lm' or 'score'. Score models: layout 'reference' writes the
        reference's `*ForScore` (score_head.*, normalizer stats); 'hf' a transformers `*ForSequenceClassification`
        (score.weight, num_labels) that AutoModelForSequenceClassification loads."""
        causal, score, seq_cls = FAMILIES[self.model_type]
        gemma = self.model_type in ("gemma2", "gemma3_text")
        out = {
            "architectures": [causal if kind == "causal_lm" else (seq_cls if layout == "hf" else score)],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.resolved_head_dim,
            ("hidden_activation" if gemma else "hidden_act"): self.hidden_act,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": self._rope_parameters(),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "dtype": self.param_dtype,
        }
        if self.model_type == "llama":
            out["mlp_bias"] = self.mlp_bias
        if self.model_type in ("mistral", "qwen2", "qwen3", "gemma2", "gemma3_text"):
            out["sliding_window"] = self.sliding_window
        if self.model_type in ("qwen2", "qwen3"):
            out["use_sliding_window"] = self.sliding_window is not None
            out["max_window_layers"] = self.num_hidden_layers
        if self.layer_types is not None and self.model_type != "mistral":
            out["layer_types"] = list(self.layer_types)
        if gemma:
            scalar = self.query_pre_attn_scalar
            out.update(query_pre_attn_scalar=int(scalar) if scalar is not None and float(scalar).is_integer()
                       else scalar,
                       attn_logit_softcapping=self.attn_logit_softcapping,
                       final_logit_softcapping=self.final_logit_softcapping)
        if kind == "score":
            if layout == "hf":
                out["num_labels"] = self.score_dim
            out.update({k: getattr(self, k) for k in SCORE_FIELDS})
            out["normalize_function"] = {"reward": "affine", "cost": "scale"}.get(self.score_type, "identity")
            if self.score_type == "cost":  # a known source of bugs when others reuse cost models
                out["score_convention"] = "cost: higher = more harmful; cost > 0 = unsafe, cost ≤ 0 = safe"
            elif self.score_type == "reward":
                out["score_convention"] = "reward: higher = more helpful"
        return out

    def _rope_parameters(self) -> dict:
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        rope.update(self.rope_scaling_dict)
        if self.model_type != "gemma3_text":
            return rope
        local = {"rope_type": "default", "rope_theta": self.rope_local_theta or self.rope_theta}
        return {"full_attention": rope, "sliding_attention": local}


# ---------------------------------------------------------------------------------------------------- families

# HF keys read by `family_fields` (never copied blindly)
FAMILY_KEYS = ("rope_scaling", "rope_theta", "rope_parameters", "hidden_act", "hidden_activation", "sliding_window",
               "layer_types", "attention_bias", "mlp_bias", "query_pre_attn_scalar", "attn_logit_softcapping",
               "final_logit_softcapping", "model_type", "head_dim")


def _rope(params: dict, where: str) -> tuple[float, dict | None]:
    """(theta, scaling or None) from one rope_parameters / legacy rope_scaling dict; unsupported types refused."""
    scaling = dict(params)
    theta = float(scaling.pop("rope_theta", 10000.0))
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    scaling.pop("type", None)
    rope_type = scaling.get("rope_type", "default")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ModelError(f"{where}: rope_type {rope_type!r} is not supported (supported: {SUPPORTED_ROPE_TYPES})")
    if float(scaling.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ModelError(f"{where}: partial_rotary_factor {scaling['partial_rotary_factor']} is not supported")
    scaling.pop("partial_rotary_factor", None)
    return theta, (scaling if rope_type != "default" else None)


def _refuse(raw: dict, model_type: str, *keys: str) -> None:
    """Keys that would change the computation in a way this family does not (yet) implement."""
    for key in keys:
        value = raw.get(key)
        if value not in (None, False, 0, 0.0, "", [], {}):
            raise ModelError(f"{model_type} config sets {key}={value!r}, which saferlhf-jax does not implement for "
                             f"{model_type} checkpoints; refusing rather than running a different model")


def family_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """The computation-changing fields of a HF config, per family (see FAMILIES); a ModelError for anything that
    would otherwise be dropped: unsupported model types, architectures, activations, RoPE types, windows, soft-caps,
    bidirectional attention, attention dropout."""
    model_type = raw.get("model_type", "llama")
    if model_type not in FAMILIES:
        raise ModelError(f"unsupported model_type {model_type!r}: saferlhf-jax loads {', '.join(sorted(FAMILIES))} "
                         "checkpoints")
    allowed = set(FAMILIES[model_type]) | ({"LlamaModelForScore"} if model_type == "llama" else set())
    for arch in raw.get("architectures") or ():  # e.g. GPT-2 weights labelled llama: refused, never run as Llama
        if arch not in allowed:
            raise ModelError(f"architecture {arch!r} is not a {model_type} model saferlhf-jax supports "
                             f"({', '.join(sorted(allowed))})")
    gemma = model_type in ("gemma2", "gemma3_text")
    act = raw.get("hidden_activation") if gemma and raw.get("hidden_activation") else raw.get("hidden_act", "silu")
    if act not in ACTIVATIONS:
        raise ModelError(f"hidden activation {act!r} is not supported (supported: {ACTIVATIONS})")
    if raw.get("use_bidirectional_attention"):
        raise ModelError(f"{model_type} config asks for bidirectional attention: not a causal LM")
    if float(raw.get("attention_dropout") or 0.0) > 0:
        raise ModelError(f"attention_dropout={raw['attention_dropout']} is not implemented (RLHF trains without it)")
    out: dict[str, Any] = {"model_type": model_type, "hidden_act": act}
    if raw.get("head_dim") is not None:
        out["head_dim"] = int(raw["head_dim"])
    rope = raw.get("rope_parameters") or {}
    if model_type == "gemma3_text" and isinstance(rope.get("full_attention"), dict):
        out["rope_theta"], out["rope_scaling"] = _rope(rope["full_attention"], "rope_parameters.full_attention")
        local_theta, local_scaling = _rope(rope.get("sliding_attention") or {}, "rope_parameters.sliding_attention")
        if local_scaling:
            raise ModelError("Gemma-3 sliding layers with scaled RoPE are not supported")
        out["rope_local_theta"] = local_theta
    else:
        legacy = dict(raw.get("rope_scaling") or {})
        merged = {**legacy, **rope, "rope_theta": rope.get("rope_theta", raw.get("rope_theta", 10000.0))}
        out["rope_theta"], out["rope_scaling"] = _rope(merged, "rope parameters")
        if model_type == "gemma3_text":
            out["rope_local_theta"] = float(raw.get("rope_local_base_freq", 10000.0))
    n = int(raw.get("num_hidden_layers", 32))
    window = raw.get("sliding_window")
    layer_types = raw.get("layer_types")
    if model_type == "llama":
        _refuse(raw, model_type, "sliding_window", "attn_logit_softcapping", "final_logit_softcapping")
        if layer_types and any(t != "full_attention" for t in layer_types):
            raise ModelError("a llama config with sliding-attention layer_types is not supported")
        out.update(attention_bias=bool(raw.get("attention_bias", False)), mlp_bias=bool(raw.get("mlp_bias", False)))
        return out
    _refuse(raw, model_type, "mlp_bias")
    if model_type == "mistral":
        if layer_types:
            raise ModelError("a mistral config with layer_types (Ministral's alternating attention) is not supported")
        _refuse(raw, model_type, "attn_logit_softcapping", "final_logit_softcapping")
        out.update(attention_bias=bool(raw.get("attention_bias", False)), sliding_window=window,
                   layer_types=("sliding_attention",) * n if window else None)
        return out
    if model_type in ("qwen2", "qwen3"):
        _refuse(raw, model_type, "attn_logit_softcapping", "final_logit_softcapping")
        use_window = bool(raw.get("use_sliding_window", False)) and window is not None
        if layer_types is None:
            first = int(raw.get("max_window_layers", n))
            layer_types = ["sliding_attention" if use_window and i >= first else "full_attention" for i in range(n)]
        out.update(sliding_window=window if use_window or "sliding_attention" in layer_types else None,
                   layer_types=tuple(layer_types))
        if model_type == "qwen2":
            out.update(qkv_bias=True, attention_bias=False)  # Qwen2: biased q/k/v, unbiased o (no config key)
        else:
            out.update(qk_norm=True, attention_bias=bool(raw.get("attention_bias", False)))
        return out
    # Gemma-2 / Gemma-3 text
    if layer_types is None:
        if model_type == "gemma2":
            layer_types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)]
        else:
            pattern = int(raw.get("sliding_window_pattern", 6))
            layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
    out.update(norm_offset=1.0, sandwich_norms=True, embed_scale=True, qk_norm=model_type == "gemma3_text",
               attention_bias=bool(raw.get("attention_bias", False)),
               query_pre_attn_scalar=float(raw.get("query_pre_attn_scalar", 256)),
               attn_logit_softcapping=raw.get("attn_logit_softcapping"),
               final_logit_softcapping=raw.get("final_logit_softcapping"),
               sliding_window=window, layer_types=tuple(layer_types),
               tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)))
    return out
