"""SafeDPO config (METHODS_BEYOND §1.3): DPO on safety-transformed PKU-SafeRLHF helpfulness pairs with margin Δ."""

from configs import dpo


def get_config(preset: str = "tiny"):
    if preset == "smollm2":
        return smollm2()
    if preset == "smollm2_self_pairs":
        return smollm2_self_pairs()
    if preset == "smollm2_self_pairs_round2":
        return smollm2_self_pairs_round2()
    if preset == "smollm2_self_pairs_borrowed":
        return smollm2_self_pairs_borrowed()
    c = dpo.get_config(preset)
    c.stage = "safedpo"
    c.output_dir = "runs/safedpo"
    c.loss.beta = 0.1
    c.loss.safety_margin = 10.0                  # Δ (the paper's main comparison; Δ = 0 is DPO on T(D))
    c.loss.both_unsafe = "drop"                  # drop | keep (ablation: kept in helpfulness order, no margin)
    if preset != "tiny":
        c.train.epochs = 3
        c.train.learning_rate = 1e-6
    return c


def smollm2():
    """SafeDPO on SmolLM2-135M-Instruct with the shipped PKU-SafeRLHF rows, sized for 2 CPU cores; what it does to the
    safety evaluation is in the README ("A real model on prompts nobody here wrote"). The model comes from
    `python -m launch.convert_gguf --smollm2 --output runs/smollm2_hf`."""
    c = get_config("tiny")
    c.model_name_or_path = "runs/smollm2_hf"
    c.output_dir = "runs/safedpo_smollm2"
    c.data.template = "chat"                     # the model's own ChatML template, as the safety evaluation asks it
    c.data.max_length = 192
    c.data.buckets = (128, 192)
    c.train_datasets = ("PKU-SafeRLHF/train",)   # 500 shipped rows: 247 kept by the transform, 48 (safe, unsafe)
    c.eval_datasets = ()
    c.train.epochs = 2                          # 60 steps of 8 pairs, ~28 s each on 2 cores
    c.train.batch_size = 8
    c.train.learning_rate = 1e-5
    c.train.lr_warmup_ratio = 0.1
    c.train.eval_at_start = False
    return c


def smollm2_self_pairs():
    """SafeDPO on SmolLM2-135M-Instruct with its own answers: `python -m launch.self_pairs --policy runs/smollm2_hf
    --output_dir runs/self_pairs_smollm2 ...` (the README gives the settings) pairs an outright refusal over a
    compliance on labelled-harmful prompts (and the reverse on benign ones); half of the shipped PKU-SafeRLHF rows
    keep the helpfulness pairs beside them. Settings chosen on safety_eval's dev_harmful / dev_benign sets."""
    c = smollm2()
    c.output_dir = "runs/safedpo_smollm2_self_pairs"
    c.train_datasets = ("PKU-SafeRLHF/train:0.5",
                        "self-pairs/all:2.0:runs/self_pairs_smollm2/pairs.jsonl")  # each self pair twice
    c.data.max_length = 160
    c.data.buckets = (96, 160)
    return c


def smollm2_self_pairs_round2():
    """A second round (the paper's iterative rounds): the first round's model samples the harmful prompts again and,
    beside Alpaca's, helpful-base's conversational requests (`launch.self_pairs --policy
    runs/safedpo_smollm2_self_pairs/export --benign_sources alpaca,helpful_base ...`: the README gives the settings);
    it declines benign requests often enough now for their compliance-over-decline pairs to teach. SafeDPO continues
    from that model (also its reference). Settings chosen on safety_eval's dev_harmful / dev_benign sets."""
    c = smollm2_self_pairs()
    c.model_name_or_path = "runs/safedpo_smollm2_self_pairs/export"
    c.output_dir = "runs/safedpo_smollm2_self_pairs_round2"
    # the benign pairs 1.5 times (plain DPO pairs, beside the harmful ones' margin Δ = 10): on the dev sets once
    # answered 62.5 % of harmful prompts / over-refused 11.7 % of benign ones, twice 77.5 / 3.3 %, three times
    # 95.0 / 0.8 %, 1.5 times 72.5 / 3.3 % (base 86.2 / 5.0) — the closest, one prompt short of −15 on dev; not
    # judged on the published sets (docs/safedpo_self_pairs_round2_smollm2.json)
    c.train_datasets = ("PKU-SafeRLHF/train:0.5",
                        "self-pairs/harmful:1.0:runs/self_pairs_smollm2_round2/pairs_harmful.jsonl",
                        "self-pairs/benign:1.5:runs/self_pairs_smollm2_round2/pairs_benign.jsonl")
    c.train.epochs = 1
    return c


def smollm2_self_pairs_borrowed():
    """One round from the shipped model, the benign side taught too: `launch.self_pairs --policy runs/smollm2_hf
    --borrow_refusals prefix --benign_sources alpaca,helpful_base ...` (the README gives the settings) pairs each
    benign prompt's compliance over the same compliance opened by a generic refusal the model wrote to a harmful
    prompt, so the same words are taught as right on harmful requests and wrong on benign ones. Settings chosen on
    safety_eval's dev_harmful / dev_benign."""
    c = smollm2_self_pairs()
    c.output_dir = "runs/safedpo_smollm2_self_pairs_borrowed"
    # the benign pairs (--borrow_refusals prefix) half as often as they are: on the dev sets 67.5 % of dev_harmful
    # answered / 12.5 % of dev_benign over-refused (base 86.2 / 5.0); prefix at 0.25: 66.2 / 12.5; the refusals
    # borrowed alone at 0.5 / 0.25: 81.2 / 8.3, 77.5 / 10.0 — none met both targets, not judged on the published sets
    # (docs/safedpo_self_pairs_borrowed_smollm2.json)
    c.train_datasets = ("PKU-SafeRLHF/train:0.5",
                        "self-pairs/harmful:4.0:runs/self_pairs_smollm2_borrowed/pairs_harmful.jsonl",
                        "self-pairs/benign:0.5:runs/self_pairs_smollm2_borrowed/pairs_benign.jsonl")
    c.train.epochs = 1  # each harmful pair four times in one epoch: as often as the first round's twice in two
    return c
