"""Train and evaluate the moderation classifier: python -m launch.moderation --config configs/moderation.py:tiny"""

from __future__ import annotations

import json
import sys

from launch.common import run_job_cli

METRIC_KEYS = ("n", "accuracy", "f1", "fpr", "severity_accuracy", "severity_accuracy_unsafe", "category_exact_match",
               "category_exact_match_unsafe")


def job(cfg) -> dict:
    """Train (or resume) the classifier, then evaluate the final model on `cfg.eval_datasets`."""
    from saferlhf_jax.algorithms import moderation
    from saferlhf_jax.data.tokenizer import load_tokenizer
    from saferlhf_jax.evaluation.moderation_eval import evaluate_moderation
    from saferlhf_jax.training import trainer

    summary = trainer.train(moderation.STAGE, cfg)
    if summary.get("export") and cfg.eval_datasets:
        model = summary["model"]
        model.params = summary["state"]["params"]
        summary["moderation"] = evaluate_moderation(
            model, load_tokenizer(summary["export"]), list(cfg.eval_datasets), cfg.output_dir,
            batch_size=int(cfg.train.eval_batch_size), max_length=int(cfg.data.max_length),
            source=cfg.data.get("source"))
    return summary


def report(summary: dict) -> None:
    from saferlhf_jax.training import trainer

    trainer.print_summary(summary)
    if "moderation" in summary:
        print("   moderation: " + json.dumps({k: summary["moderation"][k] for k in METRIC_KEYS}))
        print(f"   wrote {summary['output_dir']}/moderation_metrics.json and severity_confusion.png")


def main(argv=None) -> int:
    return run_job_cli("configs/moderation.py:tiny", job, report, argv)


if __name__ == "__main__":
    sys.exit(main())
