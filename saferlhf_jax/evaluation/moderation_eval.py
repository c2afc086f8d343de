"""Full moderation evaluation (spec §5.4): paper metrics, per-category F1, severity confusion matrix PNG."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from saferlhf_jax import data as data_lib
from saferlhf_jax.algorithms import moderation
from saferlhf_jax.parallel import mesh as mesh_lib


def evaluate_moderation(model, tokenizer, datasets, output_dir, *, batch_size: int = 16, max_length: int = 512,
                        source: str | None = None,
                        mesh=None) -> dict:
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ds = data_lib.build_dataset("moderation", data_lib.load_mix(list(datasets), source), tokenizer, max_length)
    step = jax.jit(lambda p, b: moderation.eval_fn(model.apply, p, {}, b, None))
    div = mesh_lib.batch_divisor(mesh) if mesh is not None else 1
    batch_size = max(div, batch_size // div * div)
    per: dict[str, list] = {}
    for batch in data_lib.iterate_once(ds, batch_size):
        valid = batch.pop("valid")
        if mesh is not None:
            batch = mesh_lib.shard_batch(batch, mesh)
        for k, v in step(model.params, batch).items():
            per.setdefault(k, []).append(np.asarray(jax.device_get(v))[valid])
    per = {k: np.concatenate(v) for k, v in per.items()}
    metrics = moderation.moderation_metrics(per["pred_unsafe"], per["is_unsafe"], per["pred_categories"],
                                            per["categories"], per["category_valid"], per["pred_severity"],
                                            per["severity"])
    metrics["datasets"] = list(datasets)
    (output_dir / "moderation_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    moderation.plot_confusion(metrics["severity_confusion"], output_dir / "severity_confusion.png")
    return metrics
