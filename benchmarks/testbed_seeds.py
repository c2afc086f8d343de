"""The ground-truth testbed on several seeds, in one command and one JSON (what the README's testbed table shows).

    python -m benchmarks.testbed_seeds --preset ci --seeds 0,1,2,3 --work runs/testbed_seeds \
        --out docs/testbed_ci_seeds.json

Each seed is one `launch.testbed` run in a fresh process on one CPU device (`--config.mesh.fsdp=1`), in
`WORK/seedN`; a finished run is resumed (its stages are skipped, the held-out evaluation is redone) and its time is
the sum of its stages' times as recorded by whichever invocation ran them. The JSON keeps, per seed, the held-out
RM/CM accuracies, every method's ground-truth R*/C* and the claims; the markdown table printed at the end is the
README's. `--preset multi` (the two-rule world): its table shows R* and each rule's C* of every policy (the last
round's) and the rule claims.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
CLAIMS = ("ppo_raises_reward_and_breaks_budget", "ppo_lag_within_budget", "ppo_lag_raises_reward",
          "ppo_lag_at_least_90pct_of_best_feasible_shaping", "some_fixed_lambda_breaks_budget_or_gives_up_reward",
          "grpo_lag_within_budget", "grpo_lag_at_least_80pct_of_ppo_lag_gain", "safedpo_lowers_cost_below_sft")


def run_seed(preset: str, seed: int, out: pathlib.Path) -> dict:
    """One testbed run (resumed when `out` holds a finished one) → its results; `stage_seconds_total` sums the stage
    times of whichever invocation ran each stage, `wall_seconds` is this invocation's."""
    cmd = [sys.executable, "-m", "launch.testbed", f"--config=configs/testbed.py:{preset}",
           f"--config.output_dir={out}", f"--config.seed={seed}", "--config.logging.progress=False",
           "--config.mesh.fsdp=1"]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    results = json.loads((out / "results.json").read_text())
    results.pop("rules", None)
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    return results


MULTI_CLAIMS = ("ppo_breaks_some_rule_budget", "ppo_lag_keeps_every_rule_budget", "ppo_lag_raises_reward",
                "ppo_lag_summed_breaks_some_rule_budget", "two_constraints_keep_every_budget_where_summed_does_not")


def _point(m: dict) -> str:
    return f"{m['gt_reward']:.2f} / {m['gt_cost']:+.2f}"


def _rule_point(m: dict) -> str:
    return f"{m['gt_reward']:.2f} / " + " / ".join(f"{c:+.2f}" for c in m["gt_costs"])


def _minutes(r: dict) -> str:
    return f"{r['stage_seconds_total'] / 60:.1f} min" if r.get("stage_seconds_total") else "—"


def multi_table(runs: list[dict]) -> str:
    """Markdown for the two-rule preset: R* / C* per rule of every policy (the last round's), claims, time."""
    rules = " / ".join(f"C* {c['name']}" for c in runs[0]["constraints"])
    head = ["seed", "RM acc", f"SFT (R* / {rules})", "PPO", "PPO-Lag, a constraint per rule", "PPO-Lag, summed cost",
            "rule tolerance", "claims hold", "time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        m, c = r["methods"], r["claims"]
        held = [k for k in MULTI_CLAIMS if k in c]
        cells = [str(r["seed"]), f"{r['rm_accuracy_heldout']:.2f}", _rule_point(m["sft"]), _rule_point(m["ppo"]),
                 f"**{_rule_point(m['ppo_lag'])}**", _rule_point(m["ppo_lag_summed"]),
                 f"{c['rule_budget_tolerances'][0]:.2f}", f"{sum(c[k] is True for k in held)}/{len(held)}",
                 _minutes(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(runs: list[dict]) -> str:
    """Markdown: one row per seed — accuracies, R*/C* per method, and how many claims hold."""
    if runs[0].get("constraints"):
        return multi_table(runs)
    lam = [s["lambda"] for s in runs[0]["methods"].get("reward_shaping", [])]
    extra = [name for name in ("grpo_lag", "safedpo") if name in runs[0]["methods"]]
    head = ["seed", "RM acc", "CM sign acc", "SFT", "PPO", "PPO-Lag", *[f"shaping λ={x:g}" for x in lam],
            *[{"grpo_lag": "GRPO-Lag", "safedpo": "SafeDPO"}[n] for n in extra], "claims hold", "time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        m = r["methods"]
        held = [k for k in CLAIMS if k in r["claims"]]
        ok = sum(r["claims"][k] is True for k in held)
        cells = [str(r["seed"]), f"{r['rm_accuracy_heldout']:.2f}", f"{r['cm_sign_accuracy_heldout']:.2f}",
                 _point(m["sft"]), _point(m["ppo"]), f"**{_point(m['ppo_lag'])}**",
                 *[_point(s) for s in m.get("reward_shaping", [])], *[_point(m[n]) for n in extra],
                 f"{ok}/{len(held)}", _minutes(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ci", choices=["ci", "tiny", "multi"])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--work", default="runs/testbed_seeds")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    work = pathlib.Path(args.work).expanduser().resolve()
    runs = [run_seed(args.preset, int(s), work / f"seed{s}") for s in args.seeds.split(",")]
    doc = {"command": "python -m benchmarks.testbed_seeds " + " ".join(argv if argv is not None else sys.argv[1:]),
           "preset": args.preset, "cells": "ground-truth R* / C* on the held-out prompts (budget: C* <= 0)",
           "runs": runs}
    pathlib.Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
