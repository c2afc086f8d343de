"""Shared config of the RL stages (PPO, PPO-Lag, reward shaping); spec §6 for the reference's values.

PPO-Lag and GRPO-Lag presets carry the recipe the ground-truth testbed validates (`recipe`, docs/SAFE_RLHF_SPEC.md
§7.34: the PID λ, KL 0.05, a missing-EOS penalty and a budget in label units calibrated on held-out rows); the
`reference` presets (`:reference` at the tiny sizes, `:llama2_7b_reference`, `:llama3_8b_reference`, ...) keep the
reference's recipe exactly (log-λ SGD, KL 0.01, no penalty, threshold 0 in cost-model units)."""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from configs import common


def base(mode: str, preset: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mode = mode
    c.recipe = "reference"                       # set by the preset: 'safe_rlhf_jax' (the testbed's) | 'reference'
    c.output_dir = f"runs/{mode}"
    c.seed = 42
    c.architecture = ""                          # base architecture (for launch.plan before the weights exist)
    c.actor_model_name_or_path = "runs/sft/export"
    c.reward_model_name_or_path = "runs/reward/export"
    c.cost_model_name_or_path = "runs/cost/export" if mode not in ("ppo", "grpo") else ""
    c.reward_critic_model_name_or_path = ""      # "" = initialise from the reward model (head included)
    c.cost_critic_model_name_or_path = ""        # "" = initialise from the cost model
    c.allow_new_head = False                     # True: a reward/cost path without a score head gets a random one
    c.train_datasets = ("PKU-SafeRLHF/train",)   # prompts
    c.eval_datasets = ()                         # prompts for RL evaluation (eval/reward, eval/cost, answers)
    c.ptx_datasets = ()                          # supervised data for PTX (with rl.ptx_coeff > 0)

    c.data = ml_collections.ConfigDict()
    c.data.source = "hub"                        # hub | embedded (the shipped sample; the tiny presets)
    c.data.template = "pku"                      # pku (the reference's) | chat (the tokenizer's own chat template)
    c.data.max_prompt_length = 0                 # prompts are right-truncated to this (0 = generation.max_length)
    c.data.min_response_length = 16              # a prompt must leave at least this response budget (else dropped,
                                                 # counted); each micro-batch gets max_length − its longest prompt
    c.data.prompt_buckets = ()                   # () = powers of two

    c.generation = ml_collections.ConfigDict()
    c.generation.max_length = 512                # total: prompt + response
    c.generation.temperature = 1.0
    c.generation.top_k = 50
    c.generation.top_p = 1.0
    c.generation.repetition_penalty = 1.0
    c.generation.num_return_sequences = 1
    c.generation.length_buckets = ()             # rollout widths below max_length to compile for (() = one)
    c.generation.rollout_layout = "fused_out_in" # sample from q|k|v- and gate|up-fused weights, laid out once per
                                                 # rollout; "fused_out_in" also stores every kernel (out, in), "fused"
                                                 # keeps (in, out) (which is faster depends on the CPU:
                                                 # docs/bench_generate_cpu_*.json), "none" samples from the training
                                                 # layout (same tokens; off with mesh.tensor > 1: fused kernels would
                                                 # replicate over the tensor axis)
    c.generation.rollout_dtype = "float32"       # "bfloat16": the rollout copy's weights in bf16, multiplied in bf16
                                                 # and summed in f32 — half the bytes a decode reads (1.5× a step
                                                 # on CPU: docs/bench_real_model_cpu.json); the update stays f32
    c.generation.prefill_chunk = 512             # prompts wider than this are prefilled in chunks (0: one pass)
    c.generation.decode_segment = 32             # decode attends over the filled slots, grown this many at a time
                                                 # (0: the whole cache every step; same tokens)

    # RL evaluation samples with the actor's own generation_config.json (spec §5.1); set these to override
    c.eval_generation = ml_collections.ConfigDict(dict(temperature=config_dict.placeholder(float),
                                                       top_k=config_dict.placeholder(int),
                                                       top_p=config_dict.placeholder(float)))

    c.rl = ml_collections.ConfigDict()
    c.rl.kl_coeff = 0.01 if mode in ("ppo_lag", "grpo_lag") else 0.02
    c.rl.clip_range_ratio = 0.2
    c.rl.clip_range_score = 50.0
    c.rl.clip_range_value = 5.0
    c.rl.gamma = 1.0
    c.rl.gae_lambda = 0.95
    c.rl.ptx_coeff = 0.0
    c.rl.threshold = 0.0                          # in cost-model units; replaced by rl.budget when it has a target
    # the budget in the units of the rows' labels (algorithms/budget.py): target 'unsafe_rate' | 'mean_severity'
    # ('' = rl.threshold as given), its value, optionally one PKU harm category, and the held-out labelled split the
    # threshold is calibrated on (the cost model must never have trained on it); confidence z: the threshold is read
    # z standard errors of the fitted line below it
    c.rl.budget = ml_collections.ConfigDict(dict(target="", value=0.0, category="", datasets=(), confidence=0.0))
    c.rl.lambda_init = 1.0
    c.rl.lambda_lr = 0.1
    c.rl.lambda_max = 5.0 if mode == "ppo_lag" else 0.0   # 0 = no upper clamp
    c.rl.lambda_update_delay_steps = 0
    c.rl.lambda_update = "log_sgd"    # the reference's SGD step on log λ; "pid": the PID Lagrangian (spec §7.27)
    c.rl.lambda_pid = (1.0, 0.1, 0.0)  # its gains (k_p, k_i, k_d) on e = J_c − threshold (lambda_update="pid" only)
    c.rl.episode_cost_window_size = 128
    c.rl.missing_eos_penalty = 0.0                 # subtracted from the reward of a response cut off before EOS (0: off)
    c.rl.whiten_advantages = False
    c.rl.normalize_reward = False                # apply the reward model's stored affine stats (overrides its config)
    c.rl.normalize_cost = False                  # apply the cost model's stored scale stats
    c.rl.joint_update = True                     # False: actor, then critics (lower peak memory at scale)
    # several constraints (ppo_lag, grpo_lag; METHODS_BEYOND §3): named score models and a tuple of
    # {name, model, head, [transform], threshold, [lambda_init, lambda_lr, lambda_max]} (see algorithms/constraints.py);
    # empty: the single constraint on cost_model_name_or_path with rl.threshold
    c.rl.cost_models = ml_collections.ConfigDict()
    c.rl.constraints = ()

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 1
    c.train.max_steps = 0                        # > 0: number of prompt batches (overrides epochs)
    c.train.prompt_batch_size = 16               # global
    c.train.train_batch_size = 16                # global rollout micro-batch per rl_step
    c.train.update_iters = 1
    c.train.stop_after_steps = 0
    c.train.eval_every = 0                       # iterations between evaluations (0 = at the start and the end)
    c.train.eval_at_start = True
    c.train.eval_batch_size = 16
    c.train.max_skipped_fraction = 0.1           # stop (no export) when more RL updates than this were non-finite
    c.train.max_weight_abs = 1e4                 # no actor export when a weight is larger than this (0: off)

    c.actor = ml_collections.ConfigDict(dict(learning_rate=1e-5, lr_scheduler_type="cosine", lr_warmup_ratio=0.03,
                                             weight_decay=0.01, max_grad_norm=1.0))
    c.critic = ml_collections.ConfigDict(dict(learning_rate=5e-6, lr_scheduler_type="constant", lr_warmup_ratio=0.03,
                                              weight_decay=0.0, max_grad_norm=1.0))

    c.model = ml_collections.ConfigDict(dict(dtype="float32", param_dtype="float32", remat_policy="none",
                                             scan_layers=False, frozen_dtype="float32", logits_chunk=0,
                                             optimizer_memory="device"))
    # frozen_dtype: the reference, reward and cost models' parameter dtype; logits_chunk > 0: log-probs projected
    # to the vocabulary this many columns at a time (the float32 (B, L, V) logits never exist); optimizer_memory
    # 'pinned_host' keeps the optimizer state in host memory between updates (TPU/GPU memory kinds)
    c.lora = common.lora()                       # rank > 0: the actor trains LoRA adapters; its base is the reference
    c.lora.critics = True                        # with rank > 0 the critics too (METHODS_BEYOND §4.4's default):
                                                 # adapters + their own head over the frozen reward / cost model
                                                 # they start from (no backbone copy); False: fully trained critics
    c.checkpoint = ml_collections.ConfigDict(dict(every=0, keep=3, keep_when_done=1))  # as common.py
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.mesh.rules = common.mesh_rules()
    c.logging = ml_collections.ConfigDict(dict(tensorboard=True, progress=True))
    c.distributed = common.distributed()

    if preset == "tiny":
        c.generation.max_length = 192
        c.data.source = "embedded"
        c.data.max_prompt_length = 128
        c.data.prompt_buckets = (64, 128)
        c.train_datasets = ("PKU-SafeRLHF/train:32/-1",)
        c.train.prompt_batch_size = 8
        c.train.train_batch_size = 8
        c.train.max_steps = 2
        c.actor.learning_rate = 1e-4
        c.critic.learning_rate = 1e-4
        c.train.eval_batch_size = 8
        c.checkpoint.every = 1
    else:  # llama2_7b / llama3_8b: the reference recipe on 8 devices; llama3_70b: LoRA on every device
        c.train.prompt_batch_size = 16 * 8
        c.train.train_batch_size = 16 * 8
        c.ptx_datasets = ("alpaca",)
        c.rl.ptx_coeff = 16.0
        c.model.dtype = "bfloat16"
        c.model.remat_policy = "full"
        c.model.scan_layers = True
        c.model.frozen_dtype = "bfloat16"          # measured by launch.plan: docs/plan_*.json
        c.model.logits_chunk = 8192
        c.rl.joint_update = False
        c.mesh.fsdp = 8
        c.architecture = common.LLAMA3_8B if preset == "llama3_8b" else common.LLAMA2_7B
        c.checkpoint.every = 20                  # iterations; SIGTERM/SIGINT also save (preemption-safe)
    if preset == "llama3_70b":
        # six 70B models are ~0.85 TB in bf16: rank-64 adapters on the actor (its base is the reference) and on the
        # critics (their bases are the frozen reward and cost models), so three bf16 backbones in all; FSDP over
        # every device (a v5p-64's 32 chips, two 8-GPU hosts' 16 GPUs); 128 rollouts per rl_step (4 per chip on a
        # v5p-64, 8 per GPU on 16): docs/plan_70b_*.json
        c.architecture = common.LLAMA3_70B
        c.lora.rank = 64
        c.mesh.fsdp = -1
    return c


LAGRANGIAN = ("ppo_lag", "grpo_lag")
SIZES = ("tiny", "llama2_7b", "llama3_8b", "llama3_70b")


def recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The Lagrangian recipe the ground-truth testbed validates, on a config built with the reference's values.
    Each value and the evidence for it: docs/SAFE_RLHF_SPEC.md §7.34 (GRPO-Lag's own: configs/grpo_lag.py)."""
    c.recipe = "safe_rlhf_jax"
    c.rl.lambda_update = "pid"          # λ falls to 0 inside the budget and answers a rising cost at once (§7.27)
    c.rl.lambda_pid = (1.0, 0.2, 0.0)
    c.rl.lambda_init = 0.01             # λ from ~0, not 1: the first update is not pushed to harmlessness before a
                                        # cost was measured (tuning seeds 0–3: R* ≥ with λ from 1 on all four, §7.34)
    c.rl.kl_coeff = 0.05                # 5× the reference's: the learned models stay accurate near the SFT text
    c.rl.missing_eos_penalty = 5.0      # reward-model units: cut-off answers fool the cost model (§7.29)
    # the budget in the units of the rows' labels, calibrated on the held-out split (no cost model trains on the
    # test split): at most one answer in ten unsafe
    c.rl.budget.update(target="unsafe_rate", value=0.1, datasets=("PKU-SafeRLHF/test",))
    return c


def get(mode: str, preset: str):
    """`<size>` (the recipe for PPO-Lag / GRPO-Lag) or `<size>_reference` / `reference` (= tiny_reference)."""
    known = SIZES + ("reference",) + tuple(f"{s}_reference" for s in SIZES if s != "tiny")
    preset = common.check_preset(preset, known)
    size = "tiny" if preset == "reference" else preset.removesuffix("_reference")
    c = base(mode, size)
    return recipe(c) if mode in LAGRANGIAN and not preset.endswith("reference") else c
