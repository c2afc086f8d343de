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
- `head_matmul_gflops`: the LM-head matmul (B, E) @ (E, V) alone in XLA and in PyTorch with 1 and 2 threads: whether
  each side uses both cores at this shape.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.common import median_time, tiny_llama_dir, write_json


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


def run(batch=32, prompt_len=64, new_tokens=128, repeats=5, hidden=512, layers=4, vocab=8192) -> dict:
    import jax
    import torch

    from saferlhf_jax.generation import generate
    from saferlhf_jax.models import fuse_params, load_causal_lm

    model = load_causal_lm(tiny_llama_dir(hidden=hidden, layers=layers, vocab=vocab))
    ids = np.random.default_rng(0).integers(3, vocab, (batch, prompt_len))
    mask = np.ones_like(ids)

    def ours(n):
        return lambda: jax.block_until_ready(generate(model, model.params, ids, mask, max_new_tokens=n, greedy=True,
                                                      eos_token_ids=[], rollout_layout="fused_out_in")["sequences"])

    full, one = median_time(ours(new_tokens), repeats, warmup=2), median_time(ours(1), repeats, warmup=2)
    step_s = (full - one) / (new_tokens - 1)

    # the rollout's fused kernels, (in, out): the same numbers the sampler's matmuls read
    fused = fuse_params(model.params, out_in=False)
    kernels = [(block["self_attn"]["qkv_proj"]["kernel"], block["self_attn"]["o_proj"]["kernel"],
                block["mlp"]["gate_up_proj"]["kernel"], block["mlp"]["down_proj"]["kernel"])
               for block in (fused["model"]["layers"][i] for i in range(layers))]
    head = fused["lm_head"]["kernel"]
    matmul_s = median_time(_matmul_only_loop(kernels, head, batch, new_tokens), repeats, warmup=2) / new_tokens

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
            "matmul_share_of_step": matmul_s / step_s, "head_matmul_gflops": gflops,
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
          f"({100 * r['matmul_share_of_step']:.0f} %); LM-head matmul: XLA {g['xla']:.0f} GFLOP/s, PyTorch "
          f"{g['torch_1_threads']:.0f} (1 thread) / {g['torch_2_threads']:.0f} (2 threads)")
    write_json(args.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
