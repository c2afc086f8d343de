"""Logit processing and token choice: repetition penalty, temperature, top-k, top-p (HF order), greedy."""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def apply_repetition_penalty(logits, seen, penalty: float):
    """HF rule on tokens already in the sequence: divide positive logits by `penalty`, multiply negative ones.

    logits (B, V) f32, seen (B, V) bool.
    """
    if penalty == 1.0:
        return logits
    penalised = jnp.where(logits > 0, logits / penalty, logits * penalty)
    return jnp.where(seen, penalised, logits)


def top_k_filter(logits, k: int | None):
    """Keep the k largest logits per row (ties at the k-th value kept); k None/0 = off."""
    if not k or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][:, -1:]
    return jnp.where(logits < kth, NEG_INF, logits)


def top_p_filter(logits, p: float):
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches p (at least one)."""
    if p >= 1.0:
        return logits
    order = jnp.argsort(-logits, axis=-1)
    kept_sorted = _top_p_sorted(jnp.take_along_axis(logits, order, axis=-1), p)
    return jnp.zeros_like(logits).at[jnp.arange(logits.shape[0])[:, None], order].set(kept_sorted)


def _top_p_sorted(values, p: float):
    """The nucleus rule on logits already sorted in descending order (B, k): the rest set to −inf."""
    if p >= 1.0:
        return values
    probs = jax.nn.softmax(values, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability mass strictly above each token
    keep = (before < p).at[:, 0].set(True)
    return jnp.where(keep, values, NEG_INF)


def choose_tokens(logits, rng, *, greedy: bool, temperature: float, top_k: int | None, top_p: float):
    """logits (B, V) f32 → token ids (B,) int32.

    With 0 < top_k < V the choice is made among the k candidates of `lax.top_k` (already sorted, so top-p needs no
    vocabulary sort and the Gumbel noise is drawn for (B, k) values, not (B, V)): the same distribution as filtering
    the full vocabulary — only a tie at the k-th logit keeps exactly k tokens here instead of all the tied ones."""
    if greedy or temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        values, index = jax.lax.top_k(logits, top_k)  # (B, k) each, descending
        values = _top_p_sorted(values, top_p)
        choice = jax.random.categorical(rng, values, axis=-1)
        return jnp.take_along_axis(index, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    logits = top_p_filter(logits, top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}  # transformers' GenerationConfig defaults


def model_sampling_defaults(model_dir) -> dict:
    """{'temperature', 'top_k', 'top_p'} from a model directory's generation_config.json, else transformers'
    defaults (1.0, 50, 1.0). Sampling stays on: RL evaluation and the arena sample (spec §5.3)."""
    import json
    import pathlib

    out = dict(SAMPLING_DEFAULTS)
    path = pathlib.Path(str(model_dir)).expanduser() / "generation_config.json"
    if path.is_file():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raw = {}
        for key, cast in (("temperature", float), ("top_k", int), ("top_p", float)):
            if raw.get(key) is not None:
                out[key] = cast(raw[key])
    return out
