"""On-policy safety pairs: a policy's own sampled answers to labelled prompts, paired as PKU-SafeRLHF rows.

Why: PKU-SafeRLHF's safe answers were written by other models (Alpaca-7B and its successors) and are mostly safe
*compliance* — a small instruct model trained on them learns their content, not to decline (README, "A real model on
prompts nobody here wrote": SafeDPO on the shipped rows did not lower SmolLM2's harmful compliance). Its own
answers, sampled a few times per prompt, sometimes hold a refusal next to a compliance (SmolLM2: 20 of 353 harmful
prompts at 6 samples); a pair of the two, in the policy's own words, is what SafeDPO's safe-over-unsafe term can
move.

Where the labels come from:
- *which prompts are harmful* — the rows' own labels only: a PKU-SafeRLHF/train prompt with a response labelled
  unsafe, a BeaverTails/30k_train prompt whose response is labelled unsafe. Benign prompts, by their source: Alpaca's
  instructions and (`--benign_sources`) the first human turns of hh-rlhf helpful-base — its helpfulness split —
  after the evaluation's first 100 (HELPFUL_BASE_EVAL) and less those whose answers were hand-labelled.
  None of these prompts is in the safety evaluation's sets (`safety_eval.PROMPT_SETS`; checked by a test).
- *which answer declines* — the refusal rule (`refusal.judge`), which is also the safety evaluation's judge: the
  evaluation therefore also reports the judge's agreement with answers labelled by reading, and the README reads the
  trained model's answers (a model that learns an "I'm sorry" opening and then complies would show there).

The rule is strict on the side that teaches: a sample *declines* for a pair only when its opening says so
outright (EXPLICIT_DECLINES: "I can't", "I won't", "I'm unable to", … — not a bare "I'm sorry", which a 135M model
also writes before doing what was asked, nor a deflection), and a sample *complies* only when the evaluation's rule
finds neither a refusal nor a deflection; samples in between are left out. (SmolLM2 also declines by capability —
"I'm not equipped to", "I don't have the ability to" — in its answers to the dev prompts; the list leaves those out,
as it did for the README's run: samples.jsonl keeps every sample, to pair again by a wider list.)

Each harmful prompt with at least one declining and one complying sample gives one row: response_0 the first
declining sample (labelled safe), response_1 the first complying one (labelled unsafe: it does what a request
labelled harmful asks), better_response_id 1 (the complying answer is the more helpful one, as a helpfulness
annotator would say), safer_response_id 0. SafeDPO's transform then prefers the refusal with the margin Δ. A benign
prompt with both gives the opposite row — both labelled safe, the complying answer better — which keeps the
model from learning to decline everything.

A model that rarely declines a benign request (SmolLM2: 2 of 80 Alpaca prompts) gives few such rows, and trained on the
harmful ones it learns to decline benign requests too (README, "Second try"). With `borrow_refusals` a benign prompt
whose samples hold a compliance but no decline is paired with a refusal the policy wrote to a harmful prompt: the
first sentence of an outright decline that names nothing of the prompt it answered ("I'm sorry, but I can't assist
with that."), the pool's refusals in turn. Still the policy's own words, and one round of sampling instead of two
(the "Third try" sampled the first round's model again for its over-refusals). Two forms (BORROW_MODES):
- "alone": the refusal sentence is the declining answer. Both answers end at EOS, so the pair can be learned by
  making EOS unlikely after that sentence instead of the sentence itself (README, "Fourth try").
- "prefix": the refusal sentence followed by the prompt's own compliance ("I'm sorry, but I can't assist with that.
  To bake a cake, …"): the two answers differ only in the refusal opening, which is what the judge reads and what
  a model that over-refuses writes before (sometimes) doing what was asked.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Sequence

import numpy as np

from saferlhf_jax import data as data_lib
from saferlhf_jax.data import registry
from saferlhf_jax.evaluation import hand_labels, refusal
from saferlhf_jax.evaluation.arena import generate_answers


EXPLICIT_DECLINES = (
    "i can't", "i cannot", "i can not", "i won't", "i will not", "i'm unable to", "i am unable to",
    "i'm not able to", "i am not able to", "i must decline", "i'm not going to", "i am not going to",
    "i don't provide", "i do not provide", "i don't condone", "i do not condone", "i don't support",
    "i do not support", "i'm not comfortable", "i am not comfortable", "i don't feel comfortable",
)


def declines_outright(answer: str) -> bool:
    """The answer's opening (as the refusal rule reads it) declines in so many words (EXPLICIT_DECLINES)."""
    text = refusal.opening(answer)
    return any(p in text for p in EXPLICIT_DECLINES)


def complies(answer: str) -> bool:
    """The evaluation's rule finds neither a refusal nor a deflection."""
    return refusal.judge(answer) == "compliance"


BORROW_MODES = ("alone", "prefix")
GENERIC_REFUSAL_WORDS = 24  # a borrowed refusal's first sentence is at most this long


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]{5,}", text.lower()))


def generic_refusal(answer: str, prompt: str) -> str | None:
    """The answer's first sentence when it declines outright, is short (≤ GENERIC_REFUSAL_WORDS words) and shares no
    word of five letters or more with its prompt — a refusal that fits any request —, else None."""
    first = re.split(r"(?<=[.!?])\s", " ".join(answer.split()), maxsplit=1)[0]
    if not declines_outright(first) or len(first.split()) > GENERIC_REFUSAL_WORDS or _words(first) & _words(prompt):
        return None
    return first


def refusal_pool(prompts: Sequence["Prompt"], answers: Sequence[Sequence[str]]) -> list[str]:
    """The generic refusals (generic_refusal) among the harmful prompts' samples, unique, in order."""
    pool = {}
    for p, a in zip(prompts, answers):
        if p.harmful:
            for x in a:
                r = generic_refusal(x, p.text)
                if r is not None:
                    pool.setdefault(r, None)
    return list(pool)


@dataclasses.dataclass(frozen=True)
class Prompt:
    text: str
    harmful: bool
    source: str          # the dataset whose labels say harmful / benign


def harmful_prompts(source: str = "embedded") -> list[Prompt]:
    """Prompts whose rows carry an unsafe label, deduplicated, in file order: PKU-SafeRLHF/train (either response
    unsafe), then BeaverTails/30k_train (response unsafe)."""
    seen, out = set(), []
    for name in ("PKU-SafeRLHF/train", "BeaverTails/30k_train"):
        for s in registry.load_raw(name, source=source):
            unsafe = not s.is_safe or (s.is_other_safe is not None and not s.is_other_safe)
            text = s.input.strip()
            if unsafe and text not in seen:
                seen.add(text)
                out.append(Prompt(text, True, name))
    return out


def benign_prompts(source: str = "embedded") -> list[Prompt]:
    """Alpaca's instructions (with their input, if any), deduplicated, in file order."""
    seen, out = set(), []
    for s in registry.load_raw("alpaca", source=source):
        text = s.input.strip()
        if text not in seen:
            seen.add(text)
            out.append(Prompt(text, False, "alpaca"))
    return out


HELPFUL_BASE = pathlib.Path(__file__).resolve().parents[1] / "assets" / "data" / "hh_rlhf" / \
    "helpful-base_train_first500.jsonl"
HELPFUL_BASE_EVAL = 100  # the safety evaluation's helpful_base set: the first 100 first turns (none trains)


def helpful_base_first_turns() -> list[str]:
    """hh-rlhf helpful-base's first human turns, deduplicated, in file order (492 of the shipped 500 rows)."""
    seen, out = set(), []
    for line in HELPFUL_BASE.read_text().splitlines():
        text = json.loads(line)["chosen"]
        first = text.split("\n\nHuman: ", 1)[-1].split("\n\nAssistant:", 1)[0].strip()
        if first and first not in seen:
            seen.add(first)
            out.append(first)
    return out


def conversational_prompts() -> list[Prompt]:
    """Benign requests as people ask a chat assistant: helpful-base first turns after the evaluation's
    HELPFUL_BASE_EVAL, less any whose answer was hand-labelled to check the judge (366)."""
    labelled = {r["prompt"] for r in hand_labels.load()}
    return [Prompt(t, False, "hh-rlhf/helpful-base") for t in helpful_base_first_turns()[HELPFUL_BASE_EVAL:]
            if t not in labelled]


DEV_HARMFUL = 80    # harmful prompts held out from the pairs, to choose settings on (safety_eval's dev_harmful)
DEV_BENIGN = 60     # benign ones per benign source (dev_benign: 60 Alpaca, then 60 helpful-base)
BENIGN_POOL = 400   # the first Alpaca instructions drawn on: the dev ones, the rest for pairs
BENIGN_SOURCES = ("alpaca", "helpful_base")


def harmful_split(source: str = "embedded") -> tuple[list[Prompt], list[Prompt]]:
    """(pair prompts, dev prompts) of the harmful pool."""
    return split_dev(harmful_prompts(source), DEV_HARMFUL)


def benign_splits(source: str = "embedded") -> dict[str, tuple[list[Prompt], list[Prompt]]]:
    """{benign source: (pair prompts, dev prompts)}: the first BENIGN_POOL Alpaca instructions, the conversational
    prompts; DEV_BENIGN of each held out."""
    return {"alpaca": split_dev(benign_prompts(source)[:BENIGN_POOL], DEV_BENIGN),
            "helpful_base": split_dev(conversational_prompts(), DEV_BENIGN)}


def benign_split(source: str = "embedded") -> tuple[list[Prompt], list[Prompt]]:
    """(pair prompts, dev prompts) of every benign source, source by source (BENIGN_SOURCES' order)."""
    splits = benign_splits(source)
    return ([p for name in BENIGN_SOURCES for p in splits[name][0]],
            [p for name in BENIGN_SOURCES for p in splits[name][1]])


def split_dev(prompts: Sequence[Prompt], n_dev: int, seed: int = 0) -> tuple[list[Prompt], list[Prompt]]:
    """(train, dev): a seeded draw of n_dev prompts held out to choose settings on, the rest in their order."""
    if not 0 <= n_dev < len(prompts):
        raise ValueError(f"n_dev must lie in [0, {len(prompts)}), got {n_dev}")
    dev = set(np.random.default_rng(seed).choice(len(prompts), n_dev, replace=False).tolist())
    return ([p for i, p in enumerate(prompts) if i not in dev], [p for i, p in enumerate(prompts) if i in dev])


def pair_row(prompt: Prompt, answers: Sequence[str], borrowed: str | None = None,
             borrow_mode: str = "alone") -> dict | None:
    """One PKU-SafeRLHF row from one prompt's sampled answers (module doc), or None when they do not differ in
    declining. `borrowed`: a refusal for a benign prompt's declining side when none of its own samples declines, as
    it is or (borrow_mode "prefix") before the prompt's own compliance (module doc)."""
    # harmful: an outright refusal over a compliance; benign: a compliance over any refusal or deflection
    declining = [a for a in answers if (declines_outright(a) if prompt.harmful else not complies(a))]
    complying = [a for a in answers if complies(a)]
    lent = not prompt.harmful and not declining and borrowed is not None
    if not complying:
        return None
    if lent:
        declining = [borrowed if borrow_mode == "alone" else f"{borrowed} {complying[0]}"]
    if not declining:
        return None
    if prompt.harmful:
        r0, r1, safe1, better = declining[0], complying[0], False, 1
    else:
        r0, r1, safe1, better = complying[0], declining[0], True, 0
    # severity: nothing says more than "unsafe", so its lowest level (SafeDPO reads only the is_safe labels)
    return {"prompt": prompt.text, "response_0": r0, "response_1": r1,
            "is_response_0_safe": True, "is_response_1_safe": safe1,
            "better_response_id": better, "safer_response_id": 0,
            "response_0_severity_level": 0, "response_1_severity_level": 0 if safe1 else 1,
            "prompt_source": prompt.source, "response_0_source": "policy",
            "response_1_source": "policy, to another prompt" if lent else "policy"}


def sample_answers(policy, prompts: Sequence[Prompt], *, samples: int, temperature: float, max_new_tokens: int,
                   batch_size: int, seed: int, template: str = "chat", max_prompt_length: int = 256,
                   rollout_dtype: str = "float32") -> list[list[str]]:
    """(len(prompts), samples) answers: each prompt repeated `samples` times, sampled (top-k 50); prompts of like
    length share a batch. rollout_dtype "bfloat16": sampled from a bf16 copy of the weights (faster on CPU)."""
    model, tok = policy
    fmt = data_lib.make_template(template, tok)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].text))  # like lengths share a batch: less padding
    repeated = [prompts[i].text for i in order for _ in range(samples)]
    answers = generate_answers(model, tok, repeated, max_length=max_prompt_length, batch_size=batch_size, seed=seed,
                               template=fmt, temperature=temperature, max_new_tokens=max_new_tokens,
                               rollout_dtype=rollout_dtype, progress="sampling")
    out = [None] * len(prompts)
    for k, i in enumerate(order):
        out[i] = [a for _, a in answers[k * samples:(k + 1) * samples]]
    return out


def pair_all(prompts: Sequence[Prompt], answers: Sequence[Sequence[str]],
             borrow_refusals: str | None = None) -> tuple[list, dict]:
    """(rows, stats) from each prompt's sampled answers: the pair rows and, per harmful / benign and per prompt
    source ("by_source"), how many prompts and samples, how many samples declined (the evaluation's rule), declined
    outright, complied, and how many prompts gave a pair ("pairs_borrowed": of them, with a borrowed refusal;
    "refusal_pool": how many refusals could be borrowed). borrow_refusals: None or one of BORROW_MODES."""
    if borrow_refusals not in (None, *BORROW_MODES):
        raise ValueError(f"borrow_refusals must be None or one of {BORROW_MODES}, got {borrow_refusals!r}")
    rows, stats = [], {}
    pool = refusal_pool(prompts, answers) if borrow_refusals else []
    if borrow_refusals:
        stats["refusal_pool"] = len(pool)
    lent = 0
    for p, a in zip(prompts, answers):
        row = pair_row(p, a, borrowed=pool[lent % len(pool)] if pool else None, borrow_mode=borrow_refusals or "alone")
        borrowed = row is not None and row["response_1_source"] != "policy"
        lent += borrowed
        counts = {"prompts": 1, "samples": len(a),
                  "samples_declining": sum(refusal.declines(v) for v in refusal.judge_all(a)),
                  "samples_declining_outright": sum(declines_outright(x) for x in a),
                  "samples_complying": sum(complies(x) for x in a), "pairs": int(row is not None),
                  "pairs_borrowed": int(borrowed)}
        for s in (stats.setdefault("harmful" if p.harmful else "benign", {}),
                  stats.setdefault("by_source", {}).setdefault(p.source, {})):
            for k, v in counts.items():
                s[k] = s.get(k, 0) + v
        if row is not None:
            rows.append(row)
    return rows, stats
