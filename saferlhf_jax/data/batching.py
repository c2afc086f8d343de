"""Fixed-shape numpy batches and a deterministic, resumable iterator.

Padding per kind (spec §2.3): supervised / preference / moderation right-padded (preference pairs jointly, to one L),
prompt-only left-padded. Every batch is padded up to a length bucket, so a run compiles at most len(buckets) shapes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

import numpy as np

from saferlhf_jax.data.examples import IGNORE_INDEX, TokenizedDataset


def default_buckets(max_length: int, smallest: int = 64) -> tuple[int, ...]:
    """Powers of two from `smallest` below max_length, then max_length itself."""
    out, b = [], smallest
    while b < max_length:
        out.append(b)
        b *= 2
    return tuple(out) + (int(max_length),)


def pick_bucket(length: int, buckets: Sequence[int]) -> int:
    for b in sorted(buckets):
        if b >= length:
            return int(b)
    raise ValueError(f"sequence of length {length} exceeds the largest bucket {max(buckets)}")


def end_score_batches(tokenizer, texts: Sequence[str], *, batch_size: int, max_length: int, multiple: int = 1):
    """Batches for end scores of full texts (spec §1.2): each text + EOS tokenized (BOS as the tokenizer adds it),
    truncated to max_length; `batch_size` texts at a time, right-padded to their power-of-two bucket, the rows filled
    up to a multiple of `multiple` with copies of the batch's first (one shape per bucket: multiple = batch_size;
    an even split over the devices: the mesh's batch divisor). Yields (ids (R, W) int32, mask (R, W) bool, n): the
    first n rows are the texts'."""
    encoded = [np.asarray(tokenizer(t + tokenizer.eos_token).input_ids[:max_length], np.int32) for t in texts]
    buckets = default_buckets(max_length)
    for lo in range(0, len(encoded), batch_size):
        chunk = encoded[lo:lo + batch_size]
        n = len(chunk)
        chunk = chunk + [chunk[0]] * ((-n) % multiple)
        width = pick_bucket(max(map(len, chunk)), buckets)
        ids = np.full((len(chunk), width), tokenizer.pad_token_id, np.int32)
        mask = np.zeros((len(chunk), width), bool)
        for i, c in enumerate(chunk):
            ids[i, :len(c)], mask[i, :len(c)] = c, True
        yield ids, mask, n


def _pad(seqs, width: int, value: int, left: bool = False) -> np.ndarray:
    out = np.full((len(seqs), width), value, np.int32)
    for i, s in enumerate(seqs):
        if left:
            out[i, width - len(s):] = s
        else:
            out[i, : len(s)] = s
    return out


def _mask(seqs, width: int, left: bool = False) -> np.ndarray:
    return _pad([np.ones(len(s), np.int32) for s in seqs], width, 0, left).astype(bool)


_ID_FIELDS = {"preference": ("better_input_ids", "worse_input_ids"),
              "safedpo_preference": ("better_input_ids", "worse_input_ids"),
              "safety_preference": ("safer_input_ids", "unsafer_input_ids")}


def longest(kind: str, examples: Sequence[dict[str, Any]]) -> int:
    """The longest token sequence among the examples (both sides of a pair)."""
    fields = _ID_FIELDS.get(kind, ("input_ids",))
    return max(len(e[f]) for e in examples for f in fields)


def collate(kind: str, examples: Sequence[dict[str, Any]], pad_id: int, buckets: Sequence[int],
            min_length: int = 0) -> dict:
    """A list of examples → a dict of (B, ...) numpy arrays padded to the bucket of max(longest, min_length).

    min_length: the longest example of the *global* batch when each host collates only its slice, so that every
    host pads to the same width."""
    width = pick_bucket(max(longest(kind, examples), int(min_length)), buckets)
    if kind == "supervised":
        ids = [e["input_ids"] for e in examples]
        return {"input_ids": _pad(ids, width, pad_id), "labels": _pad([e["labels"] for e in examples], width,
                                                                        IGNORE_INDEX),
                "attention_mask": _mask(ids, width)}
    if kind in ("preference", "safety_preference", "safedpo_preference"):
        a_key, b_key = ("safer", "unsafer") if kind == "safety_preference" else ("better", "worse")
        a = [e[f"{a_key}_input_ids"] for e in examples]
        b = [e[f"{b_key}_input_ids"] for e in examples]
        out = {f"{a_key}_input_ids": _pad(a, width, pad_id), f"{a_key}_attention_mask": _mask(a, width),
               f"{b_key}_input_ids": _pad(b, width, pad_id), f"{b_key}_attention_mask": _mask(b, width)}
        if kind == "safety_preference":
            out["safer_safety_sign"] = np.asarray([e["safer_safety_sign"] for e in examples], np.int32)
            out["unsafer_safety_sign"] = np.asarray([e["unsafer_safety_sign"] for e in examples], np.int32)
        if kind == "safedpo_preference":
            out["better_unsafe"] = np.asarray([e["better_unsafe"] for e in examples], np.int32)
            out["worse_unsafe"] = np.asarray([e["worse_unsafe"] for e in examples], np.int32)
        return out
    if kind == "prompt_only":
        ids = [e["input_ids"] for e in examples]
        return {"input_ids": _pad(ids, width, pad_id, left=True), "attention_mask": _mask(ids, width, left=True)}
    if kind == "moderation":
        ids = [e["input_ids"] for e in examples]
        return {"input_ids": _pad(ids, width, pad_id), "attention_mask": _mask(ids, width),
                "is_unsafe": np.asarray([e["is_unsafe"] for e in examples], np.int32),
                "categories": np.stack([e["categories"] for e in examples]).astype(bool),
                "category_valid": np.asarray([e["category_valid"] for e in examples], bool),
                "severity": np.asarray([e["severity"] for e in examples], np.int32)}
    raise ValueError(f"unknown dataset kind {kind!r}")


@dataclasses.dataclass
class IteratorState:
    epoch: int = 0
    position: int = 0  # batches already served in this epoch

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}


class BatchIterator:
    """Endless iterator over fixed-size batches, reshuffled each epoch from (seed, epoch) (spec §7.12).

    The global batch is `batch_size`; with `num_shards` hosts each host yields its contiguous slice.
    drop_last=True drops the incomplete last batch of an epoch; False completes it with the first examples of the
    epoch's order (every example is seen, shapes stay static — as a DistributedSampler pads its ranks).
    `state_dict()` / `load_state_dict()` save and restore the exact position.
    """

    def __init__(self, dataset: TokenizedDataset, batch_size: int, *, seed: int = 42, shuffle: bool = True,
                 buckets: Sequence[int] | None = None, num_shards: int = 1, shard_index: int = 0,
                 drop_last: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if batch_size % num_shards:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {num_shards} data shards")
        if len(dataset) < batch_size and drop_last:
            raise ValueError(f"the {dataset.kind} dataset has {len(dataset)} examples, fewer than one batch "
                             f"of {batch_size}; lower the batch size or add data")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.buckets = tuple(buckets or default_buckets(dataset.max_length))
        if max(self.buckets) < dataset.max_length:
            self.buckets = self.buckets + (dataset.max_length,)
        self.num_shards, self.shard_index = int(num_shards), int(shard_index)
        self.drop_last = bool(drop_last)
        self.state = IteratorState()

    @property
    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return len(self.dataset) // self.batch_size
        return -(-len(self.dataset) // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def global_indices(self, epoch: int, position: int) -> np.ndarray:
        order = self.order(epoch)
        idx = np.arange(position * self.batch_size, (position + 1) * self.batch_size) % len(order)
        return order[idx]  # past the end (drop_last=False): wrap around to the epoch's first examples

    def batch_indices(self, epoch: int, position: int) -> np.ndarray:
        """This host's contiguous slice of the global batch."""
        per = self.batch_size // self.num_shards
        return self.global_indices(epoch, position)[self.shard_index * per:(self.shard_index + 1) * per]

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self.state.position >= self.batches_per_epoch:
            self.state = IteratorState(self.state.epoch + 1, 0)
        idx = self.batch_indices(self.state.epoch, self.state.position)
        width = 0
        if self.num_shards > 1:  # every host pads to the bucket of the global batch's longest example
            width = longest(self.dataset.kind, [self.dataset[i] for i in
                                                self.global_indices(self.state.epoch, self.state.position)])
        self.state = IteratorState(self.state.epoch, self.state.position + 1)
        return collate(self.dataset.kind, [self.dataset[i] for i in idx], self.dataset.pad_token_id, self.buckets,
                       width)

    def state_dict(self) -> dict[str, int]:
        return self.state.to_dict()

    def load_state_dict(self, state: dict) -> None:
        self.state = IteratorState(int(state["epoch"]), int(state["position"]))


def iterate_once(dataset: TokenizedDataset, batch_size: int, buckets: Sequence[int] | None = None):
    """One ordered pass for evaluation: every example once; the last batch is filled with copies of the first
    example and `valid (B,)` marks the real rows (so metrics use global counts, spec §5.1)."""
    buckets = tuple(buckets or default_buckets(dataset.max_length))
    n = len(dataset)
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        valid = np.zeros(batch_size, bool)
        valid[: len(idx)] = True
        idx += [idx[0]] * (batch_size - len(idx))
        batch = collate(dataset.kind, [dataset[i] for i in idx], dataset.pad_token_id, buckets)
        batch["valid"] = valid
        yield batch
