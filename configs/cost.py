"""Cost-model config (pairwise + sign terms on PKU-SafeRLHF safety preferences): the reward-model recipe (same data,
batch sizes, learning rate, regularization and normalizer, spec §6) under the stage name `cost`."""

from configs import reward


def get_config(preset: str = "tiny"):
    c = reward.get_config(preset)
    c.stage = "cost"
    c.output_dir = "runs/cost"
    return c
