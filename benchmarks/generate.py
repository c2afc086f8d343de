"""Generation throughput: our jitted KV-cache sampler vs transformers (PyTorch) `generate`, same weights, greedy.

    python -m benchmarks.generate [--batch 8 --prompt_len 32 --new_tokens 64 --repeats 5] [--json out.json]

Prints both tokens/s and the ratio (ours / HF), measured back to back in this process.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.common import median_time, tiny_llama_dir, write_json


def run(batch=8, prompt_len=32, new_tokens=64, repeats=5, hidden=256, layers=4, vocab=2048, threads=None) -> dict:
    import jax
    import torch
    import transformers

    from saferlhf_jax.generation import generate
    from saferlhf_jax.models import load_causal_lm

    if threads:
        torch.set_num_threads(threads)
    path = tiny_llama_dir(hidden=hidden, layers=layers, vocab=vocab)
    ours = load_causal_lm(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    lengths = rng.integers(prompt_len // 2, prompt_len + 1, batch)
    ids = np.zeros((batch, prompt_len), np.int64)
    mask = np.zeros((batch, prompt_len), np.int64)
    for i, n in enumerate(lengths):
        ids[i, prompt_len - n:] = rng.integers(3, vocab, n)
        mask[i, prompt_len - n:] = 1

    def run_ours():
        out = generate(ours, ours.params, ids, mask, max_new_tokens=new_tokens, greedy=True, eos_token_ids=[])
        return out["sequences"]

    def run_hf():
        with torch.no_grad():
            return hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False, pad_token_id=0).numpy()

    ours_seq, hf_seq = run_ours(), run_hf()
    agree = float(np.mean(ours_seq[:, prompt_len:] == hf_seq[:, prompt_len:]))
    t_ours = median_time(lambda: jax.block_until_ready(run_ours()), repeats)
    t_hf = median_time(run_hf, repeats)
    tokens = batch * new_tokens
    result = {"ours": tokens / t_ours, "baseline": tokens / t_hf, "ratio": t_hf / t_ours, "unit": "tokens/s",
              "token_agreement": agree, "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
              "model": {"hidden": hidden, "layers": layers, "vocab": vocab}, "device": jax.devices()[0].platform}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    r = run(args.batch, args.prompt_len, args.new_tokens, args.repeats, args.hidden, args.layers, args.vocab)
    print(f"generation, batch {r['batch']} × {r['new_tokens']} new tokens: ours {r['ours']:.0f} tok/s, "
          f"HF generate {r['baseline']:.0f} tok/s, ratio {r['ratio']:.2f}× (greedy token agreement "
          f"{r['token_agreement']:.3f})")
    write_json(args.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
