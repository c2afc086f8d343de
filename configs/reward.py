"""Reward-model config (Bradley–Terry on PKU-SafeRLHF helpfulness preferences)."""

from configs import common


def get_config(preset: str = "tiny"):
    preset = common.check_preset(preset, ("tiny", "llama2_7b", "llama3_8b"))
    c = common.base("reward")
    c.train_datasets = ("PKU-SafeRLHF/train",)
    c.eval_datasets = ("PKU-SafeRLHF/test",)
    c.loss.regularization = 0.001
    c.loss.normalizer_type = "ExponentialMovingAverage"
    c.loss.momentum = 0.9
    if preset == "tiny":
        common.tiny_common(c)
        c.train_datasets = ("PKU-SafeRLHF/train:0.25",)   # 125 pairs
        c.train.epochs = 1
    else:
        common.llama2_7b_common(c, preset=preset)
        c.model_name_or_path = "runs/sft/export"
        c.train.epochs = 2
        c.train.batch_size = 16 * 8
        c.train.eval_batch_size = 16 * 8
        c.train.learning_rate = 2e-5
        c.train.weight_decay = 0.1
    return c
