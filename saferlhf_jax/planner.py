"""Memory planner: build a stage's real jitted step on abstract, sharded parameters (never allocated), compile it
for the target devices and report per-device memory.

Targets: `cpu:N` (simulated host devices; set before JAX starts, see launch.plan) or `tpu:<topology>` through
`jax.experimental.topologies` (needs libtpu: `pip install "jax[tpu]==<same version>"`), which runs the real TPU
compiler on a CPU host and refuses programs that do not fit.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from saferlhf_jax import models
from saferlhf_jax.algorithms import rl
from saferlhf_jax.algorithms.rl_config import rl_config
from saferlhf_jax.models import lora
from saferlhf_jax.models.api import abstract_model, param_shardings
from saferlhf_jax.models.config import ModelConfig
from saferlhf_jax.parallel import mesh as mesh_lib
from saferlhf_jax.training import optim, trainer
from saferlhf_jax.training import state as state_lib
from saferlhf_jax.training.trainer import lora_settings

log = logging.getLogger(__name__)

# Architectures by hub name, for planning without the weights on disk.
ARCHITECTURES = {
    "meta-llama/Llama-2-7b-hf": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                     num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                                     max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0),
    "meta-llama/Meta-Llama-3-8B": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                       max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0),
    "meta-llama/Meta-Llama-3-70B": dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672,
                                        num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                                        max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0),
}


def model_config(path: str, model_cfg, fallback: str = "") -> ModelConfig:
    """The architecture of `path` (an HF dir, or a known hub name; else `fallback`), with execution settings."""
    exec_kw = dict(dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype, remat_policy=model_cfg.remat_policy,
                   scan_layers=bool(model_cfg.scan_layers))
    p = pathlib.Path(str(path)).expanduser()
    if (p / "config.json").is_file():
        return ModelConfig.from_pretrained(p, **exec_kw)
    for candidate in (str(path), fallback):
        for name, arch in ARCHITECTURES.items():
            if candidate and (candidate.rstrip("/").endswith(name) or pathlib.Path(name).name in candidate):
                return ModelConfig(**arch, **exec_kw)
    raise FileNotFoundError(f"{path}: no config.json and not a known architecture ({sorted(ARCHITECTURES)}); "
                            "for a local run's export, train the earlier stage first")


def abstract_params(config: ModelConfig, kind: str, mesh: Mesh, rules=None):
    """(graphdef, params as ShapeDtypeStructs carrying their shardings)."""
    graphdef, shapes, _ = abstract_model(config, kind)
    shardings = param_shardings(config, kind, mesh, rules)
    return graphdef, jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                                  shardings)


def bytes_per_device(tree) -> int:
    """Σ over leaves of the bytes one device holds (global bytes / number of shards of that leaf)."""
    total = 0
    for x in jax.tree.leaves(tree):
        nbytes = math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
        sharding = getattr(x, "sharding", None)
        shards = 1
        if isinstance(sharding, NamedSharding):
            for axes in sharding.spec:
                for a in (axes if isinstance(axes, tuple) else (axes,)):
                    if a is not None:
                        shards *= sharding.mesh.shape[a]
        total += nbytes // shards
    return total


def memory_of(compiled) -> dict[str, int]:
    ma = compiled.memory_analysis()
    if ma is None:
        return {}
    arg = int(getattr(ma, "argument_size_in_bytes", 0))
    temp = int(getattr(ma, "temp_size_in_bytes", 0))
    out = int(getattr(ma, "output_size_in_bytes", 0))
    alias = int(getattr(ma, "alias_size_in_bytes", 0))
    code = int(getattr(ma, "generated_code_size_in_bytes", 0))
    host_arg = int(getattr(ma, "host_argument_size_in_bytes", 0))  # optimizer state offloaded to host memory
    return {"argument_bytes_per_device": arg, "temp_bytes_per_device": temp, "output_bytes_per_device": out,
            "alias_bytes_per_device": alias, "code_bytes": code, "host_argument_bytes_per_device": host_arg,
            "total_bytes_per_device": arg + temp + max(out - alias, 0) + code}


def plan_supervised(stage, cfg, mesh: Mesh, rules=None) -> dict[str, Any]:
    """Compile the stage's train step (batch × max_length, GA micro-batches) on the abstract state the trainer
    allocates (the same `training.state` layout)."""
    config = model_config(cfg.model_name_or_path, cfg.model, cfg.get("architecture", ""))
    kind = "score" if stage.model_kind == "score" else "causal_lm"
    if kind == "score":
        config = config.replace(score_type=stage.score_type, score_dim=stage.score_dim)
    graphdef, params = abstract_params(config, kind, mesh, rules)
    model = models.Model(config, kind, graphdef, None, None, mesh, rules)
    t = cfg.train
    optimizer, schedule = optim.make_optimizer(float(t.learning_rate), 1000, weight_decay=float(t.weight_decay))
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=NamedSharding(mesh, P()))
    memory_kind = str(cfg.model.get("optimizer_memory", "device"))
    state = state_lib.state_layout(trainer.make_init_state(optimizer), params, key,
                                   axes=[models.param_logical_axes(config, kind)], mesh=mesh, rules=rules,
                                   optimizer_memory=memory_kind)
    batch = _abstract_batch(stage.train_kind, int(t.grad_accum), int(t.batch_size), int(cfg.data.max_length), mesh)
    frozen = params if stage.needs_reference else {}
    step = trainer.make_train_step(stage, model, optimizer, schedule, trainer.loss_config(cfg), int(t.grad_accum),
                                   optimizer_on_host=memory_kind != "device")
    shard = state_lib.shardings_of_layout
    jitted = jax.jit(step, in_shardings=(shard(state), shard(batch), shard(frozen)),
                     out_shardings=(shard(state), NamedSharding(mesh, P())), donate_argnums=(0,))
    compiled = jitted.lower(state, batch, frozen).compile()
    models_bytes = {"policy" if kind == "causal_lm" else stage.name: bytes_per_device(params),
                    "optimizer": bytes_per_device(state["opt_state"])}
    if stage.needs_reference:
        models_bytes["reference"] = bytes_per_device(frozen)
    return {**memory_of(compiled), "models": models_bytes,
            "analytic_param_optimizer_bytes_per_device": sum(models_bytes.values())}


def _scalar(mesh):
    return jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))


def _abstract_batch(kind: str, ga: int, batch: int, length: int, mesh: Mesh) -> dict:
    spec = NamedSharding(mesh, P(None, mesh_lib.BATCH_AXES))
    ids = lambda: jax.ShapeDtypeStruct((ga, batch, length), jnp.int32, sharding=spec)  # noqa: E731
    mask = lambda: jax.ShapeDtypeStruct((ga, batch, length), jnp.bool_, sharding=spec)  # noqa: E731
    if kind == "supervised":
        return {"input_ids": ids(), "labels": ids(), "attention_mask": mask()}
    if kind in ("preference", "safety_preference", "safedpo_preference"):
        a, b = ("safer", "unsafer") if kind == "safety_preference" else ("better", "worse")
        out = {f"{a}_input_ids": ids(), f"{a}_attention_mask": mask(), f"{b}_input_ids": ids(),
               f"{b}_attention_mask": mask()}
        if kind == "safety_preference":
            sign = jax.ShapeDtypeStruct((ga, batch), jnp.int32, sharding=spec)
            out.update(safer_safety_sign=sign, unsafer_safety_sign=sign)
        if kind == "safedpo_preference":
            flag = jax.ShapeDtypeStruct((ga, batch), jnp.int32, sharding=spec)
            out.update(better_unsafe=flag, worse_unsafe=flag)
        return out
    if kind == "moderation":
        vec = lambda d, dt: jax.ShapeDtypeStruct((ga, batch) + d, dt, sharding=spec)  # noqa: E731
        return {"input_ids": ids(), "attention_mask": mask(), "is_unsafe": vec((), jnp.int32),
                "categories": vec((19,), jnp.bool_), "category_valid": vec((), jnp.bool_),
                "severity": vec((), jnp.int32)}
    raise ValueError(f"no planner batch for {kind}")


def rl_step_program(cfg, mesh: Mesh, rules=None) -> dict[str, Any]:
    """The jitted rl_step of `cfg` and its abstract inputs (RLState as the RL loop lays it out, a rollout
    micro-batch of train_batch_size × max_length, the PTX batch; with LoRA the actor's frozen base as the step's
    last argument), with the models' configs and the per-model bytes — shared by `plan_rl` (compile only) and
    `benchmarks/planner_vs_device.py` (compile and run)."""
    arch = cfg.get("architecture", "")
    actor_cfg = model_config(cfg.actor_model_name_or_path, cfg.model, arch)
    critic_cfg = model_config(cfg.reward_model_name_or_path, cfg.model, arch).replace(score_type="critic")
    actor_gd, actor_p = abstract_params(actor_cfg, "causal_lm", mesh, rules)
    critic_gd, critic_p = abstract_params(critic_cfg, "score", mesh, rules)
    actor = models.Model(actor_cfg, "causal_lm", actor_gd, None, None, mesh, rules)
    critic = models.Model(critic_cfg, "score", critic_gd, None, None, mesh, rules)
    rl_cfg = rl_config(cfg)
    actor_opt, actor_sched = optim.make_optimizer(float(cfg.actor.learning_rate), 1000,
                                                  weight_decay=float(cfg.actor.weight_decay))
    critic_opt, critic_sched = optim.make_optimizer(float(cfg.critic.learning_rate), 1000,
                                                    weight_decay=float(cfg.critic.weight_decay))
    log_probs = functools.partial(actor.label_log_probs, chunk=int(cfg.model.get("logits_chunk", 0)))
    memory_kind = str(cfg.model.get("optimizer_memory", "device"))
    lora_rank, lora_scale = lora_settings(cfg)
    lora_critics = bool(lora_rank and cfg.lora.get("critics", False)) and not rl_cfg.critic_free
    fns = rl.RLModels(log_probs, critic.apply, actor_opt, critic_opt, actor_sched, critic_sched, rl_cfg,
                      optimizer_on_host=memory_kind != "device", lora_scale=lora_scale,
                      critic_lora_scale=lora_scale if lora_critics else 0.0)
    dp = mesh_lib.batch_divisor(mesh)
    axes = [models.param_logical_axes(actor_cfg, "causal_lm"), models.param_logical_axes(critic_cfg, "score")]
    actor_trainable, critic_trainable = actor_p, critic_p
    if lora_rank:  # the state holds the adapters (sharded like their kernels); the base is the reference
        adapters = lora.shapes(actor_p, lora_rank, tuple(cfg.lora.targets))
        actor_trainable = {lora.KEY: adapters}
        axes.append(lora.adapter_axes(axes[0], adapters))
    if lora_critics:  # adapters + the critic's own head over the frozen reward / cost model
        critic_trainable = {lora.KEY: lora.shapes(critic_p, lora_rank, tuple(cfg.lora.targets)),
                            **lora.split(critic_p, "score")[0]}
    state = state_lib.state_layout(
        lambda a, r, c: rl.init_state(fns, a, r, c, 0, dp), actor_trainable, critic_trainable,
        critic_trainable if rl_cfg.cost_critic else None, mesh=mesh, rules=rules, optimizer_memory=memory_kind,
        axes=axes)
    b, length = int(cfg.train.train_batch_size), int(cfg.generation.max_length)
    bs = NamedSharding(mesh, P(mesh_lib.BATCH_AXES))
    bs2 = NamedSharding(mesh, P(mesh_lib.BATCH_AXES, None))
    f32 = lambda shape, s: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=s)  # noqa: E731
    rollout = rl.Rollout(
        seq=jax.ShapeDtypeStruct((b, length), jnp.int32, sharding=bs2),
        mask=jax.ShapeDtypeStruct((b, length), jnp.bool_, sharding=bs2),
        start=jax.ShapeDtypeStruct((b,), jnp.int32, sharding=bs),
        ref_log_probs=f32((b, length - 1), bs2), reward=f32((b,), bs),
        cost=f32((b,), bs) if rl_cfg.uses_cost else None, log_probs=f32((b, length - 1), bs2),
        reward_values=None if rl_cfg.critic_free else f32((b, length - 1), bs2),
        cost_values=f32((b, length - 1), bs2) if rl_cfg.cost_critic else None,
        # critic-free GRPO / GRPO-Lag: group-relative advantages instead of critic values
        reward_advantage=f32((b,), bs) if rl_cfg.critic_free else None,
        cost_advantage=f32((b,), bs) if rl_cfg.critic_free and rl_cfg.uses_cost else None)
    ptx = None
    if rl_cfg.ptx_coeff > 0:
        ptx = {"input_ids": jax.ShapeDtypeStruct((b, length), jnp.int32, sharding=bs2),
               "labels": jax.ShapeDtypeStruct((b, length), jnp.int32, sharding=bs2),
               "attention_mask": jax.ShapeDtypeStruct((b, length), jnp.bool_, sharding=bs2)}
    rep = NamedSharding(mesh, P())
    shard = state_lib.shardings_of_layout
    frozen_dtype = jnp.dtype(cfg.model.get("frozen_dtype", "float32"))
    as_frozen = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct(x.shape, frozen_dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype,
                                       sharding=x.sharding), tree)
    # LoRA: the frozen arrays the adapters sit on (the reference; the reward and cost models) are step arguments
    bases = {"actor": as_frozen(actor_p)} if lora_rank else {}
    if lora_critics:
        bases.update(reward=as_frozen(critic_p), **({"cost": as_frozen(critic_p)} if rl_cfg.cost_critic else {}))
    args = (state, rollout, ptx) + ((bases,) if bases else ())
    jitted = jax.jit(rl.make_rl_step(fns), in_shardings=tuple(shard(a) for a in args),
                     out_shardings=(shard(state), rep, None), donate_argnums=(0,))
    trained = lambda m: bytes_per_device(m.params) + bytes_per_device(m.opt_state)  # noqa: E731
    per_model = {"actor": trained(state.actor), "reference": bytes_per_device(as_frozen(actor_p)),
                 "reward_model": bytes_per_device(as_frozen(critic_p))}
    if state.reward_critic is not None:  # critic-free GRPO-Lag: actor, reference, reward and cost models only
        per_model["reward_critic"] = trained(state.reward_critic)
    if rl_cfg.uses_cost:
        per_model["cost_model"] = bytes_per_device(as_frozen(critic_p))
    if rl_cfg.cost_critic:
        per_model["cost_critic"] = trained(state.cost_critic)
    return {"jitted": jitted, "args": args, "state": state, "rollout": rollout, "ptx": ptx, "per_model": per_model,
            "actor_config": actor_cfg, "critic_config": critic_cfg, "fns": fns, "frozen_dtype": frozen_dtype,
            "rl_config": rl_cfg, "lora_rank": lora_rank, "lora_critics": lora_critics,
            "step_bases": sorted(bases)}


# the models an RL step reads but does not train (per_model keys)
FROZEN_MODELS = ("reference", "reward_model", "cost_model")


def plan_rl(cfg, mesh: Mesh, rules=None) -> dict[str, Any]:
    """Compile one rl_step (actor and critics updated; reference, RM, CM resident in model.frozen_dtype) on the
    abstract RLState the RL loop allocates (the same `training.state` layout), at the config's memory levers."""
    prog = rl_step_program(cfg, mesh, rules)
    compiled = prog["jitted"].lower(*prog["args"]).compile()
    per_model, rl_cfg, b, length = prog["per_model"], prog["rl_config"], *prog["rollout"].seq.shape
    memory = memory_of(compiled)
    # the frozen models stay resident beside the step; with LoRA the ones adapters sit on (the reference; with
    # lora.critics the reward and cost models) are arguments of the step and already counted there
    as_args = {"actor": "reference", "reward": "reward_model", "cost": "cost_model"}
    in_step = {as_args[b] for b in prog["step_bases"]}
    frozen = sum(per_model.get(k, 0) for k in FROZEN_MODELS if k not in in_step)
    memory["resident_frozen_bytes_per_device"] = frozen
    memory["total_bytes_per_device"] = memory.get("total_bytes_per_device", 0) + frozen
    levers = {"frozen_dtype": prog["frozen_dtype"].name, "logits_chunk": int(cfg.model.get("logits_chunk", 0)),
              "optimizer_memory": str(cfg.model.get("optimizer_memory", "device")),
              "joint_update": rl_cfg.joint_update, "remat_policy": cfg.model.remat_policy,
              "rollout_batch": b, "max_length": length, "ptx": prog["ptx"] is not None,
              "lora_rank": prog["lora_rank"], "lora_critics": prog["lora_critics"]}
    return {**memory, "models": per_model, "levers": levers,
            "analytic_param_optimizer_bytes_per_device": sum(per_model.values())}


# Cloud TPU slice names → libtpu topology names (chips per dimension).
TPU_TOPOLOGIES = {"v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2", "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2",
                  "v5p-32": "v5p:2x2x4", "v5p-64": "v5p:2x4x4",
                  "v5p-128": "v5p:4x4x4", "v5e-8": "v5e:2x4", "v5e-16": "v5e:4x4", "v5e-64": "v5e:8x8",
                  "v6e-8": "v6e:2x4", "v6e-64": "v6e:8x8"}


def make_target_mesh(target: str, cfg_mesh) -> Mesh:
    """Mesh over the target's devices: `cpu:N` (already simulated) or `tpu:<topology>`."""
    kind, _, spec = target.partition(":")
    if kind == "cpu":
        return mesh_lib.make_mesh(int(cfg_mesh.data), int(cfg_mesh.fsdp), int(cfg_mesh.tensor))
    if kind == "tpu":
        from jax.experimental import topologies

        name = TPU_TOPOLOGIES.get(spec, spec)
        try:
            topo = topologies.get_topology_desc(platform="tpu", topology_name=name)
        except Exception as err:  # noqa: BLE001 — libtpu missing or unknown topology
            raise ValueError(f"cannot build TPU topology {spec!r} ({err}); install libtpu with "
                             f"pip install 'jax[tpu]=={jax.__version__}'") from err
        devices = topo.devices
        return mesh_lib.make_mesh(int(cfg_mesh.data), int(cfg_mesh.fsdp), int(cfg_mesh.tensor), devices=devices)
    raise ValueError(f"--target must be cpu:N or tpu:<topology>, got {target!r}")


def format_report(plan: dict, device_memory: float | None) -> str:
    gib = lambda b: f"{b / 2**30:8.2f} GiB"  # noqa: E731
    lines = ["per-device memory:"]
    for key in ("argument_bytes_per_device", "temp_bytes_per_device", "output_bytes_per_device",
                "resident_frozen_bytes_per_device", "total_bytes_per_device"):
        if key in plan:
            lines.append(f"  {key.replace('_bytes_per_device', ''):<16} {gib(plan[key])}")
    lines.append("per model (parameters + optimizer state, per device):")
    for name, b in plan["models"].items():
        lines.append(f"  {name:<16} {gib(b)}")
    if device_memory:
        fits = plan["total_bytes_per_device"] <= device_memory
        lines.append(f"fits in {device_memory / 2**30:.1f} GiB per device: {'yes' if fits else 'NO'}")
    return "\n".join(lines)


def levers(cfg, part: str, target: str) -> list[str]:
    """The settings that shrink `part` ('temporaries' | 'parameters and optimizer state' | 'frozen models') of the
    step `cfg` plans, as command-line overrides with what each does (the ones already on are left out)."""
    m, out = cfg.model, []
    devices_hint = "more devices (a larger --target / --config.mesh.fsdp)"
    if part == "temporaries":
        b = int(cfg.train.get("train_batch_size", cfg.train.get("batch_size", 0)) or 0)
        key = "train_batch_size" if "train_batch_size" in cfg.train else "batch_size"
        if b > 1:
            out.append(f"--config.train.{key}={b // 2} (half the micro-batch; the global batch is kept by more steps)")
        if m.get("remat_policy", "none") == "none":
            out.append("--config.model.remat_policy=full")
        if "logits_chunk" in m and not int(m.logits_chunk):
            out.append("--config.model.logits_chunk=8192")
    else:
        if "lora" in cfg and not int(cfg.lora.rank):
            out.append("--config.lora.rank=64 (adapters: no full-size optimizer state)")
        if part == "parameters and optimizer state" and str(m.get("optimizer_memory", "device")) == "device" \
                and not target.startswith("cpu"):
            out.append("--config.model.optimizer_memory=pinned_host (Adam moments in host memory)")
        if part == "frozen models" and str(m.get("frozen_dtype", "bfloat16")) == "float32":
            out.append("--config.model.frozen_dtype=bfloat16")
    return out + [devices_hint]


def refusal(cfg, target: str, device_memory: float, plan: dict | None = None, compiler: str = "") -> str:
    """One line: it does not fit, by how much (the plan's total, or the compiler's own words), the biggest part of the
    memory, and the levers that shrink it."""
    if plan is not None and "temp_bytes_per_device" in plan:
        parts = {"temporaries": plan["temp_bytes_per_device"],
                 "parameters and optimizer state": plan["argument_bytes_per_device"],
                 "frozen models": plan.get("resident_frozen_bytes_per_device", 0)}
        part = max(parts, key=parts.get)
        found = levers(cfg, part, target)
        if part == "temporaries" and target.startswith("cpu") and not plan.get("gpu_estimate"):
            found.append("planning for GPUs: add --gpu_estimate (XLA:CPU's float32 copies of bf16 weights left out)")
        return (f"does not fit on {target}: {plan['total_bytes_per_device'] / 2**30:.1f} GiB per device > "
                f"{device_memory / 2**30:.1f} GiB; the biggest part is {part} ({parts[part] / 2**30:.1f} GiB per "
                "device); levers: " + "; ".join(found))
    # the TPU compiler refused: its message and the models' own bytes are all there is (libtpu's "HLO temporaries"
    # figure is not the temporaries alone)
    models_bytes = (plan or {}).get("models", {})
    parts = {"parameters and optimizer state": sum(v for k, v in models_bytes.items() if k not in FROZEN_MODELS),
             "frozen models": sum(models_bytes.get(k, 0) for k in FROZEN_MODELS)}
    part = max(parts, key=parts.get)
    models_total = sum(parts.values())
    found = levers(cfg, part, target)
    if device_memory and models_total > device_memory:
        where = f"the models alone need {models_total / 2**30:.1f} GiB per device, the largest part {part}"
    else:  # the models fit: the activations may be what overflows
        where = f"the models need {models_total / 2**30:.1f} GiB per device, the largest part {part}"
        found = [f for f in levers(cfg, "temporaries", target) if "more devices" not in f] + found
    return f"does not fit on {target}: {compiler}; {where}; levers: " + "; ".join(found)


def save(plan: dict, path) -> None:
    pathlib.Path(path).write_text(json.dumps(plan, indent=2) + "\n")

