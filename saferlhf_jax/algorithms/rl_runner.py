"""The RL runner: compiled rollout, scoring and rl_step programs driven over an `rl.RLState` (spec §1.3).

One RL iteration, top to bottom:
  1. rollout: for each micro-batch of the prompt batch and each return index, sample responses with a fresh PRNG key
     (budget: max_length − the micro-batch's longest prompt) and score them (reference log-probs, R and C; actor
     log-probs and critic values except for the first micro-batch, whose update computes them itself); every C goes
     into the per-shard episode-cost window of the state;
  2. update: `update_iters` passes over the rollout micro-batches, each one `rl_step` (λ update → KL shaping →
     two GAEs → PPO actor update (+ PTX, the same PTX micro-batches on every pass) → clipped critic updates).

The job around it (data, models, the loop, export) is `algorithms/ppo_lag.py`.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from saferlhf_jax import models
from saferlhf_jax.algorithms import rl
from saferlhf_jax.data import default_buckets, pick_bucket
from saferlhf_jax.errors import ConfigError
from saferlhf_jax.generation import generate
from saferlhf_jax.generation.config import GenerationConfig
from saferlhf_jax.generation.sampler import DEFAULT_BUCKETS, bucket_length
from saferlhf_jax.models import lora
from saferlhf_jax.parallel import mesh as mesh_lib
from saferlhf_jax.training import optim
from saferlhf_jax.training import state as state_lib


def make_retokenizer(actor_tokenizer, scorer_tokenizer, max_length: int):
    """Actor sequences → a scorer's ids (spec §1.2): decode with special tokens skipped, append the scorer's EOS
    string, re-tokenize (BOS added, no truncation), right-pad to a power-of-two bucket. Host-side, per rollout."""

    def retokenize(seq: np.ndarray, mask: np.ndarray):
        texts = [actor_tokenizer.decode(row[m.astype(bool)], skip_special_tokens=True) + scorer_tokenizer.eos_token
                 for row, m in zip(seq, mask)]
        encoded = scorer_tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        longest = mesh_lib.global_max(max(map(len, encoded)))  # one width on every host
        width = pick_bucket(longest, default_buckets(max(longest, max_length), smallest=16))
        ids = np.full((len(encoded), width), scorer_tokenizer.pad_token_id, np.int32)
        out_mask = np.zeros((len(encoded), width), bool)
        for i, e in enumerate(encoded):
            ids[i, :len(e)] = e
            out_mask[i, :len(e)] = True
        return ids, out_mask

    return retokenize


def strip_left_padding(ids: np.ndarray, mask: np.ndarray, width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded (b, S) prompts → exactly `width` columns (every real token kept when width ≥ the longest)."""
    s = ids.shape[1]
    if width > s:
        return (np.pad(ids, ((0, 0), (width - s, 0)), constant_values=pad_id), np.pad(mask, ((0, 0), (width - s, 0))))
    return ids[:, s - width:], mask[:, s - width:]


class RLRunner:
    """Holds the compiled functions and drives iterations over an `rl.RLState` (a checkpointable pytree)."""

    def __init__(self, *, actor, reward_critic, cost_critic, reward_fn: Callable, cost_fn: Callable | None,
                 frozen: dict, cfg: rl.RLConfig, gen: GenerationConfig, actor_optim: optim.OptimConfig,
                 critic_optim: optim.OptimConfig, total_rl_steps: int, train_batch_size: int, update_iters: int = 1,
                 mesh=None, retokenizers: dict | None = None, logits_chunk: int = 0,
                 optimizer_memory: str = "device", lora_rank: int = 0, lora_alpha: float = 16.0,
                 lora_targets: Sequence[str] = (), lora_init: str = "kaiming_uniform", lora_critics: bool = False,
                 cost_base_key: str = ""):
        if update_iters < 1:
            raise ValueError(f"update_iters must be ≥ 1, got {update_iters}")
        self.actor, self.reward_critic, self.cost_critic = actor, reward_critic, cost_critic
        self.cfg, self.gen, self.mesh = cfg, gen, mesh
        self.frozen = frozen
        self.train_batch_size, self.update_iters = int(train_batch_size), int(update_iters)
        self.reward_fn, self.cost_fn = reward_fn, cost_fn
        self.retokenizers = retokenizers or {}  # scorer name → host re-tokenizer (foreign tokenizers only)
        actor_opt, actor_schedule = actor_optim.make(max(1, total_rl_steps))
        critic_opt, critic_schedule = critic_optim.make(max(1, total_rl_steps))
        # logits_chunk > 0: log-probs projected to the vocabulary in chunks (no float32 (B, L, V) logits)
        log_probs = functools.partial(actor.label_log_probs, chunk=int(logits_chunk))
        self.optimizer_memory = optimizer_memory  # 'pinned_host': optimizer state offloaded between updates
        # LoRA (METHODS_BEYOND §4): the actor trains adapters over its frozen base, which is also the reference
        # (frozen['ref'] must be those very parameters: no second copy)
        self.lora_scale, self.adapters, self.actor_base = 0.0, None, None
        if lora_rank:
            self.lora_scale = lora.scale(lora_alpha, lora_rank)
            self.adapters = lora.init(actor.params, lora_rank, tuple(lora_targets) or lora.DEFAULT_TARGETS,
                                      init=lora_init)
            self.actor_base = frozen["ref"]
        critic_lora_scale = 0.0
        if lora_rank and lora_critics:
            critic_lora_scale = lora.scale(lora_alpha, lora_rank)
        self.models = rl.RLModels(log_probs, reward_critic.apply if reward_critic is not None else None, actor_opt,
                                  critic_opt, actor_schedule, critic_schedule, cfg,
                                  optimizer_on_host=optimizer_memory != "device", lora_scale=self.lora_scale,
                                  critic_lora_scale=critic_lora_scale, cost_base_key=cost_base_key)
        if critic_lora_scale:
            # each critic trains adapters and its own head over the scoring model it starts from, whose frozen
            # arrays are already resident (RLModels.bases): its own backbone copy is dropped here
            bases = self.models.bases(frozen)
            for seed, (name, critic) in enumerate((("reward", reward_critic), ("cost", cost_critic)), start=1):
                if critic is None:
                    continue
                adapters = lora.init(bases[name], lora_rank, tuple(lora_targets) or lora.DEFAULT_TARGETS, seed=seed,
                                     init=lora_init)
                critic.params = {lora.KEY: adapters, **lora.split(critic.params, "score")[0]}
        self.data_shards = mesh_lib.batch_divisor(mesh) if mesh is not None else 1
        self._programs: dict[tuple, Callable] = {}
        # the sampler's model: the actor in the rollout layout, its parameters fused once per rollout
        tensor = 1 if mesh is None else mesh.shape.get("tensor", 1)
        self.sampler_model, self._to_rollout_layout = actor, None
        layout = gen.rollout_layout if tensor == 1 else "none"  # fused kernels would split differently
        if layout != "none" or gen.rollout_dtype != "float32":
            self.sampler_model, self._to_rollout_layout = actor.rollout_as(layout, gen.rollout_dtype)
        self.last_generate_seconds = 0.0  # host seconds in the sampler during the last rollout (it returns numpy)

    # ------------------------------------------------------------------ state

    def init_state(self, seed: int, donate: bool = False) -> rl.RLState:
        """The initial RLState, laid out from its abstract shape and born sharded (training/state.py); donate=True
        hands the models' parameter buffers to the state (no second copy at scale)."""

        def init(actor_params, reward_params, cost_params):
            return rl.init_state(self.models, actor_params, reward_params, cost_params, seed, self.data_shards)

        axes = [models.param_logical_axes(m.config, m.kind) for m in (self.actor, self.reward_critic)
                if m is not None]
        rules = getattr(self.actor, "rules", None)
        actor_params = self.actor.params
        if self.lora_scale:  # the state holds the adapters, each sharded like its kernel (critics' alike: same paths)
            actor_params = {lora.KEY: self.adapters}
            axes.append(lora.adapter_axes(axes[0], self.adapters))
        return state_lib.allocate(init, actor_params,
                                  self.reward_critic.params if self.reward_critic is not None else None,
                                  self.cost_critic.params if self.cost_critic is not None else None, axes=axes,
                                  mesh=self.mesh, rules=rules, donate=(0, 1, 2) if donate else (),
                                  optimizer_memory=self.optimizer_memory)

    def _jit(self, fn, args, out_shardings, donate=()):
        """jit with explicit in/out shardings read off the (committed) arguments; no mesh: one device, plain jit."""
        if self.mesh is None:
            return jax.jit(fn, donate_argnums=donate)
        return jax.jit(fn, in_shardings=tuple(mesh_lib.shardings_of(a, self.mesh) for a in args),
                       out_shardings=out_shardings, donate_argnums=donate)

    def _place(self, *arrays: np.ndarray):
        """This host's rows → device arrays (global, batch-sharded, with a mesh)."""
        if self.mesh is None:
            return tuple(jnp.asarray(a) for a in arrays)
        placed = mesh_lib.put_local_batch({str(i): a for i, a in enumerate(arrays)}, self.mesh)
        return tuple(placed[str(i)] for i in range(len(arrays)))

    def _batch_shardings(self, tree):
        return jax.tree.map(lambda x: mesh_lib.batch_sharding(self.mesh, x.ndim), tree)

    def _score(self, policy: bool, *args):
        """The jitted scoring of one rollout micro-batch (`rl.make_score_rollout`); `policy` is static."""
        key = ("score", policy, args[-1] is not None)
        if key not in self._programs:
            fn = rl.make_score_rollout(self.models, self.reward_fn, self.cost_fn, policy=policy,
                                       eos_token_ids=self.gen.eos_token_ids or self.actor.config.eos_token_ids)
            out = None
            if self.mesh is not None:
                rollout, window = jax.eval_shape(fn, *args)
                out = (self._batch_shardings(rollout), jax.tree.map(lambda _: mesh_lib.replicated(self.mesh), window))
            self._programs[key] = self._jit(fn, args, out)
        return self._programs[key](*args)

    def _step(self, fresh: bool, *args):
        """The jitted rl_step (`rl.make_rl_step`) for the first-pass flag, state donated; with LoRA the frozen
        bases of the adapters (`RLModels.bases`) ride along as the last argument."""
        bases = self.models.bases(self.frozen)
        if bases is not None:
            args = (*args, bases)
        key = ("step", fresh, args[2] is not None)
        if key not in self._programs:
            fn = rl.make_rl_step(self.models, fresh)
            out = None
            if self.mesh is not None:
                _, metrics, rollout = jax.eval_shape(fn, *args)
                rep = mesh_lib.replicated(self.mesh)
                out = (mesh_lib.shardings_of(args[0], self.mesh), jax.tree.map(lambda _: rep, metrics),
                       self._batch_shardings(rollout))
            self._programs[key] = self._jit(fn, args, out, donate=(0,))
        return self._programs[key](*args)

    # ------------------------------------------------------------------ generation

    def response_width(self, prompt_width: int) -> int:
        """The compiled response width for prompts of `prompt_width` real tokens: every prompt that the sampler pads
        to the same bucket shares it (the actual budget, max_length − prompt_width, is a runtime value)."""
        buckets = sorted(self.gen.prompt_buckets or DEFAULT_BUCKETS)
        lower = max((b for b in buckets if b < bucket_length(prompt_width, buckets)), default=0)
        return self.gen.max_length - min(lower + 1, prompt_width)

    def merged_actor(self, actor_params):
        """The actor's full parameters: base + adapters with LoRA (merged once per rollout), else as they are."""
        if not self.lora_scale:
            return actor_params
        if "merge" not in self._programs:
            self._programs["merge"] = jax.jit(lambda base, p: lora.merge(base, p, self.lora_scale))
        return self._programs["merge"](self.actor_base, actor_params)

    def sampler_params(self, actor_params):
        """The actor's parameters as the sampler reads them (the rollout layout: made once per rollout)."""
        actor_params = self.merged_actor(actor_params)
        return actor_params if self._to_rollout_layout is None else self._to_rollout_layout(actor_params)

    def sample(self, params, ids: np.ndarray, mask: np.ndarray, key, **sampling):
        """Responses to this host's left-padded prompts (b, S), from `sampler_params(actor params)`: returns
        (seq, seq_mask, start) with seq (b, L),
        L from the length buckets, start (b,) = P − 1 where P is the longest real prompt of the micro-batch over all
        hosts, and a response budget of exactly max_length − P tokens (spec §2.5, reference rollout)."""
        g = self.gen
        longest = mesh_lib.global_max(int(mask.sum(axis=1).max()) if mask.size else 0)
        budget = g.max_length - longest
        if budget < 1:
            raise ConfigError(f"a prompt of {longest} tokens leaves no room to answer under generation.max_length="
                              f"{g.max_length}; raise max_length or lower data.max_prompt_length")
        ids, mask = strip_left_padding(ids, mask, longest, g.pad_token_id or 0)
        opts = dict(temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, repetition_penalty=g.repetition_penalty)
        opts.update(sampling)
        out = generate(self.sampler_model, params, ids, mask, max_new_tokens=self.response_width(longest),
                       budget=budget, eos_token_ids=g.eos_token_ids, pad_token_id=g.pad_token_id, rng=key,
                       mesh=self.mesh, buckets=g.prompt_buckets or None, prefill_chunk=g.prefill_chunk,
                       decode_segment=g.decode_segment, **opts)
        used = mesh_lib.global_max(longest + int(out["response_lengths"].max()))
        width = bucket_length(used, sorted({b for b in g.length_buckets if b < g.max_length} | {g.max_length}))
        seq = out["sequences"][:, :width].astype(np.int32)
        seq_mask = out["attention_mask"][:, :width].astype(bool)
        if g.unk_token_id is not None:
            seq_mask &= seq != g.unk_token_id  # rollout mask: ≠ pad ∧ ≠ unk (spec §2.2)
        return seq, seq_mask, np.full((seq.shape[0],), longest - 1, np.int32)

    # ------------------------------------------------------------------ rollout

    def rollout(self, state: rl.RLState, prompt_ids: np.ndarray, prompt_mask: np.ndarray,
                stop: Callable[[], bool] | None = None):
        """All rollouts of one prompt batch, before any update: (state, [Rollout]); None when `stop()` turned True
        between micro-batches (the caller keeps the state it passed in, which this function never modifies)."""
        micro: list[rl.Rollout] = []
        critics = {role.name: role.critic(state).params for role in self.cfg.critics}
        chunk = self.train_batch_size // jax.process_count()  # this host's rows of each rollout micro-batch
        window = state.cost_window
        rng = state.rng
        self.last_generate_seconds = 0.0
        sampler_params = None
        for lo in range(0, prompt_ids.shape[0], chunk):
            ids, mask = prompt_ids[lo:lo + chunk], prompt_mask[lo:lo + chunk]
            for _ in range(self.gen.num_return_sequences):
                if stop is not None and stop():
                    return None
                rng, key = jax.random.split(rng)
                t0 = time.perf_counter()
                if sampler_params is None:
                    sampler_params = self.sampler_params(state.actor.params)
                seq, seq_mask, start = self.sample(sampler_params, ids, mask, key)
                self.last_generate_seconds += time.perf_counter() - t0
                seq_dev, mask_dev, start_dev = self._place(seq, seq_mask, start)
                scorer_inputs = {name: self._place(*retokenize(seq, seq_mask))
                                 for name, retokenize in self.retokenizers.items()}
                # the first micro-batch is updated first, from the parameters that generated it: its rl_step
                # computes the actor log-probs and critic values in its own forward (see rl.make_rl_step); the
                # critic-free modes need every rollout's log-probs before the group advantages
                policy = bool(micro) or self.cfg.critic_free
                scored, window = self._score(policy, state.actor.params, self.frozen, critics, window, seq_dev,
                                             mask_dev, start_dev, scorer_inputs or None)
                micro.append(scored)
        if self.cfg.critic_free:
            micro = self._with_group_advantages(micro)
        return state.replace(rng=rng, cost_window=window), micro

    def _with_group_advantages(self, micro: list[rl.Rollout]) -> list[rl.Rollout]:
        """Group advantages over each chunk's G rollouts (return order), computed once per prompt batch."""
        g = self.gen.num_return_sequences
        if "groups" not in self._programs:
            self._programs["groups"] = jax.jit(rl.make_group_advantages(self.cfg))
        out = []
        for lo in range(0, len(micro), g):
            group = micro[lo:lo + g]
            widths = {r.seq.shape[1] for r in group}
            if len(widths) > 1:
                raise ValueError("the rollouts of one group must share a width (set generation.length_buckets=())")
            stack = lambda get: jnp.stack([get(r) for r in group])  # noqa: E731
            costs = stack(lambda r: r.cost) if self.cfg.uses_cost else None
            a_r, a_c = self._programs["groups"](stack(lambda r: r.reward), costs, stack(rl.sequence_kl))
            out += [r.replace(reward_advantage=a_r[i], cost_advantage=None if a_c is None else a_c[i])
                    for i, r in enumerate(group)]
        return out

    # ------------------------------------------------------------------ update

    def update(self, state: rl.RLState, micro: list[rl.Rollout], ptx: Sequence[dict] | None = None):
        """`update_iters` passes of one rl_step per rollout micro-batch; `ptx[i]` (placed) pairs with micro[i] on
        every pass (spec §3.15). Returns (state, per-step device metrics)."""
        metrics = []
        micro = list(micro)
        for epoch in range(self.update_iters):
            for i, batch in enumerate(micro):
                fresh = epoch == 0 and i == 0 and not self.cfg.critic_free
                state, m, scored = self._step(fresh, state, batch, ptx[i] if ptx else None)
                if fresh:  # later passes reuse these old log-probs and values
                    micro[0] = scored
                metrics.append(m)
        return state, metrics

    def iteration(self, state: rl.RLState, prompt_ids, prompt_mask, ptx: Sequence[dict] | None = None,
                  stop: Callable[[], bool] | None = None):
        """One RL iteration (spec §1.3): (state, host metric rows), or None if `stop()` ended the rollout early."""
        t0 = time.perf_counter()
        result = self.rollout(state, np.asarray(prompt_ids), np.asarray(prompt_mask), stop)
        if result is None:
            return None
        state, micro = result
        rollout_seconds = time.perf_counter() - t0
        if ptx is not None and self.mesh is not None:
            ptx = [mesh_lib.put_local_batch(p, self.mesh) for p in ptx]
        state, metrics = self.update(state, micro, ptx)
        rows = []
        for m in mesh_lib.to_host(metrics):  # one transfer for the whole iteration
            rows.append({"step": int(m.pop("train/global_step")), **{k: float(v) for k, v in m.items()},
                         "time/rollout_seconds": rollout_seconds,
                         "time/generate_seconds": self.last_generate_seconds,
                         "time/update_seconds": time.perf_counter() - t0 - rollout_seconds})
        return state, rows

    # ------------------------------------------------------------------ evaluation

    def _eval_scores(self, seq, mask, scorer_inputs):
        key = ("eval_score", scorer_inputs is not None)
        if key not in self._programs:
            def fn(frozen, seq, mask, scorer_inputs):
                scorer_inputs = scorer_inputs or {}
                out = {"reward": self.reward_fn(frozen["reward"], *scorer_inputs.get("reward", (seq, mask)))}
                if self.cfg.uses_cost:
                    out["cost"] = self.cost_fn(frozen["cost"], *scorer_inputs.get("cost", (seq, mask)))
                return out
            self._programs[key] = jax.jit(fn)
        return self._programs[key](self.frozen, seq, mask, scorer_inputs)

    def evaluate(self, params, batches, key, sampling: dict) -> dict[str, np.ndarray]:
        """Generate for every eval prompt batch (this host's rows of each) and score with R (and C): per-example
        arrays {'reward', ['cost'], 'length', 'seq', 'mask', 'start'} over all hosts' valid rows."""
        parts: dict[str, list] = {}
        params = self.sampler_params(params)
        for batch in batches:
            key, sub = jax.random.split(key)
            valid = batch.pop("valid")
            seq, seq_mask, start = self.sample(params, batch["input_ids"], batch["attention_mask"], sub, **sampling)
            scorer_inputs = {name: self._place(*retokenize(seq, seq_mask))
                             for name, retokenize in self.retokenizers.items()}
            seq_dev, mask_dev, valid_dev = self._place(seq, seq_mask, valid)
            scores = self._eval_scores(seq_dev, mask_dev, scorer_inputs or None)
            host = mesh_lib.to_host({**scores, "seq": seq_dev, "mask": mask_dev, "valid": valid_dev})
            keep = host.pop("valid").astype(bool)
            host["start"] = np.full((keep.size,), start[0])
            host["length"] = host["mask"][:, start[0] + 1:].sum(axis=1)
            for k, v in host.items():
                parts.setdefault(k, []).append(np.asarray(v)[keep])
        width = max(p.shape[1] for p in parts["seq"])  # rows of different widths: right-pad to one
        for k in ("seq", "mask"):
            parts[k] = [np.pad(p, ((0, 0), (0, width - p.shape[1]))) for p in parts[k]]
        return {k: np.concatenate(v) for k, v in parts.items()}



__all__ = ["RLRunner", "make_retokenizer", "strip_left_padding"]
