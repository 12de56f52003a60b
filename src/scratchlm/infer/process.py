"""The engine in a process of its own, as vLLM runs its engine core: the model computes on one
core while the web server's event loop parses requests and writes streams on another, and
neither waits for the other's Python lock (the GIL).

    web server process                          engine process (spawned)
    ProcessWorker.submit(Job) --("add", ...)-->  Engine.add(Row) ... Engine.step()
    Job.cancel()             --("cancel", id)->  row.cancelled = True
    receiver thread          <--[updates]-----   after every step: each moved row's new text,
      -> the job's event loop                      tokens, logprobs and finish_reason

The server's `Row`s are mirrors: the engine process holds the real ones and sends what changed;
the mirrors carry the same fields (`tokens`, `token_logprobs`, `prompt_token_logprobs`,
`stream.text`, `finish_reason`, `error`), so the answers are shaped the same either way.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from scratchlm.infer.engine import Engine
from scratchlm.infer.layout import load_for_generation
from scratchlm.infer.metrics import Metrics
from scratchlm.infer.row import Row
from scratchlm.infer.worker import Job, deliver

SPEC = ("prompt", "max_new_tokens", "sampling", "seed", "stop", "stop_ids", "logprobs",
        "prompt_logprobs", "hide_ids", "tools")  # fmt: skip


@dataclass
class _Text:
    text: str = ""


def engine_main(
    path: str,
    max_batch: int,
    token_budget: int,
    conn: Any,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    quantize: str = "none",
) -> None:
    """The engine process: load the model, then add, cancel and step until told to stop."""
    loaded = load_for_generation(path, device, dtype, quantize)
    engine = Engine(loaded.model, loaded.tokenizer, max_batch, token_budget)
    rows: dict[tuple[int, int], Row] = {}
    sent: dict[tuple[int, int], tuple[int, int, int]] = {}
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    # A thread writes the updates: a pipe that is full for a moment (the server busy writing
    # streams) then never stops the next step.
    threading.Thread(target=_send_all, args=(outbox, conn), daemon=True).start()
    conn.send(("ready", None))
    while True:
        try:
            messages = [] if engine.busy and not conn.poll(0) else [conn.recv()]
            while conn.poll(0):
                messages.append(conn.recv())
        except (EOFError, OSError):  # the server has gone
            return
        for kind, job_id, payload in messages:
            if kind == "stop":
                return
            if kind == "cancel":
                for i in itertools.count():
                    if (row := rows.get((job_id, i))) is None:
                        break
                    row.cancelled = True
                continue
            for i, spec in enumerate(payload):
                row = Row(**spec)
                row.tag = (job_id, i)
                rows[row.tag], sent[row.tag] = row, (0, 0, 1)
                try:
                    engine.add(row)
                except Exception as e:  # this row cannot run: it alone fails
                    engine.reject(row, f"{type(e).__name__}: {e}")
        try:
            events = engine.step()
        except Exception as e:  # a bug of ours: fail what runs, keep serving
            events = [(r, "") for r in [*engine.running, *engine.waiting]]
            for row, _ in events:
                row.fail(f"{type(e).__name__}: {e}")
            engine.running.clear()
            engine.waiting.clear()
        updates = []
        for row, text in events:
            t, lp, plp = sent[row.tag]
            updates.append((*row.tag, text, row.tokens[t:], row.token_logprobs[lp:],
                            row.prompt_token_logprobs[plp:], row.finish_reason, row.error))  # fmt: skip
            sent[row.tag] = (len(row.tokens), len(row.token_logprobs), len(row.prompt_token_logprobs))  # fmt: skip
            if row.finish_reason is not None:
                del rows[row.tag], sent[row.tag]
        if updates:
            outbox.put((updates, len(engine.running), len(engine.waiting)))


def _send_all(outbox: queue.SimpleQueue, conn: Any) -> None:
    while True:
        try:
            conn.send(outbox.get())
        except (EOFError, OSError):  # the server has gone
            return


class ProcessWorker:
    """The same interface as worker.Worker, with the engine in a spawned process."""

    def __init__(
        self,
        path: str,
        max_batch: int,
        token_budget: int,
        max_queue: int = 256,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        quantize: str = "none",
    ):
        self.max_queue, self.metrics = max_queue, Metrics()
        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs torch threads
        self._conn, child = ctx.Pipe()
        args = (path, max_batch, token_budget, child, device, dtype, quantize)
        self.proc = ctx.Process(target=engine_main, args=args, daemon=True)
        self.proc.start()
        child.close()
        kind, _ = self._conn.recv()  # wait until the model is loaded
        assert kind == "ready"
        self._ids = itertools.count()
        self._jobs: dict[int, Job] = {}
        self._send_lock = threading.Lock()
        self._running = self._waiting = 0
        self.submitted_rows = self.finished_rows = 0
        self.receiver = threading.Thread(target=self._receive, name="scratchlm-receiver", daemon=True)  # fmt: skip
        self.receiver.start()

    @property
    def active_rows(self) -> int:
        return self.submitted_rows - self.finished_rows

    def waiting(self) -> int:
        return self._waiting

    def running(self) -> int:
        return self._running

    def full(self) -> bool:
        return self._waiting >= self.max_queue

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            self._conn.send(message)

    def submit(self, job: Job) -> None:
        job_id = next(self._ids)
        job.id, job.on_cancel = job_id, lambda: self._send(("cancel", job_id, None))
        for row in job.rows:  # the mirrors start empty and follow the engine's rows
            row.stream, row.token_logprobs, row.prompt_token_logprobs = _Text(), [], [None]
        self._jobs[job_id] = job
        self.submitted_rows += len(job.rows)
        self._waiting += len(job.rows)
        self._send(("add", job_id, [{k: getattr(r, k) for k in SPEC} for r in job.rows]))

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # already gone
            self._send(("stop", None, None))
        self.proc.join(timeout=10)

    def _receive(self) -> None:
        while True:
            try:
                updates, self._running, self._waiting = self._conn.recv()
            except (EOFError, OSError):  # the engine process died: fail what waits
                self._fail_all("the engine process stopped")
                return
            self._apply(updates)

    def _apply(self, updates: list) -> None:
        now = time.monotonic()
        batches: dict[Any, list] = {}
        for job_id, i, text, tokens, lps, plps, finish, error in updates:
            job = self._jobs.get(job_id)
            if job is None:
                continue
            row = job.rows[i]
            row.tokens.extend(tokens)
            row.token_logprobs.extend(lps)
            row.prompt_token_logprobs.extend(plps)
            row.stream.text += text
            if job.first_token is None and row.tokens:
                job.first_token = now
                self.metrics.first_token(now - job.arrived)
            if finish is not None:
                row.finish_reason, row.error = finish, error
                job.unfinished -= 1
                self.metrics.row_finished(row)
                self.finished_rows += 1
                if job.unfinished == 0:
                    self.metrics.request_finished(now - job.arrived)
                    del self._jobs[job_id]
            batches.setdefault(job.loop, []).append((job, row, text, job.unfinished == 0))
        for loop, batch in batches.items():
            with contextlib.suppress(RuntimeError):  # a closed event loop: nobody listens
                loop.call_soon_threadsafe(deliver, batch)

    def _fail_all(self, message: str) -> None:
        updates = [(job_id, i, "", [], [], [], "error", message)
                   for job_id, job in list(self._jobs.items()) for i, r in enumerate(job.rows)
                   if r.finish_reason is None]  # fmt: skip
        self._apply(updates)
