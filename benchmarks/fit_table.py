"""What fits where: the PPO-Lag recipe at 7B / 8B / 70B on 8 × 80 GB, 16 × 80 GB (two 8-GPU hosts), a TPU v5p-8 and
a v5p-64, each cell found by the planner (`launch.plan`), and the largest model whose full (non-LoRA) six-model
recipe fits a v5p-64.

    python -m benchmarks.fit_table --tpu_python TPU_VENV/bin/python --out docs/fit_table.json
    python -m benchmarks.fit_table --tpu_python TPU_VENV/bin/python --largest --out docs/largest_full_v5p64.json

Each cell tries the preset, then the memory levers in order (GPU: half the rollout micro-batch, LoRA rank 64; TPU: the
Adam moments in host memory, LoRA rank 64, half the micro-batch) and keeps the first plan under the limit (72 GiB of
80, 85 GiB of a v5p chip's 95: 10 % headroom). GPU cells are planned on `cpu:N` with `--gpu_estimate` (XLA:CPU
without its float32 copies of the bf16 layer weights, which a GPU does not make) and the fitting variant once more on
XLA:CPU's own schedule (`cpu_schedule_total_gib`). TPU cells use the real TPU compiler (libtpu; `--tpu_python`).
Every plan's command is in the JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

from benchmarks.plan_levers import run_plan

REPO = pathlib.Path(__file__).resolve().parents[1]
# target name → (planner target, devices, usable GiB per device, kind)
TARGETS = {"8 × 80 GB": ("cpu:8", 8, 72.0, "gpu"), "16 × 80 GB (2 hosts)": ("cpu:16", 16, 72.0, "gpu"),
           "TPU v5p-8": ("tpu:v5p-8", 4, 85.0, "tpu"), "TPU v5p-64": ("tpu:v5p-64", 32, 85.0, "tpu")}
# model → (preset, rollout sequences per device to start from)
MODELS = {"Llama-2-7B": ("configs/ppo_lag.py:llama2_7b", 16), "Llama-3-8B": ("configs/ppo_lag.py:llama3_8b", 16),
          "Llama-3-70B": ("configs/ppo_lag.py:llama3_70b", 4)}
HOST_OPT = ["--config.model.optimizer_memory=pinned_host"]
LORA = ["--config.lora.rank=64"]


def batch(per_device: int, devices: int) -> list[str]:
    return [f"--config.train.train_batch_size={per_device * devices}",
            f"--config.train.prompt_batch_size={per_device * devices}"]


def variants(preset: str, per_device: int, devices: int, kind: str) -> list[tuple[str, list[str]]]:
    """(name, overrides) in the order tried: the preset, then one more lever at a time."""
    lora_preset = preset.endswith("70b")
    out = [("preset", [])]
    if kind == "tpu":
        out.append(("+ optimizer state in host memory", HOST_OPT))
    if not lora_preset:
        out.append(("+ LoRA r64 (actor and critics)", (HOST_OPT if kind == "tpu" else []) + LORA))
    base = (HOST_OPT if kind == "tpu" else []) + ([] if lora_preset else LORA)
    half = per_device // 2
    while half >= 1 and (kind == "gpu" or half >= 4 or lora_preset and half >= 2):
        out.append((f"+ {half} sequences per device" + ("" if lora_preset else ", LoRA r64"), base + batch(half,
                                                                                                        devices)))
        half //= 2
    # a variant with its own micro-batch replaces the starting one (no flag given twice)
    return [(n, ["--config.mesh.fsdp=-1", *(o if any("train_batch_size" in f for f in o)
                                            else [*batch(per_device, devices), *o])]) for n, o in out]


def gib(plan: dict) -> float | None:
    return round(plan["total_bytes_per_device"] / 2**30, 1) if "total_bytes_per_device" in plan else None


def fit_cell(model: str, target_name: str, python: dict, timeout: int) -> dict:
    preset, per_device = MODELS[model]
    target, devices, limit, kind = TARGETS[target_name]
    tried = []
    for name, overrides in variants(preset, per_device, devices, kind):
        extra = ["--gpu_estimate"] if kind == "gpu" else []
        plan = run_plan(python[kind], target, preset, [*overrides, *extra], limit, timeout)
        total = gib(plan)
        tried.append({"variant": name, "total_gib": total, "plan": plan})
        print(f"  {model} on {target_name} / {name}: {total if total is not None else plan.get('refusal') or plan}",
              flush=True)
        if total is not None and total <= limit:
            cell = {"fits": True, "variant": name, "total_gib": total, "tried": tried}
            if kind == "gpu":  # the same variant on XLA:CPU's own schedule (f32 weight copies included)
                cell["cpu_schedule_total_gib"] = gib(run_plan(python[kind], target, preset, overrides, limit,
                                                              timeout))
            return cell
        # the parameters alone over the limit with LoRA already on: a smaller micro-batch cannot help
        params_gib = sum(plan.get("models", {}).values()) / 2**30
        if params_gib > limit and (preset.endswith("70b") or "LoRA" in name):
            break
    return {"fits": False, "variant": None, "total_gib": None, "tried": tried}


def write_architecture(directory: pathlib.Path, layers: int) -> str:
    """A Llama-3-70B-wide model (hidden 8192, MLP 28672, GQA 8) with `layers` layers, as a config-only HF dir."""
    from saferlhf_jax.models import ModelConfig
    from saferlhf_jax.planner import ARCHITECTURES

    cfg = ModelConfig(**{**ARCHITECTURES["meta-llama/Meta-Llama-3-70B"], "num_hidden_layers": layers})
    d = directory / f"llama3_wide_{layers}L"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg.to_hf_dict("causal_lm")))
    return str(d)


def params_of(layers: int) -> float:
    """Parameters (billions) of the 70B-wide Llama with `layers` layers (untied embeddings)."""
    h, m, v, kv = 8192, 28672, 128256, 1024
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * m + 2 * h
    return (2 * v * h + h + layers * per_layer) / 1e9


def largest_full(python: str, timeout: int, per_chip: int = 4) -> dict:
    """Bisect the layer count of a 70B-wide Llama for the full six-model recipe (no LoRA; Adam moments in host
    memory) on a v5p-64 at `per_chip` sequences × 512 tokens per chip."""
    target, devices, limit, _ = TARGETS["TPU v5p-64"]
    tried = {}
    with tempfile.TemporaryDirectory() as tmp:
        def fits(layers: int) -> bool:
            arch = write_architecture(pathlib.Path(tmp), layers)
            overrides = ["--config.mesh.fsdp=-1", "--config.lora.rank=0", *HOST_OPT, *batch(per_chip, devices),
                         f"--config.actor_model_name_or_path={arch}", f"--config.reward_model_name_or_path={arch}",
                         f"--config.cost_model_name_or_path={arch}"]
            plan = run_plan(python, target, "configs/ppo_lag.py:llama3_70b", overrides, limit, timeout)
            plan["command"] = plan["command"].replace(arch, f"<70B-wide, {layers} layers>")
            total = gib(plan)
            tried[layers] = {"params_b": round(params_of(layers), 1), "total_gib": total, "plan": plan}
            print(f"  {layers} layers ({params_of(layers):.1f} B): {total} GiB", flush=True)
            return total is not None and total <= limit

        lo, hi = 40, 160  # bisect on layers: lo assumed to fit, hi not (checked)
        if not fits(lo):
            return {"largest_layers": None, "tried": tried}
        if fits(hi):
            return {"largest_layers": hi, "largest_params_b": round(params_of(hi), 1), "tried": tried}
        while hi - lo > 8:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return {"largest_layers": lo, "largest_params_b": round(params_of(lo), 1), "first_failing_layers": hi,
            "per_chip_sequences": per_chip, "tried": tried}


def markdown(cells: dict) -> str:
    lines = ["| model | " + " | ".join(TARGETS) + " |", "|---|" + "---|" * len(TARGETS)]
    for model in MODELS:
        row = []
        for t in TARGETS:
            c = cells[model][t]
            if not c["fits"]:
                row.append("does not fit")
                continue
            extra = f" (XLA:CPU schedule {c['cpu_schedule_total_gib']})" if c.get("cpu_schedule_total_gib") else ""
            row.append(f"{c['total_gib']} GiB{extra}: {c['variant']}")
        lines.append(f"| {model} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tpu_python", required=True, help="an interpreter with jax[tpu] (libtpu) of the same version")
    p.add_argument("--largest", action="store_true", help="the largest full-recipe model on a v5p-64 instead")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--out", default=None)
    p.add_argument("--timeout", type=int, default=3600)
    args = p.parse_args(argv)
    python = {"gpu": sys.executable, "tpu": args.tpu_python}
    command = "python -m benchmarks.fit_table " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.largest:
        report = {"command": command, **largest_full(args.tpu_python, args.timeout)}
    else:
        models, targets = args.models.split(","), args.targets.split(",")
        cells = {m: {t: fit_cell(m, t, python, args.timeout) for t in targets} for m in models}
        report = {"command": command, "targets": {t: TARGETS[t] for t in targets}, "cells": cells}
        if set(models) == set(MODELS) and set(targets) == set(TARGETS):
            report["markdown"] = markdown(cells)
            print(report["markdown"])
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
