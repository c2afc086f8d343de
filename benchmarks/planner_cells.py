"""The stage configs `benchmarks/planner_vs_measured.py` runs and plans: one config file for both, so the planner and
the real run read the same settings. `--config benchmarks/planner_cells.py:<size>_<stage>`, size null | tiny | smollm2.

null: the tiny preset at the smallest shapes (one sequence of 32 tokens; GRPO-Lag one group): its planned memory is
~0, so its measured peak is the stage's fixed runtime overhead (interpreter, imports, the XLA client, compiling the
stage's programs, data, checkpointing) — measured, then added to the other sizes' plans.

tiny: each stage's own `:tiny` preset. smollm2: the SmolLM2 pipeline's stages (configs/pipeline.py:smollm2 —
reward, cost, moderation, ppo_lag) and, for the stages that pipeline does not run, the stage's tiny preset at the
same sizes (chat template, 192-token pairs of batch 8; PPO-Lag's rollout shape and scanned, remat'd layers for the
other RL modes). Every cell is cut to a few steps with evaluation off: the planner plans a training step, and
evaluation is a forward pass over the same shapes. Model paths come from the command line."""

from __future__ import annotations

import importlib

SUPERVISED = ("sft", "reward", "cost", "dpo", "safedpo", "moderation")
RL = ("ppo", "ppo_lag", "grpo_lag", "ppo_lag_lora")
STAGES = SUPERVISED + RL
LORA_RANK = 16  # ppo_lag_lora: PPO-Lag with rank-16 adapters on the actor and both critics (lora.critics)


def launcher(stage: str) -> str:
    """The launch module that runs `stage`."""
    return "launch." + stage.removesuffix("_lora")


def _short_supervised(c, steps: int):
    c.train.max_steps = steps
    c.train.eval_at_start = False
    c.eval_datasets, c.eval_split_ratio = (), 0.0
    c.train.head_probe_steps = 0          # the probe is a forward pass over the training rows (minutes at 135M)
    c.checkpoint.every = 0
    return c


def _short_rl(c, steps: int):
    c.train.max_steps = steps
    c.eval_datasets = ()
    return c


def _smollm2_supervised(stage: str):
    from configs import pipeline

    p = pipeline.smollm2()
    if stage in p:  # reward, cost, moderation: the pipeline's own
        return p[stage]
    c = importlib.import_module(f"configs.{stage}").get_config("tiny")
    model = p.reward  # the same sizes as the pipeline's score models
    c.data.template = model.data.template
    c.data.max_length, c.data.buckets = model.data.max_length, model.data.buckets
    c.train.batch_size = model.train.batch_size
    c.train.learning_rate = model.train.learning_rate
    if stage != "sft":
        c.train_datasets = model.train_datasets
    return c


def _smollm2_rl(mode: str):
    from configs import pipeline

    p = pipeline.smollm2().ppo_lag
    if mode == "ppo_lag":
        return p
    c = importlib.import_module(f"configs.{mode}").get_config("tiny")
    c.data.template, c.train_datasets = p.data.template, p.train_datasets
    c.data.max_prompt_length, c.data.prompt_buckets = p.data.max_prompt_length, p.data.prompt_buckets
    c.generation.max_length = p.generation.max_length
    c.train.prompt_batch_size, c.train.train_batch_size = p.train.prompt_batch_size, p.train.train_batch_size
    if mode == "grpo_lag":  # G responses per prompt: the same rollouts per update as PPO-Lag's (batches count prompts)
        g = int(c.generation.num_return_sequences)
        c.train.prompt_batch_size = c.train.train_batch_size = p.train.prompt_batch_size // g
    c.model.scan_layers, c.model.remat_policy = p.model.scan_layers, p.model.remat_policy
    c.checkpoint.update(p.checkpoint)
    return c


def _null_supervised(c):
    c.data.max_length, c.data.buckets = 96, (96,)  # the shortest that keeps most rows (template + answer)
    c.train.batch_size = c.train.eval_batch_size = 1
    return c


def _null_rl(c):
    c.data.max_prompt_length, c.data.prompt_buckets, c.data.min_response_length = 24, (24,), 8
    c.generation.max_length = 32
    c.train.prompt_batch_size = c.train.train_batch_size = c.train.eval_batch_size = 1
    c.rl.episode_cost_window_size = int(c.generation.num_return_sequences)
    return c


def get_config(cell: str):
    size, _, stage = cell.partition("_")
    if size not in ("null", "tiny", "smollm2") or stage not in STAGES:
        raise ValueError(f"cell must be <null|tiny|smollm2>_<{'|'.join(STAGES)}>, got {cell!r}")
    if stage in SUPERVISED:
        c = (_smollm2_supervised(stage) if size == "smollm2"
             else importlib.import_module(f"configs.{stage}").get_config("tiny"))
        c = _short_supervised(_null_supervised(c) if size == "null" else c, 2 if size == "smollm2" else 4)
    else:
        mode = stage.removesuffix("_lora")
        c = _smollm2_rl(mode) if size == "smollm2" else importlib.import_module(f"configs.{mode}").get_config("tiny")
        c = _short_rl(_null_rl(c) if size == "null" else c, 2)
        if stage.endswith("_lora"):
            c.lora.rank = LORA_RANK
    c.logging.progress = c.logging.tensorboard = False
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    return c
