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
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
STATES = ("holds", "fails", "untested")


def run_seed(preset: str, seed: int, out: pathlib.Path, extra: list[str], env: dict | None = None,
             refresh: bool = False) -> dict:
    """One testbed run (resumed when `out` holds a finished one; with `refresh` a finished one's claims and
    certificates are recomputed from its saved answers instead) → its results; `stage_seconds_total` sums the stage
    times of whichever invocation ran each stage, `wall_seconds` is this invocation's."""
    if refresh and (out / "results.json").is_file():
        from saferlhf_jax.testbed.run import refresh as refresh_run

        results = refresh_run(out)
        results.pop("rules", None)
        return results
    cmd = [sys.executable, "-m", "launch.testbed", f"--config=configs/testbed.py:{preset}",
           f"--config.output_dir={out}", f"--config.seed={seed}", "--config.logging.progress=False",
           "--config.mesh.fsdp=1", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, env=env)
    results = json.loads((out / "results.json").read_text())
    results.pop("rules", None)
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    return results


def rerun_method(preset: str, seed: int, out: pathlib.Path, method: str, env: dict | None = None) -> dict:
    """A finished single-rule run with one method run again under the current code and presets (after its recipe
    changed), every other stage kept: the method's old stage directory is kept as `<method>_before`, the testbed
    runs SFT and that method only, and its new numbers replace the old ones in the full results, whose claims and
    certificates are then recomputed (`testbed.run.refresh`). The other methods do not read the method's settings."""
    from saferlhf_jax.testbed.run import refresh as refresh_run

    kept = out / "results_before.json"  # a rerun killed half-way has moved the original results there
    old = json.loads((kept if kept.is_file() else out / "results.json").read_text())
    if old.get("world") != "single" or method not in old["methods"] or method == "reward_shaping":
        raise SystemExit(f"--rerun {method}: {out} is not a finished single-rule run with that method")
    before = out / f"{method}_before"
    if not before.exists():  # a rerun killed half-way starts its stage again; the original is kept once
        (out / method).rename(before)
        (out / "results.json").rename(out / "results_before.json")
    shutil.rmtree(out / method, ignore_errors=True)
    (out / "config.json").unlink(missing_ok=True)  # the testbed's own config: the method's settings changed
    original = old  # the results before the rerun (now in results_before.json)
    new = run_seed(preset, seed, out, [f"--config.methods=sft,{method}"], env)
    merged = {**original, "methods": {**original["methods"], method: new["methods"][method]},
              "rl_recipe": new.get("rl_recipe", original.get("rl_recipe"))}
    for key in ("ppo_lag_lambda", "timings", "stage_seconds_total"):
        if key in new:
            merged[key] = new[key]
    (out / "results.json").write_text(json.dumps(merged, indent=2) + "\n")
    results = refresh_run(out)
    results.pop("rules", None)
    results["rerun"] = method
    return results


def _point(m: dict) -> str:
    return f"{m['gt_reward']:.2f} / {m['gt_cost']:+.2f}"


def _rule_point(m: dict) -> str:
    return f"{m['gt_reward']:.2f} / " + " / ".join(f"{c:+.2f}" for c in m["gt_costs"])


def _minutes(r: dict) -> str:
    return f"{r['stage_seconds_total'] / 60:.1f} min" if r.get("stage_seconds_total") else "—"


def _states(claims: dict) -> str:
    """holds / fails / untested counts of one run's claims."""
    counts = {k: sum(v["status"] == k for v in claims.values()) for k in STATES}
    return " / ".join(str(counts[k]) for k in STATES)


def policies(r: dict) -> dict[str, dict]:
    """Every judged policy of a run, by name (the fixed λ's as shaping_<λ>)."""
    out = {k: v for k, v in r["methods"].items() if k != "reward_shaping"}
    out.update({f"shaping_{s['lambda']:g}": s for s in r["methods"].get("reward_shaping", [])})
    return out


def spread(runs: list[dict]) -> dict:
    """Over the runs: each claim's holds / fails / untested counts (with the seeds that failed), each policy's
    median and range of R* and C*, and the certificate's record against the truth."""
    names = list(dict.fromkeys(k for r in runs for k in r["claims"]))
    claims = {}
    for k in names:
        statuses = {r["seed"]: r["claims"][k]["status"] for r in runs if k in r["claims"]}
        claims[k] = {**{s: sum(v == s for v in statuses.values()) for s in STATES}, "runs": len(statuses),
                     "failed_seeds": [seed for seed, v in statuses.items() if v == "fails"],
                     "untested_seeds": [seed for seed, v in statuses.items() if v == "untested"]}
    cells = {}
    for name in dict.fromkeys(n for r in runs for n in policies(r)):
        pts = [policies(r)[name] for r in runs if name in policies(r)]
        cells[name] = {key: {"median": float(np.median([p[key] for p in pts])), "min": float(min(p[key] for p in pts)),
                             "max": float(max(p[key] for p in pts))} for key in ("gt_reward", "gt_cost")}
        cells[name]["runs"] = len(pts)
    certified = [(r["seed"], n, c) for r in runs for n, c in r.get("certificates", {}).items() if c["certified"]]
    clear = [(r["seed"], n, c) for r in runs for n, c in r.get("certificates", {}).items()
             if c["true_mean_cost"] <= r["threshold"] - 0.25]
    certificate = {"policies": sum(len(r.get("certificates", {})) for r in runs), "certified": len(certified),
                   "certified_truly_within_budget": sum(c["truly_within_budget"] for _, _, c in certified),
                   "certified_over_budget": [f"seed {s}: {n}" for s, n, c in certified if not c["truly_within_budget"]],
                   "clearly_within_budget": len(clear), "clearly_within_and_certified": sum(
                       c["certified"] for _, _, c in clear)}
    return {"claims": claims, "cells": cells, "certificate": certificate}


def claims_table(summary: dict) -> str:
    """Markdown: each claim "holds on N of M" (fails, untested and on which seeds)."""
    lines = ["| claim | holds | fails | untested | failed on seeds |", "|---|---|---|---|---|"]
    for k, c in summary["claims"].items():
        lines.append(f"| {k} | {c['holds']} of {c['runs']} | {c['fails']} | {c['untested']} | "
                     f"{', '.join(map(str, c['failed_seeds'])) or '—'} |")
    return "\n".join(lines)


def cells_table(summary: dict) -> str:
    """Markdown: each policy's R* and C* as median [min, max] over the seeds."""
    lines = ["| policy | R* median [range] | C* median [range] |", "|---|---|---|"]
    for name, c in summary["cells"].items():
        r, k = c["gt_reward"], c["gt_cost"]
        lines.append(f"| {name} | {r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}] | {k['median']:+.2f} "
                     f"[{k['min']:+.2f}, {k['max']:+.2f}] |")
    return "\n".join(lines)


def multi_table(runs: list[dict]) -> str:
    """Markdown for the two-rule preset: R* / C* per rule of every policy (the last round's), claims, time."""
    rules = " / ".join(f"C* {c['name']}" for c in runs[0]["constraints"])
    head = ["seed", "RM acc", f"SFT (R* / {rules})", "PPO", "PPO-Lag, a constraint per rule", "PPO-Lag, summed cost",
            "claims holds / fails / untested", "time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        m = r["methods"]
        cells = [str(r["seed"]), f"{r['rm_accuracy_heldout']:.2f}", _rule_point(m["sft"]), _rule_point(m["ppo"]),
                 f"**{_rule_point(m['ppo_lag'])}**", _rule_point(m["ppo_lag_summed"]), _states(r["claims"]),
                 _minutes(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(runs: list[dict]) -> str:
    """Markdown: one row per seed — accuracies, R*/C* per method, and the claims' holds / fails / untested."""
    if runs[0].get("constraints"):
        return multi_table(runs)
    names = [n for n in policies(runs[0]) if n != "sft"]
    head = ["seed", "RM acc", "CM sign acc", "SFT", *names, "claims holds / fails / untested", "time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        p = policies(r)
        cells = [str(r["seed"]), f"{r['rm_accuracy_heldout']:.2f}", f"{r['cm_sign_accuracy_heldout']:.2f}",
                 _point(p["sft"]), *[f"**{_point(p[n])}**" if n == "ppo_lag" else _point(p[n]) for n in names],
                 _states(r["claims"]), _minutes(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ci", choices=["ci", "tiny", "multi", "sweep"])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--work", default="runs/testbed_seeds")
    p.add_argument("--prefix", default="seed", help="each seed's directory: WORK/<prefix><seed>")
    p.add_argument("--methods", default=None, help="the testbed's methods (default: the preset's)")
    p.add_argument("--xla_flags", default=None, help="XLA_FLAGS for every run (e.g. --xla_cpu_max_isa=AVX2: the "
                                                     "spread between machines of one kind)")
    p.add_argument("--refresh", action="store_true", help="a finished run's claims and certificates recomputed "
                                                           "from its saved answers (no RL re-run)")
    p.add_argument("--rerun", default=None, help="a method of finished single-rule runs to run again after its "
                                                 "recipe changed, every other stage kept (e.g. ppo_lag)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    work = pathlib.Path(args.work).expanduser().resolve()
    extra = [f"--config.methods={args.methods}"] if args.methods else []
    env = {**os.environ, "XLA_FLAGS": args.xla_flags} if args.xla_flags else None
    if args.rerun:
        runs = [rerun_method(args.preset, int(s), work / f"{args.prefix}{s}", args.rerun, env)
                for s in args.seeds.split(",")]
    else:
        runs = [run_seed(args.preset, int(s), work / f"{args.prefix}{s}", extra, env, args.refresh)
                for s in args.seeds.split(",")]
    summary = spread(runs)
    doc = {"command": "python -m benchmarks.testbed_seeds " + " ".join(argv if argv is not None else sys.argv[1:]),
           "preset": args.preset, "xla_flags": args.xla_flags,
           "cells": "ground-truth R* / C* on the held-out prompts (budget: C* <= 0)", "summary": summary, "runs": runs}
    pathlib.Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(table(runs), claims_table(summary), cells_table(summary), json.dumps(summary["certificate"]), sep="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
