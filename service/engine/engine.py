"""The engine: a bounded queue in front of the device, drained in micro-batches by one device thread.

Requests wait in an ``asyncio.Queue`` of fixed size; a full queue refuses at once (the HTTP layer
answers 503 with ``Retry-After``) rather than letting latency grow without bound. One loop takes
the first waiting request, lets others join it for the wait window (up to the batch size), splits
the batch into groups that can share a forward (score jobs; generate jobs with equal sampling
settings) and runs the groups one after the other on a single thread that owns the model.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from service.engine.backend import Backend, GenerateJob, GenerateOutcome, ScoreJob, ScoreOutcome, Timing
from service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds its maximum of waiting requests."""


class EngineStopped(Exception):
    """The engine is shutting down and takes no new work."""


@dataclass
class _Pending:
    job: ScoreJob
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def group_key(self) -> tuple[object, ...]:
        if isinstance(self.job, GenerateJob):
            return ("generate", self.job.speech, *self.job.sampling.batch_key)
        return ("score",)


class Engine:
    """Owns a backend and feeds it batches; every submitted job is answered or fails, none is dropped."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_batch_size: int,
        batch_wait_seconds: float,
        max_queue_size: int,
    ) -> None:
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.batch_wait_seconds = batch_wait_seconds
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(max_queue_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seen-device")
        self._metrics: ServiceMetrics | None = None
        self._task: asyncio.Task[None] | None = None
        self._accepting = False

    @property
    def max_queue_size(self) -> int:
        return self._queue.maxsize

    @property
    def at_capacity(self) -> bool:
        """The queue is full: a request arriving now would be refused, so refuse it before decoding its audio."""
        return self._queue.full()

    def attach_metrics(self, metrics: ServiceMetrics) -> None:
        """Record from now on (the server attaches after warm-up, so that it is not counted)."""
        self._metrics = metrics
        metrics.track_queue(self._queue.qsize, self._queue.maxsize)

    def start(self) -> None:
        self._accepting = True
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="seen-engine")

    async def stop(self) -> None:
        """Refuse new work, finish everything queued or running, then release the device thread.

        The server calls this after its drain grace period, when the requests still waiting have been
        cancelled: their jobs are skipped, or stopped at their next token, so this returns promptly.
        """
        self._accepting = False
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def score(self, job: ScoreJob) -> ScoreOutcome:
        outcome: ScoreOutcome = await self._submit(job)
        return outcome

    async def generate(self, job: GenerateJob) -> GenerateOutcome:
        outcome: GenerateOutcome = await self._submit(job)
        return outcome

    async def _submit(self, job: ScoreJob) -> Any:
        if not self._accepting:
            raise EngineStopped("the server is shutting down")
        pending = _Pending(job, asyncio.get_running_loop().create_future())
        pending.future.add_done_callback(lambda future: job.cancelled.set() if future.cancelled() else None)
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise QueueFull(f"{self._queue.maxsize} requests are already waiting") from None
        return await pending.future  # a cancelled caller cancels the future: the job is skipped or stopped

    async def _loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + self.batch_wait_seconds
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    if remaining <= 0:
                        batch.append(self._queue.get_nowait())
                    else:
                        batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except (asyncio.QueueEmpty, TimeoutError):
                    break
            try:
                for group in _groups([pending for pending in batch if not pending.future.done()]):
                    await self._run(group)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _run(self, group: Sequence[_Pending]) -> None:
        started = time.monotonic()
        jobs = [pending.job for pending in group]
        generate_jobs = [job for job in jobs if isinstance(job, GenerateJob)]
        kind = "generate" if generate_jobs else "score"
        work: Callable[[], Sequence[Any]] = (
            functools.partial(self.backend.generate, generate_jobs)
            if generate_jobs
            else functools.partial(self.backend.score, jobs)
        )
        try:
            outcomes: Sequence[Any] = await asyncio.get_running_loop().run_in_executor(self._executor, work)
        except Exception as error:  # a failed batch fails its requests, never the loop
            logger.exception("device batch of %d %s jobs failed", len(jobs), kind)
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        if self._metrics is not None:
            try:
                self._observe(kind, group, started, outcomes)
            except Exception:  # metrics must never cost a request its answer
                logger.exception("recording metrics for a %s batch failed", kind)
        for pending, outcome in zip(group, outcomes, strict=True):
            if not pending.future.done():
                pending.future.set_result(outcome)

    def _observe(self, kind: str, group: Sequence[_Pending], started: float, outcomes: Sequence[Any]) -> None:
        metrics = self._metrics
        assert metrics is not None
        name = metrics.model_name
        for pending in group:
            metrics.queue_wait.labels(name).observe(started - pending.enqueued)
        timing: Timing = outcomes[0].timing
        metrics.batch_size.labels(name, kind).observe(len(group))
        metrics.encoder_time.labels(name).observe(timing.encoder_seconds)
        if kind == "generate":
            metrics.generation_time.labels(name).observe(timing.generation_seconds)
        for outcome in outcomes:
            if isinstance(outcome, GenerateOutcome):
                metrics.generated_tokens.labels(name).inc(outcome.completion_tokens)
                metrics.prompt_tokens.labels(name).inc(outcome.prompt_tokens)
            report = outcome.report
            if report is None:
                continue
            metrics.input_see.labels(name, report.profile).observe(report.see)
            if report.residual_see is not None:
                metrics.residual_see.labels(name, report.profile).observe(report.residual_see)
            if report.noisy:
                metrics.noisy_requests.labels(name, report.dominant_noise or report.profile).inc()


def _groups(batch: Sequence[_Pending]) -> list[list[_Pending]]:
    """Split a batch into runs that can share one forward, keeping arrival order within each."""
    groups: dict[tuple[object, ...], list[_Pending]] = {}
    for pending in batch:
        groups.setdefault(pending.group_key, []).append(pending)
    return list(groups.values())
