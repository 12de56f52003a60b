"""The chat template: how a conversation becomes tokens, with the tokenizer's special tokens.

    <|system|>You are terse.<|end|><|user|>Hi<|end|><|assistant|>Hello.<|end|>

Each turn opens with its role's token and closes with <|end|>. To ask the model for a reply,
the prompt ends with <|assistant|>; the model answers until it writes <|end|>. Fine-tuning counts
the loss only on what the assistant wrote and its closing <|end|>: the model learns to answer and
to stop, not to predict the user's words.

Message text is always encoded as ordinary text, so a user who types "<|end|>" cannot close a
turn. The one exception is tool markup in an assistant turn, when the tokenizer has the tool
tokens (fine-tuning adds them for data that calls tools):

    <|assistant|><|tool|>12*37<|/tool|><|result|>444<|/result|>444<|end|>
                 trained............... not trained............ trained....

The model learns to write the call and to use the result, not to predict what the tool wrote.
The template is saved beside the model (chat_template.json) and exported to Hugging Face as the
equivalent Jinja template.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from scratchlm.errors import StageError
from scratchlm.io import atomic_write_json
from scratchlm.tokenizer.tokenizer import BPETokenizer, CharTokenizer, Tokenizer

ROLES = ("system", "user", "assistant")
FILENAME = "chat_template.json"


@dataclass(frozen=True)
class ChatTemplate:
    """The special-token strings that open each role's turn and close every turn."""

    system: str = "<|system|>"
    user: str = "<|user|>"
    assistant: str = "<|assistant|>"
    end: str = "<|end|>"
    # A tool call inside an assistant turn, and the result the tool wrote back (infer/tools.py).
    tool_call: str = "<|tool|>"
    tool_call_end: str = "<|/tool|>"
    tool_result: str = "<|result|>"
    tool_result_end: str = "<|/result|>"

    @property
    def tokens(self) -> list[str]:
        return [self.system, self.user, self.assistant, self.end]

    @property
    def tool_tokens(self) -> list[str]:
        return [self.tool_call, self.tool_call_end, self.tool_result, self.tool_result_end]

    def uses_tools(self, conversations: Iterable[Sequence[Mapping[str, str]]]) -> bool:
        """Whether any assistant turn of these conversations calls a tool."""
        return any(
            self.tool_call in m.get("content", "")
            for messages in conversations
            for m in messages
            if m.get("role") == "assistant"
        )

    def _reply(self, tokenizer: Tokenizer, text: str) -> tuple[list[int], list[bool]]:
        """An assistant turn's ids and trained flags. Tool markup becomes its special tokens when
        the tokenizer has them; the model learns to write a call, not the result it gets back."""
        specials = tokenizer.special_tokens
        if not all(t in specials for t in self.tool_tokens):
            ids = tokenizer.encode(text)
            return ids, [True] * len(ids)
        ids, trained, in_result = [], [], False
        for piece in re.split("(" + "|".join(map(re.escape, self.tool_tokens)) + ")", text):
            if piece in self.tool_tokens:
                in_result = in_result or piece == self.tool_result
                ids.append(specials[piece])
                trained.append(not in_result)
                in_result = in_result and piece != self.tool_result_end
            elif piece:
                piece_ids = tokenizer.encode(piece)
                ids += piece_ids
                trained += [not in_result] * len(piece_ids)
        return ids, trained

    def render(
        self,
        tokenizer: Tokenizer,
        messages: Sequence[Mapping[str, str]],
        add_generation_prompt: bool,
    ) -> tuple[list[int], list[bool]]:
        """Token ids of a conversation, and for each id whether training should predict it
        (True for the assistant's words and their closing <|end|>)."""
        missing = [t for t in self.tokens if t not in tokenizer.special_tokens]
        if missing:
            raise StageError(f"the tokenizer has no {missing} token: add them with add_chat_tokens")
        specials = tokenizer.special_tokens
        ids: list[int] = []
        trained: list[bool] = []
        for m in check_messages(messages):
            if m["role"] == "assistant":
                body, learn = self._reply(tokenizer, m["content"])
                body, learn = body + [specials[self.end]], learn + [True]
            else:  # what others wrote is ordinary text: typing "<|end|>" closes no turn
                body = tokenizer.encode(m["content"]) + [specials[self.end]]
                learn = [False] * len(body)
            ids += [specials[getattr(self, m["role"])], *body]
            trained += [False, *learn]
        if add_generation_prompt:
            ids.append(specials[self.assistant])
            trained.append(False)
        return ids, trained

    def render_text(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool
    ) -> str:
        """The same conversation as text (what the Jinja template produces)."""
        text = "".join(
            getattr(self, m["role"]) + m["content"] + self.end for m in check_messages(messages)
        )
        return text + (self.assistant if add_generation_prompt else "")

    def to_jinja(self) -> str:
        """The Hugging Face `chat_template` that renders exactly like `render_text`."""
        return (
            "{% for m in messages %}"
            f"{{% if m['role'] == 'system' %}}{self.system}"
            f"{{% elif m['role'] == 'user' %}}{self.user}"
            f"{{% else %}}{self.assistant}{{% endif %}}"
            f"{{{{ m['content'] }}}}{self.end}"
            "{% endfor %}"
            f"{{% if add_generation_prompt %}}{self.assistant}{{% endif %}}"
        )

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / FILENAME
        atomic_write_json(path, {"format": "scratchlm-chat", "version": 1, **asdict(self)})
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ChatTemplate | None:
        """The template saved in a run folder, or None when the model was never chat-tuned."""
        path = Path(folder) / FILENAME
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        names = [f.name for f in fields(cls)]
        return cls(**{k: data[k] for k in names if k in data})


def check_messages(messages: Iterable[Any]) -> list[dict[str, str]]:
    """Messages as {"role", "content"} dicts, or a StageError saying which one is wrong."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES:
            raise StageError(f"message {i}: expected a role of {', '.join(ROLES)}, got {m!r:.80}")
        if not isinstance(m.get("content"), str):
            raise StageError(f"message {i}: 'content' must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def add_chat_tokens(
    tokenizer: Tokenizer, template: ChatTemplate | None = None, tools: bool = False
) -> tuple[Tokenizer, list[str]]:
    """The tokenizer with the template's special tokens (and its tool tokens, with `tools`)
    added after its vocabulary when missing (an imported GPT-2 tokenizer has none), and the
    names that were added."""
    template = template or ChatTemplate()
    wanted = template.tokens + (template.tool_tokens if tools else [])
    missing = [t for t in wanted if t not in tokenizer.special_tokens]
    if not missing:
        return tokenizer, []
    if isinstance(tokenizer, CharTokenizer):
        specials = sorted(tokenizer.special_tokens, key=tokenizer.special_tokens.get)
        return CharTokenizer(tokenizer.chars, specials + missing), missing
    first = tokenizer.vocab_size
    specials = tokenizer.special_tokens | {t: first + i for i, t in enumerate(missing)}
    return BPETokenizer(tokenizer.vocab, tokenizer.pattern, specials, tokenizer.merges), missing
