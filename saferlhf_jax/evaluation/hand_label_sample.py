"""Writes the answers the refusal judge is checked against (`hand_labels.LABELS` before its labels were added):
SmolLM2-135M-Instruct's greedy answers, through `safety_eval.evaluate_policy` with its defaults, to a fixed sample of
the safety evaluation's prompts. Rows with id % 3 == 0 are the "design" split (read while the judge's phrase lists
were written), the others "held_out".

    python -m saferlhf_jax.evaluation.hand_label_sample OUT.jsonl [SMOLLM2_HF_DIR]
"""

from __future__ import annotations

import json
import pathlib
import random
import sys

from saferlhf_jax.data.tokenizer import load_tokenizer
from saferlhf_jax.evaluation import safety_eval, self_pairs
from saferlhf_jax.models import load_causal_lm
from saferlhf_jax.models.gguf_import import convert, find_smollm2_gguf

SAMPLE_SEED = 20261207


def draw_sample(rng: random.Random) -> list[dict]:
    """The prompts that were answered and labelled: 5 per BeaverTails category (70), 30 red-team, 30 Alpaca seed
    tasks, 30 helpful-base first turns, in that order."""
    bt = safety_eval.load_prompts(["beavertails"])
    rows = []
    for cat in sorted({r["category"] for r in bt}):
        rows += rng.sample([r for r in bt if r["category"] == cat], 5)
    for name in ("redteam", "alpaca_seed"):
        rows += rng.sample(safety_eval.load_prompts([name]), 30)
    # drawn from all of helpful-base's first turns, as when the labels were written (the evaluation's set has since
    # been cut to the first 100: self_pairs trains on the rest, less these)
    helpful = [{"set": "helpful_base", "category": "benign", "harmful": False, "prompt": t}
               for t in self_pairs.helpful_base_first_turns()]
    return rows + rng.sample(helpful, 30)


def write_unlabelled(out: str, model_dir: str = "") -> None:
    """SmolLM2's greedy answers to the sample (`evaluate_policy`'s defaults); rows with id % 3 == 0 are "design"."""
    if not model_dir:
        model_dir = "/tmp/smollm2_hf"
        if not (pathlib.Path(model_dir) / "config.json").is_file():
            convert(find_smollm2_gguf(), model_dir)
    rows = draw_sample(random.Random(SAMPLE_SEED))
    judged = safety_eval.evaluate_policy((load_causal_lm(model_dir), load_tokenizer(model_dir)), rows)
    with open(out, "w") as f:
        for i, r in enumerate(judged):
            keep = {k: r[k] for k in ("set", "category", "prompt", "answer")}
            f.write(json.dumps({"id": i, "split": "design" if i % 3 == 0 else "held_out", **keep},
                               ensure_ascii=False) + "\n")


if __name__ == "__main__":
    write_unlabelled(*sys.argv[1:])
