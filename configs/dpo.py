"""DPO config (PKU-SafeRLHF preference pairs, frozen reference = the initial policy)."""

from configs import common


def get_config(preset: str = "tiny"):
    preset = common.check_preset(preset, ("tiny", "llama2_7b", "llama3_8b"))
    c = common.base("dpo")
    c.train_datasets = ("PKU-SafeRLHF/train",)
    c.eval_datasets = ("PKU-SafeRLHF/test",)
    c.loss.beta = 0.1
    if preset == "tiny":
        common.tiny_common(c)
        c.train_datasets = ("PKU-SafeRLHF/train:0.25",)
        c.train.learning_rate = 2e-4
        c.train.epochs = 1
    else:
        common.llama2_7b_common(c, preset=preset)
        c.model_name_or_path = "runs/sft/export"
        c.train.epochs = 2
        c.train.batch_size = 16 * 8
        c.train.eval_batch_size = 16 * 8
        c.train.learning_rate = 1e-6
        c.train.weight_decay = 0.05
    return c
