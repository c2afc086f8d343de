"""Where a CPU decode step goes: our sampler's step against the same step's matmuls alone, and one matmul against
PyTorch's on one and two threads.

    python -m benchmarks.decode_breakdown --batch 32 --prompt_len 64 --new_tokens 128 --hidden 512 --vocab 8192 \
        --json docs/bench_decode_breakdown_cpu_b32.json

Measured in one process, medians of `repeats` after warm-up:
- `decode_step_ms`: our sampler in the rollout layout ("fused_out_in"), (time for new_tokens − time for 1) /
  (new_tokens − 1): the prefill and the layout change cancel out;
- `matmul_only_step_ms`: a jitted while loop over the same step's matmuls only (fused q|k|v, o, fused gate|up,
  down per layer, the LM head; (B, E) activations, the same kernels), so the difference is attention, norms, RoPE,
  the cache write, sampling and per-op overhead;
- `torch_matmul_only_step_ms`: the same loop in PyTorch (eager, its default threads) on the same kernels: how fast
  the same matmuls run in the library transformers uses;
- `hf_step_ms`: transformers `generate` on the same weights and prompts, timed like `decode_step_ms`;
- `matmul_only_vs_hf`: hf_step_ms / matmul_only_step_ms, the ratio to HF a step made of nothing but XLA's matmuls
  would reach — the ceiling of `benchmarks/generate.py`'s ratio at this shape while XLA does the matmuls;
- `attention_layer_ms`: one layer's decode attention alone (`models.llama.attend`, one query per row, the cache as
  the sampler stores it, every one of prompt_len + new_tokens slots allowed) in a jitted loop, and
  `attention_cache_gbytes_per_s`, the f32 keys and values it reads per call over that time: how much of the step
  the cache read takes;
- `head_matmul_gflops`: the LM-head matmul (B, E) @ (E, V) alone in XLA and in PyTorch with 1 and 2 threads: whether
  each side uses both cores at this shape.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.common import hf_greedy_generate, median_time, tiny_llama_dir, write_json


def _matmul_only_loop(kernels, head, batch: int, steps: int):
    """A jitted fori_loop of `steps` steps, each the decode step's matmuls on (B, E) activations (residual adds and
    the SwiGLU product kept so nothing is dead code); returns a no-argument runner."""
    import jax
    import jax.numpy as jnp

    e = head.shape[0]

    def step(x):
        for qkv, o, gate_up, down in kernels:
            h = x @ qkv
            x = x + h[:, : o.shape[0]] @ o
            g = x @ gate_up
            f = down.shape[0]
            x = x + (jax.nn.silu(g[:, :f]) * g[:, f:]) @ down
        return x, x @ head

    def loop(x):
        def body(_, carry):
            x, acc = carry
            y, logits = step(x)
            return 0.5 * (x + y), acc + jnp.argmax(logits, -1).sum()
        return jax.lax.fori_loop(0, steps, body, (x, jnp.int32(0)))

    fn = jax.jit(loop)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, e)).astype(np.float32))
    return lambda: jax.block_until_ready(fn(x))


def _attention_loop(batch: int, heads: int, kv_heads: int, head_dim: int, slots: int, steps: int):
    """A jitted fori_loop of `steps` single-query decode attentions over a full (B, K, Dh, S) / (B, K, S, Dh)
    cache (the sampler's layout); each query depends on the last output, so no call is hoisted."""
    import jax
    import jax.numpy as jnp

    from saferlhf_jax.models.llama import attend

    rng = np.random.default_rng(2)
    k = jnp.asarray(rng.normal(size=(batch, kv_heads, head_dim, slots)).astype(np.float32))
    v = jnp.asarray(rng.normal(size=(batch, kv_heads, slots, head_dim)).astype(np.float32))
    q = jnp.asarray(rng.normal(size=(batch, 1, heads, head_dim)).astype(np.float32))
    allowed = jnp.ones((batch, 1, slots), bool)

    def loop(q, k, v):
        return jax.lax.fori_loop(0, steps, lambda _, q: q + 1e-3 * attend(q, k, v, allowed, heads_first=True), q)

    fn = jax.jit(loop)
    return lambda: jax.block_until_ready(fn(q, k, v))


def _torch_matmul_only_loop(kernels, head, batch: int, steps: int):
    """`_matmul_only_loop` in PyTorch eager on the same kernels (copied to torch tensors)."""
    import torch

    kernels = [tuple(torch.from_numpy(np.array(k)) for k in layer) for layer in kernels]
    head = torch.from_numpy(np.array(head))
    x0 = torch.from_numpy(np.random.default_rng(0).normal(size=(batch, head.shape[0])).astype(np.float32))

    def loop():
        x, acc = x0, 0
        with torch.no_grad():
            for _ in range(steps):
                y = x
                for qkv, o, gate_up, down in kernels:
                    h = y @ qkv
                    y = y + h[:, : o.shape[0]] @ o
                    g = y @ gate_up
                    f = down.shape[0]
                    y = y + (torch.nn.functional.silu(g[:, :f]) * g[:, f:]) @ down
                x, acc = 0.5 * (x + y), acc + int((y @ head).argmax(-1).sum())
        return acc
    return loop


def run(batch=32, prompt_len=64, new_tokens=128, repeats=5, hidden=512, layers=4, vocab=8192) -> dict:
    import jax
    import torch
    import transformers

    from saferlhf_jax.generation import generate
    from saferlhf_jax.models import fuse_params, load_causal_lm

    path = tiny_llama_dir(hidden=hidden, layers=layers, vocab=vocab)
    model = load_causal_lm(path)
    ids = np.random.default_rng(0).integers(3, vocab, (batch, prompt_len))
    mask = np.ones_like(ids)

    def ours(n):
        return lambda: jax.block_until_ready(generate(model, model.params, ids, mask, max_new_tokens=n, greedy=True,
                                                      eos_token_ids=[], rollout_layout="fused_out_in")["sequences"])

    full, one = median_time(ours(new_tokens), repeats, warmup=2), median_time(ours(1), repeats, warmup=2)
    step_s = (full - one) / (new_tokens - 1)

    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def hf_generate(n):
        return lambda: hf_greedy_generate(hf, ids, mask, n)

    hf_step_s = (median_time(hf_generate(new_tokens), repeats, warmup=1)
                 - median_time(hf_generate(1), repeats, warmup=1)) / (new_tokens - 1)

    # the rollout's fused kernels, (in, out): the same numbers the sampler's matmuls read
    fused = fuse_params(model.params, out_in=False)
    kernels = [(block["self_attn"]["qkv_proj"]["kernel"], block["self_attn"]["o_proj"]["kernel"],
                block["mlp"]["gate_up_proj"]["kernel"], block["mlp"]["down_proj"]["kernel"])
               for block in (fused["model"]["layers"][i] for i in range(layers))]
    head = fused["lm_head"]["kernel"]
    matmul_s = median_time(_matmul_only_loop(kernels, head, batch, new_tokens), repeats, warmup=2) / new_tokens
    torch_matmul_s = median_time(_torch_matmul_only_loop(kernels, head, batch, new_tokens), repeats,
                                 warmup=2) / new_tokens

    cfg = model.config
    slots, dh = prompt_len + new_tokens, cfg.resolved_head_dim
    attention_s = median_time(_attention_loop(batch, cfg.num_attention_heads, cfg.num_key_value_heads, dh, slots,
                                              new_tokens), repeats, warmup=2) / new_tokens
    cache_bytes = 2 * batch * cfg.num_key_value_heads * dh * slots * 4

    flops = 2 * batch * hidden * vocab
    x = np.random.default_rng(1).normal(size=(batch, hidden)).astype(np.float32)
    w = np.array(head)  # a writable copy for torch.from_numpy
    xla_dot = jax.jit(lambda a, b: a @ b)
    xj, wj = jax.numpy.asarray(x), jax.numpy.asarray(w)
    reps = 50
    gflops = {"xla": flops * reps / median_time(lambda: [jax.block_until_ready(xla_dot(xj, wj))
                                                         for _ in range(reps)], repeats, warmup=2) / 1e9}
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    threads = torch.get_num_threads()
    for n in (1, 2):
        torch.set_num_threads(n)
        with torch.no_grad():
            gflops[f"torch_{n}_threads"] = flops * reps / median_time(lambda: [xt @ wt for _ in range(reps)],
                                                                      repeats, warmup=2) / 1e9
    torch.set_num_threads(threads)
    return {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "repeats": repeats,
            "model": {"hidden": hidden, "layers": layers, "vocab": vocab, "intermediate": 4 * hidden},
            "tokens_per_second": batch * new_tokens / full, "decode_step_ms": step_s * 1e3,
            "prefill_and_setup_ms": one * 1e3, "matmul_only_step_ms": matmul_s * 1e3,
            "matmul_share_of_step": matmul_s / step_s, "torch_matmul_only_step_ms": torch_matmul_s * 1e3,
            "hf_step_ms": hf_step_s * 1e3, "step_vs_hf": hf_step_s / step_s, "matmul_only_vs_hf": hf_step_s / matmul_s,
            "attention_layer_ms": attention_s * 1e3, "attention_cache_gbytes_per_s": cache_bytes / attention_s / 1e9,
            "head_matmul_gflops": gflops,
            "device": jax.devices()[0].platform}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    r = run(args.batch, args.prompt_len, args.new_tokens, args.repeats, args.hidden, args.layers, args.vocab)
    g = r["head_matmul_gflops"]
    print(f"decode step {r['decode_step_ms']:.2f} ms, its matmuls alone {r['matmul_only_step_ms']:.2f} ms "
          f"({100 * r['matmul_share_of_step']:.0f} %; in PyTorch {r['torch_matmul_only_step_ms']:.2f} ms); "
          f"transformers' step {r['hf_step_ms']:.2f} ms: ours {r['step_vs_hf']:.2f}x, matmuls alone "
          f"{r['matmul_only_vs_hf']:.2f}x; one layer's attention {r['attention_layer_ms']:.2f} ms "
          f"({r['attention_cache_gbytes_per_s']:.0f} GB/s of cache); LM-head matmul: XLA {g['xla']:.0f} GFLOP/s, "
          f"PyTorch {g['torch_1_threads']:.0f} (1 thread) / {g['torch_2_threads']:.0f} (2 threads)")
    write_json(args.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
