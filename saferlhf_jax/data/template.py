"""The conversation template (spec §2.5). One definition for training data, rollouts and evaluation splitting."""

from __future__ import annotations

import dataclasses
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class ConversationTemplate:
    """`BEGINNING OF CONVERSATION: USER: {input} ASSISTANT:` by default (the reference's)."""

    begin: str = "BEGINNING OF CONVERSATION: "
    user: str = "USER: {input} "
    assistant: str = "ASSISTANT:"

    def format_prompt(self, prompt: str | Sequence[str], eos_token: str = "") -> str:
        """A user turn, or an odd-length turn list ending on a user turn (assistant turns end with `eos_token`)."""
        if isinstance(prompt, str):
            return self.begin + self.user.format(input=prompt) + self.assistant
        turns = list(prompt)
        if len(turns) % 2 != 1:
            raise ValueError(f"a multi-turn prompt needs an odd number of turns ending on the user, got {len(turns)}")
        pieces = [self.begin]
        for i, turn in enumerate(turns):
            pieces.append(self.user.format(input=turn) + self.assistant if i % 2 == 0 else turn + eos_token)
        return "".join(pieces)

    def dialogue_segments(self, dialogue: Sequence[str], eos_token: str) -> list[str]:
        """Cumulative texts for supervised multi-turn data: [begin+user0+ASSISTANT:, +answer0+EOS, +user1..., ...].

        Each element is the full text up to and including one more turn (spec §3.3).
        """
        texts, text = [], self.begin
        for i, turn in enumerate(dialogue):
            text += self.user.format(input=turn) + self.assistant if i % 2 == 0 else turn + eos_token
            texts.append(text)
        return texts

    def split_response(self, text: str) -> tuple[str, str]:
        """Split a decoded sequence into (prompt through the last assistant marker, response after it)."""
        cut = text.rfind(self.assistant)
        if cut < 0:
            return "", text
        cut += len(self.assistant)
        return text[:cut], text[cut:]


DEFAULT_TEMPLATE = ConversationTemplate()


class ChatTemplate:
    """A tokenizer's own chat template (Jinja, e.g. SmolLM2's ChatML) behind the ConversationTemplate interface.

    format_prompt renders the user/assistant turns with the generation prompt; an answer then ends with EOS (for
    ChatML, EOS is `<|im_end|>`, so `prompt + answer + EOS` is exactly what the template renders)."""

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("this tokenizer has no chat template: use data.template=pku")
        self.tokenizer = tokenizer
        probe = [{"role": "user", "content": "\x00"}]
        with_prompt = self._render(probe, True)
        self.assistant = with_prompt[len(self._render(probe, False)):]  # the generation prompt, e.g. assistant header

    def _render(self, messages, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    @staticmethod
    def _messages(turns: Sequence[str]) -> list[dict]:
        return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]

    def format_prompt(self, prompt: str | Sequence[str], eos_token: str = "") -> str:
        turns = [prompt] if isinstance(prompt, str) else list(prompt)
        if len(turns) % 2 != 1:
            raise ValueError(f"a multi-turn prompt needs an odd number of turns ending on the user, got {len(turns)}")
        return self._render(self._messages(turns), True)

    def dialogue_segments(self, dialogue: Sequence[str], eos_token: str) -> list[str]:
        texts = []
        for i, turn in enumerate(dialogue):
            if i % 2 == 0:
                texts.append(self._render(self._messages(dialogue[:i + 1]), True))
            else:
                texts.append(texts[-1] + turn + eos_token)
        return texts

    def split_response(self, text: str) -> tuple[str, str]:
        cut = text.rfind(self.assistant)
        if cut < 0:
            return "", text
        cut += len(self.assistant)
        return text[:cut], text[cut:]


TEMPLATES = ("pku", "chat")


def make_template(name: str, tokenizer=None):
    """'pku': the reference's template (default for the reference recipe); 'chat': the tokenizer's own."""
    if name == "pku":
        return DEFAULT_TEMPLATE
    if name == "chat":
        return ChatTemplate(tokenizer)
    raise ValueError(f"template must be one of {TEMPLATES}, got {name!r}")
