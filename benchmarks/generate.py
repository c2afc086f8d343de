"""Generation throughput: our jitted KV-cache sampler vs transformers (PyTorch) `generate`, same weights, greedy.

    python -m benchmarks.generate [--batch 8 --prompt_len 32 --new_tokens 64 --repeats 5] [--json out.json]
    python -m benchmarks.generate --batch 32 --prompt_len 64 --new_tokens 128 --hidden 512 --vocab 8192

Prints both tokens/s and the ratio (ours / HF): ours is the rollout path in RL's default layout (parameters fused
once per call, kernels (out, in): `generation.rollout_layout="fused_out_in"`); the ratios of the other layouts
("fused": kernels kept (in, out); "none": the training layout) are printed too — which is fastest depends on the CPU.
One warm-up each, then `repeats` interleaved rounds of the four sides in this process; medians.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from benchmarks.common import hf_greedy_generate, median_time, tiny_llama_dir, write_json


def run(batch=8, prompt_len=32, new_tokens=64, repeats=5, hidden=256, layers=4, vocab=2048, threads=None,
        cpu_devices=1) -> dict:
    """cpu_devices > 1: our sampler on a mesh of that many CPU devices with the batch split over `data` (one
    device per core: XLA runs each device's non-matmul ops on its own thread); the process must have been started
    with that many host devices (`main` sets XLA_FLAGS before jax loads)."""
    import jax
    import torch
    import transformers

    from saferlhf_jax.generation import generate
    from saferlhf_jax.models import load_causal_lm

    if threads:
        torch.set_num_threads(threads)
    from saferlhf_jax.parallel import mesh as mesh_lib

    path = tiny_llama_dir(hidden=hidden, layers=layers, vocab=vocab)
    mesh = None
    if cpu_devices > 1:
        if len(jax.devices()) < cpu_devices or batch % cpu_devices:
            raise ValueError(f"--cpu_devices {cpu_devices} needs that many devices (have {len(jax.devices())}) and a "
                             f"batch divisible by it (got {batch})")
        mesh = mesh_lib.make_mesh(cpu_devices, 1, 1, jax.devices()[:cpu_devices])
    ours = load_causal_lm(path, mesh=mesh)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    lengths = rng.integers(prompt_len // 2, prompt_len + 1, batch)
    ids = np.zeros((batch, prompt_len), np.int64)
    mask = np.zeros((batch, prompt_len), np.int64)
    for i, n in enumerate(lengths):
        ids[i, prompt_len - n:] = rng.integers(3, vocab, n)
        mask[i, prompt_len - n:] = 1

    def run_ours(rollout_layout="fused_out_in"):  # what RL rollouts use: the parameters fused once per call
        out = generate(ours, ours.params, ids, mask, max_new_tokens=new_tokens, greedy=True, eos_token_ids=[],
                       rollout_layout=rollout_layout, mesh=mesh)
        return out["sequences"]

    def run_hf():
        return hf_greedy_generate(hf, ids, mask, new_tokens)

    ours_seq, hf_seq = run_ours(), run_hf()
    agree = float(np.mean(ours_seq[:, prompt_len:] == hf_seq[:, prompt_len:]))
    layouts = ("fused_out_in", "fused", "none")
    same_layouts = all(bool((run_ours(layout) == ours_seq).all()) for layout in layouts[1:])
    # interleaved rounds: machine noise hits all four sides alike; the medians are taken per side
    sides = {**{layout: (lambda layout=layout: jax.block_until_ready(run_ours(layout))) for layout in layouts},
             "hf": run_hf}
    times: dict[str, list] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            times[name].append(median_time(fn, 1, warmup=0))
    t = {k: float(np.median(v)) for k, v in times.items()}
    tokens = batch * new_tokens
    by_layout = {layout: t["hf"] / t[layout] for layout in layouts}
    result = {"ours": tokens / t["fused_out_in"], "baseline": tokens / t["hf"], "ratio": by_layout["fused_out_in"],
              "ratio_training_layout": by_layout["none"], "ratio_by_layout": by_layout,
              "fastest_layout": max(by_layout, key=by_layout.get), "unit": "tokens/s", "token_agreement": agree,
              "layouts_agree": same_layouts, "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
              "repeats": repeats, "model": {"hidden": hidden, "layers": layers, "vocab": vocab},
              "device": jax.devices()[0].platform, "threads": threads or "default", "cpu_devices": cpu_devices}
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
    p.add_argument("--cpu_devices", type=int, default=1,
                   help="split our batch over this many CPU devices (data axis), one per core")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.cpu_devices > 1:
        if "jax" in sys.modules:
            raise SystemExit("--cpu_devices must be set before jax is imported (run this script as a program)")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.cpu_devices}").strip()
    r = run(args.batch, args.prompt_len, args.new_tokens, args.repeats, args.hidden, args.layers, args.vocab,
            cpu_devices=args.cpu_devices)
    print(f"generation, batch {r['batch']} × {r['new_tokens']} new tokens: ours {r['ours']:.0f} tok/s, "
          f"HF generate {r['baseline']:.0f} tok/s, ratio {r['ratio']:.2f}× (by rollout layout: "
          + ", ".join(f"{k} {v:.2f}×" for k, v in r["ratio_by_layout"].items())
          + f"; greedy token agreement {r['token_agreement']:.3f})")
    write_json(args.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
