"""Generation throughput: our jitted KV-cache sampler vs transformers (PyTorch) `generate`, same weights, greedy.

    python -m benchmarks.generate [--batch 8 --prompt_len 32 --new_tokens 64 --repeats 5] [--json out.json]
    python -m benchmarks.generate --batch 32 --prompt_len 64 --new_tokens 128 --hidden 512 --vocab 8192

Prints both tokens/s and the ratio (ours / HF): ours is the rollout path (parameters fused once per call, as RL
samples); the training layout's ratio is printed too. One warm-up each, then `repeats` interleaved rounds of the
three sides in this process; medians.
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

    def run_ours(rollout_layout=True):  # what RL rollouts use: the parameters fused once per call
        out = generate(ours, ours.params, ids, mask, max_new_tokens=new_tokens, greedy=True, eos_token_ids=[],
                       rollout_layout=rollout_layout)
        return out["sequences"]

    def run_hf():
        with torch.no_grad():
            return hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False, pad_token_id=0).numpy()

    ours_seq, hf_seq = run_ours(), run_hf()
    agree = float(np.mean(ours_seq[:, prompt_len:] == hf_seq[:, prompt_len:]))
    same_layouts = bool((run_ours(False) == ours_seq).all())
    # interleaved rounds: machine noise hits all three sides alike; the medians are taken per side
    times: dict[str, list] = {"ours": [], "train_layout": [], "hf": []}
    sides = {"ours": lambda: jax.block_until_ready(run_ours()),
             "train_layout": lambda: jax.block_until_ready(run_ours(False)), "hf": run_hf}
    for _ in range(repeats):
        for name, fn in sides.items():
            times[name].append(median_time(fn, 1, warmup=0))
    t = {k: float(np.median(v)) for k, v in times.items()}
    tokens = batch * new_tokens
    result = {"ours": tokens / t["ours"], "baseline": tokens / t["hf"], "ratio": t["hf"] / t["ours"],
              "ratio_training_layout": t["hf"] / t["train_layout"], "unit": "tokens/s", "token_agreement": agree,
              "layouts_agree": same_layouts, "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
              "repeats": repeats, "model": {"hidden": hidden, "layers": layers, "vocab": vocab},
              "device": jax.devices()[0].platform, "threads": threads or "default"}
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
          f"HF generate {r['baseline']:.0f} tok/s, ratio {r['ratio']:.2f}× (training layout "
          f"{r['ratio_training_layout']:.2f}×; greedy token agreement {r['token_agreement']:.3f})")
    write_json(args.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
