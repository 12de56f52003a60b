"""Generated tokens to streamed text: hold back what is not final yet, stop at stop strings.

Two things make the newest text provisional:
- a character split across tokens: byte-level BPE may emit the first bytes of "é" in one
  token and the rest in the next, so the text ends in U+FFFD until the next token arrives;
- a possible stop string: with stop "\\n\\n", a text ending in "\\n" may be its beginning, and
  must not reach the reader if the next token completes it.

    stream = TextStream(tok, stop=["\\n\\n"])
    for token in tokens: print(stream.push(token), end="")   # final text, piece by piece
    print(stream.finish())                                  # what was held back at the end
"""

from __future__ import annotations

from scratchlm.tokenizer.tokenizer import Tokenizer

REPLACEMENT = "\ufffd"
MAX_CHAR_BYTES = 4  # a UTF-8 character spans at most 4 bytes, so at most 4 byte tokens


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stop: list[str] | tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.pending: list[int] = []  # tokens whose text is not decoded yet (a split character)
        self.held = ""  # decoded text that may be the start of a stop string
        self.stopped = False  # a stop string was found; nothing more comes out
        self.text = ""  # everything released so far

    def push(self, token: int) -> str:
        """Add one generated token; return the text that has become final (often "")."""
        if self.stopped:
            return ""
        self.pending.append(token)
        piece = self.tokenizer.decode(self.pending)
        if piece.endswith(REPLACEMENT) and len(self.pending) < MAX_CHAR_BYTES:
            return ""  # wait for the rest of the character
        self.pending = []
        return self._release(self.held + piece)

    def finish(self) -> str:
        """The end of generation: release what was held back (unless a stop string ended it)."""
        if self.stopped:
            return ""
        text = self.held + (self.tokenizer.decode(self.pending) if self.pending else "")
        self.held, self.pending = "", []
        self.text += text
        return text

    def _release(self, text: str) -> str:
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if found:  # the text ends just before the earliest stop string
            self.stopped = True
            out, self.held = text[: min(found)], ""
        else:
            keep = max((_overlap(text, s) for s in self.stop), default=0)
            out, self.held = text[: len(text) - keep], text[len(text) - keep :]
        self.text += out
        return out


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of `text` that is a beginning of `stop` (shorter than it)."""
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0
