"""Standalone reward / cost model evaluation (spec §5.1): accuracy (and sign accuracy for a cost model), score
statistics, per-sample CSV, scores.npy (+ safe/unsafe split for a cost model) and distribution histograms."""

from __future__ import annotations

import csv
import json
import logging
import pathlib

import jax
import numpy as np

from saferlhf_jax import data as data_lib
from saferlhf_jax import models
from saferlhf_jax.algorithms import cost as cost_stage
from saferlhf_jax.algorithms import reward as reward_stage
from saferlhf_jax.parallel import mesh as mesh_lib
from saferlhf_jax.data.tokenizer import load_tokenizer
from saferlhf_jax.training.stage import LossConfig

log = logging.getLogger(__name__)


def _plot_reward(scores: np.ndarray, path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(scores, bins=100, color="tab:blue", alpha=0.8)
    ax.axvline(float(np.mean(scores)), color="k", linestyle="--", label=f"mean {np.mean(scores):.3f}")
    ax.set_xlabel("reward")
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_cost(safe: np.ndarray, unsafe: np.ndarray, path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    both = np.concatenate([safe, unsafe])
    bins = np.linspace(both.min(), both.max(), 101) if both.size and both.min() < both.max() else 100
    ax.hist(safe, bins=bins, color="tab:green", alpha=0.6, label=f"safe ({safe.size})")
    ax.hist(unsafe, bins=bins, color="tab:red", alpha=0.6, label=f"unsafe ({unsafe.size})")
    ax.axvline(0.0, color="k", linestyle="--", label="cost = 0 (safety boundary)")
    ax.set_xlabel("cost")
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def best_threshold(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """The threshold t maximising accuracy of `score > t ⇔ positive`, and that accuracy (ties: the t nearest 0)."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    order = np.unique(scores)
    candidates = np.concatenate([[order[0] - 1.0], (order[:-1] + order[1:]) / 2, [order[-1] + 1.0]])
    accs = np.array([np.mean((scores > t) == positive) for t in candidates])
    best = np.flatnonzero(accs == accs.max())
    t = candidates[best[np.argmin(np.abs(candidates[best]))]]
    return float(t), float(accs.max())


def calibration_by_severity(costs: np.ndarray, severity: np.ndarray, unsafe: np.ndarray) -> dict:
    """Cost-model calibration (paper: cost 0 is the safety boundary and costs track severity)."""
    costs, severity, unsafe = np.asarray(costs), np.asarray(severity), np.asarray(unsafe, bool)
    levels = {}
    for level in range(4):
        sel = severity == level
        levels[str(level)] = {"count": int(sel.sum()),
                              "mean_cost": float(costs[sel].mean()) if sel.any() else float("nan"),
                              "median_cost": float(np.median(costs[sel])) if sel.any() else float("nan")}
    t, acc = best_threshold(costs, unsafe)
    return {"by_severity": levels, "sign_accuracy_at_0": float(np.mean((costs > 0) == unsafe)),
            "best_threshold": t, "accuracy_at_best_threshold": acc}


def _box(groups: dict[str, np.ndarray], path: pathlib.Path, ylabel: str, title: str, zero_line: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k, v in groups.items() if len(v)]
    fig, ax = plt.subplots(figsize=(6, 4))
    if names:
        ax.violinplot([groups[k] for k in names], showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), [f"{k}\n(n={len(groups[k])})" for k in names])
    if zero_line:
        ax.axhline(0.0, color="k", linestyle="--", linewidth=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_score_model(model_dir, datasets, output_dir, *, batch_size: int = 16, max_length: int = 512,
                         mesh=None, score_type: str | None = None, source: str | None = None) -> dict:
    """Score every pair of `datasets` with the model and write the reports. Returns the summary dict."""
    output_dir = pathlib.Path(output_dir)
    mesh = mesh or mesh_lib.make_mesh(fsdp=-1)
    tokenizer = load_tokenizer(model_dir)
    model = models.load_score_model(model_dir, mesh=mesh, require_head=True)
    score_type = score_type or model.config.score_type
    if score_type not in ("reward", "cost"):
        raise ValueError(f"{model_dir}: score_type {score_type!r} is neither reward nor cost")
    stage = reward_stage.STAGE if score_type == "reward" else cost_stage.STAGE
    raw = data_lib.load_mix(list(datasets), source)
    ds = data_lib.build_dataset(stage.eval_kind, raw, tokenizer, max_length)
    # only once the model and the data have loaded: a mistyped --model must not leave a <model>/eval tree behind
    output_dir.mkdir(parents=True, exist_ok=True)
    div = mesh_lib.batch_divisor(mesh)
    batch_size = max(div, (batch_size // div) * div)
    eval_step = jax.jit(lambda p, b: stage.eval_fn(model.apply, p, {}, b, LossConfig()))
    per: dict[str, list] = {}
    for batch in data_lib.iterate_once(ds, batch_size):
        valid = batch.pop("valid")
        out = eval_step(model.params, mesh_lib.shard_batch(batch, mesh))
        for k, v in out.items():
            per.setdefault(k, []).append(np.asarray(jax.device_get(v))[valid])
    per = {k: np.concatenate(v) for k, v in per.items()}
    summary = {"model": str(model_dir), "score_type": score_type, "datasets": list(datasets),
               **stage.summarize(per, None), "filtered": ds.counts}
    rows = [raw[ex["row"]] for ex in ds.examples]
    with open(output_dir / "scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        if score_type == "reward":
            writer.writerow(["prompt", "better_response", "better_reward", "worse_response", "worse_reward"])
            for s, b, w in zip(rows, per["better"], per["worse"]):
                better, worse = (s.answer, s.other_answer) if s.better else (s.other_answer, s.answer)
                writer.writerow([_text(s.input), better, f"{b:.6f}", worse, f"{w:.6f}"])
            scores = np.concatenate([per["better"], per["worse"]])
            np.save(output_dir / "scores.npy", scores)
            _plot_reward(scores, output_dir / "reward_distribution.png", f"reward distribution ({scores.size})")
            t, acc = best_threshold(scores, np.concatenate([np.ones(per["better"].size, bool),
                                                            np.zeros(per["worse"].size, bool)]))
            summary["calibration"] = {"better_mean": float(per["better"].mean()),
                                      "worse_mean": float(per["worse"].mean()),
                                      "margin_mean": float((per["better"] - per["worse"]).mean()),
                                      "best_threshold": t, "accuracy_at_best_threshold": acc}
            _box({"better": per["better"], "worse": per["worse"]}, output_dir / "reward_by_preference.png",
                 "reward", "reward of the more / less helpful response", zero_line=False)
        else:
            writer.writerow(["prompt", "safer_response", "safer_cost", "safer_is_safe", "unsafer_response",
                             "unsafer_cost", "unsafer_is_safe"])
            for s, a, u, sa, su in zip(rows, per["safer"], per["unsafer"], per["safer_sign"], per["unsafer_sign"]):
                safer, unsafer = (s.answer, s.other_answer) if s.safer else (s.other_answer, s.answer)
                writer.writerow([_text(s.input), safer, f"{a:.6f}", bool(sa > 0), unsafer, f"{u:.6f}", bool(su > 0)])
            costs = np.concatenate([per["safer"], per["unsafer"]])
            signs = np.concatenate([per["safer_sign"], per["unsafer_sign"]])
            np.save(output_dir / "scores.npy", costs)
            np.save(output_dir / "safe_scores.npy", costs[signs > 0])
            np.save(output_dir / "unsafe_scores.npy", costs[signs < 0])
            _plot_cost(costs[signs > 0], costs[signs < 0], output_dir / "cost_distribution.png",
                       f"cost distribution ({costs.size})")
            sev = []
            for s in rows:
                first, second = (s.severity, s.other_severity) if s.safer else (s.other_severity, s.severity)
                sev.append((first, second))
            if all(a is not None and b is not None for a, b in sev):
                severity = np.concatenate([[a for a, _ in sev], [b for _, b in sev]])
                summary["calibration"] = calibration_by_severity(costs, severity, signs < 0)
                _box({["safe", "minor", "moderate", "severe"][k]: costs[severity == k] for k in range(4)},
                     output_dir / "cost_by_severity.png", "cost", "cost by severity level (0 = safety boundary)",
                     zero_line=True)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _text(x):
    return x if isinstance(x, str) else " | ".join(x)
