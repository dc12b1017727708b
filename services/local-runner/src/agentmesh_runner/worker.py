"""One loaded model: its owner thread, its bounded queue and its live figures."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from pathlib import Path

from agentmesh_common import AgentmeshError, FailedPrecondition, Unavailable

from .backends.base import Backend, Inbox, Job, LoadedModel
from .domain import GenerationFinished, GenerationRequest, ModelFacts

__all__ = ["ModelWorker"]

_logger = logging.getLogger("agentmesh.runner")

_RECENT_GENERATIONS = 32


class ModelWorker:
    """Owns one model on one thread; asyncio submits jobs and reads their events."""

    def __init__(
        self,
        *,
        name: str,
        path: Path,
        backend: Backend,
        facts: ModelFacts,
        queue_capacity: int,
        keep_alive_seconds: float,
        retry_after_seconds: float,
        stream_interval_seconds: float = 0.0,
    ) -> None:
        self.name = name
        self.path = path
        self.backend = backend
        self.facts = facts
        self.keep_alive_seconds = keep_alive_seconds
        self.stream_interval_seconds = stream_interval_seconds
        self.inbox = Inbox(queue_capacity, retry_after_seconds)
        self.active: set[Job] = set()
        self.last_used = time.time()
        self._recent: deque[tuple[int, float]] = deque(maxlen=_RECENT_GENERATIONS)
        self._model: LoadedModel | None = None
        self._thread: threading.Thread | None = None
        self.crashed = False

    async def start(self) -> float:
        """Load the model on a new owner thread; returns the seconds loading took."""
        loaded: concurrent.futures.Future[float] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._own,
            args=(loaded, asyncio.get_running_loop()),
            name=f"model-{self.name}",
            daemon=True,
        )
        self._thread.start()
        return await asyncio.wrap_future(loaded)

    def _own(
        self, loaded: concurrent.futures.Future[float], loop: asyncio.AbstractEventLoop
    ) -> None:
        started = time.monotonic()
        try:
            model = self.backend.load(self.path)
        except Exception as exc:  # a library failure while loading: the model is unusable
            if not isinstance(exc, AgentmeshError):
                exc = FailedPrecondition(f"{self.name} could not be loaded: {exc}")
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                loaded.set_exception(exc)
            return
        self._model = model
        # The caller may have stopped waiting (cancelled): the model still serves its inbox
        # until it is unloaded, like any other.
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            loaded.set_result(time.monotonic() - started)
        try:
            model.serve(self.inbox)
        except Exception:
            # A bug or a library failure: nobody may wait forever for this model.
            _logger.exception("model owner thread failed", extra={"model": self.name})
            self.crashed = True
            failure = Unavailable(f"model {self.name} failed", reason="MODEL_FAILED")
            for job in self.inbox.close():
                job.fail(failure)
            # `active` belongs to the event loop: fail the running jobs from there.
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(self._fail_active, failure)
        finally:
            model.close()
            self._model = None

    def _fail_active(self, error: AgentmeshError) -> None:
        for job in list(self.active):
            job.fail(error)

    def submit(self, request: GenerationRequest) -> Job:
        """Queue ``request``; ResourceExhausted (with retry_after) when the queue is full."""
        job = Job(request, asyncio.get_running_loop(), stream_interval=self.stream_interval_seconds)
        self.inbox.submit(job)
        self.active.add(job)
        self.touch(request.keep_alive_seconds)
        return job

    def release(self, job: Job) -> None:
        """The caller is done with ``job``: stop it if it still runs and free its place."""
        if not job.done:
            job.cancel()
            self.inbox.withdraw(job)
        self.active.discard(job)
        self.touch(job.request.keep_alive_seconds)

    def touch(self, keep_alive_seconds: float | None = None) -> None:
        self.last_used = time.time()
        if keep_alive_seconds is not None:
            self.keep_alive_seconds = keep_alive_seconds

    def record(self, finished: GenerationFinished) -> None:
        self._recent.append((finished.usage.completion_tokens, finished.timings.decode))

    @property
    def expires_at(self) -> float:
        return self.last_used + self.keep_alive_seconds

    @property
    def busy(self) -> bool:
        return bool(self.active) or len(self.inbox) > 0

    @property
    def queue_depth(self) -> int:
        return len(self.inbox)

    @property
    def running(self) -> int:
        return max(0, len(self.active) - len(self.inbox))

    @property
    def recent_tokens_per_second(self) -> float:
        tokens = sum(t for t, _ in self._recent)
        seconds = sum(s for _, s in self._recent)
        return tokens / seconds if seconds > 0 else 0.0

    @property
    def prompt_cache_hits(self) -> int:
        model = self._model
        return model.prompt_cache_hits if model is not None else 0

    async def stop(self) -> None:
        """Fail waiting and running jobs with UNAVAILABLE, then let the thread finish."""
        for job in self.inbox.close():
            job.fail(Unavailable(f"model {self.name} was unloaded", reason="MODEL_UNLOADED"))
        for job in list(self.active):
            job.cancel()
            job.fail(Unavailable(f"model {self.name} was unloaded", reason="MODEL_UNLOADED"))
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
