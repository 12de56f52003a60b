"""The server's engine thread: one thread owns the model and steps the engine; requests come
and go between its steps.

    request handler (asyncio) --submit(Job)--> inbox --> engine thread: every step, new rows
    join the engine (infer/engine.py) --> each step's (row, text) go back to their job, one
    hand-over to the event loop per step --> the handler streams them or collects them

A job whose handler falls behind receives what piled up at once (the text of several steps),
so a slow client never slows the engine. Rows whose client has gone (`Job.cancel`) leave the
batch at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from scratchlm.infer.engine import Engine
from scratchlm.infer.metrics import Metrics
from scratchlm.infer.row import Row


@dataclass(eq=False)
class Job:
    """One request's rows; `updates` collects (row, text) from the engine until `done`."""

    rows: list[Row]
    loop: asyncio.AbstractEventLoop
    updates: list[tuple[Row, str]] = field(default_factory=list)
    done: bool = False
    arrived: float = field(default_factory=time.monotonic)
    on_cancel: Callable[[], None] | None = None  # a worker that must pass the word on

    def __post_init__(self) -> None:
        self.wake = asyncio.Event()
        self.unfinished = len(self.rows)
        self.first_token: float | None = None
        for row in self.rows:
            row.tag = self

    def cancel(self) -> None:
        for r in self.rows:
            r.cancelled = True
        if self.on_cancel is not None and not self.done:
            self.on_cancel()

    async def next_updates(self) -> list[tuple[Row, str]]:
        """What arrived since the last call (waits for something); [] once done."""
        while not self.updates and not self.done:
            self.wake.clear()
            await self.wake.wait()
        out, self.updates = self.updates, []
        return out


class Worker:
    def __init__(self, engine: Engine, max_queue: int = 256, metrics: Metrics | None = None):
        self.engine, self.max_queue = engine, max_queue
        self.metrics = metrics or Metrics()
        self._inbox: deque[Job] = deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        # two counters, each written by one thread only: submitted - finished is what runs
        self.submitted_rows = self.finished_rows = 0
        self.thread = threading.Thread(target=self._loop, name="scratchlm-engine", daemon=True)
        self.thread.start()

    def waiting(self) -> int:
        return len(self._inbox) + len(self.engine.waiting)

    def running(self) -> int:
        return len(self.engine.running)

    @property
    def active_rows(self) -> int:
        """Rows submitted and not finished yet (waiting or generating)."""
        return self.submitted_rows - self.finished_rows

    def full(self) -> bool:
        return self.waiting() >= self.max_queue

    def submit(self, job: Job) -> None:
        self.submitted_rows += len(job.rows)
        with self._wakeup:
            self._inbox.append(job)
            self._wakeup.notify()

    def stop(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()

    def _take_new(self) -> None:
        with self._wakeup:
            while not self._inbox and not self.engine.busy and not self._stopping:
                self._wakeup.wait()
            jobs = list(self._inbox)
            self._inbox.clear()
        for job in jobs:
            for row in job.rows:
                try:
                    self.engine.add(row)
                except Exception as e:  # this row cannot run: it alone fails
                    self.engine.reject(row, f"{type(e).__name__}: {e}")

    def _loop(self) -> None:
        while True:
            self._take_new()
            if self._stopping:
                return
            try:
                events = self.engine.step()
            except Exception as e:  # a bug of ours: fail what runs, keep serving
                events = []
                for row in [*self.engine.running, *self.engine.waiting]:
                    row.fail(f"{type(e).__name__}: {e}")
                    events.append((row, ""))
                self.engine.running.clear()
                self.engine.waiting.clear()
            if events:
                self._hand_over(events)

    def _hand_over(self, events: list[tuple[Row, str]]) -> None:
        now = time.monotonic()
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, Row, str, bool]]] = {}
        for row, text in events:
            job: Job = row.tag
            if job.first_token is None and row.tokens:
                job.first_token = now
                self.metrics.first_token(now - job.arrived)
            if row.finish_reason is not None:
                job.unfinished -= 1
                self.metrics.row_finished(row)
                self.finished_rows += 1
                if job.unfinished == 0:
                    self.metrics.request_finished(now - job.arrived)
            by_loop.setdefault(job.loop, []).append((job, row, text, job.unfinished == 0))
        for loop, batch in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed event loop: nobody listens
                loop.call_soon_threadsafe(deliver, batch)


def deliver(batch: list[tuple[Job, Row, str, bool]]) -> None:
    """In the event loop: hand each job its updates and wake its handler."""
    for job, row, text, last in batch:
        job.updates.append((row, text))
        job.done = job.done or last
        job.wake.set()
