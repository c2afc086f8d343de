"""The main job: SFT → reward model → cost model → PPO-Lag → arena (SFT vs PPO-Lag) → report.

`--config configs/pipeline.py:tiny` runs it on the embedded stories260K model and shipped data on a CPU; every
stage is a regular stage config under `config.<stage>` (override e.g. `--config.ppo_lag.train.max_steps=8`).
"""

import ml_collections
from ml_collections import config_dict

from configs import common, cost, ppo_lag, reward, sft, testbed


def get_config(preset: str = "tiny"):
    preset = common.check_preset(preset, ("tiny", "llama2_7b", "llama3_8b"))
    c = ml_collections.ConfigDict()
    c.output_dir = "runs/pipeline"
    c.stages = ("testbed", "sft", "reward", "cost", "ppo_lag", "arena")
    # the ground-truth testbed: Safe RLHF with learned models in a world whose helpfulness and harm are known
    c.testbed = testbed.get_config("ci")
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
    return c
