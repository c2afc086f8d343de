"""Shared config skeleton of the training stages (ml_collections). Presets are functions, not code branches."""

from __future__ import annotations

import pathlib

import ml_collections

DEFAULT_MODEL = str(pathlib.Path(__file__).resolve().parents[1] / "saferlhf_jax" / "assets" / "stories260K")
LLAMA2_7B = "meta-llama/Llama-2-7b-hf"  # an HF-format directory with this model (local path in practice)
LLAMA3_8B = "meta-llama/Meta-Llama-3-8B"
LLAMA3_70B = "meta-llama/Meta-Llama-3-70B"
TINY_PRESETS = ("tiny",)


def base(stage: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.model_name_or_path = DEFAULT_MODEL
    c.architecture = ""                          # base architecture (for launch.plan before the weights exist)
    c.output_dir = f"runs/{stage}"
    c.export_format = "reference"                # score models: reference (*ForScore) | hf (*ForSequenceClassification)
    c.seed = 42
    c.train_datasets = ("PKU-SafeRLHF/train",)   # NAME[:PROPORTION[:PATH]] entries (or one comma-separated string)
    c.eval_datasets = ()
    c.eval_split_ratio = 0.0

    c.data = ml_collections.ConfigDict()
    c.data.source = "hub"                        # hub | embedded (the shipped sample; the tiny presets)
    c.data.template = "pku"                      # pku (the reference's) | chat (the tokenizer's own chat template)
    c.data.max_length = 512
    c.data.buckets = ()                          # () = powers of two up to max_length

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 1
    c.train.max_steps = 0                        # > 0 overrides epochs (optimizer steps)
    c.train.batch_size = 16                      # global micro-batch (sum over data-parallel shards)
    c.train.eval_batch_size = 16
    c.train.grad_accum = 1
    c.train.learning_rate = 2e-5
    c.train.lr_scheduler_type = "cosine"
    c.train.lr_warmup_ratio = 0.0
    c.train.weight_decay = 1e-6
    c.train.max_grad_norm = 1.0
    c.train.log_every = 1
    c.train.eval_every = 0                       # 0 = at the end of each epoch (and the last step, always)
    c.train.eval_at_start = True
    c.train.stop_after_steps = 0                 # > 0: save and stop early (as a preempted run would)
    c.train.max_skipped_fraction = 0.1           # stop (no export) when more updates than this were non-finite
    c.train.max_weight_abs = 1e4                 # no export when a weight is larger than this (a diverged run; 0: off)
    # score models from a causal LM: fit the fresh head on the backbone's frozen end features first (a linear
    # probe, LP-FT; saferlhf_jax/training/head_probe.py) — this many Adam steps at this rate; 0 = off (the reference)
    c.train.head_probe_steps = 0
    c.train.head_probe_learning_rate = 1e-2

    c.model = ml_collections.ConfigDict()
    c.model.dtype = "float32"                    # compute dtype (bfloat16 on accelerators)
    c.model.param_dtype = "float32"              # master weights
    c.model.remat_policy = "none"                # none | full | dots | dots_no_batch
    c.model.scan_layers = False                  # remat pays off with scanned layers: unrolled, XLA:CPU kept most
                                                 # activations anyway (docs/ppo_lag_smollm2_rss.json "planner")
    c.model.optimizer_memory = "device"          # pinned_host: optimizer state in host memory between updates

    c.loss = ml_collections.ConfigDict()
    c.loss.loss_type = "sequence-wise"
    c.loss.regularization = 0.0
    c.loss.normalizer_type = "none"              # none | RunningMeanStd | ExponentialMovingAverage
    c.loss.momentum = 0.9
    c.loss.do_normalize = False
    c.loss.beta = 0.02
    c.loss.dpo_slicing = "standard"              # standard | reference (the reference's off-by-one)

    c.lora = lora()

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 0                       # 0 = only at the end
    c.checkpoint.keep = 3
    c.checkpoint.keep_when_done = 1              # once exported, the newest N (0 = none: re-running then trains again)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1                             # -1 = all remaining devices
    c.mesh.tensor = 1
    c.mesh.rules = mesh_rules()                  # logical axis → mesh axes, e.g. --config.mesh.rules.mlp=fsdp

    c.distributed = distributed()

    c.logging = ml_collections.ConfigDict()
    c.logging.tensorboard = True
    c.logging.progress = True
    return c


def lora() -> ml_collections.ConfigDict:
    """LoRA (METHODS_BEYOND §4): rank 0 = full fine-tuning; > 0 trains adapters (and a score model's head) only, the
    reference model is the frozen base, the export merges W + (α/r)·A@B into plain HF weights. In RL: the actor."""
    return ml_collections.ConfigDict(dict(rank=0, alpha=16.0, init="kaiming_uniform",
                                          targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"),
                                          export="merged"))  # 'both': also export/adapter/ in PEFT's format


def mesh_rules() -> ml_collections.ConfigDict:
    """The logical-axis rules as config data ('data,fsdp' = several mesh axes, '' = replicated)."""
    from saferlhf_jax.parallel.mesh import rules_config

    return ml_collections.ConfigDict(rules_config())


def distributed() -> ml_collections.ConfigDict:
    """Multi-host switch: one process per host calls jax.distributed.initialize (auto-detected on TPU/SLURM)."""
    return ml_collections.ConfigDict(dict(enabled=False, coordinator_address="", num_processes=0, process_id=-1,
                                          cpu_collectives="gloo"))


def llama2_7b_common(c: ml_collections.ConfigDict, devices: int = 8, preset: str = "llama2_7b"):
    """The reference scripts' setting on 8 devices: bf16 compute, fp32 master weights, remat, FSDP over 8."""
    c.architecture = LLAMA3_8B if preset == "llama3_8b" else LLAMA2_7B
    c.model_name_or_path = c.architecture
    c.data.max_length = 512
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat_policy = "full"
    c.model.scan_layers = True
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, devices, 1
    c.train.lr_warmup_ratio = 0.03
    c.train.lr_scheduler_type = "cosine"
    c.logging.progress = True
    return c


def tiny_common(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """CPU-sized: the embedded stories260K model and shipped data."""
    c.model_name_or_path = DEFAULT_MODEL
    c.data.source = "embedded"
    c.data.max_length = 256
    c.data.buckets = (128, 256)
    c.train.batch_size = 8
    c.train.eval_batch_size = 8
    c.train.learning_rate = 1e-3
    c.train.lr_scheduler_type = "cosine"
    c.train.lr_warmup_ratio = 0.05
    c.train.weight_decay = 0.0
    c.checkpoint.every = 10
    return c


def check_preset(preset: str, known) -> str:
    preset = preset or "tiny"
    if preset not in known:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(known)}")
    return preset
