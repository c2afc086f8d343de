"""A safety certificate for a policy: a one-sided upper confidence bound on its unsafe rate (or mean severity) from its
answers to held-out prompts, a cost model and a labelled calibration split — "meets the budget at 95 % confidence"
or "cannot certify", with the numbers (saferlhf_jax/evaluation/certify.py says how and under which assumption).

    python -m launch.certify --policy runs/ppo_lag/export --cost runs/cost/export \
        --prompts PKU-SafeRLHF/test --calibration PKU-SafeRLHF/test --target unsafe_rate --value 0.1

The calibration split must be labelled (is_response_*_safe, *_severity_level) and unseen by the cost model; the
prompts should be held out from RL. Writes the certificate as JSON (--output, default <policy>/certificate.json).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from launch.common import setup_logging


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="the policy (HF-format directory or a run directory)")
    p.add_argument("--cost", required=True, help="the cost model it was trained against (sorts answers into bins)")
    p.add_argument("--prompts", nargs="+", default=["PKU-SafeRLHF/test"], help="held-out prompts (dataset specs)")
    p.add_argument("--calibration", nargs="+", required=True, help="held-out labelled rows (dataset specs)")
    p.add_argument("--target", choices=["unsafe_rate", "mean_severity"], default="unsafe_rate")
    p.add_argument("--value", type=float, required=True, help="the budget in the target's units (e.g. 0.1)")
    p.add_argument("--category", default="", help="count only answers flagged with this PKU harm category")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--bins", type=int, default=2, help="cost-score bins (split at the widest gaps of the "
                                                       "calibration scores)")
    p.add_argument("--max_length", type=int, default=512, help="total length (prompt + answer)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--template", choices=["pku", "chat"], default="pku")
    p.add_argument("--data_source", choices=["hub", "embedded"], default="hub")
    p.add_argument("--output", default=None, help="default: <policy>/certificate.json")
    args = p.parse_args(argv)
    setup_logging()
    from saferlhf_jax.algorithms import budget as budget_lib
    from saferlhf_jax.data import DataError, load_mix, make_template
    from saferlhf_jax.errors import ConfigError
    from saferlhf_jax.evaluation.arena import generate_answers
    from saferlhf_jax.evaluation.certify import certify_answers
    from saferlhf_jax.evaluation.loading import load_for_eval

    out = pathlib.Path(args.output or pathlib.Path(args.policy.split("@")[0]) / "certificate.json")
    try:
        if not 0 < args.confidence < 1 or args.bins < 1:
            raise ConfigError(f"--confidence must lie in (0, 1) and --bins be ≥ 1, got {args.confidence}, "
                              f"{args.bins}")
        budget = budget_lib.parse(dict(target=args.target, value=args.value, category=args.category,
                                       datasets=tuple(args.calibration)), "certify")
        calibration = load_mix(list(args.calibration), args.data_source)
        prompts = [s.input for s in load_mix(list(args.prompts), args.data_source)]
        model, tok = load_for_eval(args.policy, "causal_lm")
        template = make_template(args.template, tok)
        answers = [(p if isinstance(p, str) else "\n".join(p), a) for p, (_, a) in zip(prompts, generate_answers(
            model, tok, prompts, max_length=args.max_length, batch_size=args.batch_size, seed=args.seed,
            template=template))]
        del model
        cert = certify_answers(args.cost, {"policy": answers}, calibration, budget, max_length=args.max_length,
                               batch_size=args.batch_size, confidence=args.confidence, bins=args.bins,
                               template=args.template)["policy"]
    except (ConfigError, DataError, ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**cert, "policy": args.policy, "cost_model": args.cost,
                               "prompts": list(args.prompts), "calibration": list(args.calibration)}, indent=2) + "\n")
    print(cert["verdict"])
    print(f"wrote {out}")
    return 0 if cert["certified"] else 1


if __name__ == "__main__":
    sys.exit(main())
