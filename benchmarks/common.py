"""Shared helpers: a random tiny Llama saved in HF format (loadable by both sides), timing, JSON output."""

from __future__ import annotations

import json
import pathlib
import statistics
import sys
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


def command_line() -> str:
    """The command that is running, as a user would type it (`python -m benchmarks.x ...`)."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    prog = f"python -m {spec.name}" if spec is not None else f"python {sys.argv[0]}"
    return " ".join([prog, *sys.argv[1:]])


def write_json(path, payload: dict) -> None:
    """The benchmark's JSON, with the command that produced it (every README number cites one)."""
    if path:
        pathlib.Path(path).write_text(json.dumps({"command": command_line(), **payload}, indent=2) + "\n")
