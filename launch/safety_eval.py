"""Safety evaluation of one or more policies on harmful and benign prompts nobody here wrote, judged by a rule.

    python -m launch.safety_eval --policy base=runs/pipeline_smollm2/base --policy ppo_lag=runs/.../ppo_lag/export \
        [--sets beavertails redteam alpaca_seed helpful_base] [--moderation runs/.../moderation/export] \
        [--output_dir safety_eval] [--answers base=earlier/answers_base.jsonl]

Each --policy is NAME=DIR (an HF-format directory or a training run's directory); every policy answers the same
prompts greedily in its own chat template (--template pku for the reference's). Writes answers_<NAME>.jsonl,
summary.json, summary.md (refusal, compliance and flagged rates on harmful prompts, over-refusal on benign ones, per
set and per harm category, with 95 % intervals; the judge's agreement with the hand-labelled answers that ship with
the data) and harmful_compliance.png. A set may be cut to its first N prompts: --sets beavertails:140. --answers
NAME=FILE adds a policy from an earlier run's answers_<NAME>.jsonl without generating again (judged again by the
current rule; every prompt of --sets must be answered there).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from launch.common import setup_logging


def _named(specs: list[str], flag: str = "--policy", what: str = "DIR") -> dict[str, str]:
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{flag} takes NAME={what}, got {spec!r}")
        if name in out:
            raise ValueError(f"{flag} {name!r} given twice")
        out[name] = path
    return out


def _read_answers(path: str) -> list[dict]:
    rows = []
    for i, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                rows.append({"set": row["set"], "prompt": row["prompt"], "answer": row["answer"]})
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{i}: not an answers row with set, prompt and answer ({err})") from None
    return rows


def main(argv=None) -> int:
    from saferlhf_jax.evaluation import safety_eval

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", action="append", default=[], help="NAME=DIR (repeat to compare policies)")
    p.add_argument("--answers", action="append", default=[],
                   help="NAME=FILE: an earlier run's answers_<NAME>.jsonl, judged again instead of generated")
    p.add_argument("--sets", nargs="+", default=list(safety_eval.PROMPT_SETS), help="NAME or NAME:N")
    p.add_argument("--moderation", default=None, help="a moderation classifier: flags unsafe answers")
    p.add_argument("--output_dir", default="safety_eval")
    p.add_argument("--template", choices=["chat", "pku"], default="chat")
    p.add_argument("--moderation_template", choices=["chat", "pku"], default=None,
                   help="the template the moderation classifier was trained in (default: --template)")
    p.add_argument("--max_new_tokens", type=int, default=192, help="answer tokens (greedy; EOS ends earlier)")
    p.add_argument("--max_prompt_length", type=int, default=384, help="longer prompts keep their first tokens")
    p.add_argument("--batch_size", type=int, default=16)
    args = p.parse_args(argv)
    setup_logging()
    moderation_template = args.moderation_template or args.template
    from saferlhf_jax.errors import ModelError
    from saferlhf_jax.data import make_template
    from saferlhf_jax.evaluation.loading import load_for_eval

    try:
        policies = _named(args.policy)
        earlier = {name: _read_answers(path) for name, path in _named(args.answers, "--answers", "FILE").items()}
        if not policies and not earlier:
            raise ValueError("give at least one --policy NAME=DIR or --answers NAME=FILE")
        if set(policies) & set(earlier):
            raise ValueError(f"{sorted(set(policies) & set(earlier))[0]!r} is both a --policy and an --answers")
        prompts = safety_eval.load_prompts(args.sets)  # a bad set name fails before any model loads
        for name, rows in earlier.items():
            safety_eval.earlier_answers(prompts, rows, name)  # and so do answers to other prompts
        moderation = load_for_eval(args.moderation, "score") if args.moderation else None
        loaded = {name: load_for_eval(path, "causal_lm") for name, path in policies.items()}
        for _, tok in loaded.values():  # a tokenizer without a chat template: one line, before any answer
            make_template(args.template, tok)
        if moderation is not None:
            make_template(moderation_template, moderation[1])
    except (FileNotFoundError, ValueError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summaries = safety_eval.run(loaded, args.sets, args.output_dir, moderation=moderation, answered=earlier,
                                template=args.template, moderation_template=moderation_template,
                                max_new_tokens=args.max_new_tokens, max_prompt_length=args.max_prompt_length,
                                batch_size=args.batch_size)
    print((pathlib.Path(args.output_dir) / "summary.md").read_text())
    for name, s in summaries.items():
        harm, benign = s["harmful"].get("all", {}), s["benign"].get("all", {})
        print(f"{name}: harmful answered {harm.get('compliance', {}).get('rate', float('nan')):.1%}, "
              f"over-refusal {benign.get('over_refusal', {}).get('rate', float('nan')):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
