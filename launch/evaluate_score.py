"""Evaluate a reward or cost model on preference data: accuracy, score statistics, CSV, histograms.

    python -m launch.evaluate_score --model runs/reward/export --datasets PKU-SafeRLHF/test --output_dir eval/rm
"""

from __future__ import annotations

import argparse
import json
import sys

from launch.common import setup_logging


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF-format score-model directory (a stage's export/)")
    parser.add_argument("--datasets", nargs="+", default=["PKU-SafeRLHF/test"],
                        help="NAME[:PROPORTION[:PATH]] entries (or one comma-separated string)")
    parser.add_argument("--output_dir", default=None, help="default: <model>/eval")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--score_type", choices=["reward", "cost"], default=None,
                        help="default: the model config's score_type")
    parser.add_argument("--data_source", choices=["hub", "embedded"], default="hub",
                        help="where registry names load from (embedded: the shipped sample)")
    args = parser.parse_args(argv)
    setup_logging()
    from saferlhf_jax.errors import DataError, ModelError
    from saferlhf_jax.evaluation.score_eval import evaluate_score_model

    datasets = [d for entry in args.datasets for d in entry.split(",") if d.strip()]
    out = args.output_dir or f"{args.model.rstrip('/')}/eval"
    try:
        summary = evaluate_score_model(args.model, datasets, out, batch_size=args.batch_size,
                                       max_length=args.max_length, score_type=args.score_type,
                                       source=args.data_source)
    except (DataError, ModelError, ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "filtered"}, indent=2))
    print(f"wrote {out}/ (scores.csv, scores.npy, summary.json, *_distribution.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
