"""Moderation classifier config: unsafe / 19 harm categories / severity heads on a score-model backbone."""

from configs import common


def get_config(preset: str = "tiny"):
    preset = common.check_preset(preset, ("tiny", "llama2_7b", "llama3_8b"))
    c = common.base("moderation")
    c.train_datasets = ("PKU-SafeRLHF/train",)       # two examples (one per response) per pair
    c.eval_datasets = ("PKU-SafeRLHF/test",)
    if preset == "tiny":
        common.tiny_common(c)
        c.train_datasets = ("PKU-SafeRLHF/train:0.25",)
        c.train.epochs = 1
    else:
        common.llama2_7b_common(c, preset=preset)
        c.train.epochs = 2
        c.train.batch_size = 16 * 8
        c.train.eval_batch_size = 16 * 8
        c.train.learning_rate = 2e-5
        c.train.weight_decay = 0.1
    return c
