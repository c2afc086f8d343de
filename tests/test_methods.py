"""Methods beyond PPO-Lag (METHODS_BEYOND.md): SafeDPO's transform and stage; critic-free Lagrangian RL."""

from __future__ import annotations

import json

import numpy as np
import pytest

from saferlhf_jax import data
from saferlhf_jax.data.examples import safedpo_transform


def test_safedpo_transform_worked_example_s1():
    """better_response_id [0, 0, 1, 1], is_response_0_safe [T, F, F, T], is_response_1_safe [F, T, F, T]."""
    rows = [(0, True, False), (0, False, True), (1, False, False), (1, True, True)]
    got = []
    for better_id, safe0, safe1 in rows:
        winner_safe, loser_safe = (safe0, safe1) if better_id == 0 else (safe1, safe0)
        got.append(safedpo_transform(better_id == 0, winner_safe, loser_safe))
    keep = [g[0] for g in got]
    win = [(1 - b if g[1] else b) for (b, _, _), g in zip(rows, got)]
    assert keep == [True, True, False, True] and win[:2] + win[3:] == [0, 1, 1]
    assert [g[2] for g in got] == [0, 0, 1, 0] and [g[3] for g in got] == [1, 1, 1, 0]
    kept_all = [safedpo_transform(b == 0, *(((s0, s1) if b == 0 else (s1, s0))), both_unsafe="keep")[0]
                for b, s0, s1 in rows]
    assert kept_all == [True, True, True, True]


def test_safedpo_dataset_counts_and_flags(stories_dir):
    from saferlhf_jax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(stories_dir)
    s = [data.RawSample(input="q", answer=f"a{i}", other_answer=f"b{i}", better=b, is_safe=s0, is_other_safe=s1,
                        where=f"row {i}")
         for i, (b, s0, s1) in enumerate([(True, True, False), (True, False, True), (False, False, False),
                                          (False, True, True)])]
    ds = data.build_dataset("safedpo_preference", s, tok, 64)
    assert ds.counts == {"kept_unchanged": 2, "swapped": 1, "dropped_both_unsafe": 1}
    flags = [(int(e["better_unsafe"]), int(e["worse_unsafe"])) for e in ds.examples]
    assert flags == [(0, 1), (0, 1), (0, 0)]
    swapped = ds.examples[1]  # row 1: the unsafe winner a1 now loses to the safe b1
    assert tok.decode(swapped["better_input_ids"]).rstrip("</s>").endswith("b1")
    batch = data.collate("safedpo_preference", ds.examples, tok.pad_token_id, (64,))
    assert batch["better_unsafe"].tolist() == [0, 0, 0] and batch["worse_unsafe"].tolist() == [1, 1, 0]


def test_safedpo_stage_from_the_cli(tmp_path):
    from launch.common import run_training_cli

    argv = ["prog", "--config=configs/safedpo.py:tiny", f"--config.output_dir={tmp_path}",
            "--config.train_datasets=PKU-SafeRLHF/train:32/-1", "--config.eval_datasets=PKU-SafeRLHF/train:32/-1",
            "--config.train.max_steps=3", "--config.data.max_length=192", "--config.data.buckets=(192,)",
            "--config.logging.progress=False", "--config.logging.tensorboard=False", "--config.mesh.fsdp=1"]
    assert run_training_cli("safedpo", "", argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    counts = summary["data_counts"]
    assert sum(counts.get(k, 0) for k in ("swapped", "kept_unchanged", "dropped_both_unsafe")) == 32
    assert counts["dropped_both_unsafe"] > 0 and summary["train_examples"] == 32 - counts["dropped_both_unsafe"] \
        - counts.get("identical_responses", 0)
    evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "eval/loss" in line]
    first = evals[0]  # at step 0 the policy is its reference: loss = mean softplus(Δ·gap) (log 2 on safe pairs)
    want = first["eval/safe_unsafe_fraction"] * np.logaddexp(0, 10.0) + (1 - first["eval/safe_unsafe_fraction"]) \
        * np.log(2)
    assert first["eval/loss"] == pytest.approx(want, rel=1e-4)
    assert (tmp_path / "export" / "model.safetensors").is_file()
