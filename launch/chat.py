"""Chat with a model in the reference conversation template; tokens stream as they are sampled.

    python -m launch.chat --model runs/ppo_lag/export [--temperature 1.0 --top_k 50 --max_new_tokens 512]
    python -m launch.chat --red runs/sft/export --blue runs/ppo_lag/export     # two models side by side

Commands: /reset (new conversation), /regenerate (answer the last message again), /quit (or Ctrl-D).
Model arguments accept HF-format directories or training run directories (latest checkpoint, DIR@STEP).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


MIN_ANSWER = 16  # tokens an answer must have room for


class Conversation:
    """Turn list [user, assistant, user, ...] rendered with the shared template."""

    def __init__(self, template, eos: str):
        self.template, self.eos = template, eos
        self.turns: list[str] = []

    def prompt(self) -> str:
        return self.template.format_prompt(self.turns, self.eos)

    def fit(self, tok, limit: int) -> tuple[list[int], str | None]:
        """Token ids of the prompt within `limit` tokens: the oldest exchanges are dropped first, then the last
        message keeps its last tokens. Returns (ids, a note saying what was cut, or None)."""
        ids = tok(self.prompt()).input_ids
        dropped = 0
        while len(ids) > limit and len(self.turns) > 1:
            del self.turns[:2]  # the oldest user message and its answer
            dropped += 2
            ids = tok(self.prompt()).input_ids
        notes = [f"dropped the {dropped} oldest turns"] if dropped else []
        if len(ids) > limit:
            message = tok(self.turns[-1], add_special_tokens=False).input_ids
            keep = max(len(message) - (len(ids) - limit), 1)
            self.turns[-1] = tok.decode(message[-keep:])
            ids = tok(self.prompt()).input_ids[-limit:]
            notes.append(f"cut your message to its last {keep} of {len(message)} tokens")
        return ids, ("; ".join(notes) if notes else None)


def _reply(model, tok, conv: Conversation, args, seed: int, out) -> str:
    from saferlhf_jax.generation import stream_generate

    positions = int(model.config.max_position_embeddings)
    ids, note = conv.fit(tok, positions - MIN_ANSWER)
    if note:  # never a silent cut: the model reads at most `positions` tokens
        out.write(f"(this model reads {positions} tokens: {note})\n")
    ids = np.asarray([ids], np.int32)
    pieces: list[int] = []
    shown = ""
    budget = min(args.max_new_tokens, positions - ids.shape[1])
    for t in stream_generate(model, model.params, ids, np.ones_like(ids), max_new_tokens=budget,
                             temperature=max(args.temperature, 0.0), top_k=args.top_k, top_p=args.top_p,
                             repetition_penalty=args.repetition_penalty, greedy=args.temperature <= 0,
                             eos_token_ids=(tok.eos_token_id,), pad_token_id=tok.pad_token_id, rng=seed):
        if t == tok.eos_token_id:
            break
        pieces.append(t)
        text = tok.decode(pieces, skip_special_tokens=True)
        out.write(text[len(shown):])
        out.flush()
        shown = text
    out.write("\n")
    return shown.strip()


def main(argv=None, stdin=None, out=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model to chat with")
    p.add_argument("--red", help="side-by-side mode: first model")
    p.add_argument("--blue", help="side-by-side mode: second model")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=50)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--repetition_penalty", type=float, default=1.0)
    p.add_argument("--max_new_tokens", type=int, default=512)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--template", choices=["pku", "chat"], default=None,
                   help="default: the model's own chat template when it has one, else the reference's (pku)")
    args = p.parse_args(argv)
    stdin, out = stdin or sys.stdin, out or sys.stdout
    if not args.model and not (args.red and args.blue):
        p.error("give --model, or --red and --blue")
    from saferlhf_jax.data import make_template
    from saferlhf_jax.evaluation.loading import load_for_eval
    from saferlhf_jax.generation.sampler import check_sampling

    try:  # before loading anything: a bad setting is refused up front, not at the first message
        check_sampling(max(args.temperature, 0.0), args.top_k, args.top_p, args.repetition_penalty)
        if args.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be ≥ 1, got {args.max_new_tokens}")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    specs = {"": args.model} if args.model else {"red": args.red, "blue": args.blue}
    try:
        loaded = {name: load_for_eval(spec, "causal_lm") for name, spec in specs.items()}
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    def template_of(tok):
        name = args.template or ("chat" if getattr(tok, "chat_template", None) else "pku")
        return make_template(name, tok)

    try:
        convs = {name: Conversation(template_of(tok), tok.eos_token) for name, (_, tok) in loaded.items()}
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seed = args.seed
    out.write("commands: /reset /regenerate /quit\n")
    while True:
        out.write("USER: ")
        out.flush()
        line = stdin.readline()
        if not line:
            out.write("\n")
            return 0
        text = line.strip()
        if text in ("/quit", "/exit"):
            return 0
        if text == "/reset":
            for c in convs.values():
                c.turns.clear()
            out.write("(new conversation)\n")
            continue
        if text == "/regenerate":
            if not next(iter(convs.values())).turns:
                out.write("(nothing to regenerate)\n")
                continue
            for c in convs.values():
                c.turns.pop()  # drop the last answer, keep the user turn
        elif not text:
            continue
        else:
            for c in convs.values():
                c.turns.append(text)
        seed += 1
        for name, (model, tok) in loaded.items():
            out.write(f"ASSISTANT{f' [{name}]' if name else ''}: ")
            out.flush()
            convs[name].turns.append(_reply(model, tok, convs[name], args, seed, out))


if __name__ == "__main__":
    sys.exit(main())
