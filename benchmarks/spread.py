"""How much a testbed run moves between machines of one kind: the same seed and command with XLA's CPU code
generation limited (`--xla_cpu_max_isa=AVX2`: a machine without AVX-512; `AVX`: without FMA), which changes the
low bits of matmuls and transcendental functions as another CPU model does, and RL amplifies them.

    python -m benchmarks.spread --preset ci --seeds 100 --work runs/spread \
        --variant single_= --variant avx2_single_=--xla_cpu_max_isa=AVX2 \
        --methods sft,ppo,ppo_lag,ppo_lag_reference,reward_shaping --out docs/cross_machine_spread.json

Each variant is PREFIX=XLA_FLAGS: its runs live in WORK/<PREFIX><seed> (a finished one is refreshed, not re-run).
The JSON has every policy's R* / C* per variant and the largest difference between variants, per seed and overall.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

from benchmarks.testbed_seeds import policies, run_seed


def differences(by_variant: dict[str, dict]) -> dict[str, dict]:
    """{policy: {gt_reward, gt_cost: the largest difference between any two variants}} over the policies all have."""
    names = set.intersection(*(set(policies(r)) for r in by_variant.values()))
    out = {}
    for name in sorted(names):
        pts = [policies(r)[name] for r in by_variant.values()]
        out[name] = {key: float(max(p[key] for p in pts) - min(p[key] for p in pts)) for key in ("gt_reward", "gt_cost")}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ci")
    p.add_argument("--seeds", default="100")
    p.add_argument("--work", default="runs/spread")
    p.add_argument("--variant", action="append", required=True, help="PREFIX=XLA_FLAGS (repeat)")
    p.add_argument("--methods", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    work = pathlib.Path(args.work).expanduser().resolve()
    extra = [f"--config.methods={args.methods}"] if args.methods else []
    variants = dict(v.split("=", 1) for v in args.variant)
    seeds, overall = {}, {}
    for seed in (int(s) for s in args.seeds.split(",")):
        runs = {}
        for prefix, flags in variants.items():
            env = {**os.environ, "XLA_FLAGS": flags} if flags else None
            runs[prefix] = run_seed(args.preset, seed, work / f"{prefix}{seed}", extra, env, refresh=True)
        diff = differences(runs)
        seeds[seed] = {"difference": diff, "points": {prefix: {n: {k: q[k] for k in ("gt_reward", "gt_cost")}
                                                               for n, q in policies(r).items()}
                                                      for prefix, r in runs.items()},
                       "claims": {prefix: {k: v["status"] for k, v in r["claims"].items()} for prefix, r in runs.items()}}
        for name, d in diff.items():
            for key, v in d.items():
                overall.setdefault(name, {}).setdefault(key, 0.0)
                overall[name][key] = max(overall[name][key], v)
    doc = {"command": "python -m benchmarks.spread " + " ".join(argv if argv is not None else sys.argv[1:]),
           "variants": variants, "largest_difference": overall, "seeds": seeds}
    pathlib.Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(overall, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
