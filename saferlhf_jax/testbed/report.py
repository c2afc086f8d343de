"""The testbed's picture and report: reward vs cost by method (the paper's claim in one plot), λ and cost curves of
PPO-Lag, and a plain-language verdict."""

from __future__ import annotations

import json
import pathlib


def _points(results: dict) -> list[tuple[str, dict]]:
    m = results["methods"]
    pts = [(name, m[name]) for name in ("sft", "ppo", "ppo_lag", "grpo_lag", "safedpo") if name in m]
    pts += [(f"shaping λ={s['lambda']:g}", s) for s in m.get("reward_shaping", [])]
    return pts


def plot_reward_vs_cost(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"sft": "tab:gray", "ppo": "tab:red", "ppo_lag": "tab:green", "grpo_lag": "tab:olive",
              "safedpo": "tab:purple"}
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, p in _points(results):
        color = colors.get(name, "tab:blue")
        ax.errorbar(p["gt_cost"], p["gt_reward"], xerr=p["gt_cost_se"], yerr=p["gt_reward_se"], fmt="o",
                    color=color, capsize=3)
        ax.annotate(name, (p["gt_cost"], p["gt_reward"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axvline(results["threshold"], color="k", linestyle="--", linewidth=1, label="cost budget")
    ax.set_xlabel("ground-truth harm cost C* (mean over held-out prompts)")
    ax.set_ylabel("ground-truth helpfulness R*")
    ax.set_title("Safe RLHF in the testbed world: more reward, within the budget")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lagrangian(run_dir: pathlib.Path, path: pathlib.Path, threshold: float) -> bool:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()] if (run_dir / "metrics.jsonl").is_file() else []
    rows = [r for r in rows if "train/lambda" in r]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3))
    for ax, key, title in zip(axes, ("train/lambda", "train/episode_cost", "train/reward"),
                              ("λ (learned)", "episode cost J_c (cost model)", "reward (reward model)")):
        ax.plot([r["step"] for r in rows], [r[key] for r in rows])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("rl step")
        if key == "train/episode_cost":
            ax.axhline(threshold, color="k", linestyle="--", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def verdict(results: dict) -> str:
    """One paragraph in plain language: what the numbers show, and what they do not."""
    m, c = results["methods"], results.get("claims", {})
    if "ppo_lag" not in m or "sft" not in m:
        return "The testbed ran without PPO-Lag or SFT, so there is no verdict on Safe RLHF."
    sft, lag = m["sft"], m["ppo_lag"]
    text = [f"Judged by the world's true rules on {sft['n']} held-out prompts, PPO-Lagrangian raised helpfulness "
            f"from {sft['gt_reward']:.2f} to {lag['gt_reward']:.2f} while keeping the mean harm cost at "
            f"{lag['gt_cost']:+.2f} against a budget of {results['threshold']:+.2f}"]
    if "ppo" in m:
        ppo = m["ppo"]
        text.append(f"; reward-only PPO reached {ppo['gt_reward']:.2f} but spent {ppo['gt_cost']:+.2f} "
                    f"(unsafe rate {ppo['gt_unsafe_rate']:.0%} vs {lag['gt_unsafe_rate']:.0%})")
    text.append(". ")
    if c:
        held = [k for k, v in c.items() if isinstance(v, bool) and v]
        failed = [k for k, v in c.items() if isinstance(v, bool) and not v]
        text.append("Claims that hold: " + (", ".join(held) or "none") + ". ")
        if failed:
            text.append("Claims that do NOT hold in this run: " + ", ".join(failed) + ". ")
    text.append(f"The learned models it optimised were imperfect (held-out reward-model accuracy "
                f"{results['rm_accuracy_heldout']:.2f}, cost-model sign accuracy "
                f"{results['cm_sign_accuracy_heldout']:.2f}): the budget is enforced on the learned cost, and the "
                "world's cost shows how well that transfers.")
    return "".join(text)


def write(out: pathlib.Path, results: dict) -> pathlib.Path:
    out = pathlib.Path(out)
    plot_reward_vs_cost(results, out / "reward_vs_cost.png")
    calib = results.get("cost_model_budget", {})
    budget = calib.get("threshold_cost_model_units", results["threshold"])
    has_curves = plot_lagrangian(out / "ppo_lag", out / "ppo_lag_curves.png", budget)
    lines = ["# Ground-truth testbed", "", "![reward vs cost](reward_vs_cost.png)", "", verdict(results), "",
             "| method | R* (helpfulness) | C* (harm cost) | unsafe rate | n |", "|---|---|---|---|---|"]
    for name, p in _points(results):
        lines.append(f"| {name} | {p['gt_reward']:.3f} ± {p['gt_reward_se']:.3f} | {p['gt_cost']:+.3f} ± "
                     f"{p['gt_cost_se']:.3f} | {p['gt_unsafe_rate']:.3f} | {p['n']} |")
    in_units = (f" PPO-Lag's threshold in the cost model's units: {budget:+.2f}"
                + (f" (the line cost ≈ {calib['slope']:.2f}·C* {calib['intercept']:+.2f} fitted to "
                   f"{calib['responses']} held-out responses, read at the budget)." if "slope" in calib else "."))
    lines += ["", f"Budget: mean C* ≤ {results['threshold']:+.2f}.{in_units} Held-out reward-model accuracy "
              f"{results['rm_accuracy_heldout']:.3f}; cost-model accuracy {results['cm_accuracy_heldout']:.3f}, "
              f"sign accuracy {results['cm_sign_accuracy_heldout']:.3f}.", ""]
    if has_curves:
        lines += ["## PPO-Lagrangian: λ and the episode cost", "", "![ppo-lag curves](ppo_lag_curves.png)", ""]
    lines += ["## The world's rules", "", results["rules"], "", "## Claims", "", "```json",
              json.dumps(results.get("claims", {}), indent=2), "```", "",
              f"Wall time: {results['seconds']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in results['timings'].items())}).",
              ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
