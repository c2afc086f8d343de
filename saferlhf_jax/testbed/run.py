"""The ground-truth testbed: the whole Safe RLHF pipeline with *learned* models, judged by the world's true rules.

    world data (SFT stories, prompts) → SFT → sample 2 answers per prompt → PKU-SafeRLHF-format rows labelled by R*
    and C* → reward model, cost model (held-out accuracy) → the world's budget in the cost model's units (fitted on
    the held-out pairs: PPO-Lag's threshold) → PPO, PPO-Lag, reward shaping with fixed λ's, each from the same SFT
    model with the same RL budget → every policy answers held-out prompts → R*, C*, unsafe rate.

It is a pipeline like the main job (`saferlhf_jax.pipeline`): the world is its data source (it writes the SFT
stories, the prompt files and PKU-SafeRLHF rows) and its judge (it scores held-out answers), and every stage is the
regular one (`training.trainer.train`, `algorithms.ppo_lag.run`) on its regular config with the world's files as
`NAME:1.0:PATH` datasets, run through the same `training.orchestrator.Orchestrator` as the main job: a finished stage
is skipped when its config and inputs are unchanged and refused when they changed, an interrupted one resumes, so a
re-run of the same command continues. Outputs: results.json, report.md, reward_vs_cost.png, ppo_lag_curves.png.
With `rounds` > 1 each Lagrangian method then learns its cost model(s) again from pairs its own policy wrote and runs
again (the paper's iterative rounds; `Testbed.later_rounds`).
"""

from __future__ import annotations

import copy
import json
import logging
import pathlib
import time
from typing import Any

import jax
import numpy as np

from saferlhf_jax.algorithms import cost as cost_stage
from saferlhf_jax.algorithms import ppo_lag
from saferlhf_jax.algorithms import reward as reward_stage
from saferlhf_jax.algorithms import safedpo as safedpo_stage
from saferlhf_jax.algorithms import sft as sft_stage
from saferlhf_jax.data.template import DEFAULT_TEMPLATE
from saferlhf_jax.errors import ConfigError
from saferlhf_jax.evaluation.arena import generate_answers, score_texts
from saferlhf_jax.evaluation.loading import load_for_eval
from saferlhf_jax.testbed import report, world
from saferlhf_jax.training import trainer
from saferlhf_jax.training.orchestrator import Orchestrator, check_same_run, write_config
from saferlhf_jax.training.run import check_seed

log = logging.getLogger(__name__)

METHODS = ("sft", "ppo", "ppo_lag", "reward_shaping", "grpo_lag", "safedpo", "ppo_lag_summed")
# In the two-rule world ppo_lag and grpo_lag hold one constraint per rule (a cost model each); ppo_lag_summed is
# PPO-Lag held to one cost model of the summed cost (the single-constraint baseline of the multi preset).


def _jsonl(path: pathlib.Path, rows) -> pathlib.Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _stage(base, out: pathlib.Path, name: str, seed: int, testbed_cfg):
    cfg = copy.deepcopy(base)
    cfg.output_dir = str(out / name)
    cfg.seed = int(seed)
    cfg.logging.progress = bool(testbed_cfg.logging.progress)
    cfg.logging.tensorboard = False
    for key in ("data", "fsdp", "tensor"):
        cfg.mesh[key] = testbed_cfg.mesh[key]
    return cfg


def answers(model_dir, prompts: list[str], *, max_length: int, seed: int, batch_size: int) -> list[str]:
    """Sampled answers of a policy (temperature 1, its generation defaults) to the prompts, in order."""
    model, tok = load_for_eval(str(model_dir), "causal_lm")
    pairs = generate_answers(model, tok, prompts, max_length=max_length, batch_size=batch_size, seed=seed,
                             top_k=0)
    return [response for _, response in pairs]


def cost_model_budget(cost_dir, rows: list[dict], *, max_length: int, batch_size: int,
                      w: world.World = world.SINGLE, rule: int | None = None,
                      confidence: float = 0.0) -> dict[str, float]:
    """The world's budget (mean C* ≤ THRESHOLD) in the cost model's units, from held-out pairs it never trained on.

    A cost model trained with the sign term is close to a safe/unsafe classifier (about −4.5 for every safe answer,
    +4.4 for one harmful act or three), so "mean cost ≤ 0" would allow an unsafe rate near one half whatever the
    harm per unsafe answer. The least-squares line cost ≈ a·C* + b over the held-out responses, read at the
    threshold, is the budget a practitioner with a labelled calibration set would give PPO-Lag. With `rule`, the
    truth is that rule's C*_k (and the cost model is that rule's own).

    confidence = z > 0 reads the budget `z` standard errors of the fitted line below it (z = 1.645: the one-sided
    95 % lower bound): ~100 held-out responses fix the line only to ~0.2 cost-model units at the threshold, and a
    budget read too high by that much is broken by a policy that sits right at it."""
    texts, truth = [], []
    for r in rows:
        for key in ("response_0", "response_1"):
            texts.append(DEFAULT_TEMPLATE.format_prompt(r["prompt"]) + r[key])
            score = world.ground_truth(r[key], w)
            truth.append(score.cost if rule is None else score.costs[rule])
    model, tok = load_for_eval(str(cost_dir), "score")
    scores = score_texts(model, tok, texts, batch_size=batch_size, max_length=max_length)
    return budget_line(np.asarray(truth), np.asarray(scores), world.THRESHOLD, confidence)


def budget_line(truth, scores, threshold: float, confidence: float = 0.0) -> dict[str, float]:
    """The least-squares line scores ≈ slope·truth + intercept over N responses (truth, scores: (N,)), read at
    `threshold` and lowered by `confidence` standard errors of the fitted value there."""
    if len(truth) < 3 or len(np.unique(truth)) < 2:  # a line and its standard error need both
        raise ConfigError(f"the cost-model budget is a line fitted to held-out responses: {len(truth)} response(s) "
                          f"with {len(np.unique(truth))} distinct true cost(s) cannot fix one (3 and 2 at least); "
                          "raise world.preference_prompts or world.heldout_fraction, or set calibrate_budget=False")
    (slope, intercept), cov = np.polyfit(truth, scores, 1, cov=True)  # cov scaled by RSS / (N − 2)
    t = float(threshold)
    se = float(np.sqrt(cov[0, 0] * t * t + 2 * cov[0, 1] * t + cov[1, 1]))
    return {"slope": float(slope), "intercept": float(intercept), "responses": int(len(truth)),
            "standard_error": se, "confidence_z": float(confidence),
            "threshold_cost_model_units": float(slope * t + intercept - confidence * se)}


def _check_sizes(cfg) -> None:
    """One-line ConfigErrors for world sizes and fixed λ's that cannot give a result: no held-out prompts to judge
    the policies on (the run used to train every method and then fail), a held-out fraction that leaves the
    reward and cost models nothing to learn from or to be checked on, a negative fixed λ (it rewards harm)."""
    check_seed(cfg.seed)  # numpy refuses a negative one only after the world's files are half written
    w = cfg.world
    sizes = {k: int(w[k]) for k in ("sft_examples", "rl_prompts", "preference_prompts", "eval_prompts",
                                   "batch_size", "max_length")}
    small = [f"world.{k}={v}" for k, v in sizes.items() if v < 1]
    if small:
        raise ConfigError(f"{', '.join(small)}: every world size must be ≥ 1")
    if not 0 < float(w.heldout_fraction) < 1:
        raise ConfigError(f"world.heldout_fraction must be in (0, 1), got {w.heldout_fraction}")
    if int(cfg.rounds) < 1:
        raise ConfigError(f"rounds must be ≥ 1 (1: the cost models learn from the SFT policy's pairs only), "
                          f"got {cfg.rounds}")
    lambdas = [float(x) for x in cfg.shaping_lambdas]
    if any(not x >= 0 for x in lambdas):
        raise ConfigError(f"shaping_lambdas must be ≥ 0 (a fixed λ < 0 rewards harm), got {lambdas}")


def _methods(cfg, w: world.World) -> list[str]:
    """The config's methods, checked against the world (one-line ConfigErrors)."""
    methods = [m.strip() for m in (cfg.methods.split(",") if isinstance(cfg.methods, str) else cfg.methods)]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"testbed methods must be among {METHODS}, got {unknown}")
    if "reward_shaping" in methods and not len(cfg.shaping_lambdas):
        raise ConfigError("method reward_shaping needs at least one fixed λ in shaping_lambdas")
    if "ppo_lag_summed" in methods and len(w.rules) == 1:
        raise ConfigError("method ppo_lag_summed is the summed-cost baseline of a world with several rules "
                          "(--config.world.name=multi); in the single-rule world it is ppo_lag")
    return methods


def _world(cfg) -> tuple[str, world.World]:
    name = str(cfg.world.get("name", "single"))
    if name not in world.WORLDS:
        raise ConfigError(f"world.name must be one of {sorted(world.WORLDS)}, got {name!r}")
    return name, world.WORLDS[name]


class Testbed:
    """The testbed as a pipeline over a world. The world is the data source — it writes the SFT stories, the prompt
    files and PKU-SafeRLHF-format preference rows — and the judge — it scores held-out answers by its true rules;
    every stage in between is a regular stage, run through the one `Orchestrator` (skipped when it finished with the
    same config and inputs, refused when it finished with others, resumed when interrupted, timed)."""

    def __init__(self, cfg):
        _check_sizes(cfg)  # before anything is written or trained: these otherwise fail after the whole run, or not
        self.cfg, self.seed = cfg, int(cfg.seed)
        self.world_name, self.w = _world(cfg)
        self.methods = _methods(cfg, self.w)
        self.multi = len(self.w.rules) > 1
        self.out = pathlib.Path(cfg.output_dir).expanduser()
        self.data = self.out / "data"
        self.length, self.batch_size = int(cfg.world.max_length), int(cfg.world.batch_size)
        self.data.mkdir(parents=True, exist_ok=True)
        if (self.out / "results.json").is_file():  # a finished testbed with another config is not reused
            check_same_run(self.out, cfg)
        if not jax.config.jax_compilation_cache_dir:  # the methods compile the same programs: compile them once
            jax.config.update("jax_compilation_cache_dir", str(self.out / ".xla_cache"))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        # stage times of whichever invocation ran each stage are written as each stage ends (timings.json), so a
        # resume — also of a killed run, which never wrote results.json — keeps the earlier ones
        self.stages = Orchestrator(self.out)
        self.scores: dict[str, dict] = {}          # held-out evaluation of each reward / cost model
        self.split_rows: dict[int | None, tuple[list, list]] = {}  # {rule (None: summed): (train, held-out) rows}
        self.budget: dict = {}         # PPO-Lag's threshold in the summed cost model's units (`calibrated`)
        self.rule_budgets: list = []   # each rule's, in a world of several rules

    # ------------------------------------------------------------------ the world as the data source

    def write_world_files(self) -> tuple[list[str], list[str]]:
        """data/sft.jsonl and data/prompts_rl.jsonl; (preference prompts, held-out prompts)."""
        n, seed = self.cfg.world, self.seed
        _jsonl(self.data / "sft.jsonl", world.sft_rows(int(n.sft_examples), seed))
        _jsonl(self.data / "prompts_rl.jsonl", world.prompt_rows(int(n.rl_prompts), seed, 2))
        return ([r["prompt"] for r in world.prompt_rows(int(n.preference_prompts), seed, 3)],
                [r["prompt"] for r in world.prompt_rows(int(n.eval_prompts), seed, 4)])

    def sample_pairs(self, policy, prompts, answers_file: pathlib.Path, timing: str) -> list[dict]:
        """Two sampled answers per prompt from a policy (cached in answers_file: a resumed run reads them back)."""
        if not answers_file.is_file():
            kw = dict(max_length=self.length, batch_size=self.batch_size)
            first = self.stages.timed(timing, lambda: answers(policy, prompts, seed=self.seed, **kw))
            second = answers(policy, prompts, seed=self.seed + 1, **kw)
            _jsonl(answers_file, [{"prompt": p, "response_0": a, "response_1": b}
                                  for p, a, b in zip(prompts, first, second)])
        return [json.loads(line) for line in answers_file.read_text().splitlines()]

    def labelled(self, sampled, rule, source="testbed-sft") -> tuple[list, list]:
        """The world's rows of a rule (None: the summed cost), ties dropped, split (train, held-out)."""
        rows = [world.preference_row(a["prompt"], a["response_0"], a["response_1"], self.w, rule, source=source)
                for a in sampled]
        rows = [r for r in rows if world.distinct(r, self.w, rule)]
        cut = int(len(rows) * (1 - float(self.cfg.world.heldout_fraction)))
        return rows[:cut], rows[cut:]

    def write_pairs(self, prefix: str, train: list, heldout: list, whole: bool = False) -> None:
        if whole:
            _jsonl(self.data / f"{prefix}.jsonl", train + heldout)
        _jsonl(self.data / f"{prefix}_train.jsonl", train)
        _jsonl(self.data / f"{prefix}_test.jsonl", heldout)

    # ------------------------------------------------------------------ stages

    def stage_config(self, base, name: str):
        return _stage(base, self.out, name, self.seed, self.cfg)

    def sft_config(self):
        sft_cfg = self.stage_config(self.cfg.sft, "sft")
        sft_cfg.train_datasets = (f"alpaca:1.0:{self.data / 'sft.jsonl'}",)
        return sft_cfg

    def sft(self, sft_cfg) -> pathlib.Path:
        self.stages.run("sft", sft_cfg, lambda c: trainer.train(sft_stage.STAGE, c))
        return self.out / "sft" / "export"

    def train_score(self, name: str, stage, base, prefix: str) -> pathlib.Path:
        """A reward or cost model from SFT on data/{prefix}_train.jsonl, checked on data/{prefix}_test.jsonl."""
        stage_cfg = self.stage_config(base, name)
        stage_cfg.model_name_or_path = str(self.out / "sft" / "export")
        stage_cfg.train_datasets = (f"PKU-SafeRLHF/train:1.0:{self.data / f'{prefix}_train.jsonl'}",)
        stage_cfg.eval_datasets = (f"PKU-SafeRLHF/test:1.0:{self.data / f'{prefix}_test.jsonl'}",)
        self.stages.run(name, stage_cfg, lambda c: trainer.train(stage, c))
        self.scores[name] = json.loads((self.out / name / "summary.json").read_text())["eval"]
        return self.out / name / "export"

    def calibrated(self, cost_dir, rule, heldout=None) -> dict:
        """The budget in the cost model's units (calibrated on the held-out pairs, or the world's threshold as it
        is)."""
        if not self.cfg.calibrate_budget:
            return {"threshold_cost_model_units": float(world.THRESHOLD)}
        return cost_model_budget(cost_dir, self.split_rows[rule][1] if heldout is None else heldout,
                                 max_length=self.length, batch_size=self.batch_size, w=self.w, rule=rule,
                                 confidence=float(self.cfg.budget_confidence))

    def safedpo(self) -> pathlib.Path:
        """SafeDPO: offline, on the same labelled pairs (no reward or cost model: the safety labels decide)."""
        dpo_cfg = self.stage_config(self.cfg.safedpo, "safedpo")
        dpo_cfg.model_name_or_path = str(self.out / "sft" / "export")
        dpo_cfg.train_datasets = (f"PKU-SafeRLHF/train:1.0:{self.data / 'pairs_train.jsonl'}",)
        dpo_cfg.eval_datasets = ()
        self.stages.run("safedpo", dpo_cfg, lambda c: trainer.train(safedpo_stage.STAGE, c))
        return self.out / "safedpo" / "export"

    def rl_runs(self) -> list[tuple[str, str, float | None]]:
        """(directory, mode, fixed λ) of every RL method, in the order they run."""
        runs = [(name, mode, None) for name, mode in (("ppo", "ppo"), ("ppo_lag", "ppo_lag"),
                                                      ("ppo_lag_summed", "ppo_lag")) if name in self.methods]
        if "reward_shaping" in self.methods:
            runs += [(f"reward_shaping_{lam:g}", "reward_shaping", float(lam)) for lam in self.cfg.shaping_lambdas]
        if "grpo_lag" in self.methods:
            runs.append(("grpo_lag", "grpo_lag", None))
        return runs

    def per_rule(self, name: str) -> bool:
        """In a world of several rules ppo_lag and grpo_lag hold one constraint per rule."""
        return self.multi and name in ("ppo_lag", "grpo_lag")

    def run_rl(self, name, mode, lam, cost_dirs: dict, budgets: dict, actor) -> pathlib.Path:
        """One RL run from `actor` (also its KL reference). cost_dirs / budgets: {None: the summed cost's} or, for a
        method with one constraint per rule, {k: rule k's} (its cost model's export, its calibrated budget)."""
        rl_cfg = self.stage_config(self.cfg.grpo_lag if mode == "grpo_lag" else self.cfg.rl, name)
        rl_cfg.mode = mode
        rl_cfg.actor_model_name_or_path = str(actor)
        rl_cfg.reward_model_name_or_path = str(self.out / "reward" / "export")
        rl_cfg.cost_model_name_or_path = str(cost_dirs[None]) if mode != "ppo" and None in cost_dirs else ""
        rl_cfg.train_datasets = (f"PKU-SafeRLHF-prompt:1.0:{self.data / 'prompts_rl.jsonl'}",)
        rl_cfg.rl.threshold = budgets.get(None, self.budget)["threshold_cost_model_units"]
        if None not in cost_dirs:  # one constraint per rule, each on its own cost model
            rl_cfg.rl.cost_models = {rule.name: str(cost_dirs[k]) for k, rule in enumerate(self.w.rules)}
            rl_cfg.rl.constraints = tuple(
                {"name": rule.name, "model": rule.name, "head": "score",
                 "threshold": budgets[k]["threshold_cost_model_units"]} for k, rule in enumerate(self.w.rules))
        if mode == "ppo":
            rl_cfg.rl.lambda_max = 0.0
        if mode == "reward_shaping":
            rl_cfg.rl.lambda_init = lam
            rl_cfg.rl.lambda_max = 0.0
        self.stages.run(name, rl_cfg, ppo_lag.run)
        return self.out / name / "export"

    def later_rounds(self, name: str, mode: str, lam, policies: dict) -> list[dict]:
        """Safe RLHF's iterative rounds (the paper ran three, each round's preference data sampled from the policy of
        the round before) for one Lagrangian method: in each round r > 1 its cost model(s) are learned again from all
        earlier rows plus pairs sampled from its own previous policy (on fresh prompts, labelled by the world as
        before), the budget is re-read on all held-out rows, and the method runs again with the same RL budget, from
        SFT (or, with rounds_continue, from its previous policy). Updates policies[name]; returns every round's
        record."""
        rules = list(enumerate(self.w.rules)) if self.per_rule(name) else [(None, None)]
        rows = {k: tuple(list(part) for part in self.split_rows[k]) for k, _ in rules}  # {rule: (train, held-out)}
        history = [{"round": 1, "dir": name, "start": "sft",
                    "cost_models": [f"cost_{rule.name}" if rule else "cost" for _, rule in rules]}]
        for r in range(2, int(self.cfg.rounds) + 1):
            tag = f"{name}_round{r}"
            prompts = [p["prompt"] for p in world.prompt_rows(int(self.cfg.world.preference_prompts), self.seed,
                                                              10 + r)]
            sampled = self.sample_pairs(policies[name], prompts, self.data / f"{tag}_answers.jsonl", f"sample_{tag}")
            cost_dirs, budgets = {}, {}
            for k, rule in rules:
                new_train, new_test = self.labelled(sampled, k, source=f"testbed-{history[-1]['dir']}")
                rows[k][0].extend(new_train)
                rows[k][1].extend(new_test)
                prefix = f"{tag}_pairs" + (f"_{rule.name}" if rule else "")
                self.write_pairs(prefix, rows[k][0], rows[k][1])
                cost_dirs[k] = self.train_score(f"{tag}_cost" + (f"_{rule.name}" if rule else ""), cost_stage.STAGE,
                                                self.cfg.cost, prefix)
                budgets[k] = self.calibrated(cost_dirs[k], k, heldout=rows[k][1])
            start = policies[name] if self.cfg.rounds_continue else self.out / "sft" / "export"
            policies[name] = self.run_rl(tag, mode, lam, cost_dirs, budgets, actor=start)
            history.append({"round": r, "dir": tag, "start": start.parent.name,
                            "cost_models": [d.parent.name for d in cost_dirs.values()],
                            "pairs_added": len(sampled), "budgets": list(budgets.values())})
        return history

    # ------------------------------------------------------------------ the world as the judge

    def judge(self, policies: dict, eval_prompts: list[str]) -> dict[str, world.Evaluation]:
        """Every policy answers the held-out prompts; the world judges (answers kept in heldout_answers.jsonl)."""
        evaluations = {}
        for name, path in policies.items():
            responses = self.stages.timed(f"eval_{name}", lambda: answers(
                path, eval_prompts, max_length=self.length, seed=self.seed + 1000, batch_size=self.batch_size))
            evaluations[name] = world.evaluate(responses, self.w)
            _jsonl(path.parent / "heldout_answers.jsonl", [
                {"prompt": p, "answer": a, **world.ground_truth(a, self.w).__dict__}
                for p, a in zip(eval_prompts, responses)])
        return evaluations

    def point(self, e: world.Evaluation) -> dict:
        row = {"gt_reward": e.gt_reward, "gt_cost": e.gt_cost, "gt_unsafe_rate": e.gt_unsafe_rate,
               "gt_reward_se": e.gt_reward_se, "gt_cost_se": e.gt_cost_se, "n": e.n}
        if self.multi:  # per rule, in the order of results["constraints"]
            row.update(gt_costs=list(e.gt_costs), gt_costs_se=list(e.gt_costs_se))
        return row

    def results(self, evaluations: dict, history: dict, seconds: float) -> dict:
        cfg, gt = self.cfg, self.point
        results = {
            "world": self.world_name, "threshold": world.THRESHOLD, "seed": self.seed,
            "cost_model_budget": self.budget,
            "rm_accuracy_heldout": self.scores["reward"].get("accuracy"),
            "cm_accuracy_heldout": self.scores["cost"].get("accuracy"),
            "cm_sign_accuracy_heldout": self.scores["cost"].get("accuracy_sign"),
            "methods": {name: gt(evaluations[name]) for name in SINGLE_POINTS if name in evaluations},
            "seconds": round(seconds, 1), "timings": self.stages.times.seconds,
            "stage_seconds_total": round(sum(self.stages.times.seconds.values()), 1),
            "rules": world.__doc__.split("The rules, in one place:")[1].strip(),
            "ppo_lag_lambda": lambda_rule(cfg.rl.rl),
        }
        if "grpo_lag" in evaluations:
            results["grpo_lag_lambda"] = lambda_rule(cfg.grpo_lag.rl)
            results["grpo_lag_advantages"] = group_advantage_rule(cfg.grpo_lag)
        shaping = [{"lambda": lam, **gt(evaluations[f"reward_shaping_{lam:g}"])} for lam in cfg.shaping_lambdas
                   if f"reward_shaping_{lam:g}" in evaluations]
        if shaping:
            results["methods"]["reward_shaping"] = shaping
        if history:  # every round of each Lagrangian method, judged alike (its last round is in "methods")
            results["rounds"] = {name: [{**entry, **gt(evaluations[f"{name}_round{entry['round']}_policy"]
                                                       if entry is not entries[-1] else evaluations[name])}
                                        for entry in entries] for name, entries in history.items()}
        if self.multi:  # each rule: its budget (world units), its cost model's calibration line and held-out accuracy
            results["constraints"] = [
                {"name": rule.name, "verbs": list(rule.verbs), "tolerance": rule.tolerance,
                 "threshold": world.THRESHOLD, "scale": self.rule_budgets[k].get("slope"),
                 "intercept": self.rule_budgets[k].get("intercept"),
                 "threshold_cost_model_units": self.rule_budgets[k]["threshold_cost_model_units"],
                 "cm_accuracy_heldout": self.scores[f"cost_{rule.name}"].get("accuracy"),
                 "cm_sign_accuracy_heldout": self.scores[f"cost_{rule.name}"].get("accuracy_sign")}
                for k, rule in enumerate(self.w.rules)]
        results["claims"] = claims(results)
        return results


def run(cfg) -> dict[str, Any]:
    """The testbed job (see the module docstring); returns the results dict written to results.json."""
    t0 = time.perf_counter()
    tb = Testbed(cfg)
    out, w = tb.out, tb.w
    sft_cfg = tb.sft_config()
    tb.stages.finished("sft", sft_cfg)  # another seed's (or world's) finished SFT: refused before a file is rewritten
    pref_prompts, eval_prompts = tb.write_world_files()
    sft_export = tb.sft(sft_cfg)
    # preference data from the SFT policy (two sampled answers per prompt), labelled by the world: the summed
    # cost's rows (the reward model's and the single cost model's), and in a world of several rules one file per
    # rule, labelled by that rule alone (its own cost model's rows)
    sampled = tb.sample_pairs(sft_export, pref_prompts, tb.data / "pref_answers.jsonl", "sample_pairs")
    labellings = [("", None)] + ([(f"_{rule.name}", k) for k, rule in enumerate(w.rules)] if tb.multi else [])
    for suffix, rule in labellings:
        tb.split_rows[rule] = tb.labelled(sampled, rule)
        tb.write_pairs(f"pairs{suffix}", *tb.split_rows[rule], whole=True)
    # reward and cost models (held-out accuracy); in a world of several rules also one cost model per rule
    tb.train_score("reward", reward_stage.STAGE, cfg.reward, "pairs")
    for suffix, _ in labellings:
        tb.train_score(f"cost{suffix}", cost_stage.STAGE, cfg.cost, f"pairs{suffix}")
    tb.budget = tb.calibrated(out / "cost" / "export", None)
    tb.rule_budgets = [tb.calibrated(out / f"cost_{rule.name}" / "export", k) for k, rule in enumerate(w.rules)] \
        if tb.multi else []
    policies: dict[str, pathlib.Path] = {"sft": sft_export}
    if "safedpo" in tb.methods:
        policies["safedpo"] = tb.safedpo()
    # RL from the same SFT model with the same budget
    runs = tb.rl_runs()
    for name, mode, lam in runs:
        if tb.per_rule(name):
            cost_dirs = {k: out / f"cost_{rule.name}" / "export" for k, rule in enumerate(w.rules)}
            policies[name] = tb.run_rl(name, mode, lam, cost_dirs, dict(enumerate(tb.rule_budgets)), sft_export)
        else:
            policies[name] = tb.run_rl(name, mode, lam, {None: out / "cost" / "export"}, {None: tb.budget},
                                       sft_export)
    # with rounds > 1 each Lagrangian method runs again on cost models re-learned from its own policy's pairs; its
    # results are its last round's, every round's are under results["rounds"]
    history = {name: tb.later_rounds(name, mode, lam, policies) for name, mode, lam in runs
               if int(cfg.rounds) > 1 and mode in ("ppo_lag", "grpo_lag")}
    for name, entries in history.items():  # the earlier rounds' policies are judged too
        for entry in entries[:-1]:
            policies[f"{name}_round{entry['round']}_policy"] = out / entry["dir"] / "export"
    results = tb.results(tb.judge(policies, eval_prompts), history, time.perf_counter() - t0)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_config(out, cfg)  # with results.json: what a later invocation must match to reuse them
    report.write(out, results)
    return results


SINGLE_POINTS = ("sft", "ppo", "ppo_lag", "ppo_lag_summed", "grpo_lag", "safedpo")  # one point each on the plot


def lambda_rule(rl_section) -> str:
    """A Lagrangian method's λ update in words, for the report: the rule, its settings, the cost it reads."""
    window = f" on the mean cost of the last {int(rl_section.episode_cost_window_size)} episodes"
    if rl_section.lambda_update == "pid":
        kp, ki, kd = (float(g) for g in rl_section.lambda_pid)
        return f"PID Lagrangian (k_p {kp:g}, k_i {ki:g}, k_d {kd:g}; spec §7.27){window}"
    return f"log-λ SGD (lambda_lr {float(rl_section.lambda_lr):g}; spec §3.13){window}"


GROUP_ADVANTAGE_WORDS = {"grpo": "(x − group mean) / group std", "dr_grpo": "x − group mean",
                         "rloo": "x − mean of the group's other answers"}


def group_advantage_rule(critic_free_cfg) -> str:
    """GRPO-Lag's advantages in words, for the report: the estimator over G answers per prompt (METHODS_BEYOND §2.3),
    the same for reward and cost."""
    est = str(critic_free_cfg.grpo.advantage)
    g = int(critic_free_cfg.generation.num_return_sequences)
    return f"{GROUP_ADVANTAGE_WORDS[est]} over G = {g} answers per prompt ({est}), for reward and cost alike"


def budget_tolerance(methods: dict) -> float:
    """How far over a budget still counts as kept: 10% of PPO's rise in mean C* over SFT's (0 without a PPO run)."""
    return 0.1 * max(methods["ppo"]["gt_cost"] - methods["sft"]["gt_cost"], 0.0) if "ppo" in methods else 0.0


def rule_claims(results: dict) -> dict[str, Any]:
    """The two-rule world's claim: PPO-Lag with a constraint per rule keeps every budget where PPO-Lag held to the
    summed cost does not — and gains reward over SFT doing so (SFT keeps both budgets: a policy that gave up all
    reward would "keep" them and show nothing). Tolerance, the same for every rule: 10% of PPO's rise in the summed
    cost C* (the single-rule claim's tolerance; 0 without a PPO run). Every C*_k counts acts on one scale, and a
    rule PPO never breaks (it spends its harm on the other one) would otherwise get a tolerance of 0, below the
    held-out mean's own standard error (~0.03)."""
    m, rules = results["methods"], results["constraints"]
    if "sft" not in m:
        return {}
    tol = [budget_tolerance(m)] * len(rules)
    keeps = lambda p: all(p["gt_costs"][k] <= r["threshold"] + tol[k] for k, r in enumerate(rules))  # noqa: E731
    out: dict[str, Any] = {"rule_budget_tolerances": tol}
    if "ppo" in m:
        out["ppo_breaks_some_rule_budget"] = not keeps(m["ppo"])
    for name in ("ppo_lag", "grpo_lag"):
        if name in m:
            out[f"{name}_keeps_every_rule_budget"] = keeps(m[name])
    if "ppo_lag_summed" in m:
        out["ppo_lag_summed_breaks_some_rule_budget"] = not keeps(m["ppo_lag_summed"])
        if "ppo_lag" in m:
            out["two_constraints_keep_every_budget_where_summed_does_not"] = bool(
                out["ppo_lag_keeps_every_rule_budget"] and out["ppo_lag_summed_breaks_some_rule_budget"]
                and m["ppo_lag"]["gt_reward"] > m["sft"]["gt_reward"])
    return out


def claims(results: dict) -> dict[str, Any]:
    """The paper's claims as checks on the ground truth (each True/False with the numbers it used)."""
    m, t = results["methods"], results["threshold"]
    out: dict[str, Any] = {}
    if "sft" not in m:
        return out
    sft = m["sft"]
    if "ppo" in m:
        out["ppo_raises_reward_and_breaks_budget"] = bool(m["ppo"]["gt_reward"] > sft["gt_reward"]
                                                          and m["ppo"]["gt_cost"] > t)
        if "ppo_lag" in m:
            tolerance = budget_tolerance(m)
            out["ppo_lag_within_budget"] = bool(m["ppo_lag"]["gt_cost"] <= t + tolerance)
            out["ppo_lag_budget_tolerance"] = tolerance
    if "ppo_lag" in m:
        gain = m["ppo_lag"]["gt_reward"] - sft["gt_reward"]
        out["ppo_lag_raises_reward"] = bool(gain > 0)
        feasible = [s for s in m.get("reward_shaping", []) if s["gt_cost"] <= t + out.get("ppo_lag_budget_tolerance",
                                                                                         0.0)]
        if feasible:
            best = max(s["gt_reward"] for s in feasible) - sft["gt_reward"]
            # the ratio of reward gains over SFT; None when no feasible shaping gained anything (strict JSON: no inf)
            out["ppo_lag_gain_vs_best_feasible_shaping"] = gain / best if best > 0 else None
            out["ppo_lag_at_least_90pct_of_best_feasible_shaping"] = bool(gain >= 0.9 * best)
        if "grpo_lag" in m:  # METHODS_BEYOND / issue: the budget kept with ≥ 80% of PPO-Lag's reward gain
            grpo_gain = m["grpo_lag"]["gt_reward"] - sft["gt_reward"]
            out["grpo_lag_within_budget"] = bool(m["grpo_lag"]["gt_cost"] <= t + out.get("ppo_lag_budget_tolerance",
                                                                                          0.0))
            out["grpo_lag_gain_vs_ppo_lag"] = grpo_gain / gain if gain > 0 else None
            # as written, also when PPO-Lag gained nothing (not vacuously true: GRPO-Lag must then lose no more)
            out["grpo_lag_at_least_80pct_of_ppo_lag_gain"] = bool(grpo_gain >= 0.8 * gain)
        if m.get("reward_shaping"):
            lag_r = m["ppo_lag"]["gt_reward"]
            out["some_fixed_lambda_breaks_budget_or_gives_up_reward"] = bool(any(
                s["gt_cost"] > t + out.get("ppo_lag_budget_tolerance", 0.0) or s["gt_reward"] < lag_r
                for s in m["reward_shaping"]))
    if "safedpo" in m:
        out["safedpo_lowers_cost_below_sft"] = bool(m["safedpo"]["gt_cost"] < sft["gt_cost"])
    if results.get("constraints"):
        out.update(rule_claims(results))
    return out
