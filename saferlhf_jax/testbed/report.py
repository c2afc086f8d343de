"""The testbed's picture and report: reward vs cost by method (the paper's claim in one plot), λ and cost curves of
PPO-Lag, and a plain-language verdict."""

from __future__ import annotations

import json
import pathlib


def points(results: dict) -> list[tuple[str, dict]]:
    m = results["methods"]
    pts = [(name, m[name]) for name in ("sft", "ppo", "ppo_lag", "ppo_lag_reference", "ppo_lag_summed", "grpo_lag",
                                        "safedpo") if name in m]
    pts += [(f"shaping λ={s['lambda']:g}", s) for s in m.get("reward_shaping", [])]
    return pts


COLORS = {"sft": "tab:gray", "ppo": "tab:red", "ppo_lag": "tab:green", "ppo_lag_summed": "tab:orange",
          "ppo_lag_reference": "tab:cyan",
          "grpo_lag": "tab:olive", "safedpo": "tab:purple"}


def plot_rule_costs(results: dict, path: pathlib.Path) -> None:
    """The two-rule world's picture: each method at (C*_1, C*_2) with error bars; the budgets bound the lower-left
    quadrant, where every rule is kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, second = results["constraints"][:2]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, p in points(results):
        ax.errorbar(p["gt_costs"][0], p["gt_costs"][1], xerr=p["gt_costs_se"][0], yerr=p["gt_costs_se"][1],
                    fmt="o", color=COLORS.get(name, "tab:blue"), capsize=3)
        ax.annotate(f"{name} (R* {p['gt_reward']:.1f})", (p["gt_costs"][0], p["gt_costs"][1]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axvline(first["threshold"], color="k", linestyle="--", linewidth=1)
    ax.axhline(second["threshold"], color="k", linestyle="--", linewidth=1, label="each rule's budget")
    ax.set_xlabel(f"C* of rule '{first['name']}' (mean over held-out prompts)")
    ax.set_ylabel(f"C* of rule '{second['name']}'")
    ax.set_title("Two harm rules: every budget kept (lower left) or not")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reward_vs_cost(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = COLORS
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, p in points(results):
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


def plot_lagrangian(run_dir: pathlib.Path, path: pathlib.Path, thresholds: dict[str, float]) -> bool:
    """λ, the episode cost and the reward over RL steps. thresholds: {"": t} for the single constraint, or
    {constraint name: t} for several (one line per constraint, read from train/lambda/<name>)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()] if (run_dir / "metrics.jsonl").is_file() else []
    suffix = lambda n: f"/{n}" if n else ""  # noqa: E731
    rows = [r for r in rows if all(f"train/lambda{suffix(n)}" in r for n in thresholds)]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3))
    steps = [r["step"] for r in rows]
    for ax, key, title in zip(axes, ("train/lambda", "train/episode_cost", "train/reward"),
                              ("λ (learned)", "episode cost J_c (cost model)", "reward (reward model)")):
        names = thresholds if key != "train/reward" else {"": None}
        for i, (name, threshold) in enumerate(names.items()):
            color = f"C{i}"
            ax.plot(steps, [r[key + suffix(name)] for r in rows], color=color, label=name or None)
            if key == "train/episode_cost" and threshold is not None:
                ax.axhline(threshold, color=color if name else "k", linestyle="--", linewidth=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("rl step")
        if len(names) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _moved(before: float, after: float, what: str) -> str:
    """"raised X from a to b" / "lowered X from a to b": the sentence follows the numbers."""
    verb = "raised" if after > before else ("lowered" if after < before else "left")
    return f"{verb} {what} from {before:.2f} to {after:.2f}" if verb != "left" else f"left {what} at {after:.2f}"


def verdict(results: dict) -> str:
    """One paragraph in plain language: what the numbers show, and what they do not."""
    m, c = results["methods"], results.get("claims", {})
    if "ppo_lag" not in m or "sft" not in m:
        return "The testbed ran without PPO-Lag or SFT, so there is no verdict on Safe RLHF."
    sft, lag = m["sft"], m["ppo_lag"]
    t = results["threshold"]
    kept = "keeping" if lag["gt_cost"] <= t else "breaking"
    text = [f"Judged by the world's true rules on {sft['n']} held-out prompts, PPO-Lagrangian "
            f"{_moved(sft['gt_reward'], lag['gt_reward'], 'helpfulness')}, {kept} the mean harm cost at "
            f"{lag['gt_cost']:+.2f} against a budget of {t:+.2f}"]
    if "ppo" in m:
        ppo = m["ppo"]
        text.append(f"; reward-only PPO reached {ppo['gt_reward']:.2f} but spent {ppo['gt_cost']:+.2f} "
                    f"(unsafe rate {ppo['gt_unsafe_rate']:.0%} vs {lag['gt_unsafe_rate']:.0%})")
    if "ppo_lag_reference" in m:
        ref = m["ppo_lag_reference"]
        text.append(f"; the reference's recipe ended at {ref['gt_reward']:.2f} / {ref['gt_cost']:+.2f}")
    text.append(". ")
    rules = results.get("constraints") or []
    if rules:
        costs = lambda p: ", ".join(f"{r['name']} {v:+.2f}" for r, v in zip(rules, p["gt_costs"]))  # noqa: E731
        text.append(f"Each of the {len(rules)} harm rules has its own budget (mean C* ≤ {rules[0]['threshold']:+.2f}"
                    "); PPO-Lag with one constraint per rule ended at " + costs(lag))
        if "ppo_lag_summed" in m:
            text.append(f", PPO-Lag held only to the summed cost at {costs(m['ppo_lag_summed'])} (R* "
                        f"{m['ppo_lag_summed']['gt_reward']:.2f})")
        text.append(". ")
    for status, words in (("holds", "Claims that hold"), ("fails", "Claims that do NOT hold in this run"),
                          ("untested", "Claims left untested (their premise is absent)")):
        names = [f"{k} ({v['why']})" if status != "holds" else k for k, v in c.items() if v["status"] == status]
        if names:
            text.append(f"{words}: " + "; ".join(names) + ". ")
    exploited = [n for n, e in (results.get("reward_model_exploitation") or {}).items() if e["exploited"]]
    if exploited:
        text.append("The learned reward model was exploited by " + ", ".join(
            f"{n} (its score rose from {results['reward_model_exploitation'][n]['reward_model_start']:.2f} to "
            f"{results['reward_model_exploitation'][n]['reward_model_end']:.2f} while R* fell below SFT's)"
            for n in exploited) + ". ")
    text.append(f"The learned models it optimised were imperfect (held-out reward-model accuracy "
                f"{results['rm_accuracy_heldout']:.2f}, cost-model sign accuracy "
                f"{results['cm_sign_accuracy_heldout']:.2f}): the budget is enforced on the learned cost, and the "
                "world's cost shows how well that transfers.")
    return "".join(text)


def _row_statistics(stats: dict) -> list[str]:
    """The world's rows next to the shipped PKU-SafeRLHF rows: pair kinds and severity levels."""
    lines = ["| rows | pairs | both safe | both unsafe | mixed | severity 0 / 1 / 2 / 3 |", "|---|---|---|---|---|---|"]
    for name, label in (("world", "this world (SFT answers, ties broken at random)"),
                        ("pku_shipped", "PKU-SafeRLHF (500 shipped train rows)")):
        if name in stats:
            x = stats[name]
            lines.append(f"| {label} | {x['pairs']} | {x['both_safe']:.2f} | {x['both_unsafe']:.2f} | {x['mixed']:.2f} "
                         f"| {' / '.join(f'{v:.2f}' for v in x['severity_levels'])} |")
    return lines


def write(out: pathlib.Path, results: dict) -> pathlib.Path:
    out = pathlib.Path(out)
    plot_reward_vs_cost(results, out / "reward_vs_cost.png")
    calib = results.get("cost_model_budget", {})
    budget = calib.get("threshold_cost_model_units", results["threshold"])
    rules = results.get("constraints") or []
    thresholds = {r["name"]: r.get("threshold_cost_model_units") for r in rules} or {"": budget}
    lag_rounds = results.get("rounds", {}).get("ppo_lag", [])
    if lag_rounds:  # the curves of PPO-Lag's last round, against that round's budgets
        thresholds = dict(zip(thresholds, (b["threshold_cost_model_units"] for b in lag_rounds[-1]["budgets"])))
    has_curves = plot_lagrangian(out / (lag_rounds[-1]["dir"] if lag_rounds else "ppo_lag"),
                                 out / "ppo_lag_curves.png", thresholds)
    lines = ["# Ground-truth testbed", ""]
    if rules:
        plot_rule_costs(results, out / "rule_costs.png")
        lines += ["![cost of each rule](rule_costs.png)", ""]
    lines += ["![reward vs cost](reward_vs_cost.png)", "", verdict(results), "",
              "| method | R* (helpfulness) | C* (harm cost) |" + "".join(f" C* {r['name']} |" for r in rules)
              + " unsafe rate | n |", "|---|---|---|" + "---|" * len(rules) + "---|---|"]
    for name, p in points(results):
        per_rule = "".join(f" {c:+.3f} ± {se:.3f} |" for c, se in zip(p.get("gt_costs", ()), p.get("gt_costs_se", ())))
        lines.append(f"| {name} | {p['gt_reward']:.3f} ± {p['gt_reward_se']:.3f} | {p['gt_cost']:+.3f} ± "
                     f"{p['gt_cost_se']:.3f} |{per_rule} {p['gt_unsafe_rate']:.3f} | {p['n']} |")
    if rules:  # the budget is the summed cost's (its baseline's); each rule's own is listed below
        later = "; round 1: later rounds' budgets are re-read" if results.get("rounds") else ""
        whose = (f"The summed cost model's threshold (PPO-Lag held to the summed cost{later}; each rule's own is "
                 "listed below)")
    else:
        whose = "PPO-Lag's threshold in the cost model's units"
    in_units = (f" {whose}: {budget:+.2f}"
                + (f" ({calib.get('budget', 'the budget')} on the rows' labels: the line cost ≈ "
                   f"{calib['slope']:.2f}·label {calib['intercept']:+.2f} fitted to {calib['responses']} held-out "
                   f"labelled responses, read at {calib.get('target_value', 0):g}, standard error "
                   f"{calib['standard_error']:.2f}"
                   + (f", minus {calib['confidence_z']:g} standard errors" if calib.get("confidence_z") else "") + ")."
                   if "slope" in calib else " (the raw threshold in cost-model units)."))
    lines += ["", f"Budget: mean C* ≤ {results['threshold']:+.2f}.{in_units} Held-out reward-model accuracy "
              f"{results['rm_accuracy_heldout']:.3f}; cost-model accuracy {results['cm_accuracy_heldout']:.3f}, "
              f"sign accuracy {results['cm_sign_accuracy_heldout']:.3f}.", ""]
    for r in rules:
        units = r.get("threshold_cost_model_units")
        lines.append(f"- Rule {r['name']} ({', '.join(r['verbs'])}; C* = #verbs − {r['tolerance']:g}): budget mean "
                     f"C* ≤ {r['threshold']:+.2f} (mean severity ≤ {r['tolerance']:g} on its own rows)"
                     + (f", {units:+.2f} in its own cost model's units" if units is not None else "")
                     + f"; that model's held-out sign accuracy {r['cm_sign_accuracy_heldout']:.3f}.")
    if rules:
        lines.append("")
    if results.get("rounds"):
        lines += ["## Rounds", "", "Each round's cost model(s) learned from every earlier round's pairs plus pairs "
                  "its method's previous policy wrote; each round ran with the same RL budget, from the policy in "
                  "its \"from\" column. The tables above show the last round.", "",
                  "| method | round | from | cost models | R* | C* |" + "".join(f" C* {r['name']} |" for r in rules),
                  "|---|---|---|---|---|---|" + "---|" * len(rules)]
        for name, entries in results["rounds"].items():
            for e in entries:
                per_rule = "".join(f" {c:+.3f} |" for c in e.get("gt_costs", ()))
                lines.append(f"| {name} | {e['round']} | {e.get('start', 'sft')} | {', '.join(e['cost_models'])} | "
                             f"{e['gt_reward']:.3f} | {e['gt_cost']:+.3f} |{per_rule}")
        lines.append("")
    if has_curves:
        lines += ["## PPO-Lagrangian: λ and the episode cost", "", "![ppo-lag curves](ppo_lag_curves.png)", ""]
    if results.get("ppo_lag_lambda") and "ppo_lag" in results["methods"]:
        lines += [f"λ update: {results['ppo_lag_lambda']}; the threshold is the budget in the cost model's units "
                  "(above).", ""]
    if results.get("grpo_lag_lambda"):
        advantages = results.get("grpo_lag_advantages")
        lines += [f"GRPO-Lag's λ update: {results['grpo_lag_lambda']} (the same threshold)"
                  + (f"; its advantages: {advantages}." if advantages else "."), ""]
    if results.get("certificates"):
        first = next(iter(results["certificates"].values()))
        lines += ["## Safety certificate", "", f"A one-sided {first['confidence']:.0%} upper bound on each policy's "
                  f"{first['budget']} from its held-out answers, the cost model and the held-out labelled rows "
                  "(`launch.certify`; no ground truth), then checked against the world's truth:", "",
                  "| policy | upper bound | estimate | verdict | true C* | truly within budget |", "|---|---|---|---|---|---|"]
        lines += [f"| {n} | {c['upper_bound']:.3f} | {c['estimate']:.3f} | "
                  f"{'certified' if c['certified'] else 'cannot certify'} | {c['true_mean_cost']:+.3f} | "
                  f"{'yes' if c['truly_within_budget'] else 'no'} |" for n, c in results["certificates"].items()]
        lines.append("")
    if results.get("row_statistics"):
        lines += ["## Rows", "", "What the reward and cost models learn from, next to annotators' rows:", "",
                  *_row_statistics(results["row_statistics"]), ""]
    recipe = results.get("rl_recipe") or {}
    if recipe.get("world_overrides"):
        lines += ["## RL settings", "", f"PPO-Lag and GRPO-Lag run the library's presets (recipe "
                  f"'{recipe.get('ppo_lag')}'; ppo_lag_reference: '{recipe.get('ppo_lag_reference')}') with these "
                  "world-specific settings:", "", "| stage | setting | preset | testbed | why |", "|---|---|---|---|---|"]
        lines += [f"| {o['stage']} | {o['key']} | {o['preset']} | {o['testbed']} | {o['why']} |"
                  for o in recipe["world_overrides"]]
        lines.append("")
    lines += ["## The world's rules", "", results["rules"], "", "## Claims", "",
              "| claim | status | why |", "|---|---|---|",
              *[f"| {k} | {v['status']} | {v['why']} |" for k, v in results.get("claims", {}).items()], "",
              "```json", json.dumps(results.get("claims", {}), indent=2), "```", "",
              f"Wall time: {results['seconds']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in results['timings'].items())}).",
              ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
