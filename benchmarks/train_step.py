"""Train-step throughput: our jitted SFT step (optax AdamW, donated state) vs the same model in transformers
PyTorch (fp32, eager, torch.optim.AdamW), plus our FLOP/s against this machine's measured matmul peak.

    python -m benchmarks.train_step [--hidden 512 --layers 4 --vocab 8192 --batch 8 --seq 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.common import matmul_flops, median_time, sft_step_runner, tiny_llama_dir, write_json


def matmul_peak(n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of an f32 n×n×n matmul under XLA on the default device."""
    return matmul_flops(n, n, n, "float32", repeats)


def run(hidden=256, layers=4, vocab=2048, batch=4, seq=128, repeats=3) -> dict:
    import jax
    import torch
    import transformers

    from saferlhf_jax.models import load_causal_lm

    path = tiny_llama_dir(hidden=hidden, layers=layers, vocab=vocab)
    ours = load_causal_lm(path)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab, (batch, seq)).astype(np.int32)
    mask = np.ones_like(ids)
    run_ours, _ = sft_step_runner(ours, 1e-4, ids, mask)

    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    hf.train()
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    tids = torch.tensor(ids, dtype=torch.long)

    def run_hf():
        hf_opt.zero_grad(set_to_none=True)
        out = hf(input_ids=tids, labels=tids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        hf_opt.step()

    t_ours = median_time(run_ours, repeats)
    t_hf = median_time(run_hf, repeats)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(ours.params))
    tokens = batch * seq
    flops = 6 * n_params * tokens + 12 * layers * hidden * seq * tokens  # dense + attention (fwd + bwd)
    peak = matmul_peak()
    return {"ours": 1.0 / t_ours, "baseline": 1.0 / t_hf, "ratio": t_hf / t_ours, "unit": "steps/s",
            "ours_flops_per_sec": flops / t_ours, "matmul_peak_flops_per_sec": peak,
            "fraction_of_peak": flops / t_ours / peak, "params": n_params, "batch": batch, "seq": seq,
            "device": jax.devices()[0].platform}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    r = run(a.hidden, a.layers, a.vocab, a.batch, a.seq, a.repeats)
    print(f"train step ({r['params'] / 1e6:.1f}M params, {a.batch}×{a.seq} tokens): ours {1 / r['ours']:.3f}s, "
          f"transformers {1 / r['baseline']:.3f}s, ratio {r['ratio']:.2f}×; "
          f"{r['ours_flops_per_sec'] / 1e9:.1f} GFLOP/s = {r['fraction_of_peak']:.0%} of the measured matmul peak")
    write_json(a.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
