"""The server's generation loop: one thread owns the model and serves a queue of jobs.

    request handlers (asyncio) --submit(Job)--> queue --> engine thread: up to max_batch rows
    of waiting jobs generate together (infer/generate.py) --> each step's text goes back to
    its job's asyncio queue --> the handler streams it or collects it

A batch runs until all its rows finish; rows that finish early leave it at once, and a row
whose client has gone (`Row.cancelled`) leaves at the next step, so a disconnect frees its
place. Jobs that arrive meanwhile wait for the next batch.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from scratchlm.infer.generate import Row, generate_rows
from scratchlm.tokenizer.tokenizer import Tokenizer


@dataclass(eq=False)
class Job:
    """One request's rows, and the asyncio queue its events arrive on: ("text", row, str) per
    step and row, then ("done", None, "") once every row has finished, or ("error", None, msg)."""

    rows: list[Row]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)

    def send(self, kind: str, row: Row | None, text: str) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, row, text))

    def cancel(self) -> None:
        for r in self.rows:
            r.cancelled = True


class Engine:
    def __init__(self, model: Any, tokenizer: Tokenizer, max_batch: int = 8, max_queue: int = 256):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self._carry: Job | None = None  # a job that did not fit the last batch
        self.stats = {"running_rows": 0, "finished_rows": 0, "cancelled_rows": 0}
        self.thread = threading.Thread(target=self._loop, name="scratchlm-engine", daemon=True)
        self.thread.start()

    def full(self) -> bool:
        return self.jobs.qsize() >= self.max_queue

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def stop(self) -> None:
        self.jobs.put(None)

    def _next_batch(self) -> list[Job] | None:
        """Jobs whose rows together fit max_batch (a job bigger than that runs alone); a job
        that does not fit waits, first in line, for the next batch."""
        first, self._carry = self._carry or self.jobs.get(), None
        if first is None:
            return None
        batch, rows = [first], len(first.rows)
        while rows < self.max_batch:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:  # stop after this batch
                self.jobs.put(None)
                break
            if rows + len(job.rows) > self.max_batch:
                self._carry = job
                break
            batch.append(job)
            rows += len(job.rows)
        return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            owner = {id(r): job for job in batch for r in job.rows}
            rows = [r for job in batch for r in job.rows]
            self.stats["running_rows"] = len(rows)
            try:
                for events in generate_rows(self.model, self.tokenizer, rows):
                    for row, text in events:
                        owner[id(row)].send("text", row, text)
                    self.stats["running_rows"] = sum(r.finish_reason is None for r in rows)
                for job in batch:
                    job.send("done", None, "")
            except Exception as e:  # a bug of ours: tell the waiting clients, keep serving
                for job in batch:
                    job.send("error", None, f"{type(e).__name__}: {e}")
            # Counts first, then running_rows = 0: whoever sees nothing running sees the counts.
            self.stats["finished_rows"] += len(rows)
            self.stats["cancelled_rows"] += sum(r.finish_reason == "cancelled" for r in rows)
            self.stats["running_rows"] = 0
