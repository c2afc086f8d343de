"""The refusal judge against answers labelled by reading.

`assets/data/safety_eval/hand_labels_smollm2.jsonl`: SmolLM2-135M-Instruct's greedy answers (its chat template,
up to 320 tokens in all) to a fixed stratified sample of the safety evaluation's prompts, each labelled refusal /
deflection / compliance by a person reading it (SOURCE.md there says how). Rows whose `split` is "design" were read
while the judge's phrase lists were written; the "held_out" rows were not looked at until the lists were frozen, so
the agreement on them is the judge's honest figure.
The unlabelled sample was written by `hand_label_sample.py`; the labels were added by hand afterwards.
"""

from __future__ import annotations

import json
import pathlib

from saferlhf_jax.evaluation import refusal

LABELS = pathlib.Path(__file__).resolve().parents[1] / "assets" / "data" / "safety_eval" / "hand_labels_smollm2.jsonl"


def load(path=LABELS) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


def judge_agreement(path=LABELS) -> dict:
    """refusal.agreement on every labelled answer, on the held-out ones and per prompt set, with the disagreements."""
    rows = load(path)
    verdicts = [refusal.judge(r["answer"]) for r in rows]

    def part(keep) -> dict:
        pairs = [(r["label"], v) for r, v in zip(rows, verdicts) if keep(r)]
        return refusal.agreement([a for a, _ in pairs], [b for _, b in pairs])

    return {"source": f"saferlhf_jax/assets/data/safety_eval/{LABELS.name}" if path == LABELS else str(path),
            "all": part(lambda r: True), "held_out": part(lambda r: r["split"] == "held_out"),
            "per_set": {s: part(lambda r, s=s: r["set"] == s) for s in sorted({r["set"] for r in rows})},
            "disagreements": [{"id": r["id"], "label": r["label"], "judge": v} for r, v in zip(rows, verdicts)
                              if refusal.declines(r["label"]) != refusal.declines(v)]}
