"""The backend interface and the thread-safe hand-off between asyncio and a model's owner thread.

A backend inspects a model directory (cheap, no load), loads it (blocking, on the owner
thread), and then *serves* it: ``LoadedModel.serve(inbox)`` runs on the one thread that owns
the model, takes :class:`Job` s from the bounded :class:`Inbox`, and reports each job's text
deltas and its final usage through the job. Every call into the model library happens on
that thread; asyncio only waits on the job's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from pathlib import Path
from typing import Protocol

from agentmesh_common import AgentmeshError, ResourceExhausted
from agentmesh_runner.domain import (
    GenerationEvent,
    GenerationFinished,
    GenerationRequest,
    ModelFacts,
    TextDelta,
)

__all__ = ["Backend", "Inbox", "Job", "JobFailed", "LoadedModel"]


class JobFailed:
    """Terminal event: the job ended with a domain error."""

    def __init__(self, error: AgentmeshError) -> None:
        self.error = error


class Job:
    """One generation request travelling from asyncio to an owner thread and back.

    The owner thread calls :meth:`delta`, :meth:`finish` or :meth:`fail`; each hands the
    event to the event loop with ``call_soon_threadsafe`` (callbacks run in order, so buffered
    text always arrives before the end). asyncio sets :meth:`cancel`, which
    the owner thread reads between decode steps.
    """

    def __init__(
        self,
        request: GenerationRequest,
        loop: asyncio.AbstractEventLoop,
        *,
        stream_interval: float = 0.0,
    ) -> None:
        self.request = request
        self.enqueued_at = time.monotonic()
        self.started_at: float | None = None
        self._loop = loop
        self._cancelled = threading.Event()
        self._done = False
        self._done_lock = threading.Lock()  # the owner thread and an unload may race to end it
        self._buffer: list[str] = []
        self._buffer_lock = threading.Lock()
        self._flush_scheduled = False
        self._stream_interval = stream_interval
        self._last_flush = 0.0
        self.events: asyncio.Queue[GenerationEvent | JobFailed] = asyncio.Queue()

    @property
    def cancelled(self) -> bool:
        """True once the caller went away; the owner thread stops at its next step."""
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._done

    def cancel(self) -> None:
        self._cancelled.set()

    def start(self) -> None:
        """Called by the owner thread when the job leaves the queue."""
        self.started_at = time.monotonic()

    @property
    def queue_wait(self) -> float:
        return (self.started_at or time.monotonic()) - self.enqueued_at

    def delta(self, text: str) -> None:
        """Buffer ``text`` for the event loop. The first delta goes at once; later ones at
        most every ``stream_interval`` seconds, each carrying everything buffered since."""
        if not text or self._done:
            return
        with self._buffer_lock:
            self._buffer.append(text)
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
            delay = self._last_flush + self._stream_interval - time.monotonic()
        try:
            self._loop.call_soon_threadsafe(self._schedule_flush, delay)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancel()

    def _schedule_flush(self, delay: float) -> None:
        if delay > 0:
            self._loop.call_later(delay, self._flush)
        else:
            self._flush()

    def _flush(self) -> None:
        with self._buffer_lock:
            text = "".join(self._buffer)
            self._buffer.clear()
            self._flush_scheduled = False
            self._last_flush = time.monotonic()
        if text:
            self.events.put_nowait(TextDelta(text))

    def finish(self, finished: GenerationFinished) -> None:
        if self._end():
            self._post(finished)

    def fail(self, error: AgentmeshError) -> None:
        if self._end():
            self._post(JobFailed(error))

    def _end(self) -> bool:
        with self._done_lock:
            ended, self._done = self._done, True
            return not ended

    def _post(self, event: GenerationEvent | JobFailed) -> None:
        try:
            self._loop.call_soon_threadsafe(self._deliver, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancel()

    def _deliver(self, event: GenerationEvent | JobFailed) -> None:
        self._flush()  # buffered text first: the end is always the last event
        self.events.put_nowait(event)


class Inbox:
    """A bounded queue of jobs waiting for one model's owner thread.

    ``submit`` raises ResourceExhausted when ``capacity`` jobs already wait; cancelled jobs
    leave the queue at once (``withdraw``) so they free their place.
    """

    def __init__(self, capacity: int, retry_after: float = 1.0) -> None:
        self.capacity = capacity
        self.retry_after = retry_after
        self._jobs: deque[Job] = deque()
        self._lock = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closed:
                raise ResourceExhausted("the model is unloading", retry_after=self.retry_after)
            if len(self._jobs) >= self.capacity:
                raise ResourceExhausted(
                    f"{len(self._jobs)} requests already wait for this model",
                    retry_after=self.retry_after,
                    reason="QUEUE_FULL",
                )
            self._jobs.append(job)
            self._lock.notify()

    def withdraw(self, job: Job) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._jobs.remove(job)

    def take(self, timeout: float | None = None) -> Job | None:
        """The next live job, waiting up to ``timeout`` (None: until one comes or close)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                while self._jobs:
                    job = self._jobs.popleft()
                    if not job.cancelled:
                        job.start()
                        return job
                if self._closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._lock.wait(remaining)

    def take_nowait(self) -> Job | None:
        return self.take(timeout=0)

    def close(self) -> list[Job]:
        """Stop accepting jobs; return the ones still waiting (the caller fails them)."""
        with self._lock:
            self._closed = True
            left = list(self._jobs)
            self._jobs.clear()
            self._lock.notify_all()
            return left


class LoadedModel(Protocol):
    """A model loaded by a backend; used only from its owner thread."""

    @property
    def prompt_cache_hits(self) -> int:
        """Requests that reused a cached prompt prefix since the model loaded."""
        ...

    def serve(self, inbox: Inbox) -> None:
        """Serve jobs from ``inbox`` until it is closed and empty; returns then."""
        ...

    def close(self) -> None:
        """Release the model's memory."""
        ...


class Backend(Protocol):
    """A way to run models: ``mlx`` today, llama.cpp or vLLM tomorrow."""

    @property
    def name(self) -> str: ...

    @property
    def device(self) -> str:
        """Where it computes, e.g. "cpu" or "gpu"."""
        ...

    def inspect(self, path: Path) -> ModelFacts:
        """Check that ``path`` is a model this backend can load (FailedPrecondition naming the
        missing file otherwise) and describe it, without loading it."""
        ...

    def load(self, path: Path) -> LoadedModel:
        """Load the model; blocking, called on the model's owner thread."""
        ...
