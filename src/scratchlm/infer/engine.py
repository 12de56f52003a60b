"""The generation engine: continuous batching over a KV cache of real tokens only.

    engine = Engine(model, tokenizer, max_batch=8)
    engine.add(row)                 # any time, from the thread that calls step()
    while engine.busy:
        for row, text in engine.step(): ...   # the rows that moved this step, and their new text

Every `step()`:
1. rows that finished or were cancelled leave (their cache slot goes to the next row);
2. waiting rows join while fewer than `max_batch` run;
3. the step's tokens are chosen under `token_budget`: one token for each row that decodes,
   then chunks of the prompts still being read, oldest first (a long prompt takes several
   steps, so it never stalls the rows that are decoding);
4. one forward pass over those tokens, laid flat (infer/kv.py: no padding, each row attends
   to its own tokens only); the rows whose context is fully read pick their next token
   (a plain greedy row's argmax comes from infer/greedy.py's bf16-screened head, where the
   head is large enough for that to pay; `screen_greedy=False` turns it off).

A row whose context reaches block_size goes on as `generate` always has: each further token is
read from the last block_size tokens, which is a prompt of that length to read again, so it
costs that row (and the step's token budget), never the other rows' text or cache.

The engine knows nothing of threads or HTTP (infer/worker.py serves it to the web server).
A row's failure (a sampling error) finishes that row with finish_reason "error"; a failed
forward pass is retried row by row, so only the row that fails it is lost.
"""

from __future__ import annotations

from collections import deque

import torch

from scratchlm.infer.greedy import maybe_screened_head
from scratchlm.infer.kv import SlotCache
from scratchlm.infer.row import Row, TokenLogprob
from scratchlm.infer.tools import ToolUse
from scratchlm.model.gpt import GPT
from scratchlm.tokenizer.tokenizer import Tokenizer

Events = list[tuple[Row, str]]


class Engine:
    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer | None,
        max_batch: int = 8,
        token_budget: int = 512,
        vocab_size: int | None = None,
        screen_greedy: bool = True,
    ):
        if max_batch < 1 or token_budget < 1:
            raise ValueError("max_batch and token_budget must be at least 1")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.token_budget = max_batch, token_budget
        if vocab_size is None:
            vocab_size = tokenizer.vocab_size if tokenizer is not None else model.cfg.vocab_size
        self.vocab_size = min(vocab_size, model.cfg.vocab_size)
        self.block = model.cfg.block_size
        param = next(model.parameters())
        self.device = param.device
        dtype = param.dtype
        if torch.is_autocast_enabled(param.device.type):  # keys and values come out in its dtype
            dtype = torch.get_autocast_dtype(param.device.type)
        self.cache = SlotCache(model.cfg, max_batch, param.device, dtype)
        self.tools = ToolUse.of(tokenizer)  # None when the tokenizer has no tool tokens
        # Plain greedy rows need only the argmax: a large CPU head screens it in bf16 and
        # settles it in float32 (infer/greedy.py); None where that does not pay or cannot run.
        self.screen = maybe_screened_head(model) if screen_greedy else None
        self.waiting: deque[Row] = deque()
        self.running: list[Row] = []  # running[i] lives in cache slot i
        self._done: Events = []  # rows finished outside a step, reported by the next one

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running or self._done)

    def add(self, row: Row) -> None:
        """Queue a row; it joins the batch at a coming step."""
        row.start(self.tokenizer, self.vocab_size)
        if row.prompt_logprobs is not None and len(row.ids) > self.block:
            raise ValueError(f"prompt logprobs need the prompt within the context ({self.block})")
        row.window = max(0, len(row.ids) - self.block)
        if row.finish_reason is not None:  # nothing to generate
            self._done.append((row, ""))
        else:
            self.waiting.append(row)

    def reject(self, row: Row, message: str) -> None:
        """Finish a row that cannot run (reported by the next step, like any other)."""
        row.fail(message)
        self._done.append((row, ""))

    # ------------------------------------------------------------------ one step

    @torch.inference_mode()
    def step(self) -> Events:
        events, self._done = self._done, []
        self._leave(events)
        while self.waiting and len(self.running) < self.max_batch:
            row = self.waiting.popleft()
            if row.cancelled:
                row.finish_reason = "cancelled"
                events.append((row, ""))
                continue
            self.running.append(row)
        pieces = self._schedule()
        if pieces:
            self._forward(pieces, events)
        self._leave(events)
        merged: dict[Row, str] = {}  # one event per row: a row cancelled mid-step moved too
        for row, text in events:
            merged[row] = merged.get(row, "") + text
        return list(merged.items())

    def _leave(self, events: Events) -> None:
        """Finished and cancelled rows leave; the last row moves into each freed slot."""
        for i in range(len(self.running) - 1, -1, -1):
            row = self.running[i]
            if row.cancelled and row.finish_reason is None:
                row.finish_reason = "cancelled"
                events.append((row, ""))
            if row.finish_reason is None:
                continue
            last = len(self.running) - 1
            if i != last:
                self.running[i] = self.running[last]
                self.cache.move(last, i)
            self.cache.reset(last)
            self.running.pop()

    def _schedule(self) -> list[tuple[int, int]]:
        """(slot, tokens) to read this step: decoding rows first, then prompt chunks."""
        for i, row in enumerate(self.running):
            if len(row.ids) - row.window > self.block:
                # past the context: read the last block_size tokens afresh, from position 0
                row.window, row.cached = len(row.ids) - self.block, 0
                self.cache.reset(i)
        decode = [(i, 1) for i, r in enumerate(self.running) if r.pending == 1]
        budget = max(self.token_budget - len(decode), 1)  # a prompt always moves on
        chunks = []
        for i, row in enumerate(self.running):
            if row.pending > 1 and budget > 0:
                n = min(row.pending, budget)
                chunks.append((i, n))
                budget -= n
        pieces = decode + chunks
        if pieces:
            self.cache.reserve(max(self.running[i].cached + n for i, n in pieces))
        return pieces

    def _forward(self, pieces: list[tuple[int, int]], events: Events) -> None:
        try:
            tokens, logits_of = self._run(pieces)
        except Exception as e:  # retry row by row: only a row that fails alone is lost
            if len(pieces) == 1:
                self.running[pieces[0][0]].fail(f"{type(e).__name__}: {e}")
                events.append((self.running[pieces[0][0]], ""))
                return
            for piece in pieces:
                self._forward([piece], events)
            return
        self._pick(tokens, logits_of, events)

    def _run(
        self, pieces: list[tuple[int, int]]
    ) -> tuple[dict[int, int], dict[int, tuple[torch.Tensor, int]]]:
        """One forward pass: the next token of each plain greedy slot the screened head
        picks; for each other slot that needs them, its logits (rows, V) on the CPU and the
        context index of the first of those rows."""
        ids, select, owners, greedy, picks = [], [], [], [], []
        for slot, n in pieces:
            row = self.running[slot]
            start = row.window + row.cached
            ids.extend(row.ids[start : start + n])
            first = len(ids) - n
            if row.prompt_logprobs is not None and start < len(row.prompt):
                select.extend(range(first, len(ids)))  # every prompt position is scored
                owners.append((slot, n, start))
            elif n == row.pending and row.wants_token:
                if self.screen is not None and self.screen.pays and self._plain_greedy(row):
                    picks.append(len(ids) - 1)
                    greedy.append(slot)
                    continue
                select.append(len(ids) - 1)
                owners.append((slot, 1, start + n - 1))
        self.cache.plan(pieces)
        try:
            h = self.model.hidden_states(torch.tensor([ids], device=self.device), self.cache)
        except Exception:
            self.cache.abandon()
            raise
        for slot, n in pieces:
            self.running[slot].cached += n
        tokens, out = {}, {}
        if greedy:
            best = self.screen.argmax(h[0, torch.tensor(picks)], self.vocab_size)
            tokens = dict(zip(greedy, best, strict=True))
        if select:
            logits = self.model.head(h[0, torch.tensor(select, device=self.device)])
            logits = logits[:, : self.vocab_size].float().cpu()  # one copy to the host per step
            at = 0
            for slot, n, first in owners:
                out[slot] = (logits[at : at + n], first)
                at += n
        return tokens, out

    def _pick(
        self,
        tokens: dict[int, int],
        logits_of: dict[int, tuple[torch.Tensor, int]],
        events: Events,
    ) -> None:
        greedy = [
            s
            for s, (lg, _) in logits_of.items()
            if lg.size(0) == 1 and self._plain_greedy(self.running[s])
        ]
        if greedy:  # one argmax for every plain greedy row the screen did not pick
            best = torch.cat([logits_of[s][0] for s in greedy]).argmax(-1).tolist()
            tokens = tokens | dict(zip(greedy, best, strict=True))
        for s, token in tokens.items():
            events.append((self.running[s], self._accept(s, token, None)))
        for slot, (logits, first) in logits_of.items():
            if slot in tokens:
                continue
            row = self.running[slot]
            try:
                events.append((row, self._choose(slot, logits, first)))
            except Exception as e:  # this row's rules failed: this row alone ends
                row.fail(f"{type(e).__name__}: {e}")
                events.append((row, ""))

    @staticmethod
    def _plain_greedy(row: Row) -> bool:
        s = row.sampling
        plain = row.logprobs is None and row.prompt_logprobs is None
        return plain and s.greedy and not s.penalized and row.wants_token

    def _choose(self, slot: int, logits: torch.Tensor, first: int) -> str:
        """Score the prompt positions read (if asked), then pick the next token (if due)."""
        row = self.running[slot]
        if row.prompt_logprobs is not None:
            logp = logits.log_softmax(-1)
            for j in range(logits.size(0)):
                nxt = first + j + 1
                if nxt < len(row.prompt):
                    row.prompt_token_logprobs.append(
                        _logprob(logp[j], row.prompt[nxt], row.prompt_logprobs)
                    )
            if first + logits.size(0) < len(row.prompt):
                return ""  # more of the prompt to read
            if not row.wants_token:  # max_tokens 0: the prompt's scores were all it wanted
                row.finish_reason = "length"
                return row.stream.finish() if row.stream else ""
        last = logits[-1]
        token = row.pick(last)
        record = None
        if row.logprobs is not None:
            record = _logprob(last.log_softmax(-1), token, row.logprobs)
        return self._accept(slot, token, record)

    def _accept(self, slot: int, token: int, record: TokenLogprob | None) -> str:
        row = self.running[slot]
        text = row.accept(token, record)
        tools = self.tools
        if row.tools and tools and token == tools.call_end and row.finish_reason is None:
            text += tools.answer(row)  # read into the row's context before its next pick
        return text


def _logprob(logp: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """The token's logprob and the `top` most likely (id, logprob) pairs."""
    best = []
    if top > 0:
        values, ids = logp.topk(min(top, logp.numel()))
        best = list(zip(ids.tolist(), values.tolist(), strict=True))
    return float(logp[token]), best
