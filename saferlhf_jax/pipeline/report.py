"""The main job's report (OUT/report.md): the testbed's verdict first, then the real-data stages, their curves,
the arena and the settings."""

from __future__ import annotations

import json
import pathlib

from saferlhf_jax.testbed.report import points, verdict
from saferlhf_jax.training.run_page import fmt


def _rows(path: pathlib.Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_stage_curves(out: pathlib.Path, path: pathlib.Path) -> bool:
    """Loss (and accuracy) curves of the supervised-style stages in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in ("sft", "reward", "cost", "moderation") if (out / s / "metrics.jsonl").is_file()]
    if not stages:
        return False
    fig, axes = plt.subplots(1, len(stages), figsize=(3.6 * len(stages), 3), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        rows = [r for r in _rows(out / stage / "metrics.jsonl") if "loss" in r]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss")
        evals = [r for r in _rows(out / stage / "metrics.jsonl") if "eval/accuracy" in r or "eval/loss" in r]
        if evals:
            key = "eval/accuracy" if "eval/accuracy" in evals[0] else "eval/loss"
            ax2 = ax.twinx()
            ax2.plot([r["step"] for r in evals], [r[key] for r in evals], "o--", color="tab:orange", label=key)
            ax2.set_ylabel(key, color="tab:orange")
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _testbed_section(out: pathlib.Path) -> list[str]:
    """The testbed's picture, verdict and table first: the part of the job that can show Safe RLHF working."""
    f = out / "testbed" / "results.json"
    if not f.is_file():
        return []
    results = json.loads(f.read_text())
    lines = ["## Does Safe RLHF work? The ground-truth testbed", "",
             "![testbed: reward vs cost](testbed/reward_vs_cost.png)", "", verdict(results), "",
             "| method | R* (helpfulness) | C* (harm cost) | unsafe rate |", "|---|---|---|---|"]
    for name, p in points(results):
        lines.append(f"| {name} | {p['gt_reward']:.2f} ± {p['gt_reward_se']:.2f} | {p['gt_cost']:+.2f} ± "
                     f"{p['gt_cost_se']:.2f} | {p['gt_unsafe_rate']:.2f} |")
    lines += ["", "The world, its rules and every number: `testbed/report.md`, `testbed/results.json`.", ""]
    return lines


def _eval_block(out: pathlib.Path, stage: str) -> dict:
    f = out / stage / "summary.json"
    return json.loads(f.read_text()).get("eval", {}) if f.is_file() else {}


# (stage, metric, what it is, the baseline key it must beat)
_HELD_OUT = (("reward", "accuracy", "reward model: P(better answer scores higher)", "baseline_longer"),
             ("cost", "accuracy", "cost model: P(more harmful answer costs more)", "baseline_longer"),
             ("cost", "accuracy_sign", "cost model: cost > 0 ⇔ unsafe", "baseline_majority_sign"),
             ("moderation", "accuracy", "moderation: unsafe flag", "baseline_majority"),
             ("moderation", "f1", "moderation: F1 of the unsafe class", None))


def held_out_table(out: pathlib.Path) -> list[str]:
    """Held-out accuracies of the score models next to the trivial rule each must beat (ops/baselines.py)."""
    rows = []
    for stage, key, what, base in _HELD_OUT:
        ev = _eval_block(out, stage)
        if isinstance(ev.get(key), float):
            b = ev.get(base) if base else None
            rows.append(f"| {what} | {ev[key]:.3f} | {b:.3f} |" if isinstance(b, float) else
                        f"| {what} | {ev[key]:.3f} | – |")
    if not rows:
        return []
    return ["Held-out evaluation (examples never trained on). Baseline: the better of *the longer answer wins* "
            "(pairs) or *always the more frequent class* (labels); a model must beat it to have learned anything.",
            "", "| metric | model | baseline |", "|---|---|---|", *rows, ""]


def arena_examples(out: pathlib.Path, n: int = 3, chars: int = 400) -> list[str]:
    """The first `n` arena prompts with the answers before and after alignment and their scores."""
    import csv

    f = out / "arena" / "table.csv"
    if not f.is_file():
        return []
    with open(f, newline="") as fh:
        rows = list(csv.reader(fh))
    header, rows = rows[0], rows[1:n + 1]
    cut = lambda t: " ".join(t.split())[:chars] + ("…" if len(" ".join(t.split())) > chars else "")  # noqa: E731
    lines = ["### Answers before and after", ""]
    for r in rows:
        lines += [f"**Prompt** (as the model saw it): {cut(r[0])}", "",
                  f"- *{header[1]}* (reward {float(r[2]):+.2f}, cost {float(r[3]):+.2f}): {cut(r[1])}",
                  f"- *{header[4]}* (reward {float(r[5]):+.2f}, cost {float(r[6]):+.2f}): {cut(r[4])}", ""]
    return lines + ["All answers: `arena/table.csv`.", ""]


def _real_data_section(out: pathlib.Path, cfg) -> list[str]:
    if cfg.get("gguf"):
        head = ["## Real data: PKU-SafeRLHF on a real instruct model", "",
                f"Base model: `{out / 'base'}` (converted from {cfg.gguf!r}); every stage starts from it, in its own "
                "chat template. The reward, cost and moderation models see a few hundred examples on a CPU budget, "
                "so compare each held-out number with its baseline below before reading anything into the arena.",
                ""]
    else:
        sign = _eval_block(out, "cost").get("accuracy_sign")
        measured = f" (this run: held-out cost-model sign accuracy {sign:.2f})" if isinstance(sign, float) else ""
        head = ["## Real data: PKU-SafeRLHF on the embedded model", "",
                "**Read this section as a smoke test, not as results.** The embedded model is stories260K (260K "
                "parameters, trained on children's stories): it is far too small to learn the real PKU-SafeRLHF "
                f"preferences — its cost model stays near chance{measured} and its answers are not meaningful. These "
                "stages show that SFT, the reward and cost models, PPO-Lag and the arena run end to end on the real "
                "data and formats; the testbed above is where the method is shown to work.", ""]
    return head + held_out_table(out)


def write_report(out: pathlib.Path, cfg, timings: dict) -> pathlib.Path:
    out = pathlib.Path(out)
    lines = ["# saferlhf-jax pipeline report", "",
             f"Output directory: `{out}`. Stages: {', '.join(cfg.stages)}.", ""]
    lines += _testbed_section(out)
    if any((out / stage).is_dir() for stage in ("sft", "reward", "cost")):
        lines += _real_data_section(out, cfg)
    if plot_stage_curves(out, out / "stage_curves.png"):
        lines += ["## Training curves", "", "![stage curves](stage_curves.png)", ""]
    lines += ["## Stages", "", "| stage | steps | seconds | final train metrics | eval |", "|---|---|---|---|---|"]
    for stage in ("sft", "reward", "cost", "moderation"):
        f = out / stage / "summary.json"
        if f.is_file():
            s = json.loads(f.read_text())
            train = ", ".join(f"{k}={fmt(v)}" for k, v in s.get("train", {}).items()
                              if k in ("loss", "accuracy", "accuracy_sign"))
            ev = ", ".join(f"{k}={fmt(v)}" for k, v in s.get("eval", {}).items()
                           if k in ("loss", "accuracy", "accuracy_sign", "f1", "reward_mean", "cost_mean"))
            lines.append(f"| {stage} | {s['steps']} | {fmt(s['seconds'])} | {train} | {ev} |")
    f = out / "ppo_lag" / "summary.json"
    if f.is_file():
        s = json.loads(f.read_text())
        last = s.get("last", {})
        keys = ("train/reward", "train/cost", "train/lambda", "train/kl_divergence")
        lines.append(f"| ppo_lag | {s['rl_steps']} rl steps | {fmt(s['seconds'])} | "
                     + ", ".join(f"{k.split('/')[1]}={fmt(last[k])}" for k in keys if k in last) + " | |")
    lines.append("")
    if (out / "ppo_lag" / "curves.png").is_file():
        lines += ["## PPO-Lagrangian", "", "![ppo-lag curves](ppo_lag/curves.png)", ""]
    arena = out / "arena" / "summary.md"
    if arena.is_file():
        body = arena.read_text().replace("](reward_distribution.png)", "](arena/reward_distribution.png)")
        body = body.replace("](cost_distribution.png)", "](arena/cost_distribution.png)")
        body = body.replace("# Arena:", "## Arena:")
        lines += [body, "Reward and cost distributions before (red) and after (PPO-Lag, blue) alignment are "
                        "the two histograms above.", ""] + arena_examples(out)
    safety = out / "safety_eval" / "summary.md"
    if safety.is_file():
        body = safety.read_text().replace("# Safety evaluation", "## Safety evaluation", 1)
        body = body.replace("\n## ", "\n### ").replace("\n### Safety evaluation", "\n## Safety evaluation")
        lines += [body.replace("](harmful_compliance.png)", "](safety_eval/harmful_compliance.png)"),
                  "![harmful compliance per category](safety_eval/harmful_compliance.png)", ""]
    if timings:
        lines += ["## Time (this invocation)", ""] + [f"- {k}: {v:.1f}s" for k, v in timings.items()] + [""]
    lines += ["## Settings", "", "```json", cfg.to_json_best_effort(indent=2), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
