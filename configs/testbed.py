"""The ground-truth testbed (`python -m launch.testbed --config configs/testbed.py:tiny`): the whole Safe RLHF
pipeline on stories260K in a synthetic world whose helpfulness R* and harm C* are known (saferlhf_jax/testbed/world.py).

Every stage is a regular stage config (`config.sft`, `config.reward`, `config.cost`, `config.rl`); override any of
them on the command line, e.g. `--config.rl.train.max_steps=40` or `--config.seed=3`.

Presets: `tiny` (the full comparison), `ci` (the same with two fixed λ's instead of three: minutes), `sweep` (SFT,
PPO, PPO-Lag and six fixed λ's from 0.1 to 1.8: the 90 % claim against the feasible frontier), `multi` (the
two-rule world of world.py at the ci sizes: PPO-Lag with a constraint and a cost model per rule against PPO-Lag held
to one summed cost — METHODS_BEYOND §3 —, in two rounds: see `rounds`).

The RL stages are the library's presets (configs/ppo_lag.py:tiny, grpo_lag.py:tiny, and ppo_lag.py:reference for
the `ppo_lag_reference` row) with the world's settings of RL_OVERRIDES / GRPO_LAG_OVERRIDES on top, each with why;
`rl_overrides` lists them and results.json repeats them.
"""

import ml_collections

from configs import common, cost, grpo_lag, ppo_lag, reward, safedpo, sft


# The world's own settings on top of the RL presets: (value, why). Everything else — the λ rule, KL, the missing-EOS
# penalty, the budget in label units — is the preset's (spec §7.34 gives the evidence for each).
RL_OVERRIDES = {
    # 40 new tokens after the ~60-token prompts: the four sentences the world reads (34 tokens on average) and EOS,
    # no room for a fifth. With more room the policy learned to pad its stories with sentences the world never reads
    # but the cost model does: a harmful act diluted by helpful ones scores as safe
    "generation.max_length": (100, "answers of four sentences and EOS (the world reads four; longer answers padded "
                                   "with unread sentences fooled the cost model)"),
    "data.max_prompt_length": (64, "the world's prompts are ~60 tokens"),
    "data.prompt_buckets": ((64,), "one prompt width: the world's prompts are ~60 tokens"),
    "generation.top_k": (0, "the world's pairs and evaluation sample from the whole distribution"),
    # 64 rollouts per iteration, one update on all of them, λ from their mean cost. With 32 the mean cost λ reads had
    # a standard error of ~0.7 cost-model units (docs/testbed_ci_seeds.json, "before_batch64")
    "train.prompt_batch_size": (64, "64 rollouts per iteration: with 32 the mean cost λ reads was too noisy"),
    "train.train_batch_size": (64, "one update on all 64 rollouts"),
    "rl.episode_cost_window_size": (64, "λ reads one rollout batch (the preset's 128 is 16 of the tiny preset's "
                                        "8-prompt batches)"),
    # the same for every method; with 16 four of ten tuning seeds missed a claim (docs/testbed_ci_seeds.json)
    "train.max_steps": (30, "30 RL iterations for every method: with 16 a moving λ had too little time to settle"),
    "actor.learning_rate": (5e-4, "a 260K-parameter model: the tiny preset's 1e-4 moves it too little in 30 "
                                  "iterations"),
    "critic.learning_rate": (5e-4, "as the actor's"),
    "actor.lr_warmup_ratio": (0.0, "30 iterations: no warm-up"),
    "checkpoint.every": (0, "minutes-long stages: a killed run re-runs the stage"),
}
# GRPO-Lag: the same rollout budget as PPO-Lag (prompt batch × G = 64 answers)
GRPO_LAG_OVERRIDES = {
    **{k: v for k, v in RL_OVERRIDES.items() if not k.startswith(("train.", "critic."))},
    "train.prompt_batch_size": (16, "16 prompts × G = 4 answers: PPO-Lag's 64 rollouts per iteration"),
    "train.train_batch_size": (16, "one update per return group"),
    "train.max_steps": (30, "as PPO-Lag's"),
}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _world_overrides(stage, name: str, overrides: dict, log: list):
    """Apply the world's overrides to a stage preset, logging {stage, key, preset, testbed, why} of each."""
    for key, (value, why) in overrides.items():
        *path, leaf = key.split(".")
        node = stage
        for part in path:
            node = node[part]
        log.append({"stage": name, "key": key, "preset": _plain(node[leaf]), "testbed": _plain(value), "why": why})
        node[leaf] = value
    return stage


def get_config(preset: str = "tiny"):
    preset = common.check_preset(preset, ("tiny", "ci", "multi", "sweep"))
    c = ml_collections.ConfigDict()
    c.output_dir = "runs/testbed"
    c.seed = 0
    c.methods = "sft,ppo,ppo_lag,ppo_lag_reference,reward_shaping,grpo_lag,safedpo"
    c.calibrate_budget = True                     # the Lagrangian methods' budget: a mean severity of at most the
                                                  # world's allowance, calibrated by the RL stage on the held-out
                                                  # rows' labels (rl.budget; algorithms/budget.py); False: the raw
                                                  # threshold 0 in cost-model units
    c.budget_confidence = 0.0                     # z: the threshold read z standard errors of the line below it
    c.rounds = 1                                  # Safe RLHF's iterative rounds: > 1 learns each Lagrangian
                                                  # method's cost model(s) again from pairs its own previous policy
                                                  # wrote and runs it again (testbed.run, "rounds")
    c.rounds_continue = False                     # a later round's RL starts from the method's previous policy (as
                                                  # the paper's rounds do) instead of SFT
    c.shaping_lambdas = (0.1, 0.3, 1.0)           # fixed λ's of the reward-shaping baseline (in reward-model units
                                                  # per cost-model unit: the learned scales are not the world's);
                                                  # the `sweep` preset: six, log-spaced from 0.1 to 1.6
    c.world = ml_collections.ConfigDict(dict(name="single", sft_examples=512, rl_prompts=256, preference_prompts=768,
                                             eval_prompts=512, heldout_fraction=0.15, max_length=128, batch_size=64))
    # 512 held-out prompts: standard errors ~0.06 on R* and ~0.03 on C* (0.13 / 0.07 with 96, which decided claims
    # by noise: a PPO-Lag gain of 1.0 judged against 80-90 % of another one); evaluation takes seconds
    c.logging = ml_collections.ConfigDict(dict(progress=True))
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # applied to every stage

    c.sft = sft.get_config("tiny")
    c.sft.data.max_length = 128  # the PKU template alone is ~40 tokens of stories260K's 512-token vocabulary
    c.sft.data.buckets = (128,)
    c.sft.eval_datasets = ()
    c.sft.train.epochs = 2
    c.sft.train.batch_size = 16
    c.sft.train.learning_rate = 2e-3
    c.sft.checkpoint.every = 0

    c.reward = reward.get_config("tiny")
    c.cost = cost.get_config("tiny")
    for stage in (c.reward, c.cost):
        stage.data.max_length = 128
        stage.data.buckets = (128,)
        stage.train.epochs = 3                    # ~200 pairs: two epochs left the cost model's sign near the
        stage.train.batch_size = 16               # majority rate on some seeds
        stage.train.learning_rate = 2e-3
        stage.loss.regularization = 0.001
        stage.checkpoint.every = 0

    # RL: the library's presets (configs/ppo_lag.py:tiny, configs/grpo_lag.py:tiny — the recipe of spec §7.34) with
    # the world's own sizes, each listed with why in `rl_overrides` (and results.json); the reference recipe
    # (configs/ppo_lag.py:reference) runs as one more row, method ppo_lag_reference, with the same overrides
    overrides: list = []
    c.rl = _world_overrides(ppo_lag.get_config("tiny"), "rl", RL_OVERRIDES, overrides)
    c.rl_reference = _world_overrides(ppo_lag.get_config("reference"), "rl_reference", RL_OVERRIDES, [])
    # critic-free Lagrangian RL: the same rollout budget (prompt batch × G = PPO-Lag's prompt batch), λ window and
    # lengths as PPO-Lag; four models instead of six
    c.grpo_lag = _world_overrides(grpo_lag.get_config("tiny"), "grpo_lag", GRPO_LAG_OVERRIDES, overrides)
    overrides.append({"stage": "rl, grpo_lag", "key": "rl.budget", "preset": c.rl.rl.budget.to_dict(),
                      "testbed": "mean_severity ≤ the allowance (½; per rule 0.35 / 1, summed 1.35) on the world's "
                                 "held-out rows", "why": "the world's budget in its rows' own labels (the rows carry "
                                                        "no PKU-SafeRLHF test split)"})
    c.rl_overrides = tuple(overrides)

    # SafeDPO on the labelled pairs the reward and cost models learn from (METHODS_BEYOND §1)
    c.safedpo = safedpo.get_config("tiny")
    c.safedpo.data.max_length = 128
    c.safedpo.data.buckets = (128,)
    c.safedpo.train.epochs = 1
    c.safedpo.train.batch_size = 16
    c.safedpo.train.learning_rate = 1e-4          # 5e-4 × 2 epochs collapsed the policy to near-empty answers
    c.safedpo.checkpoint.every = 0
    if preset in ("ci", "multi"):  # two fixed λ's instead of three: one RL run fewer
        c.shaping_lambdas = (0.1, 1.0)
    if preset == "sweep":  # the fixed-λ frontier: is PPO-Lag within 90 % of the best λ that keeps the budget?
        c.methods = "sft,ppo,ppo_lag,reward_shaping"
        c.shaping_lambdas = (0.1, 0.18, 0.32, 0.56, 1.0, 1.8)  # log-spaced (×1.78): over-budget to giving up reward
    if preset == "multi":  # world.MULTI: violence and pushing, each with its own budget
        c.world.name = "multi"
        c.methods = "sft,ppo,ppo_lag,ppo_lag_summed"
        # Two rounds (Safe RLHF's iterative rounds): round 1's cost models learn from SFT answers, which almost never
        # hold two pushes (SFT writes 0.13 per story), so they cannot tell the allowed one push from two or three;
        # held to violence, round 1's per-rule PPO-Lag drifted into pushing (seed 1: C*_p +1.72). Round 2's cost
        # models also learn from the pairs each method's round-1 policy wrote, and per-rule PPO-Lag ends within 0.03
        # of both budgets. With the single-rule presets' RL settings (PID λ, KL 0.05, missing-EOS penalty 5): with
        # log-λ SGD from λ = 1, KL 0.01 and no penalty, round 2 collapsed to ~9-token answers (R* 0.01; an earlier
        # world, docs/testbed_multi_seeds.json, "earlier_world" → "rounds_screen")
        c.rounds = 2
    return c
