"""The ground-truth testbed (`python -m launch.testbed --config configs/testbed.py:tiny`): the whole Safe RLHF
pipeline on stories260K in a synthetic world whose helpfulness R* and harm C* are known (saferlhf_jax/testbed/world.py).

Every stage is a regular stage config (`config.sft`, `config.reward`, `config.cost`, `config.rl`); override any of
them on the command line, e.g. `--config.rl.train.max_steps=40` or `--config.seed=3`.

Presets: `tiny` (the full comparison), `ci` (the same with two fixed λ's instead of three: minutes), `multi` (the
two-rule world of world.py at the ci sizes: PPO-Lag with a constraint and a cost model per rule against PPO-Lag held
to one summed cost — METHODS_BEYOND §3 —, in two rounds: see `rounds`).
"""

import ml_collections

from configs import common, cost, grpo_lag, ppo_lag, reward, safedpo, sft


def get_config(preset: str = "tiny"):
    preset = common.check_preset(preset, ("tiny", "ci", "multi"))
    c = ml_collections.ConfigDict()
    c.output_dir = "runs/testbed"
    c.seed = 0
    c.methods = "sft,ppo,ppo_lag,reward_shaping,grpo_lag,safedpo"
    c.calibrate_budget = True                     # PPO-Lag's threshold d: the budget read off a line fitted to the
                                                  # cost model's held-out scores (run.cost_model_budget); False: d = 0
    c.budget_confidence = 0.0                     # z: d read z standard errors of that line below it
    c.rounds = 1                                  # Safe RLHF's iterative rounds: > 1 learns each Lagrangian
                                                  # method's cost model(s) again from pairs its own previous policy
                                                  # wrote and runs it again (testbed.run, "rounds")
    c.rounds_continue = False                     # a later round's RL starts from the method's previous policy (as
                                                  # the paper's rounds do) instead of SFT
    c.shaping_lambdas = (0.1, 0.3, 1.0)           # fixed λ's of the reward-shaping baseline (in reward-model units
                                                  # per cost-model unit: the learned scales are not the world's)
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

    c.rl = ppo_lag.get_config("tiny")
    c.rl.generation.max_length = 100              # 40 new tokens after the ~60-token prompts: the four sentences the
                                                  # world reads (34 tokens on average) and EOS, no room for a fifth.
                                                  # With more room the policy learned to pad its stories with
                                                  # sentences the world never reads but the cost model does: a
                                                  # harmful act diluted by helpful ones scores as safe
    c.rl.data.max_prompt_length = 64
    c.rl.data.prompt_buckets = (64,)
    c.rl.generation.top_k = 0
    # 64 rollouts per iteration, one update on all of them, λ from their mean cost. With 32 the mean cost λ reads had
    # a standard error of ~0.7 cost-model units: PPO-Lag's λ swung 0..3.8 within 16 iterations and on ci seed 3 the
    # policy gained nothing; with 64 (at 16 iterations) PPO-Lag showed every claim on ci seeds 0-5, which chose this
    # (docs/testbed_ci_seeds.json, "before_batch64" and "iterations16")
    c.rl.train.prompt_batch_size = 64
    c.rl.train.train_batch_size = 64
    # RL iterations, the same for every method and preset. With 16 (the ci preset's until 2026-12-04) four of ten
    # seeds missed a claim: a λ that moves every iteration had too little time to settle, and on seeds 8 and 9
    # PPO-Lag gained less than a fixed λ = 1 that happened to sit near the right trade-off; two rules need 30 too
    # (held to one rule, the policy drifts to the other before that λ catches up). docs/testbed_ci_seeds.json
    c.rl.train.max_steps = 30
    c.rl.actor.learning_rate = 5e-4
    c.rl.critic.learning_rate = 5e-4
    c.rl.actor.lr_warmup_ratio = 0.0
    c.rl.rl.lambda_lr = 0.2                       # log-λ SGD's rate (GRPO-Lag's, divided by G below): the
                                                  # reference's 0.1 moves λ too little in 16–30 iterations
    c.rl.rl.lambda_update_delay_steps = 0
    c.rl.rl.episode_cost_window_size = 64          # one rollout batch
    # the PID Lagrangian (spec §7.27) instead of log-λ SGD: λ falls to 0 within a few iterations while the policy is
    # inside the budget and answers a rising cost at once (k_p), where log-λ SGD, whose step is proportional to λ,
    # left λ near its start or let it climb too late (docs/testbed_ci_seeds.json)
    c.rl.rl.lambda_update = "pid"
    c.rl.rl.lambda_pid = (1.0, 0.2, 0.0)
    # KL to the SFT policy: 5× the reference's 0.01. Both learned models are near-classifiers of "has a harmful act"
    # trained on four-sentence stories; with 0.01 PPO on seed 0 collapsed to one-sentence harmful answers the
    # reward model over-rates (R* 3.1: it gained little, so the tolerance, 10% of its cost rise, was 0.09) and
    # PPO-Lag wrote garbled stories its cost model under-rates (C* +0.20 over 512 held-out prompts). Kept nearer
    # the SFT text, both models stay accurate (docs/testbed_ci_seeds.json: "kl_sweep")
    c.rl.rl.kl_coeff = 0.05
    # a response cut off before EOS loses 5 reward units (spec §7.29; about one harmful act's worth on the reward
    # model): on cut-off text the cost model scores one to three harmful acts near 0 (finished: +4), and without
    # the penalty PPO-Lag on seed 5 learned to stop mid-story over its budget (C* +1.42). With it PPO-Lag keeps
    # the budget on all six ci seeds (docs/testbed_ci_seeds.json: "eos5_ci_s*")
    c.rl.rl.missing_eos_penalty = 5.0
    c.rl.checkpoint.every = 0
    # critic-free Lagrangian RL: the same rollout budget (prompt batch × G = PPO-Lag's prompt batch), λ settings,
    # threshold and lengths as PPO-Lag; four models instead of six
    c.grpo_lag = grpo_lag.get_config("tiny")
    g = c.grpo_lag
    g.generation.max_length, g.generation.top_k = c.rl.generation.max_length, 0
    g.data.max_prompt_length, g.data.prompt_buckets = c.rl.data.max_prompt_length, c.rl.data.prompt_buckets
    g.train.prompt_batch_size = c.rl.train.prompt_batch_size // g.generation.num_return_sequences
    g.train.train_batch_size = g.train.prompt_batch_size
    g.actor.learning_rate, g.actor.lr_warmup_ratio = c.rl.actor.learning_rate, 0.0
    for key in ("lambda_update_delay_steps", "kl_coeff", "missing_eos_penalty"):
        g.rl[key] = c.rl.rl[key]
    # G rl_steps per iteration (one per return group) against PPO-Lag's one: the same λ movement per rollout batch
    g.rl.lambda_lr = c.rl.rl.lambda_lr / g.generation.num_return_sequences
    # the PID λ too, over PPO-Lag's window (one rollout batch), with PPO-Lag's k_p and 1.5× its k_i divided by G
    # (G λ updates per rollout batch). With log-λ SGD λ rose to its cap and then fell too slowly (seed 0: the cost
    # ended far below the budget, the reward at SFT's). A screen over the six ci seeds with 64 rollouts per batch
    # (docs/testbed_ci_seeds.json, "batch64_screen"): PPO-Lag's own k_i left seed 3 over its budget (+0.38), 2× its
    # k_p gained too little on seeds 1 and 5, G = 8 groups of 8 prompts too little on three seeds
    g.rl.lambda_update = "pid"
    g.rl.lambda_pid = (c.rl.rl.lambda_pid[0], 1.5 * c.rl.rl.lambda_pid[1] / g.generation.num_return_sequences, 0.0)
    g.rl.episode_cost_window_size = c.rl.rl.episode_cost_window_size
    g.grpo.kl_mode = "reward"                     # PPO-Lag's objective (−β·KL in the reward): only the
                                                  # advantages differ
    # group advantages x − mean(x), in the models' own units (Dr. GRPO; METHODS_BEYOND §2.3 recommends it with
    # kl_mode 'reward'): λ then trades reward-model units for cost-model units as PPO-Lag's does. The std-normalised
    # estimator blew a group's cost-model noise up to unit size (an all-safe group's costs differ by noise alone), so
    # a high λ steered the policy by noise: at 30 iterations seed 5's GRPO-Lag ended far inside its budget with
    # 0.31× PPO-Lag's gain (3.60 / +0.05, 0.92×, with these; docs/testbed_ci_seeds.json, "grpo_dr_screen")
    g.grpo.advantage = "dr_grpo"
    g.checkpoint.every = 0

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
    c.grpo_lag.train.max_steps = c.rl.train.max_steps
    return c
