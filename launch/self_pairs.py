"""On-policy safety pairs: a policy answers labelled harmful and benign prompts a few times each; a refusal next to a
compliance becomes one PKU-SafeRLHF-format row for SafeDPO (saferlhf_jax/evaluation/self_pairs.py says which labels
come from where).

    python -m launch.self_pairs --policy runs/smollm2_hf --output_dir runs/self_pairs_smollm2 --rollout_dtype bfloat16
    python -m launch.safedpo --config configs/safedpo.py:smollm2_self_pairs   # reads runs/self_pairs_smollm2

Writes pairs.jsonl (rows as PKU-SafeRLHF's, usable as `self-pairs/all:1.0:PATH` in any data mix), the same rows
split into pairs_harmful.jsonl and pairs_benign.jsonl (`self-pairs/harmful`, `self-pairs/benign`: weighed apart),
samples.jsonl (every sampled answer) and stats.json (per harmful / benign and per prompt source: prompts, samples,
declining samples, pairs). The prompts safety_eval's dev_harmful and dev_benign sets hold out are never sampled here.

--borrow_refusals prefix|alone pairs a benign prompt none of whose samples declines with a generic refusal the policy
wrote to a harmful prompt, before its own compliance or alone (one round teaches both sides;
`configs/safedpo.py:smollm2_self_pairs_borrowed`), and --benign_samples samples benign prompts fewer times (one
compliance is all such a pair needs):

    python -m launch.self_pairs --policy runs/smollm2_hf --output_dir runs/self_pairs_smollm2_borrowed \
        --rollout_dtype bfloat16 --samples 8 --benign_samples 2 --benign 100 --benign_sources alpaca,helpful_base \
        --borrow_refusals prefix

--pairs_from DIR pairs DIR/samples.jsonl again (another rule, no sampling) into --output_dir.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

from launch.common import setup_logging


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", help="the policy to sample (an HF-format directory or a run's export)")
    p.add_argument("--pairs_from", default=None,
                   help="pair an earlier run's samples.jsonl (its directory) again instead of sampling: for another "
                        "pairing rule, such as --borrow_refusals")
    p.add_argument("--borrow_refusals", choices=["prefix", "alone"], default=None,
                   help="pair a benign prompt none of whose samples declines with a generic refusal the policy wrote "
                        "to a harmful prompt, before its own compliance or alone (self_pairs.py's module doc)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--samples", type=int, default=6, help="answers per prompt (≥ 2)")
    p.add_argument("--benign_samples", type=int, default=None,
                   help="answers per benign prompt (default: --samples; 1 is enough with --borrow_refusals)")
    p.add_argument("--temperature", type=float, default=0.7,
                   help="SmolLM2's samples declined (the evaluation's rule) 2 of 64 times at 1.0, 9 of 128 at 0.7")
    p.add_argument("--max_new_tokens", type=int, default=64,
                   help="answer tokens (the rule reads the opening; a refusal is short)")
    p.add_argument("--benign", type=int, default=80,
                   help="benign prompts to use per benign source (of its pool: 340 Alpaca, 306 helpful-base)")
    p.add_argument("--benign_sources", default="alpaca",
                   help="comma-separated, of alpaca (instructions), helpful_base (first turns of chat requests)")
    p.add_argument("--harmful", type=int, default=None, help="harmful prompts to use (default: all of the pool)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--template", choices=["chat", "pku"], default="chat")
    p.add_argument("--rollout_dtype", choices=["float32", "bfloat16"], default="float32",
                   help="bfloat16: sample from a bf16 copy of the weights (about 1.5x faster on CPU)")
    args = p.parse_args(argv)
    setup_logging()
    from saferlhf_jax.errors import ModelError
    from saferlhf_jax.evaluation import self_pairs
    from saferlhf_jax.evaluation.loading import load_for_eval

    out = pathlib.Path(args.output_dir)
    try:
        if (args.policy is None) == (args.pairs_from is None):
            raise ValueError("give exactly one of --policy (sample it) and --pairs_from (pair earlier samples)")
        if args.samples < 2:
            raise ValueError(f"--samples must be ≥ 2 (a pair needs two answers), got {args.samples}")
        if args.benign_samples is None:
            args.benign_samples = args.samples
        if args.benign_samples < 1:
            raise ValueError(f"--benign_samples must be ≥ 1, got {args.benign_samples}")
        if (out / "pairs.jsonl").exists():
            raise ValueError(f"{out / 'pairs.jsonl'} exists: give another --output_dir (nothing was overwritten)")
        sources = [x.strip() for x in args.benign_sources.split(",") if x.strip()]
        unknown = sorted(set(sources) - set(self_pairs.BENIGN_SOURCES))
        if unknown:
            raise ValueError(f"unknown --benign_sources {unknown}; known: {list(self_pairs.BENIGN_SOURCES)}")
        if args.pairs_from is not None:  # the prompts come with the samples: no pools to draw
            prompts, answers = read_samples(pathlib.Path(args.pairs_from) / "samples.jsonl")
            earlier = json.loads((pathlib.Path(args.pairs_from) / "stats.json").read_text())
        else:
            harmful = self_pairs.harmful_split()[0][:args.harmful]
            splits = self_pairs.benign_splits()
            benign = [p for name in sources for p in splits[name][0][:args.benign]]
            policy = load_for_eval(args.policy, "causal_lm")
    except (FileNotFoundError, ValueError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.time()
    if args.pairs_from is not None:
        return write_pairs(out, prompts, answers, args.borrow_refusals,
                           {**{k: v for k, v in earlier.items() if k not in ("harmful", "benign", "by_source",
                                                                               "refusal_pool")},
                            "pairs_from": args.pairs_from, "borrow_refusals": args.borrow_refusals})
    kw = dict(temperature=args.temperature, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
              seed=args.seed, template=args.template, rollout_dtype=args.rollout_dtype)
    prompts = harmful + benign
    if args.benign_samples == args.samples:  # one call, as the README's earlier runs sampled
        answers = self_pairs.sample_answers(policy, prompts, samples=args.samples, **kw)
    else:  # each with its own number of samples
        answers = (self_pairs.sample_answers(policy, harmful, samples=args.samples, **kw) if harmful else []) + \
            (self_pairs.sample_answers(policy, benign, samples=args.benign_samples, **kw) if benign else [])
    return write_pairs(out, prompts, answers, args.borrow_refusals, {
        "policy": args.policy, "samples": args.samples, "benign_samples": args.benign_samples,
        "temperature": args.temperature, "rollout_dtype": args.rollout_dtype, "harmful_prompts": args.harmful,
        "benign_prompts": args.benign, "benign_sources": sources, "max_new_tokens": args.max_new_tokens,
        "seed": args.seed, "seconds": round(time.time() - start, 1), "borrow_refusals": args.borrow_refusals})


def read_samples(path: pathlib.Path):
    """(prompts, answers) from a samples.jsonl that write_pairs wrote."""
    from saferlhf_jax.evaluation import self_pairs
    prompts, answers = [], []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            try:
                r = json.loads(line)
                prompts.append(self_pairs.Prompt(r["prompt"], r["harmful"], r["source"]))
                answers.append(r["answers"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path} line {i}: not a sample row (prompt, harmful, source, answers): {err}")
    return prompts, answers


def write_pairs(out: pathlib.Path, prompts, answers, borrow_refusals: str | None, settings: dict) -> int:
    """Pairs the samples and writes samples.jsonl, the pair files and stats.json (module doc) under out."""
    from saferlhf_jax.evaluation import self_pairs
    rows, stats = self_pairs.pair_all(prompts, answers, borrow_refusals=borrow_refusals)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "samples.jsonl", "w") as f:  # every sample, to pair again by another rule without sampling
        for prompt, a in zip(prompts, answers):
            f.write(json.dumps({"prompt": prompt.text, "harmful": prompt.harmful, "source": prompt.source,
                                "answers": a}, ensure_ascii=False) + "\n")
    # the harmful and the benign prompts' pairs apart too (self-pairs/harmful, self-pairs/benign: a mix can weigh
    # them apart); pairs.jsonl last — whole or absent, a killed run leaves no half file and can be run again
    for name, keep in (("pairs_harmful", lambda r: not r["is_response_1_safe"]),
                       ("pairs_benign", lambda r: r["is_response_1_safe"]), ("pairs", lambda r: True)):
        with open(out / f"{name}.jsonl.tmp", "w") as f:
            for r in rows:
                if keep(r):
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        (out / f"{name}.jsonl.tmp").rename(out / f"{name}.jsonl")
    stats = {**settings, **stats}
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
