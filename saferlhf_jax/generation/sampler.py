"""KV-cache sampler: one jitted prefill + one jitted decode (`lax.while_loop`s over tokens, one per segment of a
cache grown as it fills; per-row done mask, early exit). Prompts are left-padded into a few length buckets so
rollouts compile a handful of programs.

Shapes: B batch, S prompt width as given, Sb bucketed width, T new-token budget, V vocab.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from saferlhf_jax.generation.sampling import apply_repetition_penalty, choose_tokens
from saferlhf_jax.models.llama import KVCache, init_cache
from saferlhf_jax.models.rope import mask_positions
from saferlhf_jax.parallel import mesh as mesh_lib
from saferlhf_jax.parallel.constraints import activation_sharding

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """Static settings of one compiled sampler."""

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    greedy: bool = False
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    cache_dtype: str | None = None
    prefill_chunk: int = 512  # prompts wider than this are prefilled this many tokens at a time (0: in one pass)
    decode_segment: int = 32  # the decode loop grows the cache this many slots at a time (0: the whole cache)


def bucket_length(length: int, buckets: Sequence[int] | None = None) -> int:
    """Smallest bucket ≥ length (powers of two by default; the length itself beyond the largest bucket)."""
    for b in sorted(buckets or DEFAULT_BUCKETS):
        if b >= length:
            return int(b)
    return int(length)


def check_sampling(temperature: float, top_k, top_p: float, repetition_penalty: float) -> None:
    """ValueError for settings outside their domain (transformers refuses the same): a negative temperature samples
    the least likely tokens, top_p = 0 is greedy in disguise, a penalty ≤ 0 flips or zeroes the seen logits."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be ≥ 0 (0: greedy), got {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be ≥ 0 (0: off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1: off), got {top_p}")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0 (1: off), got {repetition_penalty}")


def _resolve_budget(prompt_width: int, max_new_tokens, max_length) -> int:
    if max_new_tokens is not None:
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be ≥ 0, got {max_new_tokens}")
        return int(max_new_tokens)
    if max_length is None:
        raise ValueError("give max_new_tokens or max_length (total length, prompt included)")
    budget = int(max_length) - prompt_width
    if budget <= 0:
        log.warning("prompt width %d leaves no room under max_length=%d: no tokens generated", prompt_width,
                    max_length)
    return max(budget, 0)


class _Programs:
    """The jitted prefill and decode of one (model, settings, bucket) combination."""

    def __init__(self, graphdef, config, settings: SamplingSettings, slots: int, mesh: Mesh | None = None,
                 rules=None):
        self.settings = settings
        self.rules = rules
        s = settings

        def module(params):
            return nnx.merge(graphdef, nnx.State(params))

        def run_prompt(params, ids, mask, cache):
            """The prompt through the model into the cache: last-position logits (B, V) f32 and the cache. Only the
            last position is projected to the vocabulary; a prompt wider than `prefill_chunk` goes in chunks
            (a leading remainder, then a scan over equal chunks), so attention temporaries are (chunk × slots),
            not (width × slots)."""
            positions = mask_positions(mask)
            width, chunk = ids.shape[1], s.prefill_chunk
            if not chunk or width <= chunk:
                hidden, cache = module(params)(ids, mask, positions, cache, 0, return_hidden=True)
                return module(params).logits(hidden[:, -1:])[:, 0], cache
            head, n = width % chunk, width // chunk
            if head:  # never the last position: only its keys and values are kept
                _, cache = module(params)(ids[:, :head], mask[:, :head], positions[:, :head], cache, 0,
                                          return_hidden=True)

            def chunks(a):  # (B, head + n·chunk) → (n, B, chunk)
                return a[:, head:].reshape(a.shape[0], n, chunk).swapaxes(0, 1)

            def body(cache, xs):
                i, ids_c, mask_c, pos_c = xs
                hidden, cache = module(params)(ids_c, mask_c, pos_c, cache, head + i * chunk, return_hidden=True)
                return cache, hidden[:, -1]

            cache, lasts = jax.lax.scan(body, cache, (jnp.arange(n), chunks(ids), chunks(mask), chunks(positions)))
            return module(params).logits(lasts[-1][:, None])[:, 0], cache

        def prefill(params, ids, mask, budget):
            """budget: () int32 tokens to generate at most (≤ max_new_tokens, the compiled width)."""
            b = ids.shape[0]
            cache = init_cache(config, b, slots, s.cache_dtype)
            logits, cache = run_prompt(params, ids, mask, cache)
            seen = jnp.zeros((b, config.vocab_size), bool)
            if s.repetition_penalty != 1.0:
                seen = seen.at[jnp.arange(b)[:, None], ids].max(mask.astype(bool))
            return {
                "logits": logits,
                "cache": cache,
                "positions": jnp.sum(mask, axis=-1).astype(jnp.int32),
                "seen": seen,
                "prompt_slots": jnp.int32(ids.shape[1]),
                "step": jnp.int32(0),
                "budget": jnp.minimum(jnp.asarray(budget, jnp.int32), s.max_new_tokens),
                "tokens": jnp.full((b, s.max_new_tokens), s.pad_token_id, jnp.int32),
                "lengths": jnp.zeros((b,), jnp.int32),
                "done": jnp.zeros((b,), bool),
            }

        def decode_step(params, st, rng):
            """Sample one token for every live row, append it, run it through the model (cache updated)."""
            b = st["logits"].shape[0]
            eos = jnp.asarray(s.eos_token_ids or (-1,), jnp.int32)
            logits = apply_repetition_penalty(st["logits"], st["seen"], s.repetition_penalty)
            tok = choose_tokens(logits, jax.random.fold_in(rng, st["step"]), greedy=s.greedy,
                                temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
            live = ~st["done"]
            tok = jnp.where(live, tok, s.pad_token_id)
            tokens = jax.lax.dynamic_update_slice_in_dim(st["tokens"], tok[:, None], st["step"], axis=1)
            seen = st["seen"]
            if s.repetition_penalty != 1.0:
                seen = seen.at[jnp.arange(b), tok].max(live)
            next_logits, cache = module(params)(
                tok[:, None], live[:, None], st["positions"][:, None], st["cache"], st["prompt_slots"] + st["step"])
            return {
                **st,
                "step": st["step"] + 1,
                "tokens": tokens,
                "lengths": st["lengths"] + live.astype(jnp.int32),
                "done": st["done"] | (live & jnp.isin(tok, eos)),
                "logits": next_logits[:, 0],
                "cache": cache,
                "positions": st["positions"] + live.astype(jnp.int32),
                "seen": seen,
            }

        def decode(params, state, rng):
            """Segments of `decode_segment` steps, each a while_loop over a cache that holds the prompt and only
            the slots written by the end of that segment: attention reads (and XLA streams through memory) the
            filled part of the cache, not all of it (the empty slots are masked out anyway, so the tokens are the
            same). Between segments the cache grows by zero slots; it ends at its full size."""
            prompt = slots - s.max_new_tokens
            seg = s.decode_segment if 0 < s.decode_segment < s.max_new_tokens else s.max_new_tokens
            ends = [*range(seg, s.max_new_tokens, seg), s.max_new_tokens]
            st = state
            for end in ends:  # the first resize shrinks the prefilled cache, the later ones grow it
                st = {**st, "cache": _resize_cache(st["cache"], prompt + end)}

                def cond(st, end=end):
                    return (st["step"] < jnp.minimum(st["budget"], end)) & ~jnp.all(st["done"])

                st = jax.lax.while_loop(cond, lambda st: decode_step(params, st, rng), st)
            return st

        def on_mesh(fn):  # activations constrained through the same rules as the parameters
            def wrapped(*args):
                with activation_sharding(mesh, rules):
                    return fn(*args)
            return wrapped

        self._fns = {"prefill": on_mesh(prefill), "decode": on_mesh(decode), "step": on_mesh(decode_step)}
        self._jitted: dict[Any, Any] = {}
        self.mesh = mesh

    def prefill(self, params, ids, mask, budget):
        """(params, ids (B, Sb), mask (B, Sb), budget ()) → the whole decode state: last logits, KV cache,
        counters."""
        return self._call("prefill", params, ids, mask, budget)

    def decode(self, params, state, rng):
        """The whole response in one while_loop; the state (KV cache included) is donated and returned."""
        return self._call("decode", params, state, rng)

    def step(self, params, state, rng):
        """One token (interactive streaming); the state is donated and returned."""
        return self._call("step", params, state, rng)

    def _call(self, name, params, *args):
        """Run one program, jitted per parameter layout: with a mesh, with explicit in/out shardings (parameters as
        placed, batch-leading arrays over the data axes, KV heads over `tensor`, counters replicated)."""
        param_sh = None if self.mesh is None else mesh_lib.shardings_of(params, self.mesh)
        key = (name, None if param_sh is None else tuple(jax.tree.leaves(param_sh)))
        fn = self._jitted.get(key)
        if fn is None:
            donate = () if name == "prefill" else (1,)
            if self.mesh is None:
                fn = jax.jit(self._fns[name], donate_argnums=donate)
            else:
                rep = mesh_lib.replicated(self.mesh)
                if name == "prefill":
                    out = self._state_shardings(jax.eval_shape(self._fns[name], params, *args))
                    ins = (param_sh, *(mesh_lib.batch_sharding(self.mesh, a.ndim) if np.ndim(a) else rep
                                       for a in args))
                else:
                    out = self._state_shardings(args[0])
                    ins = (param_sh, out, rep)
                fn = jax.jit(self._fns[name], in_shardings=ins, out_shardings=out, donate_argnums=donate)
            self._jitted[key] = fn
        return fn(params, *args)

    def _state_shardings(self, state):
        """Counters replicated, per-row arrays over the data axes, the KV cache from the axes it declares."""
        mesh = self.mesh
        out = {k: jax.tree.map(lambda x: mesh_lib.replicated(mesh) if x.ndim == 0 else
                               mesh_lib.batch_sharding(mesh, x.ndim), v) for k, v in state.items() if k != "cache"}
        cache = state["cache"]
        out["cache"] = jax.tree.map(
            lambda axes, x: NamedSharding(mesh, mesh_lib.logical_to_spec(axes, x.shape, mesh, self.rules)),
            cache.logical_axes(), cache, is_leaf=lambda a: isinstance(a, tuple) and all(isinstance(e, str) for e in a))
        return out


def _resize_cache(cache: KVCache, size: int) -> KVCache:
    """The cache with `size` slots: its first `size` (shrinking) or zero/False slots appended (growing)."""
    def one(x, axis):
        have = x.shape[axis]
        if have == size:
            return x
        if have > size:
            return jax.lax.slice_in_dim(x, 0, size, axis=axis)
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, size - have)
        return jnp.pad(x, pad)

    # keys (…, B, K, Dh, S): slots last; values (…, B, K, S, Dh): slots second to last
    return KVCache(jax.tree.map(lambda x: one(x, x.ndim - 1), cache.k),
                   jax.tree.map(lambda x: one(x, x.ndim - 2), cache.v), one(cache.mask, 1))


_PROGRAMS: dict[Any, tuple[Any, _Programs]] = {}


def _programs(model, settings: SamplingSettings, slots: int, mesh: Mesh | None = None) -> _Programs:
    rules = getattr(model, "rules", None)
    key = (id(model.graphdef), settings, slots, mesh, rules)
    hit = _PROGRAMS.get(key)
    if hit is None or hit[0] is not model.graphdef:
        hit = (model.graphdef, _Programs(model.graphdef, model.config, settings, slots, mesh, rules))
        _PROGRAMS[key] = hit
    return hit[1]


def _start(progs, params, ids_b, mask_b, mesh, budget: int):
    """Left-padded bucketed prompts → the decode state after prefill (every counter built inside the program)."""
    if mesh is not None:  # this process's rows → the global batch over the mesh's data axes
        batch = mesh_lib.put_local_batch({"ids": ids_b, "mask": mask_b}, mesh)
        ids_b, mask_b = batch["ids"], batch["mask"]
    return progs.prefill(params, ids_b, mask_b, np.int32(budget))


def stream_generate(model, params, input_ids, attention_mask, *, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = 50, top_p: float = 1.0, repetition_penalty: float = 1.0,
                    greedy: bool = False, eos_token_ids=None, pad_token_id=None, rng=0,
                    buckets: Sequence[int] | None = None):
    """Yield the new token of row 0 as it is produced (interactive use: one jitted step per token).

    Same programs and sampling as `generate`, so a fixed rng gives the same tokens."""
    check_sampling(temperature, top_k, top_p, repetition_penalty)
    max_new_tokens = _resolve_budget(0, max_new_tokens, None)  # the same ≥ 0 check as generate's
    ids = np.asarray(input_ids)
    mask = np.asarray(attention_mask).astype(np.int32)
    b, s = ids.shape
    eos = model.config.eos_token_ids if eos_token_ids is None else tuple(int(e) for e in np.atleast_1d(eos_token_ids))
    if pad_token_id is None:
        pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else (eos[0] if eos else 0)
    key = jax.random.key(rng) if isinstance(rng, (int, np.integer)) else rng
    width = bucket_length(s, buckets)
    ids_b = np.concatenate([np.full((b, width - s), pad_token_id, ids.dtype), ids], axis=1).astype(np.int32)
    mask_b = np.concatenate([np.zeros((b, width - s), np.int32), mask], axis=1)
    settings = SamplingSettings(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                top_k=int(top_k) if top_k else None, top_p=float(top_p),
                                repetition_penalty=float(repetition_penalty), greedy=bool(greedy),
                                eos_token_ids=eos, pad_token_id=int(pad_token_id))
    progs = _programs(model, settings, width + int(max_new_tokens))
    state = _start(progs, params, ids_b, mask_b, None, int(max_new_tokens))
    for t in range(int(max_new_tokens)):
        state = progs.step(params, state, key)
        tok = int(state["tokens"][0, t])
        yield tok
        if bool(state["done"][0]):
            return


def generate(model, params, input_ids, attention_mask, *, max_new_tokens: int | None = None,
             max_length: int | None = None, temperature: float = 1.0, top_k: int | None = 50, top_p: float = 1.0,
             repetition_penalty: float = 1.0, greedy: bool = False, eos_token_ids=None, pad_token_id=None,
             rng=None, mesh: Mesh | None = None, buckets: Sequence[int] | None = None,
             cache_dtype: str | None = None, budget: int | None = None, rollout_layout: bool | str = False,
             rollout_dtype: str = "float32", prefill_chunk: int = 512,
             decode_segment: int = 32) -> dict[str, np.ndarray]:
    """Sample continuations of left-padded prompts with a causal LM (`saferlhf_jax.models.Model`).

    Args:
      input_ids, attention_mask: (B, S) left-padded prompts.
      max_new_tokens / max_length: the response budget T, or the total length S + T (spec §5.3).
      eos_token_ids: int or several ids (Llama-3); default: the model config's.
      pad_token_id: fills responses after EOS; default: the config's pad id, else the first EOS id.
      rng: PRNG key or int seed (required unless greedy).
      mesh: shard the batch over the mesh's data axes. In a multi-host run every process passes its own rows
        (the same prompt width on every host) and gets its own rows back.
      budget: stop after this many tokens (≤ the resolved max_new_tokens, which fixes the compiled array width):
        callers with a varying budget (RL: max_length − each micro-batch's longest prompt) share one program.
      rollout_layout: lay the parameters out for decoding first, once for this call (`Model.rollout_as`: "fused",
        q|k|v and gate|up fused; "fused_out_in", also every kernel (out, in); True: "fused_out_in"); callers that
        sample several batches from the same parameters (RL) fuse once themselves and pass the rollout model and
        its parameters instead. Same tokens (greedy, f32) either way.
      rollout_dtype: "bfloat16" makes that copy's weights bf16 (multiplied in bf16, summed in f32): half the bytes
        a decode step reads, 1.5× faster on 2 CPU cores (SmolLM2: docs/bench_real_model_cpu.json); greedy tokens
        may differ from f32's where two candidates are within bf16 rounding.
      prefill_chunk: prompts wider than this are prefilled in chunks of this many tokens (0: one pass).
      decode_segment: the decode loop's attention reads the prompt's slots and those filled so far, grown this
        many at a time (0: the whole cache every step). Same tokens.
    Returns:
      dict with sequences (B, S + T) (prompt as given, response right-padded with pad), attention_mask (B, S + T)
      (prompt mask, then 1 through each row's EOS), response_lengths (B,) (EOS counted).
    """
    ids = np.asarray(input_ids)
    mask = np.asarray(attention_mask).astype(np.int32)
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise ValueError(f"input_ids and attention_mask must both be (B, S); got {ids.shape} and {mask.shape}")
    if model.kind != "causal_lm":
        raise ValueError("generate needs a causal LM, got a score model")
    check_sampling(temperature, top_k, top_p, repetition_penalty)
    if mask.shape[1] and np.any(mask[:, -1] == 0) and np.any(mask.sum(-1) > 0):
        if np.any((mask[:, -1] == 0) & (mask.sum(-1) > 0)):
            raise ValueError("prompts must be left-padded: a row ends in padding")
    b, s = ids.shape
    new_width = _resolve_budget(s, max_new_tokens, max_length)  # compiled response width
    eos = model.config.eos_token_ids if eos_token_ids is None else (
        (int(eos_token_ids),) if np.ndim(eos_token_ids) == 0 else tuple(int(e) for e in eos_token_ids))
    if pad_token_id is None:
        pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else (eos[0] if eos else 0)
    if not greedy and temperature != 0.0 and rng is None:
        raise ValueError("sampling needs an rng (a jax PRNG key or an int seed); pass greedy=True for argmax")
    key = jax.random.key(rng) if isinstance(rng, (int, np.integer)) else (rng if rng is not None else jax.random.key(0))
    if new_width == 0 or (budget is not None and budget <= 0):
        return {"sequences": ids, "attention_mask": mask, "response_lengths": np.zeros((b,), np.int32)}

    if rollout_layout or rollout_dtype != "float32":
        model, fuse = model.rollout_as(rollout_layout, rollout_dtype)
        params = fuse(params)
    width = bucket_length(s, buckets)
    pad_cols = width - s
    ids_b = np.concatenate([np.full((b, pad_cols), pad_token_id, ids.dtype), ids], axis=1).astype(np.int32)
    mask_b = np.concatenate([np.zeros((b, pad_cols), np.int32), mask], axis=1)
    settings = SamplingSettings(max_new_tokens=new_width, temperature=float(temperature),
                                top_k=int(top_k) if top_k else None, top_p=float(top_p),
                                repetition_penalty=float(repetition_penalty), greedy=bool(greedy),
                                eos_token_ids=eos, pad_token_id=int(pad_token_id), cache_dtype=cache_dtype,
                                prefill_chunk=int(prefill_chunk), decode_segment=int(decode_segment))
    progs = _programs(model, settings, width + new_width, mesh)
    state = _start(progs, params, ids_b, mask_b, mesh, new_width if budget is None else min(int(budget), new_width))
    state = progs.decode(params, state, key)
    tokens = mesh_lib.local_rows(state["tokens"])
    lengths = mesh_lib.local_rows(state["lengths"])
    response_mask = (np.arange(new_width)[None, :] < lengths[:, None]).astype(mask.dtype)
    return {
        "sequences": np.concatenate([ids, tokens.astype(ids.dtype)], axis=1),
        "attention_mask": np.concatenate([mask, response_mask], axis=1),
        "response_lengths": lengths,
    }
