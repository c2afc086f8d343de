"""Red vs blue arena: both policies answer the prompts, a reward and a cost model score every answer.

    python -m launch.arena --red runs/sft/export --blue runs/ppo_lag --reward runs/reward/export \
        --cost runs/cost/export --datasets PKU-SafeRLHF/test

Each model argument is an HF-format directory or a training run's directory (latest orbax checkpoint; DIR@STEP for
another step). Writes <output_dir>/table.csv, summary.json, summary.md and reward/cost histograms.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from launch.common import setup_logging


def _name(spec: str) -> str:
    path = pathlib.Path(spec.split("@")[0].rstrip("/"))
    return path.parent.name if path.name == "export" else path.name


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--red", required=True)
    p.add_argument("--blue", required=True)
    p.add_argument("--reward", required=True)
    p.add_argument("--cost", required=True)
    p.add_argument("--datasets", nargs="+", default=["PKU-SafeRLHF/test"])
    p.add_argument("--output_dir", default=None, help="default: arena/<red>_vs_<blue>")
    p.add_argument("--max_length", type=int, default=512, help="total length (prompt + response)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--temperature", type=float, default=None, help="default: each model's generation_config")
    p.add_argument("--top_k", type=int, default=None, help="default: each model's generation_config (else 50)")
    p.add_argument("--top_p", type=float, default=None, help="default: each model's generation_config (else 1.0)")
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--template", choices=["pku", "chat"], default="pku",
                   help="pku: the reference's; chat: each model's own chat template")
    p.add_argument("--data_source", choices=["hub", "embedded"], default="hub",
                   help="where registry names load from (embedded: the shipped sample)")
    args = p.parse_args(argv)
    setup_logging()
    from saferlhf_jax.data import DataError
    from saferlhf_jax.evaluation.arena import run_arena
    from saferlhf_jax.evaluation.loading import load_for_eval
    from saferlhf_jax.parallel import make_mesh

    red_name, blue_name = _name(args.red), _name(args.blue)
    if red_name == blue_name:
        red_name, blue_name = f"red-{red_name}", f"blue-{blue_name}"
    out = args.output_dir or f"arena/{red_name}_vs_{blue_name}"
    datasets = [d for entry in args.datasets for d in entry.split(",") if d.strip()]
    try:
        mesh = make_mesh(fsdp=-1)
        loaded = {k: load_for_eval(getattr(args, k), "causal_lm" if k in ("red", "blue") else "score", mesh)
                  for k in ("red", "blue", "reward", "cost")}
        summary = run_arena(loaded["red"], loaded["blue"], loaded["reward"], loaded["cost"], red_name, blue_name,
                            datasets, out, max_length=args.max_length, batch_size=args.batch_size, seed=args.seed,
                            mesh=mesh, sampling=dict(temperature=args.temperature, top_k=args.top_k,
                                                     top_p=args.top_p, greedy=args.greedy or None),
                            source=args.data_source, template=args.template)
    except (DataError, ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((pathlib.Path(out) / "summary.md").read_text())
    print(json.dumps(summary["counts"]))
    print(f"wrote {out}/ (table.csv, summary.json, summary.md, reward/cost_distribution.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
