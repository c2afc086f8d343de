"""An RL stage's config read into what its parts take: the `rl.RLConfig`, the one-line checks of batch arithmetic and
value ranges, the prompt data, the runner's LoRA arguments and the evaluation's sampling."""

from __future__ import annotations

import jax

from saferlhf_jax import data as data_lib
from saferlhf_jax.algorithms import budget as budget_lib
from saferlhf_jax.algorithms import constraints as constraints_lib
from saferlhf_jax.algorithms import rl
from saferlhf_jax.errors import ConfigError
from saferlhf_jax.generation import model_sampling_defaults
from saferlhf_jax.parallel import mesh as mesh_lib
from saferlhf_jax.training import optim
from saferlhf_jax.training.state import OPTIMIZER_MEMORY
from saferlhf_jax.training.trainer import lora_settings


def rl_config(cfg) -> rl.RLConfig:
    r = cfg.rl
    try:
        return rl.RLConfig(
            mode=cfg.mode, kl_coeff=float(r.kl_coeff), clip_range_ratio=float(r.clip_range_ratio),
            clip_range_score=float(r.clip_range_score), clip_range_value=float(r.clip_range_value),
            gamma=float(r.gamma), gae_lambda=float(r.gae_lambda), ptx_coeff=float(r.ptx_coeff),
            threshold=float(r.threshold), lambda_init=float(r.lambda_init), lambda_lr=float(r.lambda_lr),
            lambda_max=float(r.lambda_max) if float(r.lambda_max) > 0 else None,
            lambda_update_delay_steps=int(r.lambda_update_delay_steps),
            lambda_update=str(r.get("lambda_update", rl.RLConfig.lambda_update)),
            lambda_pid=tuple(float(g) for g in r.get("lambda_pid", rl.RLConfig.lambda_pid)),
            episode_cost_window_size=int(r.episode_cost_window_size), whiten_advantages=bool(r.whiten_advantages),
            missing_eos_penalty=float(r.get("missing_eos_penalty", rl.RLConfig.missing_eos_penalty)),
            joint_update=bool(r.get("joint_update", True)),
            group_size=int(cfg.generation.num_return_sequences), **_critic_free_settings(cfg),
            **constraints_lib.rl_fields(constraints_lib.parse(r)))
    except ValueError as err:
        raise ConfigError(f"rl: {err}") from None


def _critic_free_settings(cfg) -> dict:
    """The `grpo` section of a critic-free config (configs/grpo_lag.py) as RLConfig fields."""
    g = cfg.get("grpo")
    if g is None:
        return {}
    return dict(advantage_estimator=str(g.advantage), group_eps=float(g.eps), kl_mode=str(g.kl_mode),
                kl_loss_coeff=float(g.kl_loss_coeff), aggregation=str(g.aggregation),
                loss_normalizer=float(g.loss_normalizer))


def validate(cfg, mesh) -> None:
    """Batch arithmetic and value ranges, as one-line errors before anything loads."""
    t = cfg.train
    prompt_bs, train_bs = int(t.prompt_batch_size), int(t.train_batch_size)
    nrs = int(cfg.generation.num_return_sequences)
    div = mesh_lib.batch_divisor(mesh)
    if min(prompt_bs, train_bs, nrs, int(t.update_iters)) < 1:
        raise ConfigError("train.prompt_batch_size, train.train_batch_size, generation.num_return_sequences and "
                          "train.update_iters must be ≥ 1")
    if int(t.max_steps) <= 0 and int(t.epochs) < 1:  # else 0 iterations: the SFT actor exported as the result
        raise ConfigError(f"train.epochs must be ≥ 1 when train.max_steps is not set, got {t.epochs}")
    if prompt_bs % train_bs:
        raise ConfigError(f"train.prompt_batch_size={prompt_bs} must be a multiple of train.train_batch_size="
                          f"{train_bs}")
    if train_bs % div:
        raise ConfigError(f"train.train_batch_size={train_bs} must be a multiple of the data axes data×fsdp={div}")
    hosts = jax.process_count()
    if train_bs % hosts:
        raise ConfigError(f"train.train_batch_size={train_bs} must be a multiple of the {hosts} hosts")
    for who in ("actor", "critic"):
        optim.validate(cfg[who], who)
    g = cfg.generation
    if int(g.max_length) < 2 or int(cfg.data.min_response_length) < 1:
        raise ConfigError("generation.max_length must be ≥ 2 and data.min_response_length ≥ 1")
    if int(cfg.data.min_response_length) >= int(g.max_length):
        raise ConfigError(f"data.min_response_length={cfg.data.min_response_length} leaves no room for a prompt "
                          f"under generation.max_length={g.max_length}")
    if str(cfg.model.get("optimizer_memory", "device")) not in OPTIMIZER_MEMORY:
        raise ConfigError(f"model.optimizer_memory must be one of {OPTIMIZER_MEMORY}")
    if (float(g.temperature) < 0 or not 0 < float(g.top_p) <= 1 or int(g.top_k) < 0
            or not float(g.repetition_penalty) > 0):
        raise ConfigError("generation: temperature must be ≥ 0, top_p in (0, 1], top_k ≥ 0, repetition_penalty > 0")
    if cfg.mode in ("ppo_lag", "grpo_lag"):  # a budget in label units: one line before any model loads
        budget_lib.parse(cfg.rl.get("budget"), "rl.budget")
    eval_bs = int(t.eval_batch_size)
    if cfg.get("eval_datasets") and (eval_bs < 1 or eval_bs % div or eval_bs % hosts):
        raise ConfigError(f"train.eval_batch_size={eval_bs} must be a positive multiple of data×fsdp={div} and of "
                          f"the {hosts} hosts")


def build_prompts(cfg, entries, tokenizer, source):
    """Prompt-only dataset: right-truncated to data.max_prompt_length (0 = generation.max_length, spec §2.5), then
    every prompt that leaves less than data.min_response_length tokens to answer is dropped and counted."""
    max_length = int(cfg.generation.max_length)
    truncate = int(cfg.data.max_prompt_length) or max_length
    template = data_lib.make_template(str(cfg.data.get("template", "pku")), tokenizer)
    dataset = data_lib.build_dataset("prompt_only", data_lib.load_mix(list(entries), source), tokenizer, truncate,
                                     template)
    room = max_length - int(cfg.data.min_response_length)
    return data_lib.drop_long_prompts(dataset, room, f"generation.max_length={max_length} − "
                                                     f"data.min_response_length={cfg.data.min_response_length}")


def lora_kwargs(cfg) -> dict:
    """RLRunner's LoRA arguments from the config's `lora` section (rank 0: full fine-tuning of the actor;
    lora.critics: the critics too, each over the frozen scoring model it starts from)."""
    rank, _ = lora_settings(cfg)  # the supervised stages' checks (rank, alpha, init): one set of one-line errors
    if not rank:
        return {}
    section = cfg.lora
    out = dict(lora_rank=int(section.rank), lora_alpha=float(section.alpha), lora_targets=tuple(section.targets),
               lora_init=str(section.init))
    if bool(section.get("critics", False)):
        several = constraints_lib.parse(cfg.rl)
        scorer = {"reward": cfg.reward_model_name_or_path,
                  "cost": dict(cfg.rl.cost_models)[several[0].model] if several else cfg.get("cost_model_name_or_path")}
        for name, path in scorer.items():
            own = cfg.get(f"{name}_critic_model_name_or_path")
            if own and own != path:  # a critic from another checkpoint would need a second frozen backbone
                raise ConfigError(f"lora.critics: the {name} critic's base is the {name} model ({path}) itself; "
                                  f"{name}_critic_model_name_or_path={own} needs its own weights (unset it, or set "
                                  "lora.critics=False)")
        out.update(lora_critics=True, cost_base_key=several[0].model if several else "")
    return out


def eval_sampling(cfg, actor_dir) -> dict:
    """RL evaluation samples with the actor's own generation_config.json (spec §5.1, §5.3) unless the config's
    `eval_generation` entries are set."""
    sampling = model_sampling_defaults(actor_dir)
    for k, v in cfg.eval_generation.items():
        if v is not None:
            sampling[k] = v
    return sampling


__all__ = ["build_prompts", "eval_sampling", "lora_kwargs", "rl_config", "validate"]
