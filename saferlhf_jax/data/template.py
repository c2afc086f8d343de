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
