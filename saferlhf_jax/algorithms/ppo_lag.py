"""PPO-Lagrangian (Safe RLHF) — and plain PPO and the reward-shaping baseline, which reuse its pieces.

One RL iteration (spec §1.3), top to bottom:
  1. rollout: for each chunk of the prompt batch and each return index, sample responses with a fresh PRNG key and
     score them (actor and reference log-probs, R and C, reward- and cost-critic values); push every C into the
     episode-cost window;
  2. update: `update_iters` passes over the rollout micro-batches, each one `rl_step` (λ update → KL shaping →
     two GAEs → PPO actor update (+ PTX) → clipped critic updates).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import pathlib
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from saferlhf_jax.algorithms import rl
from saferlhf_jax.generation import generate
from saferlhf_jax.parallel import mesh as mesh_lib
from saferlhf_jax.training import optim

log = logging.getLogger(__name__)


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


class RLRunner:
    """Holds the compiled functions and drives iterations; the state is a plain pytree (checkpointable)."""

    def __init__(self, *, actor, reward_critic, cost_critic, reward_fn: Callable, cost_fn: Callable | None,
                 frozen: dict, cfg: rl.RLConfig, gen: GenerationConfig, actor_optim: OptimConfig,
                 critic_optim: OptimConfig, total_rl_steps: int, train_batch_size: int, update_iters: int = 1,
                 mesh=None, retokenizers: dict | None = None):
        if update_iters < 1:
            raise ValueError(f"update_iters must be ≥ 1, got {update_iters}")
        self.actor, self.reward_critic, self.cost_critic = actor, reward_critic, cost_critic
        self.cfg, self.gen, self.mesh = cfg, gen, mesh
        self.frozen = frozen
        self.train_batch_size, self.update_iters = int(train_batch_size), int(update_iters)
        self.reward_fn, self.cost_fn = reward_fn, cost_fn
        self.retokenizers = retokenizers or {}  # scorer name → host re-tokenizer (foreign tokenizers only)
        self.actor_opt, self.actor_schedule = optim.make_optimizer(
            actor_optim.learning_rate, max(1, total_rl_steps), schedule_type=actor_optim.lr_scheduler_type,
            warmup_ratio=actor_optim.lr_warmup_ratio, weight_decay=actor_optim.weight_decay,
            max_grad_norm=actor_optim.max_grad_norm)
        self.critic_opt, self.critic_schedule = optim.make_optimizer(
            critic_optim.learning_rate, max(1, total_rl_steps), schedule_type=critic_optim.lr_scheduler_type,
            warmup_ratio=critic_optim.lr_warmup_ratio, weight_decay=critic_optim.weight_decay,
            max_grad_norm=critic_optim.max_grad_norm)
        self._programs: dict[tuple, Callable] = {}
        self.cost_window: collections.deque = collections.deque(maxlen=cfg.episode_cost_window_size)

    # ------------------------------------------------------------------ state

    def init_state(self, seed: int):
        state = {
            "actor": rl.init_module_state(self.actor.params, self.actor_opt),
            "reward_critic": rl.init_module_state(self.reward_critic.params, self.critic_opt),
            "log_lambda": jnp.asarray(np.log(self.cfg.lambda_init) if self.cfg.lambda_init > 0 else 0.0, jnp.float32),
            "global_step": jnp.zeros((), jnp.int32),
            "rng": jax.random.PRNGKey(seed),
        }
        if self.cfg.cost_critic:
            state["cost_critic"] = rl.init_module_state(self.cost_critic.params, self.critic_opt)
        return state

    def _jit(self, fn, args, out_shardings, donate=()):
        """jit with explicit in/out shardings read off the (committed) arguments; no mesh: one device, plain jit."""
        if self.mesh is None:
            return jax.jit(fn, donate_argnums=donate)
        return jax.jit(fn, in_shardings=tuple(mesh_lib.shardings_of(a, self.mesh) for a in args),
                       out_shardings=out_shardings, donate_argnums=donate)

    def _place(self, ids: np.ndarray, mask: np.ndarray):
        """This host's (rows, L) ids and mask → device arrays (global, batch-sharded, with a mesh)."""
        if self.mesh is None:
            return jnp.asarray(ids), jnp.asarray(mask)
        placed = mesh_lib.put_local_batch({"ids": ids, "mask": mask}, self.mesh)
        return placed["ids"], placed["mask"]

    def _batch_shardings(self, tree):
        return jax.tree.map(lambda x: mesh_lib.batch_sharding(self.mesh, x.ndim), tree)

    def _score(self, policy: bool, *args):
        """The jitted scoring of one rollout micro-batch (`rl.make_score_rollout`); `policy` is static."""
        key = ("score", policy, args[-1] is not None)
        if key not in self._programs:
            fn = rl.make_score_rollout(self.actor.apply, self.reward_critic.apply, self.reward_fn, self.cost_fn,
                                       self.cfg, policy=policy)
            out = None
            if self.mesh is not None:
                out = self._batch_shardings(jax.eval_shape(fn, *args))
            self._programs[key] = self._jit(fn, args, out)
        return self._programs[key](*args)

    def _step(self, start: int, fresh: bool, *args):
        """The jitted rl_step (`rl.make_rl_step`) for a prompt width and first-pass flag, state donated."""
        key = ("step", start, fresh, args[2] is not None)
        if key not in self._programs:
            fn = rl.make_rl_step(self.actor.apply, self.reward_critic.apply, self.actor_opt, self.critic_opt,
                                 self.actor_schedule, self.critic_schedule, self.cfg, start, fresh)
            out = None
            if self.mesh is not None:
                _, metrics, scores = jax.eval_shape(fn, *args)
                rep = mesh_lib.replicated(self.mesh)
                out = (mesh_lib.shardings_of(args[0], self.mesh), jax.tree.map(lambda _: rep, metrics),
                       self._batch_shardings(scores))
            self._programs[key] = self._jit(fn, args, out, donate=(0,))
        return self._programs[key](*args)

    def episode_cost(self) -> float:
        return float(np.mean(self.cost_window)) if self.cost_window else 0.0

    # ------------------------------------------------------------------ rollout

    def rollout(self, state, prompt_ids: np.ndarray, prompt_mask: np.ndarray):
        """All rollouts of one prompt batch (before any update). Returns (state, micro-batches, start)."""
        g = self.gen
        start = prompt_ids.shape[1] - 1
        micro = []
        critics = {"reward": state["reward_critic"]["params"]}
        if self.cfg.cost_critic:
            critics["cost"] = state["cost_critic"]["params"]
        chunk = self.train_batch_size // jax.process_count()  # this host's rows of each rollout micro-batch
        for lo in range(0, prompt_ids.shape[0], chunk):
            ids, mask = prompt_ids[lo:lo + chunk], prompt_mask[lo:lo + chunk]
            for _ in range(g.num_return_sequences):
                rng, key = jax.random.split(state["rng"])
                state = dict(state, rng=rng)
                out = generate(self.actor, state["actor"]["params"], ids, mask, max_length=g.max_length,
                               temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
                               repetition_penalty=g.repetition_penalty, eos_token_ids=g.eos_token_ids,
                               pad_token_id=g.pad_token_id, rng=key, mesh=self.mesh)
                seq = out["sequences"].astype(np.int32)
                seq_mask = out["attention_mask"].astype(bool)
                if g.unk_token_id is not None:
                    seq_mask &= seq != g.unk_token_id  # rollout mask: ≠ pad ∧ ≠ unk (spec §2.2)
                seq_dev, mask_dev = self._place(seq, seq_mask)
                scorer_inputs = {name: self._place(*retokenize(seq, seq_mask))
                                 for name, retokenize in self.retokenizers.items()}
                # the first micro-batch is updated first, from the parameters that generated it: its rl_step
                # computes the actor log-probs and critic values in its own forward (see rl.make_rl_step)
                scored = self._score(bool(micro), state["actor"]["params"], self.frozen, critics, seq_dev, mask_dev,
                                     scorer_inputs or None)
                if self.cfg.uses_cost:  # every host keeps the same window: the costs of all rows
                    self.cost_window.extend(np.asarray(mesh_lib.to_host(scored["cost"])).tolist())
                micro.append(scored)
        return state, micro, start

    # ------------------------------------------------------------------ update

    def iteration(self, state, prompt_ids, prompt_mask, ptx_batches: Iterator[dict] | None = None,
                  on_step: Callable[[dict], None] | None = None):
        """One RL iteration (spec §1.3); returns (state, per-rl_step metric dicts)."""
        t0 = time.perf_counter()
        state, micro, start = self.rollout(state, np.asarray(prompt_ids), np.asarray(prompt_mask))
        rollout_seconds = time.perf_counter() - t0
        rows = []
        for epoch in range(self.update_iters):
            for i, batch in enumerate(micro):
                ptx = None
                if ptx_batches is not None:
                    ptx = next(ptx_batches)
                    if self.mesh is not None:
                        ptx = mesh_lib.put_local_batch(ptx, self.mesh)
                j_c = np.float32(self.episode_cost())
                if self.mesh is not None:
                    j_c = jax.device_put(j_c, mesh_lib.replicated(self.mesh))
                fresh = epoch == 0 and i == 0
                state, metrics, scores = self._step(start, fresh, state, batch, ptx, j_c)
                if fresh:  # later passes reuse these old log-probs and values
                    micro[0] = {**batch, **scores}
                metrics = mesh_lib.to_host(metrics)
                row = {"step": int(metrics.pop("train/global_step")), **{k: float(v) for k, v in metrics.items()},
                       "time/rollout_seconds": rollout_seconds}
                rows.append(row)
                if on_step is not None:
                    on_step(row)
        return state, rows


# ---------------------------------------------------------------------------------------------------- CLI glue


def _plot_curves(rows: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("train/reward", "train/cost", "train/lambda", "train/kl_divergence", "train/episode_cost",
                        "train/mean_generated_length") if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts])
        ax.set_title(key.split("/", 1)[1])
        ax.set_xlabel("rl step")
        if key == "train/cost":
            ax.axhline(0.0, color="k", linestyle="--", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg) -> dict[str, Any]:
    """Run (or resume) a PPO / PPO-Lag / reward-shaping job from an ml_collections config."""
    from saferlhf_jax import data as data_lib
    from saferlhf_jax import models
    from saferlhf_jax.checkpoint import Checkpointer
    from saferlhf_jax.training.trainer import ConfigError, MetricsLog, load_tokenizer, resume_fingerprint

    started = time.perf_counter()
    out_dir = pathlib.Path(cfg.output_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        mesh = mesh_lib.make_mesh(int(cfg.mesh.data), int(cfg.mesh.fsdp), int(cfg.mesh.tensor))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    div = mesh_lib.batch_divisor(mesh)
    r = cfg.rl
    rl_cfg = rl.RLConfig(
        mode=cfg.mode, kl_coeff=float(r.kl_coeff), clip_range_ratio=float(r.clip_range_ratio),
        clip_range_score=float(r.clip_range_score), clip_range_value=float(r.clip_range_value),
        gamma=float(r.gamma), gae_lambda=float(r.gae_lambda), ptx_coeff=float(r.ptx_coeff),
        threshold=float(r.threshold), lambda_init=float(r.lambda_init), lambda_lr=float(r.lambda_lr),
        lambda_max=float(r.lambda_max) if float(r.lambda_max) > 0 else None,
        lambda_update_delay_steps=int(r.lambda_update_delay_steps),
        episode_cost_window_size=int(r.episode_cost_window_size), whiten_advantages=bool(r.whiten_advantages))
    t = cfg.train
    prompt_bs, train_bs = int(t.prompt_batch_size), int(t.train_batch_size)
    nrs = int(cfg.generation.num_return_sequences)
    if (prompt_bs * nrs) % train_bs or prompt_bs % train_bs:
        raise ConfigError(f"train.prompt_batch_size={prompt_bs} (× num_return_sequences={nrs}) must be a multiple "
                          f"of train.train_batch_size={train_bs}")
    if train_bs % div:
        raise ConfigError(f"train.train_batch_size={train_bs} must be a multiple of the data axes data×fsdp={div}")
    hosts = jax.process_count()
    if train_bs % hosts:
        raise ConfigError(f"train.train_batch_size={train_bs} must be a multiple of the {hosts} hosts")

    tokenizer = load_tokenizer(cfg.actor_model_name_or_path)
    retokenizers = {}
    for scorer, name in (("reward", "reward_model_name_or_path"), ("cost", "cost_model_name_or_path")):
        path = cfg.get(name)
        if path and (cfg.mode != "ppo" or scorer == "reward"):
            other = load_tokenizer(path)
            if other.get_vocab() != tokenizer.get_vocab():
                log.info("%s model %s has its own tokenizer: rollouts are re-tokenized for it", scorer, path)
                retokenizers[scorer] = make_retokenizer(tokenizer, other, int(cfg.generation.max_length))
    raw_prompts = data_lib.load_mix(list(cfg.train_datasets))
    max_prompt = int(cfg.data.max_prompt_length) or int(cfg.generation.max_length)
    prompts = data_lib.build_dataset("prompt_only", raw_prompts, tokenizer, max_prompt)
    per_host = dict(num_shards=hosts, shard_index=jax.process_index())  # each host reads its rows of every batch
    prompt_iter = data_lib.BatchIterator(prompts, prompt_bs, seed=int(cfg.seed),
                                         buckets=tuple(cfg.data.prompt_buckets) or None, **per_host)
    ptx_iter = None
    if rl_cfg.ptx_coeff > 0 and cfg.get("ptx_datasets"):
        ptx_ds = data_lib.build_dataset("supervised", data_lib.load_mix(list(cfg.ptx_datasets)), tokenizer,
                                        int(cfg.generation.max_length))
        ptx_iter = data_lib.BatchIterator(ptx_ds, train_bs, seed=int(cfg.seed),
                                          buckets=(int(cfg.generation.max_length),), **per_host)

    dtype = jnp.dtype(cfg.model.param_dtype)
    kw = dict(mesh=mesh, dtype=dtype, compute_dtype=cfg.model.dtype, remat_policy=cfg.model.remat_policy,
              scan_layers=bool(cfg.model.scan_layers))
    actor = models.load_causal_lm(cfg.actor_model_name_or_path, **kw)
    if len(tokenizer) > actor.config.vocab_size:
        actor, actor.params = models.resize_token_embeddings(actor, actor.params, len(tokenizer))
    reference = jax.tree.map(jnp.copy, actor.params)
    reward_model = models.load_score_model(cfg.reward_model_name_or_path, **kw)
    critic_path = cfg.get("reward_critic_model_name_or_path") or cfg.reward_model_name_or_path
    reward_critic = models.load_score_model(critic_path, score_type="critic", do_normalize=False, **kw)
    frozen = {"ref": reference, "reward": reward_model.params}
    reward_fn = rl.score_model_end_fn(reward_model.apply)
    cost_fn, cost_critic = None, None
    if rl_cfg.uses_cost:
        cost_model = models.load_score_model(cfg.cost_model_name_or_path, **kw)
        frozen["cost"] = cost_model.params
        cost_fn = rl.score_model_end_fn(cost_model.apply)
        if rl_cfg.cost_critic:
            cc_path = cfg.get("cost_critic_model_name_or_path") or cfg.cost_model_name_or_path
            cost_critic = models.load_score_model(cc_path, score_type="critic", do_normalize=False, **kw)

    batches_per_epoch = prompt_iter.batches_per_epoch
    iterations = int(t.max_steps) if int(t.max_steps) > 0 else int(t.epochs) * batches_per_epoch
    rl_steps_per_iter = (prompt_bs * nrs // train_bs) * int(t.update_iters)
    total_rl_steps = iterations * rl_steps_per_iter
    gen = GenerationConfig(
        max_length=int(cfg.generation.max_length), temperature=float(cfg.generation.temperature),
        top_k=int(cfg.generation.top_k), top_p=float(cfg.generation.top_p),
        repetition_penalty=float(cfg.generation.repetition_penalty), num_return_sequences=nrs,
        eos_token_ids=(tokenizer.eos_token_id,), pad_token_id=tokenizer.pad_token_id,
        unk_token_id=tokenizer.unk_token_id)
    optims = {}
    for who in ("actor", "critic"):
        o = cfg[who]
        optims[who] = OptimConfig(learning_rate=float(o.learning_rate), lr_scheduler_type=o.lr_scheduler_type,
                                  lr_warmup_ratio=float(o.lr_warmup_ratio), weight_decay=float(o.weight_decay),
                                  max_grad_norm=float(o.max_grad_norm))
    runner = RLRunner(actor=actor, reward_critic=reward_critic, cost_critic=cost_critic, reward_fn=reward_fn,
                      cost_fn=cost_fn, frozen=frozen, cfg=rl_cfg, gen=gen, actor_optim=optims["actor"],
                      critic_optim=optims["critic"], total_rl_steps=total_rl_steps, train_batch_size=train_bs,
                      update_iters=int(t.update_iters), mesh=mesh, retokenizers=retokenizers)
    state = runner.init_state(int(cfg.seed))  # eager: optimizer zeros inherit the params' shardings
    actor.params = reward_critic.params = None  # the state owns them now
    if cost_critic is not None:
        cost_critic.params = None

    ckpt = Checkpointer(out_dir / "checkpoints", max_to_keep=int(cfg.checkpoint.keep))
    metrics_log = MetricsLog(out_dir, bool(cfg.logging.get("tensorboard", True)))
    if jax.process_index() == 0:
        (out_dir / "config.json").write_text(cfg.to_json_best_effort(indent=2) + "\n")
    start_iter = 0
    if ckpt.latest_step() is not None:
        meta = ckpt.read_meta()
        current = resume_fingerprint(cfg)
        changed = sorted(k for k in set(meta.get("config", {})) | set(current)
                         if meta.get("config", {}).get(k) != current.get(k))
        if changed:
            raise ConfigError(f"{out_dir} holds a run with another config ({', '.join(changed[:5])}); "
                              "use a new output_dir")
        state, meta = ckpt.restore(None, state)
        prompt_iter.load_state_dict(meta["prompts"])
        if ptx_iter is not None and meta.get("ptx"):
            ptx_iter.load_state_dict(meta["ptx"])
        runner.cost_window.extend(meta["cost_window"])
        start_iter = int(meta["iteration"])
        resumed_step = int(mesh_lib.to_host(state["global_step"]))
        metrics_log.truncate_after(resumed_step)
        log.info("resumed at iteration %d (rl step %d)", start_iter, resumed_step)

    def save(iteration):
        if ckpt.latest_step() == iteration:
            return
        ckpt.save(iteration, state, {"iteration": iteration, "prompts": prompt_iter.state_dict(),
                                     "ptx": ptx_iter.state_dict() if ptx_iter is not None else None,
                                     "cost_window": list(runner.cost_window), "config": resume_fingerprint(cfg)})

    from tqdm.auto import tqdm

    progress = tqdm(total=iterations, initial=start_iter, desc=cfg.mode, unit="iter", dynamic_ncols=True,
                    disable=not bool(cfg.logging.get("progress", True)))
    history: list[dict] = []
    ckpt_every, stop_after = int(cfg.checkpoint.every), int(t.get("stop_after_steps", 0))
    iteration = start_iter
    try:
        while iteration < iterations:
            batch = next(prompt_iter)
            state, rows = runner.iteration(state, batch["input_ids"], batch["attention_mask"], ptx_iter,
                                           on_step=metrics_log.write)
            history.extend(rows)
            iteration += 1
            last = rows[-1]
            progress.set_postfix({k.split("/")[1]: f"{last[k]:.3g}" for k in
                                  ("train/reward", "train/cost", "train/lambda") if k in last})
            progress.update(1)
            if (ckpt_every and iteration % ckpt_every == 0) or iteration == iterations:
                save(iteration)
            if stop_after and iteration >= stop_after and iteration < iterations:
                save(iteration)
                break
    except KeyboardInterrupt:
        save(iteration)
        progress.close()
        raise KeyboardInterrupt(f"interrupted at iteration {iteration}; checkpoint saved, re-run to resume")
    progress.close()
    metrics_file = out_dir / "metrics.jsonl"  # written by process 0 only
    all_rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()] \
        if jax.process_index() == 0 and metrics_file.is_file() else []
    if all_rows:
        _plot_curves(all_rows, out_dir / "training_curves.png")
    summary = {"mode": cfg.mode, "iterations": iteration, "total_iterations": iterations,
               "rl_steps": int(mesh_lib.to_host(state["global_step"])), "last": history[-1] if history else {},
               "seconds": time.perf_counter() - started, "output_dir": str(out_dir),
               "prompts": len(prompts), "prompt_counts": prompts.counts}
    if iteration >= iterations:
        export = out_dir / "export"
        params = mesh_lib.to_host(state["actor"]["params"])  # every process takes part in the gather; one writes
        if jax.process_index() == 0:
            models.save_pretrained(actor, params, export)
            tokenizer.save_pretrained(str(export))
        summary["export"] = str(export)
    if jax.process_index() == 0:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        from saferlhf_jax.evaluation import report

        report.write_run_page(out_dir, f"{cfg.mode} run", cfg, summary, ("training_curves.png",))
    metrics_log.close()
    ckpt.close()
    summary["state"] = state
    return summary


def print_summary(summary: dict) -> None:
    last = summary.get("last", {})
    keys = ("train/reward", "train/cost", "train/lambda", "train/episode_cost", "train/kl_divergence",
            "train/actor_loss", "train/reward_critic_loss", "train/mean_generated_length")
    print(f"== {summary['mode']}: {summary['iterations']}/{summary['total_iterations']} iterations, "
          f"{summary['rl_steps']} rl steps in {summary['seconds']:.1f}s ({summary['prompts']} prompts)")
    print("   last: " + ", ".join(f"{k.split('/')[1]}={last[k]:.4g}" for k in keys if k in last))
    print(f"   outputs: {summary['output_dir']} (metrics.jsonl, training_curves.png, checkpoints/"
          + (", export/" if summary.get("export") else "") + ")")
