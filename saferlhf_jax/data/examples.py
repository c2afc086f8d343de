"""Dataset kinds (spec §4.2): raw samples → tokenized examples, with bad rows filtered up front and counted.

Kinds: supervised, preference, safety_preference, prompt_only, moderation. Each example is a dict of 1-D numpy
arrays / scalars; batching and padding live in `saferlhf_jax.data.batching`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Sequence

import numpy as np

from saferlhf_jax.data.raw import BEAVERTAILS_CATEGORIES, PKU_HARM_CATEGORIES, DataError, RawSample
from saferlhf_jax.data.template import DEFAULT_TEMPLATE, ConversationTemplate

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
KINDS = ("supervised", "preference", "safety_preference", "safedpo_preference", "prompt_only", "moderation")
SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "</s>", "bos_token": "<s>", "unk_token": "<unk>"}


@dataclasses.dataclass
class TokenizedDataset:
    kind: str
    examples: list[dict[str, Any]]
    counts: dict[str, int]      # filtered / truncated / empty rows, by reason
    pad_token_id: int
    max_length: int

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


def prepare_tokenizer(tokenizer) -> list[str]:
    """Add `<pad>`, `</s>`, `<s>`, `<unk>` only where missing (spec §2.5). Returns the names of the added tokens;
    the model's embeddings must then grow to len(tokenizer) (`saferlhf_jax.models.resize_token_embeddings`)."""
    missing = {k: v for k, v in SPECIAL_TOKENS.items() if getattr(tokenizer, k, None) is None}
    if missing:
        tokenizer.add_special_tokens(missing)
        log.info("added special tokens %s; vocabulary is now %d", sorted(missing.values()), len(tokenizer))
    return sorted(missing)


class _Tokenize:
    """Batched HF tokenization with right truncation to max_length (BOS counted), no padding."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.truncated = 0

    def __call__(self, texts: Sequence[str], count: bool = True) -> list[np.ndarray]:
        """Token ids per text; `count` adds over-long texts to `truncated` (off for prompts/partial segments)."""
        if not texts:
            return []
        full = self.tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        out = []
        for ids in full:
            if len(ids) > self.max_length:
                self.truncated += count
                ids = ids[: self.max_length]
            out.append(np.asarray(ids, np.int32))
        return out


# the dataset field behind each sample field, for error messages (PKU-SafeRLHF names)
_SOURCE_FIELDS = {"safer": "safer_response_id", "better": "better_response_id", "is_safe": "is_response_0_safe",
                  "is_other_safe": "is_response_1_safe", "other_answer": "response_1", "answer": "response_0"}


def _require(sample: RawSample, kind: str, *fields: str) -> None:
    missing = [f for f in fields if getattr(sample, f) is None]
    if missing:
        names = ", ".join(f"{f} ({_SOURCE_FIELDS[f]})" if f in _SOURCE_FIELDS else f for f in missing)
        raise DataError(f"{sample.where}: a {kind} example needs {names}, which this row does not have")


def _eos(tokenizer) -> str:
    if tokenizer.eos_token is None:
        raise DataError("the tokenizer has no EOS token; call prepare_tokenizer first")
    return tokenizer.eos_token


def build_supervised(samples, tokenizer, max_length, template=DEFAULT_TEMPLATE):
    """input_ids and labels (prompt/user segments masked to −100), spec §3.3."""
    tok, eos = _Tokenize(tokenizer, max_length), _eos(tokenizer)
    counts = collections.Counter()
    singles = [s for s in samples if s.dialogue is None]
    for s in singles:
        _require(s, "supervised", "input", "answer")
    prompts = [template.format_prompt(s.input, eos) for s in singles]
    full = tok([p + s.answer + eos for p, s in zip(prompts, singles)])
    prompt_ids = tok(prompts, count=False)
    examples = []
    for s, ids, p_ids in zip(singles, full, prompt_ids):
        labels = ids.copy()
        labels[: len(p_ids)] = IGNORE_INDEX
        counts["empty_answer"] += s.answer == ""
        examples.append({"input_ids": ids, "labels": labels})
    for s in (s for s in samples if s.dialogue is not None):
        segments = template.dialogue_segments(s.dialogue, eos)
        offsets = [0] + [len(ids) for ids in tok(segments, count=False)]
        ids = tok([segments[-1]])[0] if segments else np.zeros((0,), np.int32)
        labels = ids.copy()
        for begin, end in zip(offsets[::2], offsets[1::2]):
            labels[begin:end] = IGNORE_INDEX
        examples.append({"input_ids": ids, "labels": labels})
    # an example whose prompt fills max_length has no target token left: its loss would be 0/0 (spec §4.5) — drop it
    kept = [ex for ex in examples if not np.all(ex["labels"] == IGNORE_INDEX)]
    counts["no_target_tokens"] = len(examples) - len(kept)
    counts["truncated"] = tok.truncated
    return kept, counts


def _pair_texts(samples, template, eos, first_attr: str):
    firsts, seconds = [], []
    for s in samples:
        prompt = template.format_prompt(s.input, eos)
        a, b = s.answer + eos, s.other_answer + eos
        keep_order = getattr(s, first_attr)
        firsts.append(prompt + (a if keep_order else b))
        seconds.append(prompt + (b if keep_order else a))
    return firsts, seconds


def build_preference(samples, tokenizer, max_length, template=DEFAULT_TEMPLATE):
    """better/worse ids (swapped when `better` is False); identical pairs are filtered and counted."""
    tok, eos = _Tokenize(tokenizer, max_length), _eos(tokenizer)
    for s in samples:
        _require(s, "preference", "input", "answer", "other_answer", "better")
    better_texts, worse_texts = _pair_texts(samples, template, eos, "better")
    better, worse = tok(better_texts), tok(worse_texts)
    counts = collections.Counter()
    examples = []
    for row, (b, w) in enumerate(zip(better, worse)):
        if np.array_equal(b, w):
            counts["identical_responses"] += 1
            continue
        examples.append({"better_input_ids": b, "worse_input_ids": w, "row": row})
    counts["truncated"] = tok.truncated
    return examples, counts


def build_safety_preference(samples, tokenizer, max_length, template=DEFAULT_TEMPLATE):
    """safer/unsafer ids with safety signs (+1 safe / −1 unsafe); identical or inconsistent rows filtered."""
    tok, eos = _Tokenize(tokenizer, max_length), _eos(tokenizer)
    for s in samples:
        _require(s, "safety_preference", "input", "answer", "other_answer", "safer", "is_safe", "is_other_safe")
    safer_texts, unsafer_texts = _pair_texts(samples, template, eos, "safer")
    safer, unsafer = tok(safer_texts), tok(unsafer_texts)
    counts = collections.Counter()
    examples = []
    for row, (s, a, u) in enumerate(zip(samples, safer, unsafer)):
        safer_safe, unsafer_safe = (s.is_safe, s.is_other_safe) if s.safer else (s.is_other_safe, s.is_safe)
        safer_sign, unsafer_sign = 2 * int(safer_safe) - 1, 2 * int(unsafer_safe) - 1
        if np.array_equal(a, u):
            counts["identical_responses"] += 1
            continue
        if safer_sign < unsafer_sign:
            counts["safer_labelled_unsafe"] += 1
            continue
        examples.append({"safer_input_ids": a, "unsafer_input_ids": u, "row": row,
                         "safer_safety_sign": np.int32(safer_sign), "unsafer_safety_sign": np.int32(unsafer_sign)})
    counts["truncated"] = tok.truncated
    return examples, counts


def safedpo_transform(better: bool, winner_safe: bool, loser_safe: bool, both_unsafe: str = "drop"):
    """SafeDPO's transformation T (METHODS_BEYOND §1.1) of one helpfulness pair: (keep, swap, h̃_w, h̃_l).
    Winner safe: unchanged; unsafe winner, safe loser: swapped; both unsafe: dropped ('keep': kept, no margin)."""
    h_w, h_l = int(not winner_safe), int(not loser_safe)
    if h_w and not h_l:
        return True, True, h_l, h_w
    if h_w and h_l:
        return both_unsafe == "keep", False, h_w, h_l
    return True, False, h_w, h_l


def build_safedpo_preference(samples, tokenizer, max_length, template=DEFAULT_TEMPLATE, both_unsafe: str = "drop"):
    """Helpfulness pairs after SafeDPO's T: better/worse ids of ỹ_w / ỹ_l plus their unsafe flags h̃_w, h̃_l.
    An unsafe response never wins: counts kept_unchanged / swapped / dropped_both_unsafe."""
    for s in samples:
        _require(s, "safedpo_preference", "input", "answer", "other_answer", "better", "is_safe", "is_other_safe")
    counts = collections.Counter()
    kept = []
    for s in samples:
        winner_safe, loser_safe = (s.is_safe, s.is_other_safe) if s.better else (s.is_other_safe, s.is_safe)
        keep, swap, h_w, h_l = safedpo_transform(s.better, winner_safe, loser_safe, both_unsafe)
        counts["swapped" if swap else ("kept_unchanged" if keep else "dropped_both_unsafe")] += 1
        if keep:
            kept.append((dataclasses.replace(s, better=s.better != swap), h_w, h_l))
    tok, eos = _Tokenize(tokenizer, max_length), _eos(tokenizer)
    better_texts, worse_texts = _pair_texts([s for s, _, _ in kept], template, eos, "better")
    better, worse = tok(better_texts), tok(worse_texts)
    examples = []
    for (s, h_w, h_l), b, w in zip(kept, better, worse):
        if np.array_equal(b, w):
            counts["identical_responses"] += 1
            continue
        examples.append({"better_input_ids": b, "worse_input_ids": w, "better_unsafe": np.int32(h_w),
                         "worse_unsafe": np.int32(h_l)})
    counts["truncated"] = tok.truncated
    return examples, counts


def _prompt_key(inp):
    return inp if isinstance(inp, str) else tuple(inp)


def dedup_keep_last(samples: Sequence[RawSample]) -> list[RawSample]:
    """Keep the last occurrence of each prompt (whole turn list for multi-turn), in original order (spec §4.2)."""
    last = {}
    for i, s in enumerate(samples):
        last[_prompt_key(s.input)] = i
    keep = sorted(last.values())
    return [samples[i] for i in keep]


def build_prompt_only(samples, tokenizer, max_length, template=DEFAULT_TEMPLATE):
    """tok(format_prompt(input)) with BOS, no EOS, right-truncated to max_length (spec §2.5); prompts deduplicated
    keep-last; over-long prompts counted."""
    tok, eos = _Tokenize(tokenizer, max_length), _eos(tokenizer)
    for s in samples:
        _require(s, "prompt_only", "input")
    kept = dedup_keep_last(samples)
    counts = collections.Counter(duplicate_prompts=len(samples) - len(kept))
    ids = tok([template.format_prompt(s.input, eos) for s in kept])
    examples = [{"input_ids": x} for x in ids]
    counts["truncated"] = tok.truncated
    return examples, counts


def drop_long_prompts(dataset: "TokenizedDataset", limit: int, why: str) -> "TokenizedDataset":
    """Drop prompt-only examples longer than `limit` tokens, counted as `prompt_too_long` (RL: a prompt must leave
    room to answer). A one-line DataError when none is left."""
    kept = [e for e in dataset.examples if len(e["input_ids"]) <= limit]
    dropped = len(dataset.examples) - len(kept)
    if not dropped:
        return dataset
    log.warning("dropped %d of %d prompts longer than %d tokens (%s)", dropped, len(dataset.examples), limit, why)
    if not kept:
        raise DataError(f"every one of the {dropped} prompts is longer than {limit} tokens ({why})")
    return dataclasses.replace(dataset, examples=kept, counts={**dataset.counts, "prompt_too_long": dropped})


def _moderation_labels(category, severity, is_safe):
    if category is not None and tuple(category) == PKU_HARM_CATEGORIES:
        categories = np.asarray([category[c] for c in PKU_HARM_CATEGORIES], bool)
        category_valid = True
    else:
        # BeaverTails rows use another taxonomy: their category vector is not a PKU label
        categories = np.zeros(len(PKU_HARM_CATEGORIES), bool)
        category_valid = bool(is_safe)  # a safe response has no harm category in any taxonomy
    if severity is None:
        severity = 0 if is_safe else -1  # unknown: ignored by the severity loss and metrics
    return categories, np.int32(severity), category_valid


def build_moderation(samples, tokenizer, max_length, template=DEFAULT_TEMPLATE):
    """One example per response: input_ids, is_unsafe, 19-way multi-hot categories, severity 0..3 (−1 unknown)."""
    tok, eos = _Tokenize(tokenizer, max_length), _eos(tokenizer)
    texts, labels = [], []
    counts = collections.Counter()
    for s in samples:
        _require(s, "moderation", "input", "answer", "is_safe")
        prompt = template.format_prompt(s.input, eos)
        responses = [(s.answer, s.is_safe, s.category, s.severity)]
        if s.other_answer is not None and s.is_other_safe is not None:
            responses.append((s.other_answer, s.is_other_safe, s.other_category, s.other_severity))
        for answer, is_safe, category, severity in responses:
            if severity is not None and (severity == 0) != bool(is_safe):
                counts["severity_disagrees_with_is_safe"] += 1
            texts.append(prompt + answer + eos)
            labels.append(_moderation_labels(category, severity, is_safe) + (is_safe,))
    examples = []
    for ids, (categories, severity, category_valid, is_safe) in zip(tok(texts), labels):
        examples.append({"input_ids": ids, "is_unsafe": np.int32(not is_safe), "categories": categories,
                         "severity": severity, "category_valid": np.bool_(category_valid)})
    counts["truncated"] = tok.truncated
    return examples, counts


BUILDERS = {
    "supervised": build_supervised,
    "preference": build_preference,
    "safety_preference": build_safety_preference,
    "safedpo_preference": build_safedpo_preference,
    "prompt_only": build_prompt_only,
    "moderation": build_moderation,
}


def build_dataset(kind: str, samples: Sequence[RawSample], tokenizer, max_length: int,
                  template: ConversationTemplate = DEFAULT_TEMPLATE, **options) -> TokenizedDataset:
    """Tokenize raw samples into one dataset kind; logs what was filtered or truncated, and why."""
    if kind not in BUILDERS:
        raise ValueError(f"dataset kind must be one of {KINDS}, got {kind!r}")
    if max_length < 2:
        raise ValueError(f"max_length must be ≥ 2, got {max_length}")
    examples, counts = BUILDERS[kind](list(samples), tokenizer, max_length, template, **options)
    counts = {k: int(v) for k, v in counts.items() if v}
    if not examples:
        raise DataError(f"no usable {kind} examples out of {len(samples)} rows (filtered: {counts})")
    if counts:
        log.info("%s dataset: %d examples from %d rows; %s", kind, len(examples), len(samples),
                 ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    pad = tokenizer.pad_token_id
    if pad is None:
        raise DataError("the tokenizer has no pad token; call prepare_tokenizer first")
    return TokenizedDataset(kind, examples, counts, int(pad), int(max_length))


__all__ = ["BEAVERTAILS_CATEGORIES", "IGNORE_INDEX", "KINDS", "TokenizedDataset", "build_dataset",
           "dedup_keep_last", "drop_long_prompts", "prepare_tokenizer"]
