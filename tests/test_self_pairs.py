"""On-policy safety pairs (saferlhf_jax/evaluation/self_pairs.py): which prompts, which answer wins, the rows SafeDPO
reads, the held-out dev prompts, and the CLI on the embedded model."""

from __future__ import annotations

import json

import pytest

from saferlhf_jax.data import examples, registry
from saferlhf_jax.evaluation import safety_eval, self_pairs


def test_the_pools_come_from_labels_and_never_meet_the_evaluation():
    harmful, benign = self_pairs.harmful_prompts(), self_pairs.benign_prompts()
    # PKU-SafeRLHF/train prompts with an unsafe response (293 of the 490 distinct), then BeaverTails' 140 unsafe rows
    assert len(harmful) == 433 and all(p.harmful for p in harmful) and not any(p.harmful for p in benign)
    assert sum(p.source == "PKU-SafeRLHF/train" for p in harmful) == 293
    unsafe_pku = {s.input.strip() for s in registry.load_raw("PKU-SafeRLHF/train", source="embedded")
                  if not (s.is_safe and s.is_other_safe)}
    assert {p.text for p in harmful if p.source == "PKU-SafeRLHF/train"} == unsafe_pku
    evaluation = {r["prompt"].strip() for r in safety_eval.load_prompts(list(safety_eval.PROMPT_SETS))}
    assert not evaluation & {p.text for p in harmful + benign}
    # the dev prompts are held out from the pair prompts, the same on every call
    pairs_h, dev_h = self_pairs.harmful_split()
    pairs_b, dev_b = self_pairs.benign_split()
    assert (len(dev_h), len(dev_b)) == (self_pairs.DEV_HARMFUL, 2 * self_pairs.DEV_BENIGN)
    assert len(pairs_h) + len(dev_h) == 433 and len(pairs_b) + len(dev_b) == self_pairs.BENIGN_POOL + 366
    assert [p.source for p in dev_b] == ["alpaca"] * 60 + ["hh-rlhf/helpful-base"] * 60
    assert not {p.text for p in dev_h} & {p.text for p in pairs_h} and not {p.text for p in dev_b} & {
        p.text for p in pairs_b}
    assert [p.text for p in self_pairs.harmful_split()[1]] == [p.text for p in dev_h]
    dev_rows = safety_eval.load_prompts(["dev_harmful", "dev_benign"])
    assert [r["prompt"] for r in dev_rows] == [p.text for p in dev_h + dev_b]
    assert [r["harmful"] for r in dev_rows] == [True] * len(dev_h) + [False] * len(dev_b)


def test_an_outright_refusal_beats_a_compliance_on_harmful_prompts_only():
    harmful = self_pairs.Prompt("How do I pick a lock?", True, "x")
    benign = self_pairs.Prompt("Name three colours.", False, "x")
    answers = ["Sure, first insert a tension wrench.", "I'm sorry, but I can't help with that.", "Step 1: ...",
               "I won't."]
    row = self_pairs.pair_row(harmful, answers)
    assert (row["response_0"], row["response_1"]) == (answers[1], answers[0])  # the first of each kind
    assert (row["is_response_0_safe"], row["is_response_1_safe"]) == (True, False)
    assert (row["better_response_id"], row["safer_response_id"]) == (1, 0)  # the compliance is the more helpful
    row_b = self_pairs.pair_row(benign, answers)
    assert (row_b["response_0"], row_b["response_1"]) == (answers[0], answers[1])
    assert (row_b["is_response_0_safe"], row_b["is_response_1_safe"], row_b["better_response_id"]) == (True, True, 0)
    assert self_pairs.pair_row(harmful, ["Sure.", "Okay: ..."]) is None  # nothing declines: no pair
    assert self_pairs.pair_row(harmful, ["I'm sorry.", "I cannot."]) is None  # nothing complies
    # what teaches is strict: a bare apology (the judge's "refusal") or a deflection is no winner on a harmful
    # prompt — but on a benign prompt either is a loser
    sorry = "I'm sorry for any misunderstanding. Here is how: first, ..."
    deflect = "Picking locks is illegal in many places."
    assert self_pairs.pair_row(harmful, [sorry, deflect, "Sure: ..."]) is None
    assert self_pairs.pair_row(benign, [sorry, "Red, green, blue."])["response_1"] == sorry
    assert self_pairs.pair_row(benign, ["Red, green, blue.", deflect])["response_1"] == deflect
    assert self_pairs.declines_outright("As an AI, I\u2019m unable to help.") and not self_pairs.declines_outright(
        "As a caring AI, I'm here to support you.")
    # a capability decline is no outright refusal for this list (the README's run; module doc)
    assert not self_pairs.declines_outright("I'm sorry, but as a chatbot I don't have the ability to find addresses.")


def test_safedpo_prefers_the_refusal_with_the_margin_and_the_compliance_on_benign_prompts(tmp_path, stories_dir):
    """The rows read back through the PKU parser and SafeDPO's transform: on a harmful prompt the refusal wins and
    the loser is flagged unsafe (margin Δ applies); on a benign one the compliance wins, no flag."""
    import transformers

    from saferlhf_jax import data as data_lib

    h = self_pairs.pair_row(self_pairs.Prompt("Help me hurt someone.", True, "x"), ["I won't.", "Sure, hit them."])
    b = self_pairs.pair_row(self_pairs.Prompt("Say hi.", False, "x"), ["I'm sorry, no.", "Hi there!"])
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (h, b)))
    samples = registry.load_mix([f"self-pairs/all:1.0:{path}"])
    tok = transformers.AutoTokenizer.from_pretrained(stories_dir)
    data_lib.prepare_tokenizer(tok)
    out, counts = examples.build_safedpo_preference(samples, tok, 64)
    assert counts["swapped"] == 1 and counts["kept_unchanged"] == 1
    better = [tok.decode(e["better_input_ids"]) for e in out]
    assert "I won't." in better[0] and "Hi there!" in better[1]
    assert [(int(e["better_unsafe"]), int(e["worse_unsafe"])) for e in out] == [(0, 1), (0, 0)]


def test_sampling_answers_each_prompt_and_the_pairs_follow_the_verdicts(tiny_models, monkeypatch):
    """Sampling on the embedded model: each prompt answered `samples` times in its order; rows and counts follow the
    judge's verdicts (the judge is stubbed to a known pattern: this model writes stories, never refusals)."""
    from saferlhf_jax.evaluation import refusal
    from saferlhf_jax.evaluation.loading import load_for_eval

    policy = load_for_eval(str(tiny_models / "sft"), "causal_lm")
    prompts = [self_pairs.Prompt("Tell a story about a cat.", True, "x"),
               self_pairs.Prompt("A dog", False, "x"), self_pairs.Prompt("Once upon a time there was", True, "x")]
    answers = self_pairs.sample_answers(policy, prompts, samples=3, temperature=1.0, max_new_tokens=8,
                                        batch_size=4, seed=0, template="pku")
    assert [len(a) for a in answers] == [3, 3, 3] and len({a for x in answers for a in x}) > 3  # sampled, not greedy
    again = self_pairs.sample_answers(policy, prompts, samples=3, temperature=1.0, max_new_tokens=8,
                                      batch_size=4, seed=0, template="pku")
    assert again == answers  # seeded
    declined = {answers[0][1], answers[1][0], answers[1][2]}
    monkeypatch.setattr(refusal, "judge", lambda a: "refusal" if a in declined else "compliance")
    monkeypatch.setattr(self_pairs, "declines_outright", lambda a: a in declined)
    rows, stats = self_pairs.pair_all(prompts, answers)
    assert [r["prompt"] for r in rows] == [prompts[0].text, prompts[1].text]
    assert rows[0]["response_0"] == answers[0][1] and rows[1]["response_1"] == answers[1][0]
    harmful = {"prompts": 2, "samples": 6, "samples_declining": 1, "samples_declining_outright": 1,
               "samples_complying": 5, "pairs": 1, "pairs_borrowed": 0}
    benign = {"prompts": 1, "samples": 3, "samples_declining": 2, "samples_declining_outright": 2,
              "samples_complying": 1, "pairs": 1, "pairs_borrowed": 0}
    assert stats == {"harmful": harmful, "benign": benign, "by_source": {"x": {
        k: harmful[k] + benign[k] for k in harmful}}}


def test_cli_writes_pairs_and_refuses_to_overwrite(tiny_models, tmp_path, capsys):
    from launch import self_pairs as cli

    out = tmp_path / "pairs"
    argv = ["--policy", str(tiny_models / "sft"), "--output_dir", str(out), "--samples", "2", "--harmful", "3",
            "--benign", "2", "--max_new_tokens", "4", "--batch_size", "4", "--template", "pku"]
    assert cli.main(argv) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["harmful"]["prompts"] == 3 and stats["benign"]["prompts"] == 2 and stats["harmful"]["samples"] == 6
    assert (out / "pairs.jsonl").read_text().count("\n") == stats["harmful"]["pairs"] + stats["benign"]["pairs"]
    lines = {k: (out / f"pairs_{k}.jsonl").read_text().count("\n") for k in ("harmful", "benign")}
    assert lines == {k: stats[k]["pairs"] for k in ("harmful", "benign")}  # the same rows, apart
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [len(r["answers"]) for r in samples] == [2] * 5
    assert [r["harmful"] for r in samples] == [True] * 3 + [False] * 2
    assert cli.main(argv) == 2 and "exists" in capsys.readouterr().err
    # the conversational source beside Alpaca: --benign prompts of each, Alpaca first
    both = ["--policy", str(tiny_models / "sft"), "--output_dir", str(tmp_path / "both"), "--samples", "2",
            "--harmful", "1", "--benign", "2", "--benign_sources", "alpaca,helpful_base", "--max_new_tokens", "4",
            "--batch_size", "4", "--template", "pku"]
    assert cli.main(both) == 0
    stats = json.loads((tmp_path / "both" / "stats.json").read_text())
    assert stats["benign_sources"] == ["alpaca", "helpful_base"] and stats["benign"]["prompts"] == 4
    assert {k: v["prompts"] for k, v in stats["by_source"].items()} == {
        "PKU-SafeRLHF/train": 1, "alpaca": 2, "hh-rlhf/helpful-base": 2}
    assert cli.main(argv[:2] + ["--output_dir", str(tmp_path / "c"), "--benign_sources", "reddit"]) == 2
    assert "unknown --benign_sources ['reddit']" in capsys.readouterr().err
    assert cli.main(["--policy", str(tiny_models / "sft"), "--output_dir", str(tmp_path / "b"), "--samples", "1"]) == 2
    assert cli.main(["--output_dir", str(tmp_path / "d")]) == 2  # neither a policy nor earlier samples
    assert "exactly one of --policy" in capsys.readouterr().err
    # benign prompts sampled fewer times than harmful ones
    fewer = ["--policy", str(tiny_models / "sft"), "--output_dir", str(tmp_path / "fewer"), "--samples", "2",
             "--benign_samples", "1", "--harmful", "2", "--benign", "2", "--max_new_tokens", "4", "--batch_size",
             "4", "--template", "pku"]
    assert cli.main(fewer) == 0
    samples = [json.loads(line) for line in (tmp_path / "fewer" / "samples.jsonl").read_text().splitlines()]
    assert [len(r["answers"]) for r in samples] == [2, 2, 1, 1]
    assert json.loads((tmp_path / "fewer" / "stats.json").read_text())["benign_samples"] == 1


def test_a_benign_prompt_borrows_a_generic_refusal_from_a_harmful_one():
    bomb = self_pairs.Prompt("How do I build a bomb?", True, "x")
    theft = self_pairs.Prompt("How can I steal a car?", True, "x")
    cake = self_pairs.Prompt("Bake a cake for me.", False, "x")
    poem = self_pairs.Prompt("Write a poem about spring.", False, "x")
    named = "I can't help you build a bomb. It is illegal."          # names its prompt: not lent
    generic = "I'm sorry, but I can't assist with that. Bombs are dangerous."
    assert self_pairs.generic_refusal(named, bomb.text) is None
    assert self_pairs.generic_refusal(generic, bomb.text) == "I'm sorry, but I can't assist with that."
    assert self_pairs.generic_refusal("Sure, here is how. I can't stress this enough.", bomb.text) is None
    assert self_pairs.generic_refusal("I can't " + "do that and " * 12 + "more.", bomb.text) is None  # too long
    prompts = [bomb, theft, cake, poem]
    answers = [[named, generic, "Sure: mix ..."], ["I won't do that.", "First, find a car ..."],
               ["Mix flour and eggs, then bake."], ["Spring comes with rain."]]
    assert self_pairs.refusal_pool(prompts, answers) == ["I'm sorry, but I can't assist with that.",
                                                         "I won't do that."]
    rows, stats = self_pairs.pair_all(prompts, answers, borrow_refusals="alone")
    assert [r["response_1"] for r in rows[2:]] == ["I'm sorry, but I can't assist with that.", "I won't do that."]
    assert [r["response_1_source"] for r in rows] == ["policy"] * 2 + ["policy, to another prompt"] * 2
    assert all(r["is_response_1_safe"] and r["better_response_id"] == 0 for r in rows[2:])
    assert stats["refusal_pool"] == 2 and stats["benign"]["pairs_borrowed"] == 2 and stats["benign"]["pairs"] == 2
    # without borrowing, or with a benign prompt's own decline (kept over a borrowed one), or nothing complying
    assert len(self_pairs.pair_all(prompts, answers)[0]) == 2
    own = self_pairs.pair_row(cake, ["Sorry, I cannot bake.", "Mix flour ..."], borrowed="I won't do that.")
    assert own["response_1"] == "Sorry, I cannot bake." and own["response_1_source"] == "policy"
    assert self_pairs.pair_row(cake, ["I'm sorry, I can't."], borrowed="I won't do that.") is None
    # "prefix": the refusal before the prompt's own compliance — the two answers differ only in the opening
    rows, _ = self_pairs.pair_all(prompts, answers, borrow_refusals="prefix")
    assert [(r["response_0"], r["response_1"]) for r in rows[2:]] == [
        ("Mix flour and eggs, then bake.", "I'm sorry, but I can't assist with that. Mix flour and eggs, then bake."),
        ("Spring comes with rain.", "I won't do that. Spring comes with rain.")]
    assert rows[:2] == self_pairs.pair_all(prompts, answers)[0]  # harmful pairs: the same in every mode
    with pytest.raises(ValueError, match="borrow_refusals must be"):
        self_pairs.pair_all(prompts, answers, borrow_refusals=True)


def test_cli_pairs_earlier_samples_again_without_a_policy(tmp_path, capsys):
    from launch import self_pairs as cli

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    rows = [{"prompt": "How do I build a bomb?", "harmful": True, "source": "x",
             "answers": ["I'm sorry, but I can't assist with that.", "Sure: mix ..."]},
            {"prompt": "Bake a cake for me.", "harmful": False, "source": "alpaca", "answers": ["Mix and bake."]}]
    (earlier / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (earlier / "stats.json").write_text(json.dumps({"samples": 2, "seconds": 3.0, "harmful": {}}))
    out = tmp_path / "again"
    assert cli.main(["--pairs_from", str(earlier), "--output_dir", str(out), "--borrow_refusals", "alone"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["pairs_from"] == str(earlier) and stats["samples"] == 2 and stats["borrow_refusals"] == "alone"
    assert (stats["harmful"]["pairs"], stats["benign"]["pairs"], stats["benign"]["pairs_borrowed"]) == (1, 1, 1)
    benign = [json.loads(x) for x in (out / "pairs_benign.jsonl").read_text().splitlines()]
    assert [(r["response_0"], r["response_1"]) for r in benign] == [("Mix and bake.",
                                                                      "I'm sorry, but I can't assist with that.")]
    assert (out / "samples.jsonl").read_text() == (earlier / "samples.jsonl").read_text()
    assert cli.main(["--pairs_from", str(tmp_path / "none"), "--output_dir", str(tmp_path / "e")]) == 2
    assert "samples.jsonl" in capsys.readouterr().err
    (earlier / "samples.jsonl").write_text(json.dumps({"prompt": "x", "answers": []}) + "\n")
    assert cli.main(["--pairs_from", str(earlier), "--output_dir", str(tmp_path / "f")]) == 2
    assert "line 1: not a sample row" in capsys.readouterr().err and not (tmp_path / "f").exists()


def test_the_smollm2_preset_reads_the_pairs_the_cli_writes_and_safedpo_trains_on_them(tiny_models, tmp_path):
    """The README's path at tiny size: pairs written as the CLI writes them, then SafeDPO on the preset's mix (its
    PKU-SafeRLHF half and the pairs twice) — the pairs reach training as safe-over-unsafe (swapped) examples."""
    from configs import safedpo as safedpo_config
    from launch.common import run_training_cli

    preset = safedpo_config.get_config("smollm2_self_pairs")
    pku, pairs_entry = preset.train_datasets
    assert pku == "PKU-SafeRLHF/train:0.5" and pairs_entry.endswith(":runs/self_pairs_smollm2/pairs.jsonl")
    harmful = [self_pairs.Prompt(f"How do I steal thing {i}?", True, "x") for i in range(4)]
    rows = [self_pairs.pair_row(p, [f"Sure: take thing {i}.", "I'm sorry, but I can't help with that."])
            for i, p in enumerate(harmful)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    entry = pairs_entry.rsplit(":", 1)[0] + f":{path}"
    argv = ["prog", "--config=configs/safedpo.py:tiny", f"--config.output_dir={tmp_path / 'run'}",
            f"--config.model_name_or_path={tiny_models / 'sft'}",
            f"--config.train_datasets=('PKU-SafeRLHF/train:16/-1','{entry}')", "--config.eval_datasets=()",
            "--config.train.max_steps=2", "--config.data.max_length=96", "--config.data.buckets=(96,)",
            "--config.logging.progress=False", "--config.logging.tensorboard=False", "--config.mesh.fsdp=1"]
    assert run_training_cli("safedpo", "", argv) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    counts = summary["data_counts"]
    assert sum(counts.get(k, 0) for k in ("swapped", "kept_unchanged", "dropped_both_unsafe")) == 16 + 8
    assert counts["swapped"] >= 8  # every self pair (twice): the compliance was more helpful, the refusal safer


def test_harmful_and_benign_pairs_are_weighed_apart_in_one_mix(tmp_path):
    """self-pairs/harmful and self-pairs/benign: one mix, each its own proportion; local files only."""
    from saferlhf_jax.errors import DataError

    h = self_pairs.pair_row(self_pairs.Prompt("Help me hurt someone.", True, "x"), ["I won't.", "Sure, hit them."])
    b = self_pairs.pair_row(self_pairs.Prompt("Say hi.", False, "x"), ["I'm sorry, no.", "Hi there!"])
    (tmp_path / "h.jsonl").write_text(json.dumps(h) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps(b) + "\n")
    mixed = registry.load_mix([f"self-pairs/harmful:1.0:{tmp_path / 'h.jsonl'}",
                               f"self-pairs/benign:3.0:{tmp_path / 'b.jsonl'}"])
    assert [s.is_other_safe for s in mixed] == [False, True, True, True]  # response_1: unsafe once, safe thrice
    from configs import safedpo as safedpo_config  # the presets that weigh them read the files the CLI writes
    for name in ("smollm2_self_pairs_round2", "smollm2_self_pairs_borrowed"):
        entries = safedpo_config.get_config(name).train_datasets
        assert [e.split(":")[0] for e in entries] == ["PKU-SafeRLHF/train", "self-pairs/harmful", "self-pairs/benign"]
        assert entries[1].endswith("/pairs_harmful.jsonl") and entries[2].endswith("/pairs_benign.jsonl")
    with pytest.raises(DataError, match="self-pairs/benign: no embedded copy"):
        registry.load_mix(["self-pairs/benign"], source="embedded")
    with pytest.raises(DataError, match="read from local files only"):
        registry.load_mix(["self-pairs/benign"], source="hub")
