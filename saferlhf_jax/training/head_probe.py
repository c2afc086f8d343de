"""Linear probe of a fresh score head before fine-tuning (LP-FT: Kumar et al., "Fine-Tuning can Distort Pretrained
Features and Underperform Out-of-Distribution", ICLR 2022).

A reward, cost or moderation model starts from a causal LM with a random score head. With a short fine-tuning
budget (a CPU preset: 16 steps) the head barely moves and the held-out accuracies stay at the trivial baselines,
although the backbone's end features already separate safe from unsafe answers (SmolLM2-135M's moderation
classifier: 0.44 held-out without the probe, 0.79 with it, against a 0.60 majority class;
docs/pipeline_smollm2_run.json). So, when `train.head_probe_steps > 0`:

1. one forward pass over the training set collects each sequence's end feature h (E,) (the backbone's last
   hidden state at the end index — what the head reads);
2. the head (E → D, with bias) is fitted on those features with the stage's own loss (Bradley–Terry, the cost
   model's sign term, the moderation BCE/CE) by Adam on standardised features z = (h − μ)/σ, with an L2 penalty;
3. the fit is folded back into the raw feature space (W = W_z/σ, b = b_z − (μ/σ)·W_z) — exactly the same end
   scores — and fine-tuning starts from that head.

The stage's loss function is reused unchanged: in the probe's batches every sequence is one token whose id is
its row in the feature table, so the loss reads end scores at index 0 (sequence-wise losses only).
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from saferlhf_jax import data as data_lib
from saferlhf_jax import models
from saferlhf_jax.errors import ConfigError
from saferlhf_jax.models import safetensors_io
from saferlhf_jax.parallel import mesh as mesh_lib

log = logging.getLogger(__name__)

L2 = 1e-2  # on the standardised kernel: the features outnumber the examples of a small preset (576 vs ~800)


def check(stage, model, lc) -> None:
    """One-line ConfigErrors for a probe that cannot be exact or has nothing to fit."""
    if stage.model_kind != "score":
        raise ConfigError(f"train.head_probe_steps applies to score models (reward, cost, moderation), not "
                          f"{stage.name}")
    if lc.loss_type != "sequence-wise":
        raise ConfigError("train.head_probe_steps needs loss.loss_type='sequence-wise' (the probe sees end scores)")
    if model.config.do_normalize or not model.config.score_bias:
        raise ConfigError("train.head_probe_steps needs a score head with a bias and no score normalisation "
                          "(the standardised fit folds its mean into the bias)")
    names = safetensors_io.tensor_names(model.source)
    if "score_head.weight" in names or "score.weight" in names:
        raise ConfigError(f"train.head_probe_steps: {model.source} already has a trained score head; the probe "
                          "fits a fresh one (start from a causal LM, or set head_probe_steps=0)")


def end_features(model, dataset, batch_size: int, buckets, mesh) -> tuple[np.ndarray, dict]:
    """(table (N, E) float32, rows): every sequence's end feature, and the dataset's examples as one host batch in
    which each `<side>input_ids` is (n, 1) int32 indices into the table and each `<side>attention_mask` (n, 1) ones."""
    e = model.config.hidden_size
    features = models.replace_score_head(model, np.eye(e, dtype=np.float32), np.zeros(e, np.float32))
    forward = jax.jit(lambda p, ids, mask: features.apply(p, ids, mask)[1])  # do_normalize is off (check)
    table, rows = [], {}
    for batch in data_lib.iterate_once(dataset, batch_size, buckets):
        valid = batch.pop("valid")
        sides = [k[: -len("input_ids")] for k in batch if k.endswith("input_ids")]
        sharded = mesh_lib.shard_batch(batch, mesh) if mesh is not None else batch
        host = {k: np.asarray(v)[valid] for k, v in batch.items()}
        for side in sides:
            feats = np.asarray(mesh_lib.to_host(forward(features.params, sharded[f"{side}input_ids"],
                                                        sharded[f"{side}attention_mask"])))[valid]
            start = sum(len(t) for t in table)
            table.append(feats.astype(np.float32))
            host[f"{side}input_ids"] = np.arange(start, start + len(feats), dtype=np.int32)[:, None]
            host[f"{side}attention_mask"] = np.ones((len(feats), 1), np.int32)
        for k, v in host.items():
            rows.setdefault(k, []).append(v)
    return np.concatenate(table), {k: np.concatenate(v) for k, v in rows.items()}


def fit(stage, lc, table: np.ndarray, rows: dict, steps: int, learning_rate: float, batch_size: int,
        seed: int) -> tuple[dict, dict[str, Any]]:
    """The head {kernel (E, D), bias (D,)} (raw feature space) fitted by `steps` Adam steps of the stage's loss on
    minibatches of `rows`, and {loss_before, loss_after, accuracy_after(, ...)} on all of them."""
    mu, sigma = table.mean(0), table.std(0) + 1e-6
    z = jnp.asarray((table - mu) / sigma)
    e, d = table.shape[1], stage.score_dim

    def apply(head, ids, mask):  # one token per sequence: its id is its feature row
        end = z[ids[:, 0]] @ head["kernel"] + head["bias"]
        return end[:, None, :], end

    def objective(head, batch):
        loss, aux = stage.loss_fn(apply, head, {}, batch, lc)
        return loss + L2 * jnp.sum(jnp.square(head["kernel"])), aux["metrics"]

    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))

    @jax.jit
    def step(head, opt_state, batch):
        (loss, _), grads = jax.value_and_grad(objective, has_aux=True)(head, batch)
        updates, opt_state = optimizer.update(grads, opt_state, head)
        return optax.apply_updates(head, updates), opt_state, loss

    everything = jax.jit(objective)
    head = {"kernel": jnp.zeros((e, d), jnp.float32), "bias": jnp.zeros((d,), jnp.float32)}
    loss_before = float(everything(head, rows)[0])
    opt_state = optimizer.init(head)
    n = len(next(iter(rows.values())))
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        pick = rng.choice(n, min(batch_size, n), replace=False)
        head, opt_state, _ = step(head, opt_state, {k: v[pick] for k, v in rows.items()})
    loss_after, metrics = everything(head, rows)
    kernel = np.asarray(head["kernel"]) / sigma[:, None]
    bias = np.asarray(head["bias"]) - (mu / sigma) @ np.asarray(head["kernel"])
    info = {"steps": steps, "sequences": int(len(table)), "loss_before": loss_before,
            "loss_after": float(loss_after), **{f"{k}_after": float(v) for k, v in metrics.items()}}
    return {"kernel": kernel, "bias": bias}, info


def probe(stage, model, cfg, dataset, mesh, lc, buckets) -> dict[str, Any]:
    """Fit the fresh head of `model` (in place: `model.params["score_head"]`) as the module docstring says; returns
    what the fit did, for the log and summary.json."""
    check(stage, model, lc)
    t = cfg.train
    table, rows = end_features(model, dataset, int(t.get("eval_batch_size", t.batch_size)), buckets, mesh)
    head, info = fit(stage, lc, table, rows, int(t.head_probe_steps), float(t.get("head_probe_learning_rate", 1e-2)),
                     int(t.batch_size), int(cfg.seed))
    old = model.params["score_head"]
    model.params["score_head"] = {k: jax.device_put(jnp.asarray(v, old[k].dtype), old[k].sharding)
                                  for k, v in head.items()}
    log.info("%s: linear probe of the fresh score head on %d end features, %d steps: loss %.4f → %.4f",
             stage.name, info["sequences"], info["steps"], info["loss_before"], info["loss_after"])
    return info
