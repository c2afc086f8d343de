"""Shared helpers: a random tiny Llama saved in HF format (loadable by both sides), timing, JSON output."""

from __future__ import annotations

import atexit
import json
import pathlib
import shutil
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
    # Removed when the benchmark exits: every run used to leave one more model directory in /tmp.
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    save_pretrained(model, model.params, out)
    return out


def hf_greedy_generate(hf, ids, mask, new_tokens: int):
    """transformers `generate` on CPU, greedy, exactly `new_tokens` new tokens per row (pad id 0): ids, mask (B, S)
    numpy → sequences (B, S + new_tokens) numpy."""
    import torch

    with torch.no_grad():
        return hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=0).numpy()


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_flops(m: int, k: int, n: int, dtype: str = "float32", repeats: int = 5) -> float:
    """FLOP/s of an XLA (m, k) @ (k, n) matmul in `dtype`, summed in f32, on the default device."""
    import jax
    import jax.numpy as jnp

    a, b = jnp.ones((m, k), dtype), jnp.ones((k, n), dtype)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    return 2 * m * k * n / median_time(lambda: jax.block_until_ready(f(a, b)), repeats, warmup=2)


def sft_step_runner(model, learning_rate: float, ids, mask):
    """A jitted SFT step (loss, grads, AdamW from the library's optimizer; state donated) on a fixed batch, and a
    no-argument function that runs one step and waits for it. Returns (run, holder): holder["state"] holds the
    params and optimizer state; the model's own `params` are moved into it (donated by the first step)."""
    import jax
    import optax

    from saferlhf_jax import ops
    from saferlhf_jax.training import optim

    optimizer, _ = optim.make_optimizer(learning_rate, 1000, schedule_type="constant")

    def step(state, ids, mask):
        def loss_fn(p):
            return ops.sft_loss(model.apply(p, ids, mask), ids)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt = optimizer.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

    step_jit = jax.jit(step, donate_argnums=(0,))
    holder = {"state": {"params": model.params, "opt": optimizer.init(model.params)}}

    def run():
        holder["state"], loss = step_jit(holder["state"], ids, mask)
        jax.block_until_ready(loss)

    return run, holder


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
