"""The memory levers of the RL step, each measured by the planner (`launch.plan`), in one command.

    python -m benchmarks.plan_levers --target cpu:8 --out docs/plan_levers_8x80gb.json
    python -m benchmarks.plan_levers --target tpu:v5p-8 --python /path/to/tpu-venv/bin/python \
        --out docs/plan_levers_tpu_v5p8.json

Every variant is one `launch.plan` run in a fresh process (the simulated device count is fixed at start-up) on the
same preset with one override; the JSON holds each plan and the command that produced it, and the markdown table
printed at the end is what the README's memory table shows.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

# (name, overrides) — the preset's own setting first, then one lever turned back at a time
CPU8_VARIANTS = [
    ("recipe: all levers (preset)", []),
    ("frozen models float32", ["--config.model.frozen_dtype=float32"]),
    ("full-vocabulary logits", ["--config.model.logits_chunk=0"]),
    ("joint actor+critic update", ["--config.rl.joint_update=True"]),
    ("remat: save attention outputs", ["--config.model.remat_policy=save_attention_out"]),
    ("rollout micro-batch 64 (8/device)", ["--config.train.train_batch_size=64",
                                            "--config.train.prompt_batch_size=64"]),
]
# LoRA (METHODS_BEYOND §4), rank 64 on every projection: the actor alone, then the critics over their scoring models
LORA_VARIANTS = [
    ("LoRA r=64: actor", ["--config.lora.rank=64", "--config.lora.critics=False"]),
    ("LoRA r=64: actor + critics", ["--config.lora.rank=64", "--config.lora.critics=True"]),
    ("LoRA r=64: actor + critics, micro-batch 64", ["--config.lora.rank=64", "--config.lora.critics=True",
                                                    "--config.train.train_batch_size=64",
                                                    "--config.train.prompt_batch_size=64"]),
]
HOST_OPTIMIZER = ("optimizer state in host memory", ["--config.model.optimizer_memory=pinned_host"])
PRESETS = {
    "cpu": [("configs/ppo_lag.py:llama2_7b", ["--config.mesh.fsdp=8"], CPU8_VARIANTS + LORA_VARIANTS),
            # (host memory is what a CPU target allocates anyway: the offload lever is measured on the TPU target)
            ("configs/ppo_lag.py:llama3_8b", ["--config.mesh.fsdp=8"], [CPU8_VARIANTS[0], CPU8_VARIANTS[-1]])],
    # a v5p-8 slice is 4 chips: 16 sequences per chip is a global rollout micro-batch of 64
    "tpu": [("configs/ppo_lag.py:llama2_7b", ["--config.mesh.fsdp=4", "--config.train.train_batch_size=64",
                                              "--config.train.prompt_batch_size=64"],
             [*CPU8_VARIANTS[:3], HOST_OPTIMIZER, *LORA_VARIANTS[:2]])],
}


def run_plan(python: str, target: str, config: str, overrides: list[str], memory_gib: float, timeout: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "plan.json"
        cmd = [python, "-m", "launch.plan", "--config", config, *overrides, "--target", target, "--output", str(out),
               "--device_memory_gib", str(memory_gib)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        plan = json.loads(out.read_text()) if out.is_file() else {"error": proc.stderr.strip().splitlines()[-1:]}
        plan["seconds"] = round(time.perf_counter() - t0, 1)
        plan["command"] = "python -m launch.plan " + " ".join(cmd[3:cmd.index("--output")])
        return plan


def table(rows: list[dict], memory_gib: float) -> str:
    gib = lambda b: f"{b / 2**30:.1f}"  # noqa: E731
    lines = ["| preset | variant | params + optimizer (arguments) | temporaries | frozen models | total / device | "
             f"fits {memory_gib:g} GiB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["plan"]
        if "total_bytes_per_device" not in p:
            lines.append(f"| {r['preset']} | {r['variant']} | – | – | – | {p.get('compiler') or p.get('error')} | no |")
            continue
        fits = "yes" if p["total_bytes_per_device"] <= memory_gib * 2**30 else "no"
        lines.append(f"| {r['preset']} | {r['variant']} | {gib(p['argument_bytes_per_device'])} | "
                     f"{gib(p['temp_bytes_per_device'])} | {gib(p.get('resident_frozen_bytes_per_device', 0))} | "
                     f"{gib(p['total_bytes_per_device'])} | {fits} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="cpu:8", help="cpu:8 (8 × 80 GB estimate) or tpu:v5p-8 (real TPU compiler)")
    p.add_argument("--python", default=sys.executable, help="interpreter with jax[tpu] for tpu targets")
    p.add_argument("--memory_gib", type=float, default=None, help="default: 72 for cpu:8 (80 GB −10%), 95 for TPU")
    p.add_argument("--out", default=None)
    p.add_argument("--only", default=None, help="run the variants whose name contains this text")
    p.add_argument("--timeout", type=int, default=3600)
    args = p.parse_args(argv)
    kind = args.target.split(":")[0]
    memory = args.memory_gib or (95.0 if kind == "tpu" else 72.0)
    rows = []
    for config, base, variants in PRESETS[kind]:
        for name, overrides in variants:
            if args.only and args.only not in name:
                continue
            plan = run_plan(args.python, args.target, config, [*base, *overrides], memory, args.timeout)
            rows.append({"preset": config.split(":")[1], "variant": name, "plan": plan})
            print(f"{config} / {name}: {plan.get('total_bytes_per_device', 0) / 2**30:.1f} GiB "
                  f"({plan['seconds']} s)", flush=True)
    text = table(rows, memory)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps({"target": args.target, "memory_gib": memory, "rows": rows,
                                                      "markdown": text}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
