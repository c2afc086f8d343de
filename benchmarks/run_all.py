"""Run every benchmark at the chosen size and print one table of ratios measured in this run.

    python -m benchmarks.run_all [--size tiny|cpu|gpu] [--json all.json]

Baselines: transformers PyTorch train step (fp32), the machine's matmul peak, HF `generate` at two shapes (and, on
CPU, the share of a decode step its matmuls take and the ratio to HF a step of only those matmuls would reach,
`benchmarks/decode_breakdown.py`), and TRL
1.12's PPOTrainer when `trl==1.12.0` is installed (skipped, and said so, otherwise). `--size gpu` adds the rows of
`benchmarks/gpu_suite.py` (decode as a fraction of the HBM roofline, train-step MFU of a 1B-shaped model).
"""

from __future__ import annotations

import argparse
import sys

from benchmarks.common import write_json

SIZES = {
    "tiny": {"ppo": dict(batch=2, prompt_len=8, response_len=8, steps=1),
             "train": dict(hidden=64, layers=2, vocab=256, batch=2, seq=32, repeats=1),
             "generate": dict(batch=2, prompt_len=8, new_tokens=8, repeats=1, hidden=64, layers=2, vocab=256),
             "generate_large": dict(batch=4, prompt_len=8, new_tokens=16, repeats=1, hidden=64, layers=2, vocab=512)},
    "cpu": {"ppo": dict(batch=8, prompt_len=32, response_len=32, steps=4),
            "train": dict(hidden=512, layers=4, vocab=8192, batch=8, seq=256, repeats=3),
            "generate": dict(batch=8, prompt_len=32, new_tokens=64, repeats=5, hidden=256, layers=4, vocab=2048),
            "generate_large": dict(batch=32, prompt_len=64, new_tokens=128, repeats=5, hidden=512, layers=4,
                                   vocab=8192)},
    "gpu": {"ppo": dict(batch=32, prompt_len=64, response_len=64, steps=4, hidden=512, layers=4),
            "train": dict(hidden=2048, layers=8, vocab=32000, batch=16, seq=512, repeats=5),
            "generate": dict(batch=32, prompt_len=64, new_tokens=256, repeats=3, hidden=1024, layers=8,
                             vocab=32000),
            "generate_large": dict(batch=128, prompt_len=128, new_tokens=256, repeats=3, hidden=2048, layers=8,
                                   vocab=32000)},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    from benchmarks import generate, train_step

    sizes = SIZES[a.size]
    results = {"train_step_vs_transformers": train_step.run(**sizes["train"]),
               "generate_vs_hf": generate.run(**sizes["generate"]),
               "generate_large_vs_hf": generate.run(**sizes["generate_large"])}
    results["train_step_fraction_of_matmul_peak"] = {
        "ratio": results["train_step_vs_transformers"]["fraction_of_peak"]}
    if a.size != "gpu":  # the larger generate shape's decode step against its matmuls alone
        from benchmarks import decode_breakdown

        row = decode_breakdown.run(**sizes["generate_large"])
        results["decode_step_matmul_share"] = {"ratio": row["matmul_share_of_step"], **row}
        # the ratio to transformers a step of nothing but XLA's matmuls would reach: the CPU ceiling of
        # generate_vs_hf at that shape
        results["decode_matmul_only_vs_hf"] = {"ratio": row["matmul_only_vs_hf"]}
    try:
        import trl  # noqa: F401
    except ImportError:
        results["ppo_step_vs_trl"] = {"skipped": "trl==1.12.0 is not installed"}
    else:
        from benchmarks import ppo_step

        results["ppo_step_vs_trl"] = ppo_step.run(**sizes["ppo"])
    if a.size == "gpu":  # the 1B-shaped roofline rows (benchmarks/gpu_suite.py), on the accelerator
        from benchmarks import gpu_suite

        suite = gpu_suite.run("gpu")
        for b, row in suite["decode"].items():
            results[f"decode_b{b}_fraction_of_hbm_roofline"] = {"ratio": row["fraction_of_hbm_roofline"], **row}
        results["train_step_mfu_1b"] = {"ratio": suite["train_step"]["mfu"], **suite["train_step"]}
    print(f"{'benchmark':<40} {'ratio':>8}")
    for name, r in results.items():
        value = f"{r['ratio']:.2f}" if "ratio" in r else r.get("skipped", "")
        print(f"{name:<40} {value:>8}")
    write_json(a.json, {k: v for k, v in results.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
