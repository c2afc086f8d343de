"""Shared helpers: a random tiny Llama saved in HF format (loadable by both sides), timing, JSON output."""

from __future__ import annotations

import json
import pathlib
import statistics
import tempfile
import time


def tiny_llama_dir(hidden=256, layers=4, heads=8, kv_heads=4, vocab=2048, intermediate=None, seed=0) -> pathlib.Path:
    from saferlhf_jax.models import ModelConfig, init_model, save_pretrained

    cfg = ModelConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 4 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=4096, initializer_range=0.02, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0)
    model = init_model(cfg, "causal_lm", rng=seed)
    out = pathlib.Path(tempfile.mkdtemp(prefix="bench_llama_"))
    save_pretrained(model, model.params, out)
    return out


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_json(path, payload: dict) -> None:
    if path:
        pathlib.Path(path).write_text(json.dumps(payload, indent=2) + "\n")
