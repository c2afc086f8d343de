"""The RL job — PPO-Lagrangian (Safe RLHF), plain PPO, reward shaping and the critic-free GRPO(-Lag) family — on the
shared run skeleton (`training.run.Run`) and stage loop (`training.loop.drive`): resumable, preemption-safe,
evaluated on `eval_datasets` every `train.eval_every` iterations and at the end.

Where the parts live: the config read into `rl.RLConfig` and its checks (`rl_config.py`), the six models
(`rl_models.py`), the compiled rollout / scoring / update programs (`rl_runner.py`), the pure RL math and state
(`rl.py`), the sampling settings (`generation/config.py`). This module wires them and says what one loop step is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import jax
import numpy as np

from saferlhf_jax import data as data_lib
from saferlhf_jax import models
from saferlhf_jax.algorithms import budget as budget_lib
from saferlhf_jax.algorithms import constraints as constraints_lib
from saferlhf_jax.algorithms import rl
from saferlhf_jax.algorithms.rl_config import build_prompts, eval_sampling, lora_kwargs, rl_config, validate
from saferlhf_jax.algorithms.rl_models import load_models
from saferlhf_jax.algorithms.rl_runner import RLRunner, make_retokenizer
from saferlhf_jax.data.tokenizer import load_tokenizer, save_tokenizer
from saferlhf_jax.errors import ConfigError
from saferlhf_jax.generation.config import GenerationConfig
from saferlhf_jax.parallel import mesh as mesh_lib
from saferlhf_jax.training import loop, optim
from saferlhf_jax.training.run import Run, assert_finite
from saferlhf_jax.training.trainer import export_adapter, wants_adapter_export

log = logging.getLogger(__name__)


def _postfix(value: float) -> str:
    """A progress-bar number: 3 significant digits; a PID λ of 0, stored as log 1e-30 and read back as exp of it
    (≈ 1e-30, not exactly), shows as 0."""
    return "0" if abs(value) < 1e3 * rl.PID_LAMBDA_FLOOR else f"{value:.3g}"


CURVES = ("train/reward", "train/cost", "train/lambda", "train/episode_cost", "train/kl_divergence",
          "train/mean_generated_length")


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


class RLLoop:
    """An RL stage as the loop drives it (`training.loop.LoopStage`): one loop step is one RL iteration (a prompt
    batch's rollouts, then `update_iters` passes of rl_step); a signal mid-rollout abandons the iteration."""

    unit = "iteration"
    skip_hint = "lower the learning rates or check the reward/cost models"

    def __init__(self, cfg, run, runner: RLRunner, prompt_iter, ptx_iter, eval_prompts, micro_per_iter: int,
                 first_row: dict | None = None):
        self.cfg, self.run, self.runner = cfg, run, runner
        self.prompt_iter, self.ptx_iter, self.eval_prompts = prompt_iter, ptx_iter, eval_prompts
        self.micro_per_iter = micro_per_iter
        self.name = cfg.mode
        self.can_evaluate = eval_prompts is not None
        self.sampling = eval_sampling(cfg, cfg.actor_model_name_or_path) if self.can_evaluate else {}
        self.eval_rows: list[dict] = []
        self.first_row = dict(first_row or {})  # the calibrated budget's numbers, on the run's first row

    def next_batch(self):
        batch = next(self.prompt_iter)
        ptx = [next(self.ptx_iter) for _ in range(self.micro_per_iter)] if self.ptx_iter is not None else None
        return batch, ptx

    def step(self, state, batch, number: int, stop):
        prompts, ptx = batch
        out = self.runner.iteration(state, prompts["input_ids"], prompts["attention_mask"], ptx, stop=stop)
        if out is not None and out[1] and self.first_row:
            out[1][0].update(self.first_row)
            self.first_row = {}
        return out

    def data_position(self) -> dict:
        return {"prompts": self.prompt_iter.state_dict(),
                "ptx": self.ptx_iter.state_dict() if self.ptx_iter is not None else None}

    def checkpoint_meta(self, state, step: int, position: dict) -> dict:
        return {"iteration": step, **position, "metrics_step": int(mesh_lib.to_host(state.global_step))}

    def evaluate(self, state, step: int) -> dict:
        t, hosts = self.cfg.train, jax.process_count()
        batches = []
        per = int(t.eval_batch_size) // hosts
        for batch in data_lib.iterate_once(self.eval_prompts, int(t.eval_batch_size),
                                           tuple(self.cfg.data.prompt_buckets) or None):
            lo = jax.process_index() * per
            batches.append({k: v[lo:lo + per] for k, v in batch.items()})
        key = jax.random.fold_in(jax.random.PRNGKey(int(self.cfg.seed)), 1_000_003 + step)  # never the training rng
        result = self.runner.evaluate(state.actor.params, batches, key, self.sampling)
        row = {"step": int(mesh_lib.to_host(state.global_step)), "iteration": step,
               **eval_metrics(result, self.runner.cfg.constraints)}
        self.run.log(row)
        self.eval_rows.append(row)
        return result

    def counts(self, state, step: int) -> tuple[int, int]:
        return int(mesh_lib.to_host(state.skipped)), int(mesh_lib.to_host(state.global_step))

    def postfix(self, row: dict) -> dict[str, str]:
        return {k.split("/")[1]: _postfix(row[k]) for k in ("train/reward", "train/cost", "train/lambda") if k in row}


def _tokenizers(cfg, rl_cfg):
    """(the actor's tokenizer, {scorer: re-tokenizer} for a reward / cost model with a tokenizer of its own)."""
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
    return tokenizer, retokenizers


def _prompt_data(cfg, rl_cfg, tokenizer):
    """(train prompts, their batch iterator, eval prompts | None, PTX batch iterator | None): each host reads its
    rows of a batch."""
    t, source = cfg.train, cfg.data.get("source")
    prompts = build_prompts(cfg, cfg.train_datasets, tokenizer, source)
    per_host = dict(num_shards=jax.process_count(), shard_index=jax.process_index())
    try:
        prompt_iter = data_lib.BatchIterator(prompts, int(t.prompt_batch_size), seed=int(cfg.seed),
                                             buckets=tuple(cfg.data.prompt_buckets) or None, drop_last=False,
                                             **per_host)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    eval_prompts = build_prompts(cfg, cfg.eval_datasets, tokenizer, source) if cfg.get("eval_datasets") else None
    ptx_iter = None
    if rl_cfg.ptx_coeff > 0 and cfg.get("ptx_datasets"):
        ptx_ds = data_lib.build_dataset("supervised", data_lib.load_mix(list(cfg.ptx_datasets), source),
                                        tokenizer, int(cfg.generation.max_length))
        ptx_iter = data_lib.BatchIterator(ptx_ds, int(t.train_batch_size), seed=int(cfg.seed),
                                          buckets=(int(cfg.generation.max_length),), **per_host)
    return prompts, prompt_iter, eval_prompts, ptx_iter


def budgets_of(cfg, rl_cfg) -> list[budget_lib.Budget]:
    """The budget of each constraint (one for the single one), as configured; [] for a mode without a learned λ."""
    if not rl_cfg.learns_lambda:
        return []
    several = constraints_lib.parse(cfg.rl)
    return [c.budget for c in several] if several else [budget_lib.parse(cfg.rl.get("budget"), "rl.budget")]


def calibrate_thresholds(cfg, rl_cfg, tokenizer, retokenizers, frozen, cost_fn, run_dir):
    """(rl_cfg with every budget given in label units replaced by its calibrated threshold, the fits, their metrics)
    — scored with the loaded cost model(s) on each budget's held-out labelled split before the first iteration
    (spec §7.33); the fits go to budget.json and the summary, their numbers to the first metrics row."""
    budgets = budgets_of(cfg, rl_cfg)
    if not any(b.calibrated for b in budgets):
        return rl_cfg, [], {}
    scorer_tokenizer = load_tokenizer(cfg.cost_model_name_or_path) if "cost" in retokenizers else tokenizer
    template = data_lib.make_template(str(cfg.data.get("template", "pku")), scorer_tokenizer)
    several = rl_cfg.num_constraints > 0

    def scores_of(k, texts):
        scores = budget_lib.score_responses(cost_fn, frozen["cost"], scorer_tokenizer, template, texts,
                                            max_length=int(cfg.generation.max_length),
                                            batch_size=int(cfg.train.eval_batch_size))
        return scores[:, k] if several else scores

    fits = budget_lib.calibrate(budgets, scores_of, cfg.data.get("source"))
    if several:
        thresholds = tuple(f["threshold_cost_model_units"] if f else t for f, t in zip(fits, rl_cfg.thresholds))
        rl_cfg = dataclasses.replace(rl_cfg, thresholds=thresholds)
        names = rl_cfg.constraints
    else:
        rl_cfg = dataclasses.replace(rl_cfg, threshold=fits[0]["threshold_cost_model_units"])
        names = ("",)
    row = {}
    for name, f in zip(names, fits):
        if f:
            log.info("budget%s (%s): threshold %.4g in cost-model units (line %.3g·label %+.3g over %d held-out "
                     "responses, standard error %.3g)", f" {name}" if name else "", f["budget"],
                     f["threshold_cost_model_units"], f["slope"], f["intercept"], f["responses"], f["standard_error"])
            row.update({f"budget/{key}" + (f"/{name}" if name else ""): f[key] for key in
                        ("threshold_cost_model_units", "slope", "intercept", "standard_error", "responses")})
    if jax.process_index() == 0:
        (run_dir.out / "budget.json").write_text(json.dumps(
            {"constraints": list(names), "fits": fits}, indent=2) + "\n")
    return rl_cfg, fits, row


def run(cfg) -> dict[str, Any]:
    """Run (or resume) a PPO / PPO-Lag / reward-shaping / GRPO(-Lag) job from an ml_collections config."""
    rl_cfg = rl_config(cfg)
    with Run(cfg, cfg.mode, validate=validate) as run_dir:
        t = cfg.train
        tokenizer, retokenizers = _tokenizers(cfg, rl_cfg)
        prompts, prompt_iter, eval_prompts, ptx_iter = _prompt_data(cfg, rl_cfg, tokenizer)
        actor, reward_critic, cost_critic, frozen, reward_fn, cost_fn = load_models(cfg, rl_cfg, tokenizer,
                                                                                     run_dir.mesh, run_dir.rules)
        rl_cfg, fits, budget_row = calibrate_thresholds(cfg, rl_cfg, tokenizer, retokenizers, frozen, cost_fn,
                                                        run_dir)
        iterations = int(t.max_steps) if int(t.max_steps) > 0 else int(t.epochs) * prompt_iter.batches_per_epoch
        micro_per_iter = int(t.prompt_batch_size) * int(cfg.generation.num_return_sequences) // int(t.train_batch_size)
        runner = RLRunner(actor=actor, reward_critic=reward_critic, cost_critic=cost_critic, reward_fn=reward_fn,
                          cost_fn=cost_fn, frozen=frozen, cfg=rl_cfg, gen=GenerationConfig.from_config(cfg, tokenizer),
                          actor_optim=optim.OptimConfig.from_config(cfg.actor),
                          critic_optim=optim.OptimConfig.from_config(cfg.critic),
                          total_rl_steps=iterations * micro_per_iter * int(t.update_iters),
                          train_batch_size=int(t.train_batch_size), update_iters=int(t.update_iters),
                          mesh=run_dir.mesh, retokenizers=retokenizers,
                          logits_chunk=int(cfg.model.get("logits_chunk", 0)),
                          optimizer_memory=str(cfg.model.get("optimizer_memory", "device")), **lora_kwargs(cfg))
        state = runner.init_state(int(cfg.seed), donate=True)
        for owned in (actor, reward_critic, cost_critic):  # the state owns their parameters now
            if owned is not None:
                owned.params = None
        start = 0
        if run_dir.resuming:
            state, meta = run_dir.restore(state)
            prompt_iter.load_state_dict(meta["prompts"])
            if ptx_iter is not None and meta.get("ptx"):
                ptx_iter.load_state_dict(meta["ptx"])
            start = int(meta["iteration"])
        # the calibrated budget's numbers go on the run's first metrics row (a resumed run recomputes the same fit)
        stage = RLLoop(cfg, run_dir, runner, prompt_iter, ptx_iter, eval_prompts, micro_per_iter,
                       budget_row if start == 0 else None)
        done = loop.drive(run_dir, stage, state, start, loop.Cadence.from_config(cfg, iterations))
        state = done.state
        summary = {"mode": cfg.mode, "iterations": done.step, "total_iterations": iterations,
                   "rl_steps": int(mesh_lib.to_host(state.global_step)), "skipped_updates": done.skipped,
                   "last": done.last_row,
                   "eval": {k: v for k, v in (stage.eval_rows[-1] if stage.eval_rows else {}).items()
                            if k.startswith("eval/")},
                   "prompts": len(prompts), "prompt_counts": prompts.counts}
        if fits:
            summary["budget"] = fits
        if done.last_eval is not None and jax.process_index() == 0:
            summary["eval_samples"] = _eval_page(done.last_eval, tokenizer)

        def export(directory):
            # every process takes part in the gather; one writes (LoRA: merged into plain HF weights, and with
            # lora.export='both' the adapters in PEFT's format in export/adapter)
            params = mesh_lib.to_host(runner.merged_actor(state.actor.params))
            adapters = mesh_lib.to_host(state.actor.params["lora"]) if runner.lora_scale else None
            assert_finite(params, "the actor", float(cfg.train.get("max_weight_abs", 0)) or None)
            if jax.process_index() == 0:
                models.save_pretrained(actor, params, directory, pad_token_id=tokenizer.pad_token_id)
                save_tokenizer(tokenizer, directory)
                if adapters is not None and wants_adapter_export(cfg, "causal_lm"):
                    export_adapter(actor, params, adapters, cfg, cfg.actor_model_name_or_path, directory, tokenizer)

        per_constraint = tuple(f"train/{k}/{n}" for k in ("cost", "lambda", "episode_cost") for n in rl_cfg.constraints)
        summary = run_dir.finish(summary, complete=done.complete, export=export,
                                 curves=CURVES + per_constraint + ("eval/reward",), title=f"{cfg.mode} run")
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
