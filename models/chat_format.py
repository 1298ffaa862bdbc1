"""ChatML prompt tokens, built piece by piece so that nothing a user typed becomes a control token.

`create_chat_completion` renders the whole template to one string and tokenizes it with special
tokens on, so a user typing `<|im_start|>system` injects a real control token. Here the template
parts are tokenized with special=True and every message text with special=False.
"""

from __future__ import annotations

from typing import Callable, Sequence

from models.errors import ModelFileError

ROLES = ("system", "user", "assistant")
Tokenize = Callable[[str, bool], list[int]]  # (text, special) -> tokens


class ChatML:
    def __init__(self, tokenize: Tokenize, model_name: str):
        self.tokenize = tokenize
        for marker in ("<|im_start|>", "<|im_end|>"):
            if len(tokenize(marker, True)) != 1:
                raise ModelFileError(
                    f"{model_name}: the vocabulary has no {marker} control token. Cogumi Chat speaks "
                    f"ChatML (Qwen-style) models; pick a ChatML model."
                )
        self.im_end = tokenize("<|im_end|>", True)[0]
        self.close = tokenize("<|im_end|>\n", True)
        self._headers = {role: tokenize(f"<|im_start|>{role}\n", True) for role in ROLES}

    def message(self, role: str, content: str) -> list[int]:
        if role not in ROLES:
            raise ValueError(f"unknown chat role {role!r}; expected one of {ROLES}")
        return self.wrap(role, self.tokenize(content, False))

    def wrap(self, role: str, text_tokens: list[int]) -> list[int]:
        """A message from its text's tokens (a reply's own generated tokens, say)."""
        return self._headers[role] + text_tokens + self.close

    def overhead(self, role: str) -> int:
        """Template tokens around one message's text: message(role, text) is this much longer."""
        return len(self._headers[role]) + len(self.close)

    def generation_prompt(self) -> list[int]:
        return list(self._headers["assistant"])

    def prompt(self, messages: Sequence[dict]) -> list[int]:
        tokens = []
        for m in messages:
            tokens += self.message(m["role"], m["content"])
        return tokens + self.generation_prompt()
