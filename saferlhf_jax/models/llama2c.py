"""Import Karpathy llama2.c checkpoints (legacy v0 export) and tokenizers into HF-format directories.

llama2.c stores q/k projections for RoPE on *interleaved* pairs (x[2i], x[2i+1]); HF Llama rotates halves. The q/k
rows are permuted per head so that the HF-convention model computes exactly the same function.
"""

from __future__ import annotations

import json
import pathlib
import struct

import numpy as np

from saferlhf_jax.models import safetensors_io
from saferlhf_jax.models.config import ModelConfig

SPIECE_SPACE = "\u2581"


def read_checkpoint(path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """llama2.c legacy (v0) .bin → (config, HF-named float32 tensors in (out, in) layout)."""
    path = pathlib.Path(path)
    raw = path.read_bytes()
    if len(raw) < 28:
        raise ValueError(f"{path}: too short for a llama2.c checkpoint")
    magic = struct.unpack("<I", raw[:4])[0]
    if magic == 0x616B3432:
        raise ValueError(f"{path}: llama2.c v1/v2 exports are not supported; export with --version 0 (legacy)")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", raw[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    head = dim // n_heads
    kv_dim = n_kv * head
    data = np.frombuffer(raw, dtype=np.float32, offset=28)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        if pos + n > data.size:
            raise ValueError(f"{path}: file ends early; header says dim={dim} layers={n_layers} vocab={vocab}")
        out = data[pos: pos + n].reshape(shape)
        pos += n
        return out

    emb = take(vocab, dim)
    rms_att = take(n_layers, dim)
    wq = take(n_layers, dim, dim)
    wk = take(n_layers, kv_dim, dim)
    wv = take(n_layers, kv_dim, dim)
    wo = take(n_layers, dim, dim)
    rms_ffn = take(n_layers, dim)
    w1 = take(n_layers, hidden, dim)
    w2 = take(n_layers, dim, hidden)
    w3 = take(n_layers, hidden, dim)
    rms_final = take(dim)
    take(seq_len, head // 2)  # freq_cis_real (unused)
    take(seq_len, head // 2)  # freq_cis_imag (unused)
    classifier = None if shared else take(vocab, dim)

    def interleaved_to_halves(w, heads):
        out_dim, in_dim = w.shape
        return w.reshape(heads, out_dim // heads // 2, 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim)

    tensors = {"model.embed_tokens.weight": emb, "model.norm.weight": rms_final}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = rms_att[i]
        tensors[p + "post_attention_layernorm.weight"] = rms_ffn[i]
        tensors[p + "self_attn.q_proj.weight"] = interleaved_to_halves(wq[i], n_heads)
        tensors[p + "self_attn.k_proj.weight"] = interleaved_to_halves(wk[i], n_kv)
        tensors[p + "self_attn.v_proj.weight"] = wv[i]
        tensors[p + "self_attn.o_proj.weight"] = wo[i]
        tensors[p + "mlp.gate_proj.weight"] = w1[i]
        tensors[p + "mlp.down_proj.weight"] = w2[i]
        tensors[p + "mlp.up_proj.weight"] = w3[i]
    if classifier is not None:
        tensors["lm_head.weight"] = classifier
    config = ModelConfig(
        vocab_size=vocab, hidden_size=dim, intermediate_size=hidden, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=n_kv, rms_norm_eps=1e-5, rope_theta=10000.0,
        max_position_embeddings=seq_len, tie_word_embeddings=shared, bos_token_id=1, eos_token_id=2,
        pad_token_id=None,
    ).validate()
    return config, {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}


def read_tokenizer(path, vocab_size: int) -> tuple[list[str], list[float]]:
    """llama2.c tokenizer .bin → (pieces in SentencePiece form, scores)."""
    raw = pathlib.Path(path).read_bytes()
    pos = 4  # max_token_length
    pieces, scores = [], []
    for i in range(vocab_size):
        if pos + 8 > len(raw):
            raise ValueError(f"{path}: has fewer than {vocab_size} tokens")
        score, n = struct.unpack("<fi", raw[pos: pos + 8])
        pos += 8
        piece = raw[pos: pos + n].decode("utf-8", errors="replace")
        pos += n
        pieces.append(piece)
        scores.append(score)
    specials = {0: "<unk>", 1: "<s>", 2: "</s>"}
    out = [specials.get(i, p if p.startswith("<0x") else p.replace(" ", SPIECE_SPACE)) for i, p in enumerate(pieces)]
    return out, scores


def build_tokenizer_json(pieces: list[str], scores: list[float]) -> str:
    """SentencePiece-style BPE with byte fallback (BOS added, like Llama-2) as a tokenizers JSON string.

    Merge priority follows the merged piece's score, which reproduces llama2.c's greedy highest-score merging.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    vocab = {p: i for i, p in enumerate(pieces)}
    merges = []
    for piece, score in zip(pieces, scores):
        if piece.startswith("<") and piece.endswith(">"):
            continue
        local = [(piece[:k], piece[k:], score) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    merges.sort(key=lambda m: -m[2])
    bpe = models.BPE(vocab=vocab, merges=[(a, b) for a, b, _ in merges], unk_token="<unk>", byte_fallback=True,
                     fuse_unk=True)
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPIECE_SPACE), normalizers.Replace(" ", SPIECE_SPACE)])
    tok.decoder = decoders.Sequence([decoders.Replace(SPIECE_SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return tok.to_str(pretty=False)


TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "add_bos_token": True,
    "add_eos_token": False,
    "clean_up_tokenization_spaces": False,
    "model_max_length": 512,
}


def convert(checkpoint, tokenizer, output) -> pathlib.Path:
    """Write an HF-format directory (config.json, model.safetensors, tokenizer.json + config) from llama2.c files."""
    config, tensors = read_checkpoint(checkpoint)
    pieces, scores = read_tokenizer(tokenizer, config.vocab_size)
    out = pathlib.Path(output)
    out.mkdir(parents=True, exist_ok=True)
    safetensors_io.save_file(tensors, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(config.to_hf_dict("causal_lm"), indent=2) + "\n")
    (out / "tokenizer.json").write_text(build_tokenizer_json(pieces, scores))
    tok_cfg = dict(TOKENIZER_CONFIG, model_max_length=config.max_position_embeddings)
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2) + "\n")
    gen = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": True, "temperature": 1.0, "top_k": 50, "top_p": 1.0}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return out
