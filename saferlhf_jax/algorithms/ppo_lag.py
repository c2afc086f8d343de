"""PPO-Lagrangian (Safe RLHF) — and plain PPO and the reward-shaping baseline, which reuse its pieces.

One RL iteration (spec §1.3), top to bottom:
  1. rollout: for each micro-batch of the prompt batch and each return index, sample responses with a fresh PRNG key
     (budget: max_length − the micro-batch's longest prompt) and score them (reference log-probs, R and C; actor
     log-probs and critic values except for the first micro-batch, whose update computes them itself); every C goes
     into the per-shard episode-cost window of the state;
  2. update: `update_iters` passes over the rollout micro-batches, each one `rl_step` (λ update → KL shaping →
     two GAEs → PPO actor update (+ PTX, the same PTX micro-batches on every pass) → clipped critic updates).

`run(cfg)` is the CLI job on the shared run skeleton (`saferlhf_jax.training.run`): resumable, preemption-safe,
evaluated on `eval_datasets` every `train.eval_every` iterations and at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from saferlhf_jax.algorithms import constraints as constraints_lib
from saferlhf_jax.algorithms import rl
from saferlhf_jax.errors import ConfigError, TrainingError
from saferlhf_jax.generation import generate
from saferlhf_jax.generation.sampler import DEFAULT_BUCKETS, bucket_length
from saferlhf_jax.models.api import rollout_layout
from saferlhf_jax.parallel import mesh as mesh_lib
from saferlhf_jax.training import optim

log = logging.getLogger(__name__)


def _postfix(value: float) -> str:
    """A progress-bar number: 3 significant digits; a PID λ of 0, stored as log 1e-30 and read back as exp of it
    (≈ 1e-30, not exactly), shows as 0."""
    return "0" if abs(value) < 1e3 * rl.PID_LAMBDA_FLOOR else f"{value:.3g}"


CURVES = ("train/reward", "train/cost", "train/lambda", "train/episode_cost", "train/kl_divergence",
          "train/mean_generated_length")


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Rollout sampling (spec §5.3: total max_length, top_k 50 by default)."""

    max_length: int = 512
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1
    eos_token_ids: tuple[int, ...] | None = None
    pad_token_id: int | None = None
    unk_token_id: int | None = None
    prompt_buckets: tuple[int, ...] = ()   # prompt widths the sampler compiles for (() = powers of two)
    length_buckets: tuple[int, ...] = ()   # rollout widths (() = max_length only: one compiled step)
    rollout_layout: str = "fused_out_in"   # sample from fused q|k|v and gate|up kernels (`Model.rollout_as`)
    prefill_chunk: int = 512               # prompts wider than this are prefilled in chunks (0: one pass)
    decode_segment: int = 32               # the decode loop's cache grows this many slots at a time (0: whole)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-5
    lr_scheduler_type: str = "cosine"
    lr_warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0


def make_retokenizer(actor_tokenizer, scorer_tokenizer, max_length: int):
    """Actor sequences → a scorer's ids (spec §1.2): decode with special tokens skipped, append the scorer's EOS
    string, re-tokenize (BOS added, no truncation), right-pad to a power-of-two bucket. Host-side, per rollout."""
    from saferlhf_jax.data import default_buckets, pick_bucket

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
                 frozen: dict, cfg: rl.RLConfig, gen: GenerationConfig, actor_optim: OptimConfig,
                 critic_optim: OptimConfig, total_rl_steps: int, train_batch_size: int, update_iters: int = 1,
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
        actor_opt, actor_schedule = optim.make_optimizer(
            actor_optim.learning_rate, max(1, total_rl_steps), schedule_type=actor_optim.lr_scheduler_type,
            warmup_ratio=actor_optim.lr_warmup_ratio, weight_decay=actor_optim.weight_decay,
            max_grad_norm=actor_optim.max_grad_norm)
        critic_opt, critic_schedule = optim.make_optimizer(
            critic_optim.learning_rate, max(1, total_rl_steps), schedule_type=critic_optim.lr_scheduler_type,
            warmup_ratio=critic_optim.lr_warmup_ratio, weight_decay=critic_optim.weight_decay,
            max_grad_norm=critic_optim.max_grad_norm)
        # logits_chunk > 0: log-probs projected to the vocabulary in chunks (no float32 (B, L, V) logits)
        log_probs = functools.partial(actor.label_log_probs, chunk=int(logits_chunk))
        self.optimizer_memory = optimizer_memory  # 'pinned_host': optimizer state offloaded between updates
        # LoRA (METHODS_BEYOND §4): the actor trains adapters over its frozen base, which is also the reference
        # (frozen['ref'] must be those very parameters: no second copy)
        self.lora_scale, self.adapters, self.actor_base = 0.0, None, None
        if lora_rank:
            from saferlhf_jax.models import lora

            self.lora_scale = lora.scale(lora_alpha, lora_rank)
            self.adapters = lora.init(actor.params, lora_rank, tuple(lora_targets) or lora.DEFAULT_TARGETS,
                                      init=lora_init)
            self.actor_base = frozen["ref"]
        critic_lora_scale = 0.0
        if lora_rank and lora_critics:
            from saferlhf_jax.models import lora

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
        if gen.rollout_layout != "none" and tensor == 1:
            self.sampler_model, self._to_rollout_layout = actor.rollout_as(gen.rollout_layout)
        self.last_generate_seconds = 0.0  # host seconds in the sampler during the last rollout (it returns numpy)

    # ------------------------------------------------------------------ state

    def init_state(self, seed: int, donate: bool = False) -> rl.RLState:
        """The initial RLState, laid out from its abstract shape and born sharded (training/state.py); donate=True
        hands the models' parameter buffers to the state (no second copy at scale)."""
        from saferlhf_jax import models
        from saferlhf_jax.training import state as state_lib

        def init(actor_params, reward_params, cost_params):
            return rl.init_state(self.models, actor_params, reward_params, cost_params, seed, self.data_shards)

        axes = [models.param_logical_axes(m.config, m.kind) for m in (self.actor, self.reward_critic)
                if m is not None]
        rules = getattr(self.actor, "rules", None)
        actor_params = self.actor.params
        if self.lora_scale:  # the state holds the adapters, each sharded like its kernel (critics' alike: same paths)
            from saferlhf_jax.models import lora

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
            from saferlhf_jax.models import lora

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
        critics = {name: getattr(state, f"{name}_critic").params for name in self.cfg.critics}
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


# ---------------------------------------------------------------------------------------------------- CLI job


def _layout(value) -> str:
    try:
        return rollout_layout(value)
    except ValueError as e:
        raise ConfigError(f"generation.{e}") from None


def rl_config(cfg) -> rl.RLConfig:
    r = cfg.rl
    try:
        return rl.RLConfig(
            mode=cfg.mode, kl_coeff=float(r.kl_coeff), clip_range_ratio=float(r.clip_range_ratio),
            clip_range_score=float(r.clip_range_score), clip_range_value=float(r.clip_range_value),
            gamma=float(r.gamma), gae_lambda=float(r.gae_lambda), ptx_coeff=float(r.ptx_coeff),
            threshold=float(r.threshold), lambda_init=float(r.lambda_init), lambda_lr=float(r.lambda_lr),
            lambda_max=float(r.lambda_max) if float(r.lambda_max) > 0 else None,
            lambda_update_delay_steps=int(r.lambda_update_delay_steps),
            lambda_update=str(r.get("lambda_update", rl.RLConfig.lambda_update)),
            lambda_pid=tuple(float(g) for g in r.get("lambda_pid", rl.RLConfig.lambda_pid)),
            episode_cost_window_size=int(r.episode_cost_window_size), whiten_advantages=bool(r.whiten_advantages),
            missing_eos_penalty=float(r.get("missing_eos_penalty", rl.RLConfig.missing_eos_penalty)),
            joint_update=bool(r.get("joint_update", True)),
            group_size=int(cfg.generation.num_return_sequences), **_critic_free_settings(cfg),
            **constraints_lib.rl_fields(constraints_lib.parse(r)))
    except ValueError as err:
        raise ConfigError(f"rl: {err}") from None


def _critic_free_settings(cfg) -> dict:
    """The `grpo` section of a critic-free config (configs/grpo_lag.py) as RLConfig fields."""
    g = cfg.get("grpo")
    if g is None:
        return {}
    return dict(advantage_estimator=str(g.advantage), group_eps=float(g.eps), kl_mode=str(g.kl_mode),
                kl_loss_coeff=float(g.kl_loss_coeff), aggregation=str(g.aggregation),
                loss_normalizer=float(g.loss_normalizer))


def validate(cfg, mesh) -> None:
    """Batch arithmetic and value ranges, as one-line errors before anything loads."""
    t = cfg.train
    prompt_bs, train_bs = int(t.prompt_batch_size), int(t.train_batch_size)
    nrs = int(cfg.generation.num_return_sequences)
    div = mesh_lib.batch_divisor(mesh)
    if min(prompt_bs, train_bs, nrs, int(t.update_iters)) < 1:
        raise ConfigError("train.prompt_batch_size, train.train_batch_size, generation.num_return_sequences and "
                          "train.update_iters must be ≥ 1")
    if int(t.max_steps) <= 0 and int(t.epochs) < 1:  # else 0 iterations: the SFT actor exported as the result
        raise ConfigError(f"train.epochs must be ≥ 1 when train.max_steps is not set, got {t.epochs}")
    if prompt_bs % train_bs:
        raise ConfigError(f"train.prompt_batch_size={prompt_bs} must be a multiple of train.train_batch_size="
                          f"{train_bs}")
    if train_bs % div:
        raise ConfigError(f"train.train_batch_size={train_bs} must be a multiple of the data axes data×fsdp={div}")
    hosts = jax.process_count()
    if train_bs % hosts:
        raise ConfigError(f"train.train_batch_size={train_bs} must be a multiple of the {hosts} hosts")
    for who in ("actor", "critic"):
        optim.validate(cfg[who], who)
    g = cfg.generation
    if int(g.max_length) < 2 or int(cfg.data.min_response_length) < 1:
        raise ConfigError("generation.max_length must be ≥ 2 and data.min_response_length ≥ 1")
    if int(cfg.data.min_response_length) >= int(g.max_length):
        raise ConfigError(f"data.min_response_length={cfg.data.min_response_length} leaves no room for a prompt "
                          f"under generation.max_length={g.max_length}")
    from saferlhf_jax.training.state import OPTIMIZER_MEMORY

    if str(cfg.model.get("optimizer_memory", "device")) not in OPTIMIZER_MEMORY:
        raise ConfigError(f"model.optimizer_memory must be one of {OPTIMIZER_MEMORY}")
    if (float(g.temperature) < 0 or not 0 < float(g.top_p) <= 1 or int(g.top_k) < 0
            or not float(g.repetition_penalty) > 0):
        raise ConfigError("generation: temperature must be ≥ 0, top_p in (0, 1], top_k ≥ 0, repetition_penalty > 0")
    eval_bs = int(t.eval_batch_size)
    if cfg.get("eval_datasets") and (eval_bs < 1 or eval_bs % div or eval_bs % hosts):
        raise ConfigError(f"train.eval_batch_size={eval_bs} must be a positive multiple of data×fsdp={div} and of "
                          f"the {hosts} hosts")


def build_prompts(cfg, entries, tokenizer, source):
    """Prompt-only dataset: right-truncated to data.max_prompt_length (0 = generation.max_length, spec §2.5), then
    every prompt that leaves less than data.min_response_length tokens to answer is dropped and counted."""
    from saferlhf_jax import data as data_lib

    max_length = int(cfg.generation.max_length)
    truncate = int(cfg.data.max_prompt_length) or max_length
    template = data_lib.make_template(str(cfg.data.get("template", "pku")), tokenizer)
    dataset = data_lib.build_dataset("prompt_only", data_lib.load_mix(list(entries), source), tokenizer, truncate,
                                     template)
    room = max_length - int(cfg.data.min_response_length)
    return data_lib.drop_long_prompts(dataset, room, f"generation.max_length={max_length} − "
                                                     f"data.min_response_length={cfg.data.min_response_length}")


def _load_models(cfg, rl_cfg, tokenizer, mesh, rules=None):
    """(actor, reward critic, cost critic | None, frozen params, reward_fn, cost_fn | None)."""
    from saferlhf_jax import models

    kw = dict(mesh=mesh, rules=rules, dtype=jnp.dtype(cfg.model.param_dtype), compute_dtype=cfg.model.dtype,
              remat_policy=cfg.model.remat_policy, scan_layers=bool(cfg.model.scan_layers))
    # the frozen reference, reward and cost models are held in model.frozen_dtype (bf16 halves them at scale)
    frozen_dtype = jnp.dtype(cfg.model.get("frozen_dtype", "float32"))
    lora_rank = int(cfg.get("lora", {}).get("rank", 0))
    frozen_kw = dict(kw, dtype=frozen_dtype)
    new_head = bool(cfg.get("allow_new_head", False))
    actor = models.load_causal_lm(cfg.actor_model_name_or_path, **kw)
    if len(tokenizer) > actor.config.vocab_size:
        actor, actor.params = models.resize_token_embeddings(actor, actor.params, len(tokenizer))
    critics = rl_cfg.critics
    # always a copy (the actor's parameters are donated to every update), cast when bf16
    reference = jax.tree.map(lambda x: jnp.array(x, dtype=frozen_dtype, copy=True), actor.params)
    if lora_rank:  # LoRA: the reference is the actor's frozen base itself (the state holds adapters only), held
        # in frozen_dtype like every frozen model (a cast only when the dtypes differ)
        reference = jax.tree.map(lambda x: x if x.dtype == frozen_dtype or not jnp.issubdtype(x.dtype, jnp.floating)
                                 else x.astype(frozen_dtype), actor.params)
    # normalize_reward / normalize_cost override the checkpoint's do_normalize, as the reference (default off)
    reward_model = models.load_score_model(cfg.reward_model_name_or_path, do_normalize=bool(cfg.rl.normalize_reward),
                                           require_head=not new_head, **frozen_kw)
    reward_critic = None
    if "reward" in critics:
        critic_path = cfg.get("reward_critic_model_name_or_path") or cfg.reward_model_name_or_path
        reward_critic = models.load_score_model(critic_path, score_type="critic", do_normalize=False, **kw)
    frozen = {"ref": reference, "reward": reward_model.params}
    reward_fn = rl.score_model_end_fn(reward_model.apply)
    cost_fn, cost_critic = None, None
    several = constraints_lib.parse(cfg.rl)
    if several:
        cost_fn, frozen["cost"], cost_critic = _load_constraint_models(cfg, rl_cfg, several, kw, frozen_kw)
    elif rl_cfg.uses_cost:
        cost_model = models.load_score_model(cfg.cost_model_name_or_path, do_normalize=bool(cfg.rl.normalize_cost),
                                             require_head=not new_head, **frozen_kw)
        frozen["cost"] = cost_model.params
        cost_fn = rl.score_model_end_fn(cost_model.apply)
        if rl_cfg.cost_critic:
            cc_path = cfg.get("cost_critic_model_name_or_path") or cfg.cost_model_name_or_path
            cost_critic = models.load_score_model(cc_path, score_type="critic", do_normalize=False, **kw)
    return actor, reward_critic, cost_critic, frozen, reward_fn, cost_fn


def _load_constraint_models(cfg, rl_cfg, several, kw, frozen_kw):
    """K constraints (METHODS_BEYOND §3): (cost_fn → (B, K), {model: frozen params}, K-output cost critic | None).
    Each model of rl.cost_models that a constraint reads is loaded once; the cost critic's backbone is
    cost_critic_model_name_or_path (default: the model of constraint 0) and its head has one row per constraint."""
    from saferlhf_jax import models

    paths = dict(cfg.rl.cost_models)
    loaded = {}
    for name in dict.fromkeys(c.model for c in several):
        loaded[name] = models.load_score_model(paths[name], do_normalize=bool(cfg.rl.normalize_cost),
                                               require_head=True, **frozen_kw)
    dims = {name: m.config.score_dim for name, m in loaded.items()}
    cost_fn = constraints_lib.make_cost_fn({n: m.apply for n, m in loaded.items()}, dims, several)
    critic = None
    if rl_cfg.cost_critic:
        source = several[0].model
        path = cfg.get("cost_critic_model_name_or_path") or paths[source]
        critic = models.load_score_model(path, score_type="critic", do_normalize=False, **kw)
        head = mesh_lib.to_host(critic.params["score_head"])
        kernel, bias = constraints_lib.critic_head(head["kernel"], head.get("bias"), several,
                                                   source if path == paths[source] else "",
                                                   critic.config.initializer_range, int(cfg.seed))
        critic = models.replace_score_head(critic, kernel, bias)
    return cost_fn, {n: m.params for n, m in loaded.items()}, critic


def _lora_kwargs(cfg) -> dict:
    """RLRunner's LoRA arguments from the config's `lora` section (rank 0: full fine-tuning of the actor;
    lora.critics: the critics too, each over the frozen scoring model it starts from)."""
    from saferlhf_jax.training.trainer import lora_settings

    rank, _ = lora_settings(cfg)  # the supervised stages' checks (rank, alpha, init): one set of one-line errors
    if not rank:
        return {}
    section = cfg.lora
    out = dict(lora_rank=int(section.rank), lora_alpha=float(section.alpha), lora_targets=tuple(section.targets),
               lora_init=str(section.init))
    if bool(section.get("critics", False)):
        several = constraints_lib.parse(cfg.rl)
        scorer = {"reward": cfg.reward_model_name_or_path,
                  "cost": dict(cfg.rl.cost_models)[several[0].model] if several else cfg.get("cost_model_name_or_path")}
        for name, path in scorer.items():
            own = cfg.get(f"{name}_critic_model_name_or_path")
            if own and own != path:  # a critic from another checkpoint would need a second frozen backbone
                raise ConfigError(f"lora.critics: the {name} critic's base is the {name} model ({path}) itself; "
                                  f"{name}_critic_model_name_or_path={own} needs its own weights (unset it, or set "
                                  "lora.critics=False)")
        out.update(lora_critics=True, cost_base_key=several[0].model if several else "")
    return out


def _eval_sampling(cfg, actor_dir) -> dict:
    """RL evaluation samples with the actor's own generation_config.json (spec §5.1, §5.3) unless the config's
    `eval_generation` entries are set."""
    from saferlhf_jax.generation import model_sampling_defaults

    sampling = model_sampling_defaults(actor_dir)
    for k, v in cfg.eval_generation.items():
        if v is not None:
            sampling[k] = v
    return sampling


def _eval_page(result: dict, tokenizer, n: int = 8) -> list[str]:
    """A markdown table of the first `n` evaluation answers with their scores."""
    lines = ["| prompt | answer | reward | cost |", "|---|---|---|---|"]
    for i in range(min(n, len(result["reward"]))):
        start = int(result["start"][i]) + 1
        row, mask = result["seq"][i], result["mask"][i].astype(bool)
        prompt = tokenizer.decode(row[:start][mask[:start]], skip_special_tokens=True)
        answer = tokenizer.decode(row[start:][mask[start:]], skip_special_tokens=True)
        cell = lambda s: " ".join(s.split()).replace("|", "\\|")[:200]  # noqa: E731
        cost = ", ".join(f"{c:.3f}" for c in np.ravel(result["cost"][i])) if "cost" in result else "–"
        lines.append(f"| {cell(prompt)} | {cell(answer)} | {result['reward'][i]:.3f} | {cost} |")
    return lines


def eval_metrics(result: dict, constraint_names: tuple[str, ...] = ()) -> dict[str, float]:
    """Mean reward, length and cost (per constraint with K of them: eval/cost/<name>; 'unsafe' ⇔ cost > 0 for a
    cost model, > ½ for a moderation probability is read off the threshold, not here)."""
    out = {"eval/reward": float(np.mean(result["reward"])),
           "eval/reward_std": float(np.std(result["reward"], ddof=1)) if result["reward"].size > 1 else 0.0,
           "eval/mean_length": float(np.mean(result["length"])), "eval/prompts": int(result["reward"].size)}
    if "cost" in result and constraint_names:
        out.update({f"eval/cost/{n}": float(np.mean(result["cost"][:, k])) for k, n in enumerate(constraint_names)})
    elif "cost" in result:
        out.update({"eval/cost": float(np.mean(result["cost"])),
                    "eval/unsafe_rate": float(np.mean(result["cost"] > 0))})
    return out


def run(cfg) -> dict[str, Any]:
    """Run (or resume) a PPO / PPO-Lag / reward-shaping job from an ml_collections config."""
    from saferlhf_jax import data as data_lib
    from saferlhf_jax import models
    from saferlhf_jax.data.tokenizer import load_tokenizer
    from saferlhf_jax.training.run import Run, assert_finite
    from saferlhf_jax.training.trainer import export_adapter, wants_adapter_export

    rl_cfg = rl_config(cfg)
    with Run(cfg, cfg.mode, validate=validate) as run_dir:
        mesh = run_dir.mesh
        t = cfg.train
        prompt_bs, train_bs = int(t.prompt_batch_size), int(t.train_batch_size)
        nrs = int(cfg.generation.num_return_sequences)
        hosts = jax.process_count()

        tokenizer = load_tokenizer(cfg.actor_model_name_or_path)
        if rl_cfg.missing_eos_penalty and tokenizer.eos_token_id is None:
            raise ConfigError("rl.missing_eos_penalty needs the actor's tokenizer to have an EOS token")
        retokenizers = {}
        for path in {dict(cfg.rl.cost_models)[c.model] for c in constraints_lib.parse(cfg.rl)}:
            if load_tokenizer(path).get_vocab() != tokenizer.get_vocab():
                raise ConfigError(f"rl.cost_models: {path} has its own tokenizer; with rl.constraints every cost "
                                  "model must share the actor's tokenizer")
        for scorer, name in (("reward", "reward_model_name_or_path"), ("cost", "cost_model_name_or_path")):
            path = cfg.get(name)
            if path and (scorer == "reward" or (rl_cfg.uses_cost and not rl_cfg.num_constraints)):
                other = load_tokenizer(path)
                if other.get_vocab() != tokenizer.get_vocab():
                    log.info("%s model %s has its own tokenizer: rollouts are re-tokenized for it", scorer, path)
                    retokenizers[scorer] = make_retokenizer(tokenizer, other, int(cfg.generation.max_length))
        source = cfg.data.get("source")
        prompts = build_prompts(cfg, cfg.train_datasets, tokenizer, source)
        per_host = dict(num_shards=hosts, shard_index=jax.process_index())  # each host reads its rows of a batch
        buckets = tuple(cfg.data.prompt_buckets) or None
        try:
            prompt_iter = data_lib.BatchIterator(prompts, prompt_bs, seed=int(cfg.seed), buckets=buckets,
                                                 drop_last=False, **per_host)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        eval_prompts = None
        if cfg.get("eval_datasets"):
            eval_prompts = build_prompts(cfg, cfg.eval_datasets, tokenizer, source)
        ptx_iter = None
        if rl_cfg.ptx_coeff > 0 and cfg.get("ptx_datasets"):
            ptx_ds = data_lib.build_dataset("supervised", data_lib.load_mix(list(cfg.ptx_datasets), source),
                                            tokenizer, int(cfg.generation.max_length))
            ptx_iter = data_lib.BatchIterator(ptx_ds, train_bs, seed=int(cfg.seed),
                                              buckets=(int(cfg.generation.max_length),), **per_host)

        actor, reward_critic, cost_critic, frozen, reward_fn, cost_fn = _load_models(cfg, rl_cfg, tokenizer, mesh,
                                                                                      run_dir.rules)
        iterations = int(t.max_steps) if int(t.max_steps) > 0 else int(t.epochs) * prompt_iter.batches_per_epoch
        micro_per_iter = prompt_bs * nrs // train_bs
        total_rl_steps = iterations * micro_per_iter * int(t.update_iters)
        g = cfg.generation
        gen = GenerationConfig(
            max_length=int(g.max_length), temperature=float(g.temperature), top_k=int(g.top_k),
            top_p=float(g.top_p), repetition_penalty=float(g.repetition_penalty), num_return_sequences=nrs,
            eos_token_ids=(tokenizer.eos_token_id,), pad_token_id=tokenizer.pad_token_id,
            unk_token_id=tokenizer.unk_token_id, prompt_buckets=tuple(int(b) for b in cfg.data.prompt_buckets),
            length_buckets=tuple(int(b) for b in g.get("length_buckets", ())),
            rollout_layout=_layout(g.get("rollout_layout", True)), prefill_chunk=int(g.get("prefill_chunk", 512)),
            decode_segment=int(g.get("decode_segment", 32)))
        optims = {who: OptimConfig(learning_rate=float(cfg[who].learning_rate),
                                   lr_scheduler_type=cfg[who].lr_scheduler_type,
                                   lr_warmup_ratio=float(cfg[who].lr_warmup_ratio),
                                   weight_decay=float(cfg[who].weight_decay),
                                   max_grad_norm=float(cfg[who].max_grad_norm)) for who in ("actor", "critic")}
        runner = RLRunner(actor=actor, reward_critic=reward_critic, cost_critic=cost_critic, reward_fn=reward_fn,
                          cost_fn=cost_fn, frozen=frozen, cfg=rl_cfg, gen=gen, actor_optim=optims["actor"],
                          critic_optim=optims["critic"], total_rl_steps=total_rl_steps, train_batch_size=train_bs,
                          update_iters=int(t.update_iters), mesh=mesh, retokenizers=retokenizers,
                          logits_chunk=int(cfg.model.get("logits_chunk", 0)),
                          optimizer_memory=str(cfg.model.get("optimizer_memory", "device")),
                          **_lora_kwargs(cfg))
        state = runner.init_state(int(cfg.seed), donate=True)
        for owned in (actor, reward_critic, cost_critic):  # the state owns their parameters now
            if owned is not None:
                owned.params = None

        iteration = 0
        if run_dir.resuming:
            state, meta = run_dir.restore(state)
            prompt_iter.load_state_dict(meta["prompts"])
            if ptx_iter is not None and meta.get("ptx"):
                ptx_iter.load_state_dict(meta["ptx"])
            iteration = int(meta["iteration"])

        def data_position():
            return {"prompts": prompt_iter.state_dict(),
                    "ptx": ptx_iter.state_dict() if ptx_iter is not None else None}

        def save(it, state, position):
            run_dir.save(it, state, {"iteration": it, **position,
                                     "metrics_step": int(mesh_lib.to_host(state.global_step))})

        eval_rows: list[dict] = []
        eval_every = int(t.get("eval_every", 0))
        sampling = _eval_sampling(cfg, cfg.actor_model_name_or_path) if eval_prompts is not None else {}

        def evaluate(it, state):
            if eval_prompts is None:
                return None
            batches = []
            per = int(t.eval_batch_size) // hosts
            for batch in data_lib.iterate_once(eval_prompts, int(t.eval_batch_size), buckets):
                lo = jax.process_index() * per
                batches.append({k: v[lo:lo + per] for k, v in batch.items()})
            key = jax.random.fold_in(jax.random.PRNGKey(int(cfg.seed)), 1_000_003 + it)  # never the training rng
            result = runner.evaluate(state.actor.params, batches, key, sampling)
            row = {"step": int(mesh_lib.to_host(state.global_step)), "iteration": it,
                   **eval_metrics(result, rl_cfg.constraints)}
            run_dir.log(row)
            eval_rows.append(row)
            return result

        from tqdm.auto import tqdm

        progress = tqdm(total=iterations, initial=iteration, desc=cfg.mode, unit="iter", dynamic_ncols=True,
                        disable=not bool(cfg.logging.get("progress", True)))
        history: list[dict] = []
        ckpt_every, stop_after = int(cfg.checkpoint.every), int(t.get("stop_after_steps", 0))
        max_skipped = float(t.get("max_skipped_fraction", 0.1))
        last_eval = None
        if iteration == 0 and eval_prompts is not None and bool(t.get("eval_at_start", True)):
            last_eval = evaluate(0, state)
        try:
            with run_dir.guard() as guard:
                while iteration < iterations:
                    before = data_position()
                    batch = next(prompt_iter)
                    ptx = [next(ptx_iter) for _ in range(micro_per_iter)] if ptx_iter is not None else None
                    result = runner.iteration(state, batch["input_ids"], batch["attention_mask"], ptx,
                                              stop=guard.requested)
                    if result is None:  # interrupted mid-rollout: save the last completed iteration and its data
                        save(iteration, state, before)
                        raise run_dir.interrupted(guard, int(mesh_lib.to_host(state.global_step)))
                    state, rows = result
                    for row in rows:
                        run_dir.log(row)
                    history.extend(rows)
                    iteration += 1
                    last = rows[-1]
                    progress.set_postfix({k.split("/")[1]: _postfix(last[k]) for k in
                                          ("train/reward", "train/cost", "train/lambda") if k in last})
                    progress.update(1)
                    if eval_every and iteration % eval_every == 0 and iteration < iterations:
                        last_eval = evaluate(iteration, state)
                    skipped, steps = int(last["train/skipped_updates"]), int(last["step"])
                    if skipped >= 3 and skipped > max_skipped * steps:
                        raise TrainingError(f"{skipped} of {steps} RL updates were non-finite and skipped (more than "
                                            f"train.max_skipped_fraction={max_skipped}); stopping without an export "
                                            "— lower the learning rates or check the reward/cost models")
                    stop_now = guard.requested()
                    if (ckpt_every and iteration % ckpt_every == 0) or iteration == iterations or stop_now or (
                            stop_after and iteration >= stop_after):
                        save(iteration, state, data_position())
                    if stop_now:
                        raise run_dir.interrupted(guard, steps)
                    if stop_after and iteration >= stop_after and iteration < iterations:
                        log.info("stopping after %d iterations as configured (train.stop_after_steps)", iteration)
                        break
        finally:
            progress.close()

        complete = iteration >= iterations
        steps = int(mesh_lib.to_host(state.global_step))
        skipped = int(mesh_lib.to_host(state.skipped))
        if complete and skipped > max_skipped * max(steps, 1):
            raise TrainingError(f"{skipped} of {steps} RL updates were non-finite and skipped (more than "
                                f"train.max_skipped_fraction={max_skipped}); no export was written")
        if complete and eval_prompts is not None:
            last_eval = evaluate(iteration, state)
        summary = {"mode": cfg.mode, "iterations": iteration, "total_iterations": iterations, "rl_steps": steps,
                   "skipped_updates": skipped, "last": history[-1] if history else {},
                   "eval": {k: v for k, v in (eval_rows[-1] if eval_rows else {}).items() if k.startswith("eval/")},
                   "prompts": len(prompts), "prompt_counts": prompts.counts}
        if last_eval is not None and jax.process_index() == 0:
            summary["eval_samples"] = _eval_page(last_eval, tokenizer)

        def export(directory):
            # every process takes part in the gather; one writes (LoRA: merged into plain HF weights, and with
            # lora.export='both' the adapters in PEFT's format in export/adapter)
            params = mesh_lib.to_host(runner.merged_actor(state.actor.params))
            adapters = mesh_lib.to_host(state.actor.params["lora"]) if runner.lora_scale else None
            assert_finite(params, "the actor")
            if jax.process_index() == 0:
                models.save_pretrained(actor, params, directory, pad_token_id=tokenizer.pad_token_id)
                tokenizer.save_pretrained(str(directory))
                if adapters is not None and wants_adapter_export(cfg, "causal_lm"):
                    export_adapter(actor, params, adapters, cfg, cfg.actor_model_name_or_path, directory, tokenizer)

        per_constraint = tuple(f"train/{k}/{n}" for k in ("cost", "lambda", "episode_cost") for n in rl_cfg.constraints)
        summary = run_dir.finish(summary, complete=complete, export=export,
                                 curves=CURVES + per_constraint + ("eval/reward",),
                                 title=f"{cfg.mode} run")
        summary["state"] = state
        return summary


def print_summary(summary: dict) -> None:
    last = summary.get("last", {})
    keys = ("train/reward", "train/cost", "train/lambda", "train/episode_cost", "train/kl_divergence",
            "train/actor_loss", "train/reward_critic_loss", "train/mean_generated_length")
    print(f"== {summary['mode']}: {summary['iterations']}/{summary['total_iterations']} iterations, "
          f"{summary['rl_steps']} rl steps in {summary['seconds']:.1f}s ({summary['prompts']} prompts)")
    keys += tuple(k for k in last if k.count("/") == 2 and k.split("/")[1] in ("cost", "lambda", "episode_cost"))
    print("   last: " + ", ".join(f"{k.split('/', 1)[1]}={last[k]:.4g}" for k in keys if k in last))
    if summary.get("eval"):
        print("   eval: " + ", ".join(f"{k.split('/', 1)[1]}={v:.4g}" for k, v in summary["eval"].items()))
    if summary.get("skipped_updates"):
        print(f"   skipped non-finite updates: {summary['skipped_updates']}")
    print(f"   outputs: {summary['output_dir']} (metrics.jsonl, curves.png, results.md, checkpoints/"
          + (", export/" if summary.get("export") else "") + ")")
