"""Severity-sensitive moderation classifier (PKU-SafeRLHF paper, Application 1).

A score model whose end scores (at the last real token) are 24 logits: [unsafe (1) | 19 harm categories | severity
(4: safe, minor, moderate, severe)]. Loss: BCE(unsafe) + BCE(categories, where labelled) + CE(severity, where
labelled). Metrics as the paper reports them (spec §5.4), unsafe = positive class.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from saferlhf_jax.data.raw import PKU_HARM_CATEGORIES, SEVERITY_NAMES
from saferlhf_jax.ops import baselines
from saferlhf_jax.training.stage import Stage

NUM_CATEGORIES = len(PKU_HARM_CATEGORIES)
NUM_SEVERITY = len(SEVERITY_NAMES)
SCORE_DIM = 1 + NUM_CATEGORIES + NUM_SEVERITY


def predict(apply, params, input_ids, attention_mask):
    """Probabilities: unsafe (B,), categories (B, 19), severity (B, 4)."""
    _, end_scores = apply(params, input_ids, attention_mask)
    unsafe, cats, sev = split_logits(end_scores)
    return jax.nn.sigmoid(unsafe), jax.nn.sigmoid(cats), jax.nn.softmax(sev, axis=-1)


def verdict(p_unsafe: float, p_categories, p_severity, threshold: float = 0.5) -> dict:
    """One answer's verdict from its probabilities (p_categories (19,), p_severity (4,)), consistent by construction:
    unsafe ⇔ p_unsafe ≥ threshold; the categories above the threshold (most probable first) only when unsafe; the
    severity "safe" exactly when not unsafe, else the most probable of minor / moderate / severe (the severity
    head's own argmax may be "safe" while the unsafe head fires: the two heads are trained apart)."""
    unsafe = bool(p_unsafe >= threshold)
    p_categories, p_severity = np.asarray(p_categories), np.asarray(p_severity)
    categories = {PKU_HARM_CATEGORIES[j]: round(float(p_categories[j]), 4) for j in np.argsort(-p_categories)
                  if p_categories[j] >= threshold} if unsafe else {}
    severity = SEVERITY_NAMES[1 + int(np.argmax(p_severity[1:]))] if unsafe else SEVERITY_NAMES[0]
    return {"unsafe": unsafe, "p_unsafe": round(float(p_unsafe), 4), "categories": categories, "severity": severity,
            "severity_probs": [round(float(x), 4) for x in p_severity]}


def split_logits(end_scores):
    """(B, 24) → unsafe (B,), categories (B, 19), severity (B, 4)."""
    return end_scores[:, 0], end_scores[:, 1:1 + NUM_CATEGORIES], end_scores[:, 1 + NUM_CATEGORIES:]


def _bce(logits, targets):
    return jax.nn.softplus(logits) - logits * targets


def loss_fn(apply, params, frozen, batch, cfg):
    _, end_scores = apply(params, batch["input_ids"], batch["attention_mask"])
    unsafe, cats, sev = split_logits(end_scores)
    y_unsafe = batch["is_unsafe"].astype(jnp.float32)
    loss_unsafe = jnp.mean(_bce(unsafe, y_unsafe))
    cat_w = batch["category_valid"].astype(jnp.float32)[:, None]
    loss_cats = jnp.sum(_bce(cats, batch["categories"].astype(jnp.float32)) * cat_w) / jnp.maximum(
        jnp.sum(cat_w) * NUM_CATEGORIES, 1.0)
    sev_valid = batch["severity"] >= 0
    sev_lp = jax.nn.log_softmax(sev, axis=-1)
    picked = jnp.take_along_axis(sev_lp, jnp.maximum(batch["severity"], 0)[:, None], axis=-1)[:, 0]
    loss_sev = -jnp.sum(jnp.where(sev_valid, picked, 0.0)) / jnp.maximum(jnp.sum(sev_valid), 1)
    loss = loss_unsafe + loss_cats + loss_sev
    metrics = {"accuracy": jnp.mean(((unsafe > 0) == (y_unsafe > 0)).astype(jnp.float32)),
               "loss_unsafe": loss_unsafe, "loss_categories": loss_cats, "loss_severity": loss_sev}
    return loss, {"metrics": metrics, "end_scores": end_scores}


def eval_fn(apply, params, frozen, batch, cfg):
    _, end_scores = apply(params, batch["input_ids"], batch["attention_mask"])
    unsafe, cats, sev = split_logits(end_scores)
    return {"pred_unsafe": unsafe > 0, "pred_categories": cats > 0, "pred_severity": jnp.argmax(sev, axis=-1),
            "is_unsafe": batch["is_unsafe"] > 0, "categories": batch["categories"],
            "category_valid": batch["category_valid"], "severity": batch["severity"]}


def _f1(tp, fp, fn) -> float:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _ratio(num, den) -> float:
    return float(num / den) if den else float("nan")


def moderation_metrics(pred_unsafe, is_unsafe, pred_categories, categories, category_valid, pred_severity,
                       severity) -> dict:
    """Paper metrics (unsafe = positive). Undefined ratios (no positives, no safe responses, no labels) are NaN;
    F1 with no positive predictions and no positives is 0 (nothing detected)."""
    pu, yu = np.asarray(pred_unsafe, bool), np.asarray(is_unsafe, bool)
    tp, fp = int(np.sum(pu & yu)), int(np.sum(pu & ~yu))
    fn, tn = int(np.sum(~pu & yu)), int(np.sum(~pu & ~yu))
    pc, yc = np.asarray(pred_categories, bool), np.asarray(categories, bool)
    cv = np.asarray(category_valid, bool)
    ps, ys = np.asarray(pred_severity), np.asarray(severity)
    sv = ys >= 0
    exact = np.all(pc == yc, axis=-1)
    out = {
        "n": int(pu.size),
        "accuracy": _ratio(tp + tn, pu.size),
        "f1": _f1(tp, fp, fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "fpr": _ratio(fp, fp + tn),
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "severity_accuracy": _ratio(np.sum((ps == ys) & sv), np.sum(sv)),
        "severity_accuracy_unsafe": _ratio(np.sum((ps == ys) & sv & yu), np.sum(sv & yu)),
        "category_exact_match": _ratio(np.sum(exact & cv), np.sum(cv)),
        "category_exact_match_unsafe": _ratio(np.sum(exact & cv & yu), np.sum(cv & yu)),
    }
    per_cat = {}
    for j, name in enumerate(PKU_HARM_CATEGORIES):
        p, y = pc[cv, j], yc[cv, j]
        per_cat[name] = _f1(int(np.sum(p & y)), int(np.sum(p & ~y)), int(np.sum(~p & y)))
    out["category_f1"] = per_cat
    sev_cm = np.zeros((NUM_SEVERITY, NUM_SEVERITY), int)
    for t, p in zip(ys[sv], ps[sv]):
        sev_cm[int(t), int(p)] += 1
    out["severity_confusion"] = sev_cm.tolist()
    return out


def summarize(per_example, cfg=None):
    m = moderation_metrics(per_example["pred_unsafe"], per_example["is_unsafe"], per_example["pred_categories"],
                           per_example["categories"], per_example["category_valid"], per_example["pred_severity"],
                           per_example["severity"])
    return {**{k: v for k, v in m.items() if isinstance(v, (int, float))},
            **baselines.majority(per_example["is_unsafe"])}


def plot_confusion(matrix, path, labels=SEVERITY_NAMES, title="severity: label (rows) × prediction (columns)"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(m, cmap="Blues")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


STAGE = Stage(name="moderation", model_kind="score", train_kind="moderation", loss_fn=loss_fn,
              eval_kind="moderation", eval_fn=eval_fn, summarize=summarize, score_type="moderation",
              score_dim=SCORE_DIM)
