"""The server's answers in OpenAI's shapes: whole bodies, server-sent event chunks, usage and
logprobs (the legacy completions shape and the chat shape).

    completions logprobs: {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{...}],
                           "text_offset": [...]}, echoed prompt tokens first (the first null)
    chat logprobs:        {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}

A stream's chunk carries everything that arrived since the last one: a client that reads slowly
gets fewer, larger chunks, and the engine never waits for it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from scratchlm.infer.row import Row, TokenLogprob
from scratchlm.infer.schemas import error_body
from scratchlm.infer.worker import Job
from scratchlm.tokenizer.tokenizer import Tokenizer


def dumps(obj: Any) -> str:
    # ensure_ascii: text a client sent (even a lone surrogate) can always be written back
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"))


@dataclass
class Reply:
    """How one request's rows become its answer."""

    tokenizer: Tokenizer
    meta: dict  # id, created, model
    chat: bool
    echo: list[str] = field(default_factory=list)  # completions: each row's echoed prompt text
    logprobs: int | None = None  # top logprobs per token (None: no logprobs)
    include_usage: bool = False
    _sent: dict[int, int] = field(default_factory=dict)  # row -> tokens whose logprobs were sent

    # ------------------------------------------------------------------ whole bodies

    def body(self, job: Job) -> dict:
        if self.chat:
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": r.stream.text},
                    "logprobs": self._chat_logprobs(r, 0) if self.logprobs is not None else None,
                    "finish_reason": r.finish_reason,
                }
                for i, r in enumerate(job.rows)
            ]
            kind = "chat.completion"
        else:
            choices = [
                {
                    "index": i,
                    "text": (self.echo[i] if self.echo else "") + r.stream.text,
                    "logprobs": self._legacy_logprobs(r, 0, bool(self.echo))
                    if self.logprobs is not None
                    else None,
                    "finish_reason": r.finish_reason,
                }
                for i, r in enumerate(job.rows)
            ]
            kind = "text_completion"
        return {**self.meta, "object": kind, "choices": choices, "usage": usage(job.rows)}

    # ------------------------------------------------------------------ streams

    async def sse(self, job: Job) -> AsyncIterator[str]:
        """`data: {chunk}` events as the rows move, a last chunk per row with its finish_reason,
        the usage chunk when asked, then `data: [DONE]`. Leaving early cancels the rows."""
        try:
            if self.chat:
                yield self._chunk([self._choice(i, "", None, {"role": "assistant"}) for i in range(len(job.rows))])  # fmt: skip
            elif self.echo:
                yield self._chunk([self._echo_choice(i, r) for i, r in enumerate(job.rows)])
            while updates := await job.next_updates():
                texts: dict[int, str] = {}
                for row, text in updates:
                    i = job.rows.index(row)
                    texts[i] = texts.get(i, "") + text
                for i, text in texts.items():  # one choice a chunk, as OpenAI sends them
                    row = job.rows[i]
                    if row.finish_reason == "error":
                        yield f"data: {dumps(error_body(row.error or 'error', kind='server_error'))}\n\n"
                        return
                    logprobs = self._new_logprobs(row) if self.logprobs is not None else None
                    if text or logprobs or row.finish_reason is not None:
                        yield self._chunk(
                            [self._choice(i, text, row.finish_reason, logprobs=logprobs)]
                        )
            if self.include_usage:
                chunk = {**self.meta, "object": self._kind, "choices": [], "usage": usage(job.rows)}
                yield f"data: {dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()  # a no-op for rows already finished

    @property
    def _kind(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def _chunk(self, choices: list[dict]) -> str:
        chunk = {**self.meta, "object": self._kind, "choices": choices}
        if self.include_usage:
            chunk["usage"] = None
        return f"data: {dumps(chunk)}\n\n"

    def _choice(
        self, i: int, text: str, finish: str | None, delta: dict | None = None, logprobs=None
    ) -> dict:
        if self.chat:
            delta = dict(delta or {})
            if text or finish is None:
                delta["content"] = text
            return {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def _echo_choice(self, i: int, row: Row) -> dict:
        logprobs = None
        if self.logprobs is not None:
            logprobs = self._legacy_prompt(row, 0)
        return self._choice(i, self.echo[i], None, logprobs=logprobs)

    def _new_logprobs(self, row: Row) -> dict | None:
        key = id(row)
        start = self._sent.get(key, 0)
        if start == len(row.token_logprobs):
            return None
        self._sent[key] = len(row.token_logprobs)
        if self.chat:
            return self._chat_logprobs(row, start)
        return self._legacy_generated(row, start, 0)  # offsets into this chunk's text

    # ------------------------------------------------------------------ logprobs

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def _top(self, record: TokenLogprob | None, token: int) -> dict[str, float] | None:
        if record is None:
            return None
        lp, best = record
        top = {self._piece(t): v for t, v in best[: self.logprobs]}
        top.setdefault(self._piece(token), lp)  # vLLM's: the chosen token is always there
        return top

    def _legacy_prompt(self, row: Row, offset: int) -> dict:
        tokens, lps, tops, offsets = [], [], [], []
        for token, record in zip(row.prompt, row.prompt_token_logprobs, strict=False):
            piece = self._piece(token)
            tokens.append(piece)
            lps.append(None if record is None else record[0])
            tops.append(self._top(record, token))
            offsets.append(offset)
            offset += len(piece)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}  # fmt: skip

    def _legacy_generated(self, row: Row, start: int, offset: int) -> dict:
        tokens, lps, tops, offsets = [], [], [], []
        for token, record in zip(row.tokens[start:], row.token_logprobs[start:], strict=False):
            piece = self._piece(token)
            tokens.append(piece)
            lps.append(record[0])
            tops.append(self._top(record, token))
            offsets.append(offset)
            offset += len(piece)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}  # fmt: skip

    def _legacy_logprobs(self, row: Row, start: int, echo: bool) -> dict:
        """Echoed prompt tokens (if echoed) then the generated ones, offsets into the text."""
        if not echo:
            return self._legacy_generated(row, start, 0)
        prompt = self._legacy_prompt(row, 0)
        end = prompt["text_offset"][-1] + len(prompt["tokens"][-1]) if prompt["tokens"] else 0
        generated = self._legacy_generated(row, start, end)
        return {k: prompt[k] + generated[k] for k in prompt}

    def _chat_logprobs(self, row: Row, start: int) -> dict:
        def entry(token: int, lp: float) -> dict:
            piece = self._piece(token)
            return {"token": piece, "logprob": lp, "bytes": list(piece.encode("utf-8"))}

        content = []
        for token, (lp, best) in zip(row.tokens[start:], row.token_logprobs[start:], strict=False):
            item = entry(token, lp)
            item["top_logprobs"] = [entry(t, v) for t, v in best[: self.logprobs]]
            content.append(item)
        return {"content": content}


def usage(rows: list[Row]) -> dict[str, int]:
    """Prompt tokens counted once per distinct prompt (n choices share one), completion tokens
    summed over every choice."""
    prompt = sum(len(p) for p in {id(r.prompt): r.prompt for r in rows}.values())
    completion = sum(len(r.tokens) for r in rows)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
