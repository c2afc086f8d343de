"""The shared trainer of the supervised-style stages (SFT, reward, cost, DPO, moderation).

config → mesh → tokenizer/model → data → optimizer → (resume) → loop of one jitted sharded step per optimizer
update → periodic eval / checkpoint / metrics → HF export. The step is `jax.jit` with explicit in/out shardings and
the train state donated; gradient accumulation is a `lax.scan` over the micro-batches inside it.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from saferlhf_jax import data as data_lib
from saferlhf_jax import models, ops
from saferlhf_jax.errors import ConfigError
from saferlhf_jax.models import lora as lora_lib
from saferlhf_jax.parallel import mesh as mesh_lib
from saferlhf_jax.data.tokenizer import give_pad_its_own_id, load_tokenizer, save_tokenizer
from saferlhf_jax.training import head_probe, loop, optim
from saferlhf_jax.training import state as state_lib
from saferlhf_jax.training.run import Run, assert_finite
from saferlhf_jax.training.stage import LossConfig, Stage, token_count

log = logging.getLogger(__name__)


def _none(x):
    return None if x in (None, "", "none", "None") else x


def loss_config(cfg) -> LossConfig:
    loss = cfg.get("loss", {})
    return LossConfig(loss_type=loss.get("loss_type", "sequence-wise"),
                      regularization=float(loss.get("regularization", 0.0)), beta=float(loss.get("beta", 0.02)),
                      dpo_slicing=loss.get("dpo_slicing", "standard"),
                      normalizer_type=_none(loss.get("normalizer_type")),
                      safety_margin=float(loss.get("safety_margin", 10.0)),
                      momentum=float(loss["momentum"]) if _none(loss.get("momentum")) is not None else None)


# ---------------------------------------------------------------------------------------------------- set-up


def validate_config(cfg, mesh) -> None:
    t = cfg.train
    div = mesh_lib.batch_divisor(mesh)
    for key in ("batch_size", "eval_batch_size"):
        value = int(t.get(key, t.batch_size))
        if value < 1 or value % div:
            raise ConfigError(f"train.{key}={value} must be a positive multiple of the data axes data×fsdp={div}")
    if int(t.get("max_steps", 0)) <= 0 and int(t.get("epochs", 1)) < 1:  # else 0 steps: the base model exported
        raise ConfigError(f"train.epochs must be ≥ 1 when train.max_steps is not set, got {t.epochs}")
    if int(t.grad_accum) < 1:
        raise ConfigError(f"train.grad_accum must be ≥ 1, got {t.grad_accum}")
    lc = loss_config(cfg)
    if lc.loss_type not in ops.LOSS_TYPES:
        raise ConfigError(f"loss.loss_type must be one of {ops.LOSS_TYPES}, got {lc.loss_type!r}")
    if lc.dpo_slicing not in ops.DPO_SLICINGS:
        raise ConfigError(f"loss.dpo_slicing must be one of {ops.DPO_SLICINGS}, got {lc.dpo_slicing!r}")
    # outside these a stage trains without complaint on a different objective: β = 0 makes DPO's loss constant
    # (log 2, no gradient), a negative regularisation rewards large scores, a negative Δ lets unsafe answers win
    for key, value, ok, need in (("beta", lc.beta, lc.beta > 0, "> 0"),
                                 ("regularization", lc.regularization, lc.regularization >= 0, "≥ 0"),
                                 ("safety_margin", lc.safety_margin, lc.safety_margin >= 0, "≥ 0")):
        if not ok:
            raise ConfigError(f"loss.{key} must be {need}, got {value}")
    if lc.normalizer_type not in ops.NORMALIZER_TYPES:
        raise ConfigError(f"loss.normalizer_type must be none|RunningMeanStd|ExponentialMovingAverage, "
                          f"got {lc.normalizer_type!r}")
    optim.validate(t, "train")
    if str(cfg.model.get("optimizer_memory", "device")) not in state_lib.OPTIMIZER_MEMORY:
        raise ConfigError(f"model.optimizer_memory must be one of {state_lib.OPTIMIZER_MEMORY}")
    if export_layout(cfg) not in models.api.EXPORT_LAYOUTS:
        raise ConfigError(f"export_format must be one of {models.api.EXPORT_LAYOUTS}, got {export_layout(cfg)!r}")
    if str(cfg.data.get("template", "pku")) not in data_lib.TEMPLATES:
        raise ConfigError(f"data.template must be one of {data_lib.TEMPLATES}, got {cfg.data.template!r}")
    if int(cfg.data.max_length) < 2:
        raise ConfigError(f"data.max_length must be ≥ 2, got {cfg.data.max_length}")


def lora_settings(cfg) -> tuple[int, float]:
    """(rank, scale α/r) of the config's `lora` section; (0, 0.0) = full fine-tuning (or no section)."""
    section = cfg.get("lora")
    rank = int(section.rank) if section is not None else 0
    if rank < 0 or (rank and float(section.alpha) <= 0):
        raise ConfigError(f"lora.rank must be ≥ 0 and lora.alpha > 0, got rank={rank}, alpha={section.alpha}")
    unknown = [t for t in tuple(section.targets) if t not in lora_lib.DEFAULT_TARGETS] if rank else []
    if rank and (unknown or not tuple(section.targets)):  # else a ValueError traceback once the model is built
        raise ConfigError(f"lora.targets must name projections among {list(lora_lib.DEFAULT_TARGETS)}, got "
                          f"{list(section.targets)}")
    if rank and str(section.init) not in lora_lib.INITS:
        raise ConfigError(f"lora.init must be one of {lora_lib.INITS}, got {section.init!r}")
    if rank and str(section.get("export", "merged")) not in lora_lib.EXPORTS:
        raise ConfigError(f"lora.export must be one of {lora_lib.EXPORTS}, got {section.export!r}")
    return rank, (lora_lib.scale(float(section.alpha), rank) if rank else 0.0)


def wants_adapter_export(cfg, kind: str) -> bool:
    """lora.export == 'both': export/adapter/ in PEFT's format besides the merged weights (causal LMs only)."""
    section = cfg.get("lora")
    if section is None or not int(section.rank) or str(section.get("export", "merged")) != "both":
        return False
    if kind != "causal_lm":
        raise ConfigError("lora.export='both' writes a PEFT adapter for a causal LM; a score model exports its merged "
                          "weights (lora.export='merged')")
    return True


def export_adapter(model, merged_params, adapters, cfg, base_path: str, directory, tokenizer) -> None:
    """DIR/adapter: the adapters in PEFT's format (models/lora.save_peft) for `base_path`; when a pad token grew the
    vocabulary, the merged embedding and LM head ride along (PEFT loads them into a base resized to the tokenizer)."""
    section = cfg.lora
    extra = {}
    base_config = pathlib.Path(str(base_path)).expanduser() / "config.json"
    if base_config.is_file() and json.loads(base_config.read_text()).get("vocab_size") != model.config.vocab_size:
        tensors = models.to_hf_tensors(model, merged_params)
        extra = {k: v for k, v in tensors.items() if k in ("model.embed_tokens.weight", "lm_head.weight")}
    out = pathlib.Path(directory) / "adapter"
    lora_lib.save_peft(out, mesh_lib.to_host(adapters), rank=int(section.rank), alpha=float(section.alpha),
                       targets=tuple(section.targets), base_model=str(base_path), extra=extra)
    save_tokenizer(tokenizer, out)


def export_layout(cfg) -> str:
    """Score models: 'reference' (the reference's *ForScore layout) or 'hf' (transformers'
    *ForSequenceClassification, loadable by AutoModelForSequenceClassification); causal LMs ignore it."""
    return str(cfg.get("export_format", "reference"))


def load_model(stage: Stage, cfg, mesh, tokenizer, rules=None):
    m = cfg.model
    kwargs = dict(mesh=mesh, rules=rules, dtype=jnp.dtype(m.param_dtype), compute_dtype=m.dtype,
                  remat_policy=m.remat_policy,
                  scan_layers=bool(m.scan_layers))
    if stage.model_kind == "score":
        lc = loss_config(cfg)
        # an 'hf' export has no head bias (transformers' head has none): train without one so it is exact
        bias = {"score_bias": False} if export_layout(cfg) == "hf" else {}
        model = models.load_score_model(cfg.model_name_or_path, rng=int(cfg.seed), score_type=stage.score_type,
                                        score_dim=stage.score_dim, **bias,
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
    source = cfg.data.get("source")
    raw_train = data_lib.load_mix(list(cfg.train_datasets), source)
    raw_eval = None
    if cfg.get("eval_datasets"):
        raw_eval = data_lib.load_mix(list(cfg.eval_datasets), source)
    elif float(cfg.get("eval_split_ratio", 0.0)) > 0:
        train_idx, test_idx = data_lib.split_holdout(len(raw_train), float(cfg.eval_split_ratio))
        raw_eval = [raw_train[i] for i in test_idx] or None
        raw_train = [raw_train[i] for i in train_idx]
    template = data_lib.make_template(str(cfg.data.get("template", "pku")), tokenizer)
    options = stage.data_options(cfg) if stage.data_options is not None else {}
    train = data_lib.build_dataset(stage.train_kind, raw_train, tokenizer, max_length, template, **options)
    evaluation = None
    if raw_eval and stage.eval_fn is not None:
        evaluation = data_lib.build_dataset(stage.eval_kind, raw_eval, tokenizer, max_length, template, **options)
    return train, evaluation


# ---------------------------------------------------------------------------------------------------- the step


def make_init_state(optimizer):
    """init_state(params, key) → the supervised train state {'step', 'updates', 'skipped', 'params', 'opt_state',
    'rng'} (normalizer statistics are parameters, not optimized)."""

    def init_state(params, key):
        trainable, _ = models.split_normalizer(params)
        return {"step": jnp.zeros((), jnp.int32), "updates": jnp.zeros((), jnp.int32),
                "skipped": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(trainable),
                "rng": key}

    return init_state


def adapted_apply(apply, base, lora_scale: float):
    """With LoRA: model.apply on base + adapters for a trainable tree that holds adapters, and on the parameters as
    given otherwise — the frozen base itself is the DPO/SafeDPO reference, adapters off (METHODS_BEYOND §4.3)."""
    if not lora_scale:
        return apply

    def fn(params, *args, **kwargs):
        return apply(lora_lib.inject(base, params, lora_scale) if lora_lib.KEY in params else params, *args, **kwargs)

    return fn


def make_train_step(stage: Stage, model, optimizer, schedule, lc: LossConfig, grad_accum: int,
                    optimizer_on_host: bool = False, lora_scale: float = 0.0):
    """step(state, batches (GA, B, ...), frozen) -> (state, metrics); pure, to be jitted.

    lora_scale > 0: the state's parameters are {adapters, [score head, normalizer]} and `frozen` is the base model
    (models/lora.py); gradients and optimizer state exist for the trainable tree only.

    Score models in train mode (spec §3.4): the normalizer statistics are updated with the step's *raw* end scores
    (over every data-parallel shard: the batch is global here), and when `do_normalize` is set the loss sees the
    scores normalised with the *updated* statistics (stop-gradient)."""
    base_apply = model.apply
    score = model.kind == "score"
    normalize_fn = ops.SCORE_TYPE_TO_FUNCTION.get(model.config.score_type) if score else None
    do_normalize = score and model.config.do_normalize

    def step(state, batches, frozen):
        apply = adapted_apply(base_apply, frozen, lora_scale)
        trainable, normalizer = models.split_normalizer(state["params"])

        def micro(carry, batch):
            grad_sum, norm_state = carry

            def objective(tp):
                params = models.with_normalizer(tp, norm_state)
                updated = {}

                def train_apply(params, ids, mask):
                    scores, end = apply(params, ids, mask, normalize=False)
                    stats = ops.normalizer_update(norm_state, jax.lax.stop_gradient(end), lc.normalizer_type,
                                                  lc.momentum)
                    updated["stats"] = stats
                    if do_normalize:
                        stats = jax.lax.stop_gradient(stats)
                        scores, end = (ops.normalize(scores, stats, normalize_fn),
                                       ops.normalize(end, stats, normalize_fn))
                    return scores, end

                loss, aux = stage.loss_fn(train_apply if norm_state is not None else apply, params, frozen, batch, lc)
                return loss, (aux, updated.get("stats", norm_state))

            (loss, (aux, norm_state)), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
            grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
            return (grad_sum, norm_state), (loss, aux["metrics"])

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        (grad_sum, new_norm), (losses, metrics) = jax.lax.scan(micro, (zeros, normalizer), batches)
        grads = jax.tree.map(lambda g: g / grad_accum, grad_sum)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(grad_norm) & jnp.all(jnp.isfinite(losses))

        def update(operands):  # a cond, not a where: the skipped branch passes the donated buffers through
            params, opt_state, norm = operands
            updates, opt_state = optimizer.update(grads, state_lib.to_device(opt_state, optimizer_on_host), params)
            return (optax.apply_updates(params, updates), state_lib.to_host(opt_state, optimizer_on_host),
                    new_norm if norm is not None else None)

        new_trainable, new_opt, kept_norm = jax.lax.cond(finite, update, lambda operands: operands,
                                                         (trainable, state["opt_state"], normalizer))
        new_params = models.with_normalizer(dict(new_trainable), kept_norm)
        out = {
            "step": state["step"] + 1,
            "updates": state["updates"] + finite.astype(jnp.int32),
            "skipped": state["skipped"] + (~finite).astype(jnp.int32),
            "params": new_params,
            "opt_state": new_opt,
            "rng": jax.random.split(state["rng"])[0],
        }
        logged = {"loss": jnp.mean(losses), "grad_norm": grad_norm, "lr": schedule(state["updates"]),
                  "skipped": out["skipped"], **jax.tree.map(jnp.mean, metrics)}
        return out, logged

    return step


def make_eval_step(stage: Stage, model, lc: LossConfig, lora_scale: float = 0.0):
    def step(params, batch, frozen):
        return stage.eval_fn(adapted_apply(model.apply, frozen, lora_scale), params, frozen, batch, lc)

    return step


# ---------------------------------------------------------------------------------------------------- the loop


def _stack_micro_batches(host: list[dict], kind: str, pad_id: int) -> dict:
    """GA host micro-batches → one (GA, B, L) dict; micro-batches of different buckets are re-padded to the widest."""
    if len({b[next(iter(b))].shape for b in host}) > 1:
        width = max(b[next(iter(b))].shape[1] for b in host)
        host = [data_lib.collate(kind, _unbatch(b), pad_id, (width,)) for b in host]
    return {k: np.stack([b[k] for b in host]) for k in host[0]}


class SupervisedLoop:
    """A supervised stage as the loop drives it (`training.loop.LoopStage`): one jitted optimizer step over GA
    micro-batches per loop step, metrics fetched every `train.log_every` steps and at the last."""

    unit = "step"
    skip_hint = "lower the learning rate or check the data"

    def __init__(self, stage: Stage, run, iterator, train_ds, eval_ds, step_fn, eval_fn, frozen, *, lc: LossConfig,
                 grad_accum: int, total: int, log_every: int, eval_batch_size: int, buckets):
        self.stage, self.run, self.iterator = stage, run, iterator
        self.train_ds, self.eval_ds, self.frozen = train_ds, eval_ds, frozen
        self.step_fn, self.eval_fn = step_fn, eval_fn
        self.lc, self.grad_accum, self.total, self.log_every = lc, grad_accum, total, log_every
        self.eval_batch_size, self.buckets = eval_batch_size, buckets
        self.name = stage.name
        self.can_evaluate = eval_fn is not None
        self.batch_spec = NamedSharding(run.mesh, P(None, mesh_lib.BATCH_AXES))
        self._tick = time.perf_counter()

    def next_batch(self) -> list[dict]:
        self._tick = time.perf_counter()
        return [next(self.iterator) for _ in range(self.grad_accum)]

    def step(self, state, host: list[dict], number: int, stop):
        stacked = _stack_micro_batches(host, self.train_ds.kind, self.train_ds.pad_token_id)
        state, metrics = self.step_fn(state, mesh_lib.put_global(stacked, self.batch_spec), self.frozen)
        if number % self.log_every and number != self.total:
            return state, []
        metrics = {k: float(v) for k, v in mesh_lib.to_host(metrics).items()}
        elapsed = time.perf_counter() - self._tick
        return state, [{"step": number, "epoch": number * self.grad_accum / max(1, self.iterator.batches_per_epoch),
                        **metrics, "tokens_per_sec": sum(map(token_count, host)) / max(elapsed, 1e-9)}]

    def data_position(self) -> dict:
        return {"data": self.iterator.state_dict()}

    def checkpoint_meta(self, state, step: int, position: dict) -> dict:
        return position

    def evaluate(self, state, step: int) -> dict:
        per = {}
        for batch in data_lib.iterate_once(self.eval_ds, self.eval_batch_size, self.buckets):
            valid = batch.pop("valid")
            out = mesh_lib.to_host(self.eval_fn(state["params"], mesh_lib.shard_batch(batch, self.run.mesh),
                                                self.frozen))
            for k, v in out.items():
                per.setdefault(k, []).append(np.asarray(v)[valid])
        result = self.stage.summarize({k: np.concatenate(v) for k, v in per.items()}, self.lc)
        self.run.log({"step": step, **{f"eval/{k}": v for k, v in result.items()}})
        return result

    def counts(self, state, step: int) -> tuple[int, int]:
        return int(mesh_lib.to_host(state["skipped"])), step

    def postfix(self, row: dict) -> dict[str, str]:
        return {k: f"{row[k]:.4g}" for k in ("loss", "accuracy", "accuracy_sign", "reward_accuracy") if k in row}


def _trainable(stage: Stage, cfg, model):
    """(initial trainable tree, its logical-axes trees, frozen tree, LoRA scale): the model's parameters, or with
    LoRA the adapters (+ a score head) over the frozen base (which is then also the reference)."""
    frozen = jax.tree.map(jnp.copy, model.params) if stage.needs_reference else {}
    lora_rank, lora_scale = lora_settings(cfg)
    initial, axes = model.params, [models.param_logical_axes(model.config, model.kind)]
    if lora_rank:
        head, frozen = lora_lib.split(model.params, model.kind)
        section = cfg.lora
        adapters = lora_lib.init(frozen, lora_rank, tuple(section.targets), int(cfg.seed), str(section.init))
        initial = {lora_lib.KEY: adapters, **head}
        axes.append(lora_lib.adapter_axes(axes[0], adapters))  # each adapter sharded like its kernel
        log.info("%s: LoRA rank %d (α=%g) on %s: %d adapter parameters", stage.name, lora_rank,
                 float(section.alpha), ",".join(section.targets), lora_lib.parameter_count(adapters))
    return initial, axes, frozen, lora_scale


def _batch_iterator(train_ds, cfg, buckets):
    try:
        return data_lib.BatchIterator(train_ds, int(cfg.train.batch_size), seed=int(cfg.seed), buckets=buckets,
                                      num_shards=jax.process_count(), shard_index=jax.process_index())
    except ValueError as err:
        raise ConfigError(f"train.batch_size: {err}") from None


def train(stage: Stage, cfg) -> dict[str, Any]:
    """Run (or resume) one stage; returns a summary dict. Raises ConfigError / DataError / ModelError on bad input,
    TrainingError when too many updates were non-finite, RunInterrupted after a signal (checkpoint saved)."""
    with Run(cfg, stage.name, validate=validate_config) as run:
        lc, t = loss_config(cfg), cfg.train
        tokenizer = load_tokenizer(cfg.model_name_or_path)
        if stage.model_kind == "score" and export_layout(cfg) == "hf":  # transformers pools on the pad id
            give_pad_its_own_id(tokenizer)
        train_ds, eval_ds = build_data(stage, cfg, tokenizer)
        grad_accum, buckets = int(t.grad_accum), tuple(cfg.data.get("buckets", ())) or None
        iterator = _batch_iterator(train_ds, cfg, buckets)
        model = load_model(stage, cfg, run.mesh, tokenizer, run.rules)
        probe = None
        if int(t.get("head_probe_steps", 0)) > 0 and not run.resuming:  # a resume restores the probed head
            probe = head_probe.probe(stage, model, cfg, train_ds, run.mesh, lc, buckets)
        per_epoch = optim.updates_per_epoch(iterator.batches_per_epoch, grad_accum)
        total = int(t.max_steps) if int(t.max_steps) > 0 else int(t.epochs) * per_epoch
        optimizer, schedule = optim.OptimConfig.from_config(t).make(total)
        log.info("%s: %d train examples, %d optimizer steps (%d per epoch), batch %d × GA %d, mesh %s",
                 stage.name, len(train_ds), total, per_epoch, int(t.batch_size), grad_accum, dict(run.mesh.shape))
        initial, axes, frozen, lora_scale = _trainable(stage, cfg, model)
        adapter_export = wants_adapter_export(cfg, model.kind)
        # the state is laid out from its abstract shape and born sharded (training/state.py)
        memory_kind = str(cfg.model.get("optimizer_memory", "device"))
        state = state_lib.allocate(make_init_state(optimizer), initial, jax.random.PRNGKey(int(cfg.seed)),
                                   axes=axes, mesh=run.mesh, rules=run.rules, optimizer_memory=memory_kind)
        model.params = None  # the state owns the parameters from here on (donated every step)
        state_sh = jax.tree.map(lambda x: x.sharding, state)
        start_step = 0
        if run.resuming:
            state, meta = run.restore(state)
            iterator.load_state_dict(meta["data"])
            start_step = int(meta["step"])
        step_fn = jax.jit(make_train_step(stage, model, optimizer, schedule, lc, grad_accum,
                                          optimizer_on_host=memory_kind != "device", lora_scale=lora_scale),
                          in_shardings=(state_sh, NamedSharding(run.mesh, P(None, mesh_lib.BATCH_AXES)),
                                        jax.tree.map(lambda x: x.sharding, frozen)),
                          out_shardings=(state_sh, mesh_lib.replicated(run.mesh)), donate_argnums=(0,))
        eval_fn = jax.jit(make_eval_step(stage, model, lc, lora_scale)) if eval_ds is not None else None
        loop_stage = SupervisedLoop(stage, run, iterator, train_ds, eval_ds, step_fn, eval_fn, frozen, lc=lc,
                                    grad_accum=grad_accum, total=total, log_every=max(1, int(t.log_every)),
                                    eval_batch_size=int(t.get("eval_batch_size", t.batch_size)), buckets=buckets)
        done = loop.drive(run, loop_stage, state, start_step, loop.Cadence.from_config(cfg, total, epoch=per_epoch))
        state = done.state
        summary: dict[str, Any] = {"stage": stage.name, "steps": done.step, "total_steps": total,
                                   "train": {k: v for k, v in done.last_row.items() if k != "step"},
                                   "eval": done.last_eval or {}, "skipped_updates": done.skipped,
                                   "train_examples": len(train_ds), "data_counts": train_ds.counts}
        if probe is not None:
            summary["head_probe"] = probe

        def export(directory):
            params = mesh_lib.to_host(state["params"])  # every process takes part in the gather; one writes
            adapters = params.get(lora_lib.KEY) if lora_scale else None
            if lora_scale:  # plain HF weights: W + s·A@B (loadable without any LoRA library)
                params = mesh_lib.to_host(lora_lib.merge(frozen, params, lora_scale))
            assert_finite(params, f"the {stage.name} model", float(cfg.train.get("max_weight_abs", 0)) or None)
            if jax.process_index() == 0:
                models.save_pretrained(model, params, directory, layout=export_layout(cfg),
                                       pad_token_id=tokenizer.pad_token_id)
                save_tokenizer(tokenizer, directory)
                if adapter_export:
                    export_adapter(model, params, adapters, cfg, cfg.model_name_or_path, directory, tokenizer)

        curves = ("loss", "accuracy", "accuracy_sign", "reward_accuracy")
        summary = run.finish(summary, complete=done.complete, export=export, curves=curves)
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


__all__ = ["ConfigError", "LossConfig", "make_train_step", "print_summary", "train"]  # ConfigError: re-exported
