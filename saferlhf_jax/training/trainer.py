"""The shared trainer of the supervised-style stages (SFT, reward, cost, DPO, moderation).

config → mesh → tokenizer/model → data → optimizer → (resume) → loop of one jitted sharded step per optimizer
update → periodic eval / checkpoint / metrics → HF export. The step is `jax.jit` with explicit in/out shardings and
the train state donated; gradient accumulation is a `lax.scan` over the micro-batches inside it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from saferlhf_jax import data as data_lib
from saferlhf_jax import models, ops
from saferlhf_jax.checkpoint import Checkpointer
from saferlhf_jax.parallel import mesh as mesh_lib
from saferlhf_jax.training import optim
from saferlhf_jax.training.stage import Stage, token_count

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration that cannot run; reported as one line before anything compiles."""


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Static loss settings handed to the stage's loss function."""

    loss_type: str = "sequence-wise"
    regularization: float = 0.0
    beta: float = 0.02
    dpo_slicing: str = "standard"
    normalizer_type: str | None = None
    momentum: float | None = None


def _none(x):
    return None if x in (None, "", "none", "None") else x


def loss_config(cfg) -> LossConfig:
    loss = cfg.get("loss", {})
    return LossConfig(loss_type=loss.get("loss_type", "sequence-wise"),
                      regularization=float(loss.get("regularization", 0.0)), beta=float(loss.get("beta", 0.02)),
                      dpo_slicing=loss.get("dpo_slicing", "standard"),
                      normalizer_type=_none(loss.get("normalizer_type")),
                      momentum=float(loss["momentum"]) if _none(loss.get("momentum")) is not None else None)


# ---------------------------------------------------------------------------------------------------- set-up


def validate_config(cfg, mesh) -> None:
    t = cfg.train
    div = mesh_lib.batch_divisor(mesh)
    for key in ("batch_size", "eval_batch_size"):
        value = int(t.get(key, t.batch_size))
        if value < 1 or value % div:
            raise ConfigError(f"train.{key}={value} must be a positive multiple of the data axes data×fsdp={div}")
    if int(t.grad_accum) < 1:
        raise ConfigError(f"train.grad_accum must be ≥ 1, got {t.grad_accum}")
    lc = loss_config(cfg)
    if lc.loss_type not in ops.LOSS_TYPES:
        raise ConfigError(f"loss.loss_type must be one of {ops.LOSS_TYPES}, got {lc.loss_type!r}")
    if lc.dpo_slicing not in ops.DPO_SLICINGS:
        raise ConfigError(f"loss.dpo_slicing must be one of {ops.DPO_SLICINGS}, got {lc.dpo_slicing!r}")
    if lc.normalizer_type not in ops.NORMALIZER_TYPES:
        raise ConfigError(f"loss.normalizer_type must be none|RunningMeanStd|ExponentialMovingAverage, "
                          f"got {lc.normalizer_type!r}")
    if t.lr_scheduler_type not in ops.SCHEDULE_TYPES:
        raise ConfigError(f"train.lr_scheduler_type must be one of {ops.SCHEDULE_TYPES}, got {t.lr_scheduler_type!r}")


def load_tokenizer(path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load a tokenizer from {path}: {err}") from err
    data_lib.prepare_tokenizer(tok)
    return tok


def load_model(stage: Stage, cfg, mesh, tokenizer):
    m = cfg.model
    kwargs = dict(mesh=mesh, dtype=jnp.dtype(m.param_dtype), compute_dtype=m.dtype, remat_policy=m.remat_policy,
                  scan_layers=bool(m.scan_layers))
    if stage.model_kind == "score":
        lc = loss_config(cfg)
        model = models.load_score_model(cfg.model_name_or_path, rng=int(cfg.seed), score_type=stage.score_type,
                                        score_dim=stage.score_dim,
                                        normalizer_type=lc.normalizer_type, momentum=lc.momentum,
                                        do_normalize=bool(cfg.get("loss", {}).get("do_normalize", False)), **kwargs)
    else:
        model = models.load_causal_lm(cfg.model_name_or_path, **kwargs)
    if len(tokenizer) > model.config.vocab_size:
        model, params = models.resize_token_embeddings(model, model.params, len(tokenizer))
        model.params = params
    return model


def build_data(stage: Stage, cfg, tokenizer):
    """(train dataset, eval dataset or None) — tokenized up front so bad rows fail before anything compiles."""
    max_length = int(cfg.data.max_length)
    raw_train = data_lib.load_mix(list(cfg.train_datasets))
    raw_eval = None
    if cfg.get("eval_datasets"):
        raw_eval = data_lib.load_mix(list(cfg.eval_datasets))
    elif float(cfg.get("eval_split_ratio", 0.0)) > 0:
        train_idx, test_idx = data_lib.split_holdout(len(raw_train), float(cfg.eval_split_ratio))
        raw_eval = [raw_train[i] for i in test_idx] or None
        raw_train = [raw_train[i] for i in train_idx]
    train = data_lib.build_dataset(stage.train_kind, raw_train, tokenizer, max_length)
    evaluation = None
    if raw_eval and stage.eval_fn is not None:
        evaluation = data_lib.build_dataset(stage.eval_kind, raw_eval, tokenizer, max_length)
    return train, evaluation


# ---------------------------------------------------------------------------------------------------- the step


def _split_params(params):
    trainable = {k: v for k, v in params.items() if k != "normalizer"}
    return trainable, params.get("normalizer")


def make_train_step(stage: Stage, model, optimizer, schedule, lc: LossConfig, grad_accum: int):
    """step(state, batches (GA, B, ...), frozen) -> (state, metrics); pure, to be jitted."""
    apply = model.apply

    def step(state, batches, frozen):
        trainable, normalizer = _split_params(state["params"])

        def micro(carry, batch):
            grad_sum, norm_state = carry

            def objective(tp):
                params = tp if norm_state is None else {**tp, "normalizer": norm_state}
                return stage.loss_fn(apply, params, frozen, batch, lc)

            (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
            if norm_state is not None:  # train mode: fold this batch's end scores into the statistics (§3.4)
                norm_state = ops.normalizer_update(norm_state, aux["end_scores"], lc.normalizer_type, lc.momentum)
            grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
            return (grad_sum, norm_state), (loss, aux["metrics"])

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        (grad_sum, new_norm), (losses, metrics) = jax.lax.scan(micro, (zeros, normalizer), batches)
        grads = jax.tree.map(lambda g: g / grad_accum, grad_sum)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(grad_norm) & jnp.all(jnp.isfinite(losses))
        updates, new_opt = optimizer.update(grads, state["opt_state"], trainable)
        new_trainable = optax.apply_updates(trainable, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        new_params = keep(new_trainable, trainable)
        if new_norm is not None:
            new_params["normalizer"] = keep(new_norm, normalizer)
        out = {
            "step": state["step"] + 1,
            "updates": state["updates"] + finite.astype(jnp.int32),
            "skipped": state["skipped"] + (~finite).astype(jnp.int32),
            "params": new_params,
            "opt_state": keep(new_opt, state["opt_state"]),
            "rng": jax.random.split(state["rng"])[0],
        }
        logged = {"loss": jnp.mean(losses), "grad_norm": grad_norm, "lr": schedule(state["updates"]),
                  "skipped": out["skipped"], **jax.tree.map(jnp.mean, metrics)}
        return out, logged

    return step


def make_eval_step(stage: Stage, model, lc: LossConfig):
    def step(params, batch, frozen):
        return stage.eval_fn(model.apply, params, frozen, batch, lc)

    return step


# ---------------------------------------------------------------------------------------------------- logging


class MetricsLog:
    """metrics.jsonl (one JSON object per line) + TensorBoard; truncated to the restored step on resume."""

    def __init__(self, output_dir: pathlib.Path, tensorboard: bool):
        self.path = output_dir / "metrics.jsonl"
        self.writer = None
        if tensorboard and jax.process_index() == 0:  # one writer in multi-host runs
            try:
                from tensorboardX import SummaryWriter

                self.writer = SummaryWriter(str(output_dir / "tensorboard"))
            except ImportError:
                log.warning("tensorboardX is not installed: no TensorBoard events")

    def truncate_after(self, step: int) -> None:
        if not self.path.is_file() or jax.process_index() != 0:
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, row: dict) -> None:
        if jax.process_index() != 0:  # one writer in multi-host runs
            return
        row = {k: (float(v) if isinstance(v, (np.floating, float, jax.Array, np.ndarray)) else v)
               for k, v in row.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(k if "/" in k else f"train/{k}", v, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


RESUME_IGNORED = ("output_dir", "logging", "checkpoint", "distributed", "mesh", "train.stop_after_steps",
                  "train.log_every")


def resume_fingerprint(cfg) -> dict:
    """The config entries a resumed run must share with the run that wrote the checkpoint."""
    flat = {}

    def walk(node, prefix):
        for key in node.keys():
            path = f"{prefix}{key}"
            if any(path == ig or path.startswith(ig + ".") for ig in RESUME_IGNORED):
                continue
            value = node[key]
            if hasattr(value, "keys"):
                walk(value, path + ".")
            else:
                flat[path] = list(value) if isinstance(value, (tuple, list)) else value
    walk(cfg, "")
    return json.loads(json.dumps(flat, default=str))


class _Interrupted(Exception):
    pass


def _on_sigterm(signum, frame):
    raise _Interrupted()


# ---------------------------------------------------------------------------------------------------- the loop


def train(stage: Stage, cfg) -> dict[str, Any]:
    """Run (or resume) one stage; returns a summary dict. Raises ConfigError / DataError on bad input."""
    started = time.perf_counter()
    output_dir = pathlib.Path(cfg.output_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        mesh = mesh_lib.make_mesh(int(cfg.mesh.data), int(cfg.mesh.fsdp), int(cfg.mesh.tensor))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    validate_config(cfg, mesh)
    lc = loss_config(cfg)
    if jax.process_index() == 0:
        (output_dir / "config.json").write_text(cfg.to_json_best_effort(indent=2) + "\n")

    tokenizer = load_tokenizer(cfg.model_name_or_path)
    train_ds, eval_ds = build_data(stage, cfg, tokenizer)
    model = load_model(stage, cfg, mesh, tokenizer)
    t = cfg.train
    batch_size, grad_accum = int(t.batch_size), int(t.grad_accum)
    buckets = tuple(cfg.data.get("buckets", ())) or None
    iterator = data_lib.BatchIterator(train_ds, batch_size, seed=int(cfg.seed), buckets=buckets,
                                      num_shards=jax.process_count(), shard_index=jax.process_index())
    per_epoch = optim.updates_per_epoch(iterator.batches_per_epoch, grad_accum)
    total = int(t.max_steps) if int(t.max_steps) > 0 else int(t.epochs) * per_epoch
    optimizer, schedule = optim.make_optimizer(
        float(t.learning_rate), total, schedule_type=t.lr_scheduler_type, warmup_ratio=float(t.lr_warmup_ratio),
        weight_decay=float(t.weight_decay), max_grad_norm=float(t.max_grad_norm))
    log.info("%s: %d train examples, %d optimizer steps (%d per epoch), batch %d × GA %d, mesh %s",
             stage.name, len(train_ds), total, per_epoch, batch_size, grad_accum, dict(mesh.shape))

    frozen = jax.tree.map(jnp.copy, model.params) if stage.needs_reference else {}

    def init_state(params, key):
        trainable, _ = _split_params(params)
        zero = jnp.zeros((), jnp.int32)
        return {"step": zero, "updates": zero, "skipped": zero, "params": params,
                "opt_state": optimizer.init(trainable), "rng": key}

    state = jax.jit(init_state)(model.params, jax.random.PRNGKey(int(cfg.seed)))
    model.params = None  # the state owns the parameters from here on (donated every step)
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    frozen_sh = jax.tree.map(lambda x: x.sharding, frozen)

    ckpt = Checkpointer(output_dir / "checkpoints", max_to_keep=int(cfg.checkpoint.keep))
    metrics_log = MetricsLog(output_dir, bool(cfg.logging.get("tensorboard", True)))
    start_step = 0
    if ckpt.latest_step() is not None:
        saved = ckpt.read_meta().get("config", {})
        current = resume_fingerprint(cfg)
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if saved and changed:
            diffs = ", ".join(f"{k}: {saved.get(k)!r} → {current.get(k)!r}" for k in changed[:5])
            raise ConfigError(f"{output_dir} holds a run with another config ({diffs}); "
                              f"use a new output_dir to start over")
        state, meta = ckpt.restore(None, state)
        iterator.load_state_dict(meta["data"])
        start_step = int(meta["step"])
        metrics_log.truncate_after(start_step)
        log.info("resumed from %s at step %d", ckpt.directory, start_step)

    batch_spec = NamedSharding(mesh, P(None, mesh_lib.BATCH_AXES))
    step_fn = jax.jit(make_train_step(stage, model, optimizer, schedule, lc, grad_accum),
                      in_shardings=(state_sh, batch_spec, frozen_sh),
                      out_shardings=(state_sh, mesh_lib.replicated(mesh)), donate_argnums=(0,))
    eval_fn = None
    if eval_ds is not None:
        eval_fn = jax.jit(make_eval_step(stage, model, lc))  # arguments arrive committed to their shardings

    def evaluate(step):
        if eval_fn is None:
            return {}
        per = {}
        for batch in data_lib.iterate_once(eval_ds, int(t.get("eval_batch_size", batch_size)), buckets):
            valid = batch.pop("valid")
            out = mesh_lib.to_host(eval_fn(state["params"], mesh_lib.shard_batch(batch, mesh), frozen))
            for k, v in out.items():
                per.setdefault(k, []).append(np.asarray(v)[valid])
        result = stage.summarize({k: np.concatenate(v) for k, v in per.items()}, lc)
        metrics_log.write({"step": step, **{f"eval/{k}": v for k, v in result.items()}})
        return result

    def save(step):
        if ckpt.latest_step() == step:
            return
        ckpt.save(step, state, {"step": step, "data": iterator.state_dict(), "stage": stage.name,
                                "config": resume_fingerprint(cfg)})

    eval_every = int(t.get("eval_every", 0))
    ckpt_every = int(cfg.checkpoint.every)
    log_every = max(1, int(t.log_every))
    stop_after = int(t.get("stop_after_steps", 0))
    eval_result = evaluate(0) if start_step == 0 and eval_fn is not None and bool(t.get("eval_at_start", True)) \
        else {}
    last_row: dict = {}
    progress = _progress(total, start_step, stage.name, bool(cfg.logging.get("progress", True)))
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    step = start_step
    try:
        while step < total:
            tick = time.perf_counter()
            host = [next(iterator) for _ in range(grad_accum)]
            if len({b[next(iter(b))].shape for b in host}) > 1:  # one shape per step: pad to the widest bucket
                width = max(b[next(iter(b))].shape[1] for b in host)
                host = [data_lib.collate(train_ds.kind, _unbatch(b), train_ds.pad_token_id, (width,)) for b in host]
            stacked = {k: np.stack([b[k] for b in host]) for k in host[0]}
            state, metrics = step_fn(state, mesh_lib.put_global(stacked, batch_spec), frozen)
            step += 1
            if step % log_every == 0 or step == total:
                metrics = {k: float(v) for k, v in mesh_lib.to_host(metrics).items()}
                elapsed = time.perf_counter() - tick
                last_row = {"step": step, "epoch": step * grad_accum / max(1, iterator.batches_per_epoch),
                            **metrics, "tokens_per_sec": sum(map(token_count, host)) / max(elapsed, 1e-9)}
                metrics_log.write(last_row)
                progress.set_postfix({k: f"{metrics[k]:.4g}" for k in ("loss", "accuracy", "accuracy_sign",
                                                                       "reward_accuracy") if k in metrics})
            progress.update(1)
            at_epoch_end = step % per_epoch == 0
            if eval_fn is not None and ((eval_every and step % eval_every == 0) or (not eval_every and at_epoch_end)):
                eval_result = evaluate(step)
            if (ckpt_every and step % ckpt_every == 0) or step == total:
                save(step)
            if stop_after and step >= stop_after and step < total:
                save(step)
                log.info("stopping after %d steps as configured (train.stop_after_steps)", step)
                break
    except (KeyboardInterrupt, _Interrupted):
        save(step)
        progress.close()
        metrics_log.close()
        ckpt.close()
        raise KeyboardInterrupt(f"interrupted at step {step}; checkpoint saved, re-run the same command to resume")
    finally:
        signal.signal(signal.SIGTERM, previous)
    progress.close()

    summary: dict[str, Any] = {"stage": stage.name, "steps": step, "total_steps": total,
                               "train": {k: v for k, v in last_row.items() if k != "step"},
                               "eval": eval_result, "skipped_updates": int(mesh_lib.to_host(state["skipped"])),
                               "train_examples": len(train_ds), "data_counts": train_ds.counts,
                               "seconds": time.perf_counter() - started, "output_dir": str(output_dir)}
    if step >= total:
        export_dir = output_dir / "export"
        params = mesh_lib.to_host(state["params"])  # every process takes part in the gather; one writes
        if jax.process_index() == 0:
            models.save_pretrained(model, params, export_dir)
            tokenizer.save_pretrained(str(export_dir))
        summary["export"] = str(export_dir)
    if jax.process_index() == 0:
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        from saferlhf_jax.evaluation import report

        report.plot_run_curves(output_dir, output_dir / "curves.png")
        report.write_run_page(output_dir, f"{stage.name} run", cfg, summary, ("curves.png",))
    metrics_log.close()
    ckpt.close()
    summary["state"] = state
    summary["model"] = model
    return summary


def _unbatch(batch: dict) -> list[dict]:
    """Collated batch → list of per-example dicts (used only to re-pad micro-batches to one width)."""
    n = len(next(iter(batch.values())))
    out = []
    for i in range(n):
        ex = {}
        for k, v in batch.items():
            row = v[i]
            if k.endswith("input_ids"):
                mask = batch[k.replace("input_ids", "attention_mask")][i]
                row = row[mask.astype(bool)]
            elif k == "labels":
                row = row[batch["attention_mask"][i].astype(bool)]
            elif k.endswith("attention_mask"):
                continue
            ex[k] = row
        out.append(ex)
    return out


def _progress(total, initial, name, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="step", dynamic_ncols=True, disable=not enabled,
                leave=True)


def print_summary(summary: dict) -> None:
    """One screen: what ran, the last train metrics, the eval metrics, where things are."""
    lines = [f"== {summary['stage']}: {summary['steps']}/{summary['total_steps']} steps in "
             f"{summary['seconds']:.1f}s ({summary['train_examples']} train examples)"]
    if summary.get("data_counts"):
        lines.append("   data: " + ", ".join(f"{k}={v}" for k, v in sorted(summary["data_counts"].items())))
    train_m = summary.get("train") or {}
    if train_m:
        lines.append("   train: " + ", ".join(f"{k}={v:.4g}" for k, v in train_m.items()
                                           if isinstance(v, float) and k not in ("epoch",)))
    if summary.get("eval"):
        lines.append("   eval:  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in summary["eval"].items()))
    if summary.get("skipped_updates"):
        lines.append(f"   skipped non-finite updates: {summary['skipped_updates']}")
    lines.append(f"   outputs: {summary['output_dir']} (metrics.jsonl, tensorboard/, checkpoints/"
                 + (", export/" if summary.get("export") else "") + ")")
    print("\n".join(lines))


__all__ = ["ConfigError", "LossConfig", "make_train_step", "print_summary", "train"]
