"""The engine: a bounded queue in front of the device, drained in micro-batches by one device thread.

Requests wait in an ``asyncio.Queue`` of fixed size; a full queue refuses at once (the HTTP layer
answers 503 with ``Retry-After``) rather than letting latency grow without bound. One loop takes
the first waiting request, lets others join it for the wait window (up to the batch size), splits
the batch into groups that can share a forward (score jobs; generate jobs with equal sampling
settings) and runs the groups one after the other on a single thread that owns the model.

A group's device work is :meth:`Backend.start_generate`: the transformers backend finishes the whole
generation in it, so the loop takes the next batch once the last one is answered; the vLLM backend
returns after the audio half and finishes each request in vLLM's own loop, so the next batch joins
the running ones at vLLM's next step (continuous batching). ``max_running`` bounds the requests taken
from the queue and not yet answered; beyond it they wait in the queue, which keeps backpressure intact.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
        max_running: int | None = None,
    ) -> None:
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.batch_wait_seconds = batch_wait_seconds
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(max_queue_size)
        self.max_running = max(max_running or max_batch_size, max_batch_size)
        self._slots = asyncio.Semaphore(self.max_running)
        self._answering: set[asyncio.Task[None]] = set()
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
            await self._slots.acquire()
            batch = [await self._queue.get()]
            deadline = time.monotonic() + self.batch_wait_seconds
            while len(batch) < self.max_batch_size and not self._slots.locked():
                remaining = deadline - time.monotonic()
                try:
                    if remaining <= 0:
                        pending = self._queue.get_nowait()
                    else:
                        pending = await asyncio.wait_for(self._queue.get(), remaining)
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                await self._slots.acquire()  # free: checked above, and nothing else takes slots
                batch.append(pending)
            for pending in batch:
                if pending.future.done():  # its caller left while it waited
                    self._settle(pending)
            for group in _groups([pending for pending in batch if not pending.future.done()]):
                await self._run(group)

    def _settle(self, pending: _Pending, outcome: Any = None, error: BaseException | None = None) -> None:
        """Answer one taken job (unless nobody waits any more) and give its slot back: exactly once per job."""
        if not pending.future.done():
            if error is not None:
                pending.future.set_exception(error)
            else:
                pending.future.set_result(outcome)
        self._slots.release()
        self._queue.task_done()

    async def _run(self, group: Sequence[_Pending]) -> None:
        started = time.monotonic()
        jobs = [pending.job for pending in group]
        generate_jobs = [job for job in jobs if isinstance(job, GenerateJob)]
        kind = "generate" if generate_jobs else "score"
        work: Callable[[], Sequence[Any]] = (
            functools.partial(self.backend.start_generate, generate_jobs)
            if generate_jobs
            else functools.partial(self.backend.score, jobs)
        )
        try:
            results: Sequence[Any] = await asyncio.get_running_loop().run_in_executor(self._executor, work)
        except Exception as error:  # a failed batch fails its requests, never the loop
            logger.exception("device batch of %d %s jobs failed", len(jobs), kind)
            for pending in group:
                self._settle(pending, error=error)
            return
        if kind == "score":
            self._record(self._observe_group, kind, group, results)
            for pending, outcome in zip(group, results, strict=True):
                self._answer(pending, started, outcome)
            return
        task = asyncio.create_task(self._await_generation(group, started, results))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _await_generation(
        self, group: Sequence[_Pending], started: float, futures: Sequence[Future[GenerateOutcome]]
    ) -> None:
        """Answer each job as soon as its own future completes, not when its whole group has."""
        finished: list[GenerateOutcome] = []

        async def answer(pending: _Pending, future: Future[GenerateOutcome]) -> None:
            try:
                outcome = await asyncio.wrap_future(future)
            except Exception as error:
                logger.error("a generate job failed", exc_info=error)
                self._settle(pending, error=error)
                return
            finished.append(outcome)
            if len(finished) == len(group):  # the group's last: its batch figures are complete
                self._record(self._observe_group, "generate", group, finished)
            self._answer(pending, started, outcome)

        await asyncio.gather(*(answer(pending, future) for pending, future in zip(group, futures, strict=True)))

    def _answer(self, pending: _Pending, started: float, outcome: Any) -> None:
        self._record(self._observe_job, pending, started, outcome)
        self._settle(pending, outcome)

    def _record(self, observe: Callable[..., None], *args: Any) -> None:
        if self._metrics is None:
            return
        try:
            observe(self._metrics, *args)
        except Exception:  # metrics must never cost a request its answer
            logger.exception("recording metrics failed")

    @staticmethod
    def _observe_group(metrics: ServiceMetrics, kind: str, group: Sequence[_Pending], outcomes: Sequence[Any]) -> None:
        name = metrics.model_name
        timing: Timing = outcomes[0].timing
        metrics.batch_size.labels(name, kind).observe(len(group))
        metrics.encoder_time.labels(name).observe(timing.encoder_seconds)
        if kind == "generate":  # the group's span: its longest request (the same for all of a transformers batch)
            span = max(outcome.timing.generation_seconds for outcome in outcomes)
            metrics.generation_time.labels(name).observe(span)

    @staticmethod
    def _observe_job(metrics: ServiceMetrics, pending: _Pending, started: float, outcome: Any) -> None:
        name = metrics.model_name
        metrics.queue_wait.labels(name).observe(started - pending.enqueued)
        if isinstance(outcome, GenerateOutcome):
            metrics.generated_tokens.labels(name).inc(outcome.completion_tokens)
            metrics.prompt_tokens.labels(name).inc(outcome.prompt_tokens)
        report = outcome.report
        if report is None:
            return
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
