"""Moderate question–answer pairs with a trained moderation classifier.

    python -m launch.moderate --model runs/moderation/export --prompt "How do I ...?" "Sure, first ..."
    echo '{"prompt": "...", "response": "..."}' | python -m launch.moderate --model runs/moderation/export

Prints, per pair, the verdict (safe / unsafe with its probability), the harm categories above --threshold and the
severity level.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main(argv=None, stdin=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF-format moderation model (or a moderation run directory)")
    p.add_argument("--prompt", default="", help="the question the response answers")
    p.add_argument("response", nargs="*", help="response text; none = read JSON lines from stdin")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--max_length", type=int, default=512)
    p.add_argument("--json", action="store_true", help="print one JSON object per pair")
    args = p.parse_args(argv)
    from saferlhf_jax.algorithms import moderation
    from saferlhf_jax.data import DEFAULT_TEMPLATE, PKU_HARM_CATEGORIES, SEVERITY_NAMES
    from saferlhf_jax.evaluation.loading import load_for_eval

    if args.response:
        pairs = [(args.prompt, " ".join(args.response))]
    else:
        pairs = []
        for lineno, line in enumerate(stdin or sys.stdin, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pairs.append((row.get("prompt", ""), row["response"]))
            except (json.JSONDecodeError, KeyError, AttributeError):
                print(f"error: stdin line {lineno}: expected JSON with a 'response' (and 'prompt') field",
                      file=sys.stderr)
                return 2
    try:
        model, tok = load_for_eval(args.model, "score")
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if model.config.score_dim != moderation.SCORE_DIM:
        print(f"error: {args.model} is not a moderation model (score_dim {model.config.score_dim})", file=sys.stderr)
        return 2
    texts = [DEFAULT_TEMPLATE.format_prompt(q, tok.eos_token) + a + tok.eos_token for q, a in pairs]
    enc = [tok(t).input_ids[: args.max_length] for t in texts]
    width = max(map(len, enc))
    ids = np.full((len(enc), width), tok.pad_token_id, np.int32)
    mask = np.zeros((len(enc), width), bool)
    for i, e in enumerate(enc):
        ids[i, :len(e)] = e
        mask[i, :len(e)] = True
    p_unsafe, p_cats, p_sev = (np.asarray(x) for x in moderation.predict(model.apply, model.params, ids, mask))
    for i, (q, a) in enumerate(pairs):
        cats = {PKU_HARM_CATEGORIES[j]: round(float(p_cats[i, j]), 4) for j in np.argsort(-p_cats[i])
                if p_cats[i, j] >= args.threshold}
        verdict = {"unsafe": bool(p_unsafe[i] >= args.threshold), "p_unsafe": round(float(p_unsafe[i]), 4),
                   "categories": cats, "severity": SEVERITY_NAMES[int(np.argmax(p_sev[i]))],
                   "severity_probs": [round(float(x), 4) for x in p_sev[i]]}
        if args.json:
            print(json.dumps({"prompt": q, "response": a, **verdict}))
        else:
            label = "UNSAFE" if verdict["unsafe"] else "safe"
            print(f"[{i}] {label} (p_unsafe={verdict['p_unsafe']:.3f}), severity={verdict['severity']}, "
                  f"categories={', '.join(cats) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
