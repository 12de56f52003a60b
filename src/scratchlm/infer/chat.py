"""`scratchlm chat RUN`: talk to a model in the terminal, the reply streamed as it is written.

The conversation is rendered with the run's chat template (tokenizer/chat.py) before every
reply. A model only sees block_size tokens, so when the conversation outgrows the context
minus the room kept for the reply, the oldest turns are dropped (and the user is told).

    /system TEXT   set the system message (and start over)     /reset   start over
    /exit          leave (so does Ctrl-D)
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from typing import Any, TextIO

from scratchlm.config import GenerateSettings
from scratchlm.errors import StageError
from scratchlm.infer.generate import Row, generate_rows, sampling_of
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.tokenizer.tokenizer import Tokenizer

HELP = "commands: /system TEXT, /reset, /exit"


def reply_stop_ids(template: ChatTemplate, tokenizer: Tokenizer) -> frozenset[int]:
    """A reply ends at <|end|> or <|endoftext|>, or where the model opens a new turn itself."""
    names = [template.end, template.system, template.user, template.assistant]
    return frozenset({tokenizer.eot_id, *(tokenizer.special_tokens[n] for n in names)})


def fit_history(
    template: ChatTemplate,
    tokenizer: Tokenizer,
    system: list[dict[str, str]],
    turns: list[dict[str, str]],
    limit: int,
) -> tuple[list[int], int]:
    """The prompt ids of the system message + the newest turns that fit in `limit` tokens, and
    how many of the oldest turns were left out. The newest user message always stays."""
    dropped = 0
    while True:
        ids, _ = template.render(tokenizer, system + turns[dropped:], add_generation_prompt=True)
        if len(ids) <= limit or dropped == len(turns) - 1:
            return ids, dropped
        dropped += 1


class Chat:
    """A conversation with one model; `reply(text, on_text)` streams the answer."""

    def __init__(
        self, model: Any, tokenizer: Tokenizer, template: ChatTemplate, s: GenerateSettings
    ):
        self.model, self.tokenizer, self.template, self.s = model, tokenizer, template, s
        self.system: list[dict[str, str]] = []
        self.turns: list[dict[str, str]] = []
        block = model.cfg.block_size
        self.reply_room = min(s.max_new_tokens, block // 2)  # kept free for the answer
        self.limit = block - self.reply_room
        self.replies = 0  # in this session, /reset or not

    def turn_seed(self, prompt_ids: list[int]) -> int:
        """The next reply's seed, drawn from generate.seed, the number of replies before it
        and the prompt. Two turns never share a seed (with one seed, every question draws
        the same noise, and a weak model then gives them all one answer), and a session with
        the same seed and messages replays exactly."""
        self.replies += 1
        key = f"{self.s.seed}:{self.replies}:{prompt_ids}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")

    def reset(self, system: str | None = None) -> None:
        self.turns = []
        if system is not None:
            self.system = [{"role": "system", "content": system}] if system else []

    def reply(self, text: str, on_text: Callable[[str], Any]) -> tuple[str, int]:
        """Answer the user's `text`, calling `on_text` with each new piece; returns the reply
        and how many old turns were dropped to make room."""
        self.turns.append({"role": "user", "content": text})
        ids, dropped = fit_history(
            self.template, self.tokenizer, self.system, self.turns, self.limit
        )
        if len(ids) >= self.model.cfg.block_size:
            self.turns.pop()
            raise StageError(
                f"that message is {len(ids)} tokens with the template; the context holds "
                f"{self.model.cfg.block_size}: say it in fewer words"
            )
        self.turns = self.turns[dropped:]
        stop_ids = reply_stop_ids(self.template, self.tokenizer)
        budget = min(self.s.max_new_tokens, self.model.cfg.block_size - len(ids))
        row = Row(
            ids,
            budget,
            sampling_of(self.s),
            self.turn_seed(ids),
            tuple(self.s.stop),
            stop_ids,
            tools=self.s.tools,
        )
        try:
            for events in generate_rows(self.model, self.tokenizer, [row]):
                for _, piece in events:
                    if piece:
                        on_text(piece)
        except KeyboardInterrupt:
            self.turns.pop()  # the question went unanswered: forget it
            raise
        answer = row.stream.text
        self.turns.append({"role": "assistant", "content": answer})
        return answer, dropped


def run_chat(
    chat: Chat, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, system: str | None = None
) -> None:
    """The read-reply loop of `scratchlm chat`."""

    def say(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    if system:
        chat.reset(system)
    say(f"chatting with a {chat.model.cfg.block_size}-token context; {HELP}\n")
    while True:
        say("you> ")
        try:
            line = stdin.readline()
        except KeyboardInterrupt:  # Ctrl-C at the prompt leaves, as Ctrl-D does
            line = ""
        if not line:  # end of input (Ctrl-D)
            say("\n")
            return
        text = line.rstrip("\n")
        if text.strip() == "/exit":
            return
        if text.strip() == "/reset":
            chat.reset()
            say("(conversation cleared)\n")
        elif text.startswith("/system"):
            chat.reset(text[len("/system") :].strip())
            say(f"(system message {'set' if chat.system else 'removed'}; conversation cleared)\n")
        elif text.startswith("/"):
            say(f"(unknown command; {HELP})\n")
        elif text.strip():
            try:
                say("assistant> ")
                _, dropped = chat.reply(text, say)
                say("\n")
                if dropped:
                    say(f"(dropped the {dropped} oldest turn(s) to fit the context)\n")
            except StageError as e:
                say(f"\n({e})\n")
            except KeyboardInterrupt:  # Ctrl-C stops a reply, not the chat
                say("\n(reply interrupted)\n")
