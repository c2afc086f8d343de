"""Train and evaluate the moderation classifier: python -m launch.moderation --config configs/moderation.py:tiny"""

from __future__ import annotations

import json
import sys

from launch.common import parse_config, setup_logging


def main(argv=None) -> int:
    from saferlhf_jax.algorithms import moderation
    from saferlhf_jax.data import DataError
    from saferlhf_jax.evaluation.moderation_eval import evaluate_moderation
    from saferlhf_jax.training import trainer

    argv = list(sys.argv if argv is None else argv)
    try:
        cfg, verbose = parse_config(argv, "configs/moderation.py:tiny")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    setup_logging(verbose)
    try:
        summary = trainer.train(moderation.STAGE, cfg)
        trainer.print_summary(summary)
        if summary.get("export") and cfg.eval_datasets:
            model = summary["model"]
            model.params = summary["state"]["params"]
            metrics = evaluate_moderation(model, trainer.load_tokenizer(summary["export"]), list(cfg.eval_datasets),
                                          cfg.output_dir, batch_size=int(cfg.train.eval_batch_size),
                                          max_length=int(cfg.data.max_length))
            keys = ("n", "accuracy", "f1", "fpr", "severity_accuracy", "severity_accuracy_unsafe",
                    "category_exact_match", "category_exact_match_unsafe")
            print("   moderation: " + json.dumps({k: metrics[k] for k in keys}))
            print(f"   wrote {cfg.output_dir}/moderation_metrics.json and severity_confusion.png")
    except (trainer.ConfigError, DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"\n{err}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
