"""Memory planner: compile a stage's real step on abstract, sharded parameters and report per-device memory.

    python -m launch.plan --config configs/ppo_lag.py:llama2_7b --config.mesh.fsdp=8 --target cpu:8 [--output plan.json]
    python -m launch.plan --config configs/reward.py:llama2_7b --target tpu:v5p-8 --device_memory_gib 95

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
    known, rest = p.parse_known_args(argv[1:])
    kind, _, n = known.target.partition(":")
    if kind == "cpu" and "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={int(n or 1)}").strip()
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
        print(f"== does not fit on {known.target}: {message}")
        if known.output:
            planner.save({"target": known.target, "fits": False, "compiler": message}, known.output)
        return 1
    plan = {"stage": name, "target": known.target, "mesh": dict(mesh.shape), **plan}
    print(f"== {name} on {known.target}, mesh {dict(mesh.shape)}")
    memory = known.device_memory_gib * 2**30 if known.device_memory_gib else None
    print(planner.format_report(plan, memory))
    if known.output:
        planner.save(plan, known.output)
        print(f"wrote {known.output}")
    if memory is not None:
        plan["fits"] = plan["total_bytes_per_device"] <= memory
    return 0


if __name__ == "__main__":
    sys.exit(main())
