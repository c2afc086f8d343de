"""Moderate question–answer pairs with a trained moderation classifier.

    python -m launch.moderate --model runs/moderation/export --prompt "How do I ...?" "Sure, first ..."
    echo '{"prompt": "...", "response": "..."}' | python -m launch.moderate --model runs/moderation/export

Prints, per pair, the verdict (safe / unsafe with its probability) and, for unsafe answers, the harm categories above
--threshold and the severity level. A pair longer than --max_length tokens is never cut silently: its response is
read in overlapping windows (each with the question) and the most unsafe window decides; the output says so.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _read_pairs(args, stdin) -> list[tuple[str, str]]:
    """[(prompt, response)] from the arguments or JSON lines on stdin; ValueError with one line on bad input."""
    if args.response:
        pairs = [(args.prompt, " ".join(args.response))]
    else:
        pairs = []
        for lineno, line in enumerate(stdin or sys.stdin, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pairs.append((str(row.get("prompt", "")), row["response"]))
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
                raise ValueError(f"stdin line {lineno}: expected JSON with a 'response' (and 'prompt') field") \
                    from None
        if not pairs:
            raise ValueError("nothing to moderate: give a response as arguments or JSON lines on stdin")
    for i, (_, response) in enumerate(pairs):
        if not isinstance(response, str) or not response.strip():
            raise ValueError(f"pair {i}: the response is empty — there is nothing to moderate")
    return pairs


def windows(prompt_ids: list[int], response_ids: list[int], max_length: int) -> list[list[int]]:
    """Token windows of at most max_length, each the prompt then a slice of the response (half-overlapping, the last
    one ending at the response's end). One window when everything fits. A prompt longer than half the length keeps
    its first half-length tokens (the response is what is moderated)."""
    if len(prompt_ids) + len(response_ids) <= max_length:
        return [prompt_ids + response_ids]
    prompt_ids = prompt_ids[: max_length // 2]
    width = max_length - len(prompt_ids)
    starts = list(range(0, max(len(response_ids) - width, 0) + 1, max(width // 2, 1)))
    if starts[-1] + width < len(response_ids):
        starts.append(len(response_ids) - width)
    return [prompt_ids + response_ids[s:s + width] for s in starts]


def main(argv=None, stdin=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF-format moderation model (or a moderation run directory)")
    p.add_argument("--prompt", default="", help="the question the response answers")
    p.add_argument("response", nargs="*", help="response text; none = read JSON lines from stdin")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--max_length", type=int, default=512, help="tokens per window (longer pairs are windowed)")
    p.add_argument("--json", action="store_true", help="print one JSON object per pair")
    args = p.parse_args(argv)
    from saferlhf_jax.algorithms import moderation
    from saferlhf_jax.data import DEFAULT_TEMPLATE
    from saferlhf_jax.errors import ModelError
    from saferlhf_jax.evaluation.loading import load_for_eval

    try:
        pairs = _read_pairs(args, stdin)
        if args.max_length < 16:
            raise ValueError(f"--max_length must be ≥ 16, got {args.max_length}")
        model, tok = load_for_eval(args.model, "score")
    except (FileNotFoundError, ValueError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if model.config.score_dim != moderation.SCORE_DIM:
        print(f"error: {args.model} is not a moderation model (score_dim {model.config.score_dim})", file=sys.stderr)
        return 2
    per_pair, flat = [], []
    for q, a in pairs:
        prompt_ids = tok(DEFAULT_TEMPLATE.format_prompt(q, tok.eos_token)).input_ids
        response_ids = tok(a + tok.eos_token, add_special_tokens=False).input_ids
        w = windows(prompt_ids, response_ids, args.max_length)
        per_pair.append((len(flat), len(w), len(prompt_ids) + len(response_ids)))
        flat.extend(w)
    width = max(map(len, flat))
    ids = np.full((len(flat), width), tok.pad_token_id, np.int32)
    mask = np.zeros((len(flat), width), bool)
    for i, e in enumerate(flat):
        ids[i, :len(e)] = e
        mask[i, :len(e)] = True
    p_unsafe, p_cats, p_sev = (np.asarray(x) for x in moderation.predict(model.apply, model.params, ids, mask))
    for i, ((q, a), (lo, n, tokens)) in enumerate(zip(pairs, per_pair)):
        worst = lo + int(np.argmax(p_unsafe[lo:lo + n]))  # the most unsafe window decides
        verdict = {**moderation.verdict(p_unsafe[worst], p_cats[lo:lo + n].max(axis=0), p_sev[worst],
                                        args.threshold), "tokens": tokens, "windows": n}
        unsafe, severity, cats = verdict["unsafe"], verdict["severity"], verdict["categories"]
        if args.json:
            print(json.dumps({"prompt": q, "response": a, **verdict}))
        else:
            label = "UNSAFE" if unsafe else "safe"
            line = f"[{i}] {label} (p_unsafe={verdict['p_unsafe']:.3f})"
            if unsafe:
                line += f", severity={severity}, categories={', '.join(cats) or 'none above the threshold'}"
            if n > 1:
                line += (f"  [{tokens} tokens > --max_length {args.max_length}: read in {n} overlapping windows, "
                         "the most unsafe one shown]")
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
