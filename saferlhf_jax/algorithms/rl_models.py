"""The models of an RL stage, loaded once: the actor, its frozen reference, the reward model, the cost model(s) and
the critics (spec §1.1: six models for PPO-Lag; four for the critic-free modes), with the scoring functions of the
frozen scorers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from saferlhf_jax import models
from saferlhf_jax.algorithms import constraints as constraints_lib
from saferlhf_jax.algorithms import rl
from saferlhf_jax.parallel import mesh as mesh_lib


def load_models(cfg, rl_cfg, tokenizer, mesh, rules=None):
    """(actor, reward critic, cost critic | None, frozen params, reward_fn, cost_fn | None)."""
    kw = dict(mesh=mesh, rules=rules, dtype=jnp.dtype(cfg.model.param_dtype), compute_dtype=cfg.model.dtype,
              remat_policy=cfg.model.remat_policy, scan_layers=bool(cfg.model.scan_layers))
    # the frozen reference, reward and cost models are held in model.frozen_dtype (bf16 halves them at scale)
    frozen_dtype = jnp.dtype(cfg.model.get("frozen_dtype", "float32"))
    lora_rank = int(cfg.get("lora", {}).get("rank", 0))
    frozen_kw = dict(kw, dtype=frozen_dtype)
    new_head = bool(cfg.get("allow_new_head", False))
    actor = models.load_causal_lm(cfg.actor_model_name_or_path, **kw)
    if len(tokenizer) > actor.config.vocab_size:
        actor, actor.params = models.resize_token_embeddings(actor, actor.params, len(tokenizer))
    critics = rl_cfg.critics
    # always a copy (the actor's parameters are donated to every update), cast when bf16
    reference = jax.tree.map(lambda x: jnp.array(x, dtype=frozen_dtype, copy=True), actor.params)
    if lora_rank:  # LoRA: the reference is the actor's frozen base itself (the state holds adapters only), held
        # in frozen_dtype like every frozen model (a cast only when the dtypes differ)
        reference = jax.tree.map(lambda x: x if x.dtype == frozen_dtype or not jnp.issubdtype(x.dtype, jnp.floating)
                                 else x.astype(frozen_dtype), actor.params)
    # normalize_reward / normalize_cost override the checkpoint's do_normalize, as the reference (default off)
    reward_model = models.load_score_model(cfg.reward_model_name_or_path, do_normalize=bool(cfg.rl.normalize_reward),
                                           require_head=not new_head, **frozen_kw)
    reward_critic = None
    if rl.REWARD in critics:
        critic_path = cfg.get("reward_critic_model_name_or_path") or cfg.reward_model_name_or_path
        reward_critic = models.load_score_model(critic_path, score_type="critic", do_normalize=False, **kw)
    frozen = {"ref": reference, "reward": reward_model.params}
    reward_fn = rl.score_model_end_fn(reward_model.apply)
    cost_fn, cost_critic = None, None
    several = constraints_lib.parse(cfg.rl)
    if several:
        cost_fn, frozen["cost"], cost_critic = load_constraint_models(cfg, rl_cfg, several, kw, frozen_kw)
    elif rl_cfg.uses_cost:
        cost_model = models.load_score_model(cfg.cost_model_name_or_path, do_normalize=bool(cfg.rl.normalize_cost),
                                             require_head=not new_head, **frozen_kw)
        frozen["cost"] = cost_model.params
        cost_fn = rl.score_model_end_fn(cost_model.apply)
        if rl_cfg.cost_critic:
            cc_path = cfg.get("cost_critic_model_name_or_path") or cfg.cost_model_name_or_path
            cost_critic = models.load_score_model(cc_path, score_type="critic", do_normalize=False, **kw)
    return actor, reward_critic, cost_critic, frozen, reward_fn, cost_fn


def load_constraint_models(cfg, rl_cfg, several, kw, frozen_kw):
    """K constraints (METHODS_BEYOND §3): (cost_fn → (B, K), {model: frozen params}, K-output cost critic | None).
    Each model of rl.cost_models that a constraint reads is loaded once; the cost critic's backbone is
    cost_critic_model_name_or_path (default: the model of constraint 0) and its head has one row per constraint."""
    paths = dict(cfg.rl.cost_models)
    loaded = {}
    for name in dict.fromkeys(c.model for c in several):
        loaded[name] = models.load_score_model(paths[name], do_normalize=bool(cfg.rl.normalize_cost),
                                               require_head=True, **frozen_kw)
    dims = {name: m.config.score_dim for name, m in loaded.items()}
    cost_fn = constraints_lib.make_cost_fn({n: m.apply for n, m in loaded.items()}, dims, several)
    critic = None
    if rl_cfg.cost_critic:
        source = several[0].model
        path = cfg.get("cost_critic_model_name_or_path") or paths[source]
        critic = models.load_score_model(path, score_type="critic", do_normalize=False, **kw)
        head = mesh_lib.to_host(critic.params["score_head"])
        kernel, bias = constraints_lib.critic_head(head["kernel"], head.get("bias"), several,
                                                   source if path == paths[source] else "",
                                                   critic.config.initializer_range, int(cfg.seed))
        critic = models.replace_score_head(critic, kernel, bias)
    return cost_fn, {n: m.params for n, m in loaded.items()}, critic


__all__ = ["load_constraint_models", "load_models"]
