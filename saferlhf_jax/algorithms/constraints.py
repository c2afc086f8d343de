"""Several constraints at once (METHODS_BEYOND §3): where each cost comes from, and its λ settings.

A constraint reads one frozen score model (loaded once however many constraints read it) and one head of its end
scores: `score` / `score:<d>` of a cost model (identity: > 0 unsafe), or a moderation head (`unsafe`,
`category:<k>`, `severity>=<j>`, `severity_expected`; `transform` 'prob' by default). Config shape:

    c.rl.cost_models = {"cost": "runs/cost/export", "moderation": "runs/moderation/export"}
    c.rl.constraints = ({"name": "unsafe", "model": "cost", "head": "score", "threshold": 0.0},
                        {"name": "violence", "model": "moderation", "head": "category:6", "threshold": 0.02})

lambda_init / lambda_lr / lambda_max default to c.rl.lambda_* when absent; an empty tuple keeps the single
constraint of the base spec (c.cost_model_name_or_path, c.rl.threshold). A score-head constraint may give its budget
in label units instead of `threshold` (`budget`: {target, value, category, datasets, confidence}; algorithms/budget.py).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
import numpy as np

from saferlhf_jax import ops
from saferlhf_jax.algorithms import budget as budget_lib
from saferlhf_jax.errors import ConfigError

FIELDS = ("name", "model", "head", "transform", "threshold", "lambda_init", "lambda_lr", "lambda_max", "budget")


@dataclasses.dataclass(frozen=True)
class Constraint:
    name: str
    model: str                 # key of rl.cost_models
    head: str = "score"        # score | score:<d> | unsafe | category:<k> | severity>=<j> | severity_expected
    transform: str = ""        # '' = the head's default: identity for score heads, 'prob' for moderation heads
    threshold: float = 0.0
    lambda_init: float = 1.0
    lambda_lr: float = 0.1
    lambda_max: float | None = 5.0
    budget: budget_lib.Budget = budget_lib.Budget()   # calibrated: replaces `threshold` (algorithms/budget.py)

    @property
    def is_score_head(self) -> bool:
        return self.head == "score" or self.head.startswith("score:")

    @property
    def score_column(self) -> int:
        return int(self.head.split(":", 1)[1]) if ":" in self.head else 0


def parse(rl_section) -> list[Constraint]:
    """The `rl.constraints` entries (ConfigDicts or dicts) with the rl section's λ defaults; checked here so a typo
    is one line before any model loads."""
    entries = list(rl_section.get("constraints", ()) or ())
    models = dict(rl_section.get("cost_models", {}) or {})
    out = []
    for i, entry in enumerate(entries):
        entry = dict(entry)
        unknown = sorted(set(entry) - set(FIELDS))
        if unknown:
            raise ConfigError(f"rl.constraints[{i}]: unknown field(s) {unknown}; fields are {list(FIELDS)}")
        if not entry.get("name") or not entry.get("model"):
            raise ConfigError(f"rl.constraints[{i}] needs a name and a model (a key of rl.cost_models)")
        if entry["model"] not in models:
            raise ConfigError(f"rl.constraints[{i}] ({entry['name']}): model {entry['model']!r} is not in "
                              f"rl.cost_models {sorted(models)}")
        lmax = entry.get("lambda_max", rl_section.lambda_max)
        c = Constraint(name=str(entry["name"]), model=str(entry["model"]), head=str(entry.get("head", "score")),
                       transform=str(entry.get("transform", "") or ""),
                       threshold=float(entry.get("threshold", rl_section.threshold)),
                       lambda_init=float(entry.get("lambda_init", rl_section.lambda_init)),
                       lambda_lr=float(entry.get("lambda_lr", rl_section.lambda_lr)),
                       lambda_max=None if lmax is None or float(lmax) <= 0 else float(lmax),
                       budget=budget_lib.parse(entry.get("budget"), f"rl.constraints[{i}].budget"))
        _check_head(c, i)
        if c.budget.calibrated and not c.is_score_head:
            raise ConfigError(f"rl.constraints[{i}] ({c.name}): a budget in label units is calibrated on a cost "
                              f"model's score head, not {c.head!r}; give this constraint a threshold")
        out.append(c)
    return out


def _check_head(c: Constraint, i: int) -> None:
    where = f"rl.constraints[{i}] ({c.name})"
    if c.is_score_head:
        if c.head != "score" and not c.head.split(":", 1)[1].isdigit():
            raise ConfigError(f"{where}: head {c.head!r} must be 'score' or 'score:<d>'")
        if c.transform not in ("", "identity"):
            raise ConfigError(f"{where}: a score head's cost is its end score (transform 'identity'), "
                              f"got {c.transform!r}")
        return
    try:
        ops.moderation_cost(np.zeros((1, 24), np.float32), c.head, c.transform or "prob")
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def rl_fields(constraints: list[Constraint]) -> dict:
    """The RLConfig fields of K constraints ({} for none: the single base-spec constraint)."""
    if not constraints:
        return {}
    return dict(constraints=tuple(c.name for c in constraints), thresholds=tuple(c.threshold for c in constraints),
                lambda_inits=tuple(c.lambda_init for c in constraints),
                lambda_lrs=tuple(c.lambda_lr for c in constraints),
                lambda_maxes=tuple(c.lambda_max for c in constraints))


def head_cost(end_scores, c: Constraint):
    """(B,) cost of constraint `c` from its model's end scores (B, D)."""
    if c.is_score_head:
        return end_scores[:, c.score_column].astype(jnp.float32)
    return ops.moderation_cost(end_scores, c.head, c.transform or "prob")


def make_cost_fn(applies: dict[str, Callable], dims: dict[str, int], constraints: list[Constraint]) -> Callable:
    """cost_fn(params {model: params}, seq, mask) → (B, K): each model's forward runs once, every constraint
    reads its head. dims: each model's number of end scores, checked against the heads here (one line, at load)."""
    for c in constraints:
        d = dims[c.model]
        if c.is_score_head and c.score_column >= d:
            raise ConfigError(f"constraint {c.name}: head {c.head!r} but model {c.model!r} has {d} output(s)")
        if not c.is_score_head and d != 24:
            raise ConfigError(f"constraint {c.name}: head {c.head!r} reads a moderation model (24 end logits), "
                              f"but model {c.model!r} has {d} output(s)")
    needed = sorted({c.model for c in constraints})

    def fn(params, seq, mask):
        ends = {m: applies[m](params[m], seq, mask)[1] for m in needed}
        return jnp.stack([head_cost(ends[c.model], c) for c in constraints], axis=-1)

    return fn


def critic_head(source_kernel, source_bias, constraints: list[Constraint], source_model: str, init_std: float,
                seed: int = 0):
    """The K-output cost critic's head (METHODS_BEYOND §3.4): row k is the source model's score column when
    constraint k reads a score head of that model (so K = 1 reproduces the base spec), else N(0, init_std), bias 0.
    source_kernel (E, D), source_bias (D,) | None → (kernel (E, K), bias (K,) | None)."""
    kernel = np.asarray(source_kernel, np.float32)
    bias = None if source_bias is None else np.asarray(source_bias, np.float32)
    rng = np.random.default_rng(seed)
    cols, biases = [], []
    for c in constraints:
        if c.model == source_model and c.is_score_head and c.score_column < kernel.shape[1]:
            cols.append(kernel[:, c.score_column])
            biases.append(0.0 if bias is None else bias[c.score_column])
        else:
            cols.append(rng.standard_normal(kernel.shape[0]).astype(np.float32) * init_std)
            biases.append(0.0)
    return np.stack(cols, axis=1), (None if bias is None else np.asarray(biases, np.float32))
