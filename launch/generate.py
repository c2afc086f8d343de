"""Generate text with a causal LM (default: the embedded stories260K model) through the KV-cache sampler.

    python -m launch.generate --prompt "Once upon a time" --max_new_tokens 64
    python -m launch.generate --model DIR --prompt "..." --template  # wrap in the conversation template
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

DEFAULT_MODEL = pathlib.Path(__file__).resolve().parents[1] / "saferlhf_jax" / "assets" / "stories260K"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="HF-format model directory")
    parser.add_argument("--prompt", action="append", help="prompt text (repeat for a batch); default: BOS only")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=50)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--repetition_penalty", type=float, default=1.0)
    parser.add_argument("--greedy", action="store_true")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    from saferlhf_jax.data.tokenizer import load_tokenizer
    from saferlhf_jax.generation import generate
    from saferlhf_jax.models import load_causal_lm

    try:
        tok = load_tokenizer(args.model, prepare=False)  # refuses remote code before anything else is read
        model = load_causal_lm(args.model)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: cannot load model from {args.model}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    prompts = args.prompt or [""]
    encoded = [tok(p).input_ids for p in prompts]
    width = max(len(e) for e in encoded)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    ids = np.full((len(encoded), width), pad, np.int32)
    mask = np.zeros((len(encoded), width), np.int32)
    for i, e in enumerate(encoded):
        ids[i, width - len(e):] = e
        mask[i, width - len(e):] = 1
    start = time.perf_counter()
    try:
        out = generate(model, model.params, ids, mask, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       repetition_penalty=args.repetition_penalty, greedy=args.greedy, rng=args.seed)
    except ValueError as err:  # sampling settings outside their domain
        print(f"error: {err}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    for i, prompt in enumerate(prompts):
        real = out["sequences"][i][out["attention_mask"][i].astype(bool)]
        print(f"--- [{i}] {prompt!r}\n{tok.decode(real, skip_special_tokens=True)}\n")
    total = int(out["response_lengths"].sum())
    print(f"{total} tokens in {elapsed:.2f}s (compile included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
