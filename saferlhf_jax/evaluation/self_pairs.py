"""On-policy safety pairs: a policy's own sampled answers to labelled prompts, paired as PKU-SafeRLHF rows.

Why: PKU-SafeRLHF's safe answers were written by other models (Alpaca-7B and its successors) and are mostly safe
*compliance* — a small instruct model trained on them learns their content, not to decline (README, "A real model on
prompts nobody here wrote": SafeDPO on the shipped rows did not lower SmolLM2's harmful compliance). Its own
answers, sampled a few times per prompt, sometimes hold a refusal next to a compliance (SmolLM2: 20 of 353 harmful
prompts at 6 samples); a pair of the two, in the policy's own words, is what SafeDPO's safe-over-unsafe term can
move.

Where the labels come from:
- *which prompts are harmful* — the rows' own labels only: a PKU-SafeRLHF/train prompt with a response labelled
  unsafe, a BeaverTails/30k_train prompt whose response is labelled unsafe. Benign prompts: Alpaca's instructions.
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
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from saferlhf_jax import data as data_lib
from saferlhf_jax.data import registry
from saferlhf_jax.evaluation import refusal
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


DEV_HARMFUL = 80    # harmful prompts held out from the pairs, to choose settings on (safety_eval's dev_harmful)
DEV_BENIGN = 60     # benign ones (dev_benign)
BENIGN_POOL = 400   # the first Alpaca instructions drawn on: the dev ones, the rest for pairs


def harmful_split(source: str = "embedded") -> tuple[list[Prompt], list[Prompt]]:
    """(pair prompts, dev prompts) of the harmful pool."""
    return split_dev(harmful_prompts(source), DEV_HARMFUL)


def benign_split(source: str = "embedded") -> tuple[list[Prompt], list[Prompt]]:
    """(pair prompts, dev prompts) of the first BENIGN_POOL benign prompts."""
    return split_dev(benign_prompts(source)[:BENIGN_POOL], DEV_BENIGN)


def split_dev(prompts: Sequence[Prompt], n_dev: int, seed: int = 0) -> tuple[list[Prompt], list[Prompt]]:
    """(train, dev): a seeded draw of n_dev prompts held out to choose settings on, the rest in their order."""
    if not 0 <= n_dev < len(prompts):
        raise ValueError(f"n_dev must lie in [0, {len(prompts)}), got {n_dev}")
    dev = set(np.random.default_rng(seed).choice(len(prompts), n_dev, replace=False).tolist())
    return ([p for i, p in enumerate(prompts) if i not in dev], [p for i, p in enumerate(prompts) if i in dev])


def pair_row(prompt: Prompt, answers: Sequence[str]) -> dict | None:
    """One PKU-SafeRLHF row from one prompt's sampled answers (module doc), or None when they do not differ in
    declining."""
    # harmful: an outright refusal over a compliance; benign: a compliance over any refusal or deflection
    declining = [a for a in answers if (declines_outright(a) if prompt.harmful else not complies(a))]
    complying = [a for a in answers if complies(a)]
    if not declining or not complying:
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
            "prompt_source": prompt.source, "response_0_source": "policy", "response_1_source": "policy"}


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


def pair_all(prompts: Sequence[Prompt], answers: Sequence[Sequence[str]]) -> tuple[list, dict]:
    """(rows, stats) from each prompt's sampled answers: the pair rows and, per harmful / benign, how many prompts
    and samples, how many samples declined (the evaluation's rule), declined outright, complied, and how many
    prompts gave a pair."""
    rows, stats = [], {}
    for p, a in zip(prompts, answers):
        row = pair_row(p, a)
        s = stats.setdefault("harmful" if p.harmful else "benign",
                             {"prompts": 0, "samples": 0, "samples_declining": 0, "samples_declining_outright": 0,
                              "samples_complying": 0, "pairs": 0})
        s["prompts"] += 1
        s["samples"] += len(a)
        s["samples_declining"] += sum(refusal.declines(v) for v in refusal.judge_all(a))
        s["samples_declining_outright"] += sum(declines_outright(x) for x in a)
        s["samples_complying"] += sum(complies(x) for x in a)
        if row is not None:
            rows.append(row)
            s["pairs"] += 1
    return rows, stats
