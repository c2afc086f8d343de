"""SafeDPO config (METHODS_BEYOND §1.3): DPO on safety-transformed PKU-SafeRLHF helpfulness pairs with margin Δ."""

from configs import dpo


def get_config(preset: str = "tiny"):
    c = dpo.get_config(preset)
    c.stage = "safedpo"
    c.output_dir = "runs/safedpo"
    c.loss.beta = 0.1
    c.loss.safety_margin = 10.0                  # Δ (the paper's main comparison; Δ = 0 is DPO on T(D))
    c.loss.both_unsafe = "drop"                  # drop | keep (ablation: kept in helpfulness order, no margin)
    if preset != "tiny":
        c.train.epochs = 3
        c.train.learning_rate = 1e-6
    return c
