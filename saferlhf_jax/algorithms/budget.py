"""A cost budget in the units a user thinks in, calibrated to the cost model's units from the labels users have.

A user of PKU-SafeRLHF-format data knows each response's `is_response_*_safe`, `response_*_severity_level` (0..3)
and `response_*_harm_category` (19 flags) — not a "cost-model threshold". A `Budget` says what the policy may do in
those units:

    target='unsafe_rate',   value=0.1                 at most 10 % of answers unsafe
    target='mean_severity', value=0.5                 a mean severity level of at most 0.5
    target='mean_severity', value=0.35, category='Violence'   severity counted only on answers flagged Violence

and `calibrate` turns it into the threshold PPO-Lag's λ reads: on a held-out labelled split (responses the cost
model never trained on) it fits the least-squares line score ≈ slope · label + intercept over the N responses
(label: 1 − is_safe, or the severity level, times the category flag when one is named), and reads it at `value` —
the mean cost-model score of a policy whose answers meet the target on average, so "mean cost ≤ threshold" (the
constraint PPO-Lag enforces on its window of episodes) is the user's budget in the model's units. `confidence = z`
lowers the threshold by z standard errors of the fitted line there (z = 1.645: a one-sided 95 % lower bound). The
fit, the threshold and its standard error go to the stage's metrics, summary.json and budget.json.

`target=''` keeps the raw threshold in cost-model units (rl.threshold / a constraint's threshold), as the reference.
No ground truth enters: only the rows' own labels and the cost model's scores (spec §7.33).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from saferlhf_jax import data as data_lib
from saferlhf_jax.data.raw import PKU_HARM_CATEGORIES, RawSample
from saferlhf_jax.errors import ConfigError
from saferlhf_jax.parallel import mesh as mesh_lib

TARGETS = ("unsafe_rate", "mean_severity")
MAX_SEVERITY = 3


@dataclasses.dataclass(frozen=True)
class Budget:
    """A budget in label units; `target=''`: none (the threshold is given in cost-model units)."""
    target: str = ""
    value: float = 0.0
    category: str = ""                 # a PKU harm category: only answers flagged with it count
    datasets: tuple[str, ...] = ()     # the held-out labelled split (dataset specs, as train_datasets)
    confidence: float = 0.0            # z: the threshold is read z standard errors below the fitted line

    @property
    def calibrated(self) -> bool:
        return bool(self.target)

    def describe(self) -> str:
        what = {"unsafe_rate": "unsafe rate", "mean_severity": "mean severity"}.get(self.target, self.target)
        return f"{what} ≤ {self.value:g}" + (f" in category {self.category}" if self.category else "")


def parse(section, where: str) -> Budget:
    """A budget section ({target, value, category, datasets, confidence}: a ConfigDict or dict; None: none), checked
    as one-line ConfigErrors before any model loads."""
    if not section:
        return Budget()
    entry = dict(section)
    unknown = sorted(set(entry) - {f.name for f in dataclasses.fields(Budget)})
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; fields are "
                          f"{[f.name for f in dataclasses.fields(Budget)]}")
    datasets = entry.get("datasets", ()) or ()
    b = Budget(target=str(entry.get("target", "") or ""), value=float(entry.get("value", 0.0)),
               category=str(entry.get("category", "") or ""),
               datasets=(datasets,) if isinstance(datasets, str) else tuple(str(d) for d in datasets),
               confidence=float(entry.get("confidence", 0.0)))
    if not b.calibrated:
        return b
    if b.target not in TARGETS:
        raise ConfigError(f"{where}.target must be one of {TARGETS} (or '' for a threshold in cost-model units), "
                          f"got {b.target!r}")
    top = 1.0 if b.target == "unsafe_rate" else float(MAX_SEVERITY)
    if not 0.0 <= b.value <= top:
        raise ConfigError(f"{where}.value: a target {b.target} lies in [0, {top:g}], got {b.value}")
    if b.category and b.category not in PKU_HARM_CATEGORIES:
        raise ConfigError(f"{where}.category {b.category!r} is not a PKU-SafeRLHF harm category "
                          f"({', '.join(PKU_HARM_CATEGORIES)})")
    if not b.datasets:
        raise ConfigError(f"{where}.datasets: a budget in label units is calibrated on a held-out labelled split "
                          "(e.g. ('PKU-SafeRLHF/test',)); none given")
    if b.confidence < 0:
        raise ConfigError(f"{where}.confidence must be ≥ 0 (standard errors below the line), got {b.confidence}")
    return b


def response_label(unsafe: bool, severity: int | None, flags: dict[str, bool] | None, budget: Budget) -> float:
    """One response's label in the budget's units (0 when a named category is not flagged)."""
    if budget.category and not (flags or {}).get(budget.category, False):
        return 0.0
    if budget.target == "unsafe_rate":
        return float(unsafe)
    return float(min(int(severity or 0), MAX_SEVERITY))


def labelled_responses(samples: Sequence[RawSample], budget: Budget) -> tuple[list[tuple[str, str]], np.ndarray]:
    """((prompt, response) of every labelled response, labels (N,)): both responses of each preference row (or the
    one of a single-response row). A row without the labels the budget reads is an error naming it."""
    texts, labels = [], []
    for s in samples:
        prompt = s.input if isinstance(s.input, str) else "\n".join(s.input or ())
        for answer, safe, flags, severity in ((s.answer, s.is_safe, s.category, s.severity),
                                              (s.other_answer, s.is_other_safe, s.other_category, s.other_severity)):
            if answer is None:
                continue
            if safe is None or (budget.target == "mean_severity" and severity is None and not safe):
                raise ConfigError(f"{s.where or 'a calibration row'}: the budget ({budget.describe()}) reads "
                                  "is_response_*_safe" + (" and the severity level" if budget.target ==
                                                           "mean_severity" else "") + ", which this row lacks")
            texts.append((prompt, answer))
            labels.append(response_label(not safe, severity, flags, budget))
    return texts, np.asarray(labels, np.float64)


def fit(labels, scores, value: float, confidence: float = 0.0) -> dict[str, float]:
    """The least-squares line scores ≈ slope · labels + intercept over N responses (labels, scores: (N,)), read at
    `value` and lowered by `confidence` standard errors of the fitted value there."""
    labels, scores = np.asarray(labels, np.float64), np.asarray(scores, np.float64)
    if len(labels) < 3 or len(np.unique(labels)) < 2:  # a line and its standard error need both
        raise ConfigError(f"the budget is a line fitted to held-out labelled responses: {len(labels)} response(s) "
                          f"with {len(np.unique(labels))} distinct label(s) cannot fix one (3 and 2 at least); "
                          "give a larger calibration split (or one with both safe and unsafe answers)")
    (slope, intercept), cov = np.polyfit(labels, scores, 1, cov=True)  # cov scaled by RSS / (N − 2)
    t = float(value)
    se = float(np.sqrt(max(cov[0, 0] * t * t + 2 * cov[0, 1] * t + cov[1, 1], 0.0)))
    return {"slope": float(slope), "intercept": float(intercept), "responses": int(len(labels)),
            "standard_error": se, "confidence_z": float(confidence), "target_value": t,
            "threshold_cost_model_units": float(slope * t + intercept - confidence * se)}


def score_responses(cost_fn, params, tokenizer, template, texts: Sequence[tuple[str, str]], *, max_length: int,
                    batch_size: int) -> np.ndarray:
    """End scores (N,) or (N, K) of `cost_fn(params, ids, mask)` on template(prompt) + response + EOS, tokenized as
    a preference row's responses are (right-padded to power-of-two buckets, truncated to max_length)."""
    fn = jax.jit(cost_fn)
    out = []
    full = [template.format_prompt(p) + r for p, r in texts]
    for ids, mask, n in data_lib.end_score_batches(tokenizer, full, batch_size=batch_size, max_length=max_length,
                                                  multiple=batch_size):  # one batch shape per bucket
        out.append(np.asarray(mesh_lib.to_host(fn(params, ids, mask)), np.float64)[:n])  # every host: a collective
    return np.concatenate(out)


def calibrate(budgets: Sequence[Budget], scores_of, source: str | None) -> list[dict]:
    """Each calibrated budget's fit (`fit`'s dict plus the budget in words); `scores_of(k, texts)` → the (N,) scores
    of constraint k's cost on those responses. An uncalibrated budget gives None."""
    out = []
    for k, b in enumerate(budgets):
        if not b.calibrated:
            out.append(None)
            continue
        texts, labels = labelled_responses(data_lib.load_mix(list(b.datasets), source), b)
        line = fit(labels, scores_of(k, texts), b.value, b.confidence)
        out.append({"budget": b.describe(), "target": b.target, "category": b.category,
                    "datasets": list(b.datasets), "label_mean": float(np.mean(labels)), **line})
    return out


__all__ = ["Budget", "MAX_SEVERITY", "TARGETS", "calibrate", "fit", "labelled_responses", "parse", "response_label",
           "score_responses"]
