"""SFT config. `--config configs/sft.py:tiny` (CPU, embedded data) or `:llama2_7b` (reference recipe, 8 devices)."""

from configs import common


def get_config(preset: str = "tiny"):
    preset = common.check_preset(preset, ("tiny", "llama2_7b", "llama3_8b"))
    c = common.base("sft")
    c.train_datasets = ("alpaca",)
    if preset == "tiny":
        common.tiny_common(c)
        c.train_datasets = ("alpaca:0.125",)        # 250 of the 2,000 shipped rows
        c.eval_datasets = ("alpaca:32/-1",)
        c.train.epochs = 1
    else:
        common.llama2_7b_common(c, preset=preset)
        c.train.epochs = 3
        c.train.batch_size = 4 * 8                   # 4 per device × 8 devices
        c.train.grad_accum = 8
        c.train.learning_rate = 2e-5
        c.train.weight_decay = 0.0
    return c
