"""Memory planner: compile a stage's real step on abstract, sharded parameters and report per-device memory.

    python -m launch.plan --config configs/ppo_lag.py:llama2_7b --config.mesh.fsdp=8 --target cpu:8 [--output plan.json]
    python -m launch.plan --config configs/reward.py:llama2_7b --target tpu:v5p-8 --device_memory_gib 95
    python -m launch.plan --config configs/ppo_lag.py:llama3_70b --target cpu:16 --gpu_estimate --device_memory_gib 72

Nothing is allocated: parameters are jax.ShapeDtypeStructs with shardings. `cpu:N` simulates N host devices;
`tpu:<topology>` uses jax.experimental.topologies (needs libtpu, `pip install "jax[tpu]==<jax version>"`).
"""

from __future__ import annotations

import argparse
import os
import sys

STAGES = {"sft": "sft", "reward": "reward", "cost": "cost", "dpo": "dpo", "safedpo": "safedpo", "moderation": "moderation"}


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="cpu:8")
    p.add_argument("--output", default=None, help="write the plan as JSON")
    p.add_argument("--device_memory_gib", type=float, default=None, help="say whether the step fits")
    p.add_argument("--gpu_estimate", action="store_true",
                   help="cpu:N: plan without XLA's while-loop-invariant code motion, which on a CPU hoists a float32 "
                        "copy of every scanned layer's bf16 weights out of the layer loop (XLA:CPU computes bf16 dots "
                        "in float32; a GPU computes them natively and has no such copies) — the estimate for GPUs")
    known, rest = p.parse_known_args(argv[1:])
    kind, _, n = known.target.partition(":")
    if kind == "cpu" and "jax" not in sys.modules:
        flags = f" --xla_force_host_platform_device_count={int(n or 1)}"
        if known.gpu_estimate:
            flags += " --xla_disable_hlo_passes=while-loop-invariant-code-motion"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + flags).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu" if kind in ("cpu", "tpu") else "")
    from launch.common import parse_config, setup_logging
    from saferlhf_jax import planner
    from saferlhf_jax.parallel import mesh as mesh_lib

    try:
        cfg, verbose = parse_config([argv[0], *rest], "configs/ppo_lag.py:llama2_7b")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    setup_logging(verbose)
    import importlib

    try:
        mesh = planner.make_target_mesh(known.target, cfg.mesh)
        rules = mesh_lib.rules_from_config(cfg.mesh)
        if "mode" in cfg:
            from saferlhf_jax.algorithms import rl_config

            rl_config.validate(cfg, mesh)  # the run's own checks: batch arithmetic as one line, not a sharding error
            plan = planner.plan_rl(cfg, mesh, rules)
            name = cfg.mode
        else:
            stage = importlib.import_module(f"saferlhf_jax.algorithms.{STAGES[cfg.stage]}").STAGE
            from saferlhf_jax.training import trainer

            trainer.validate_config(cfg, mesh)
            plan = planner.plan_supervised(stage, cfg, mesh, rules)
            name = cfg.stage
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 — the TPU compiler refuses programs that do not fit
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        message = str(err).split("RESOURCE_EXHAUSTED:", 1)[1].strip().splitlines()[0]
        per_model = planner.rl_step_program(cfg, mesh, rules)["per_model"] if "mode" in cfg else {}
        line = planner.refusal(cfg, known.target, (known.device_memory_gib or 0) * 2**30, {"models": per_model},
                               compiler=message)
        print(f"== {line}")
        if known.output:
            planner.save({"target": known.target, "mesh": dict(mesh.shape), "fits": False, "compiler": message,
                          "models": per_model, "refusal": line}, known.output)
        return 1
    plan = {"command": "python -m launch.plan " + " ".join(argv[1:]), "stage": name, "target": known.target,
            "mesh": dict(mesh.shape),
            "gpu_estimate": bool(known.gpu_estimate and kind == "cpu"), **plan}
    print(f"== {name} on {known.target}, mesh {dict(mesh.shape)}")
    memory = known.device_memory_gib * 2**30 if known.device_memory_gib else None
    print(planner.format_report(plan, memory))
    if memory is not None:
        plan["fits"] = plan["total_bytes_per_device"] <= memory
        if not plan["fits"]:
            plan["refusal"] = planner.refusal(cfg, known.target, memory, plan)
    if known.output:
        planner.save(plan, known.output)
        print(f"wrote {known.output}")
    if plan.get("fits") is False:
        print(f"== {plan['refusal']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
