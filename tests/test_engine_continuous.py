"""The engine loop with a backend that finishes requests elsewhere (as vLLM's does): continuous batching.

A scripted backend stands in for the device: ``start_generate`` returns futures the test completes, so the
order of events is exact. The real vLLM backend is tested in tests/test_vllm_engine.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Future

import pytest

from seen.policy import Control
from service.engine.backend import GenerateJob, GenerateOutcome, Sampling, ScoreJob, ScoreOutcome, Timing
from service.engine.engine import Engine, QueueFull

pytestmark = pytest.mark.anyio

ASK = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


class ScriptedBackend:
    """Records each batch it was handed; every job's answer waits until the test finishes it."""

    model_name = "scripted"
    capabilities = None

    def __init__(self) -> None:
        self.batches: list[list[GenerateJob]] = []
        self.futures: dict[int, Future[GenerateOutcome]] = {}

    def close(self) -> None:
        pass

    def score(self, jobs: Sequence[ScoreJob]) -> list[ScoreOutcome]:
        return [ScoreOutcome(None, Timing(0.0, 0.0, len(jobs))) for _ in jobs]

    def generate(self, jobs: Sequence[GenerateJob]) -> list[GenerateOutcome]:
        raise AssertionError("the engine calls start_generate")

    def start_generate(self, jobs: Sequence[GenerateJob]) -> list[Future[GenerateOutcome]]:
        self.batches.append(list(jobs))
        futures = []
        for job in jobs:
            future: Future[GenerateOutcome] = Future()
            self.futures[id(job)] = future
            futures.append(future)
        return futures

    def finish(self, job: GenerateJob, text: str) -> None:
        outcome = GenerateOutcome(text, "stop", 1, 1, None, Timing(0.0, 0.1, 1))
        self.futures[id(job)].set_result(outcome)

    @property
    def taken(self) -> int:
        return sum(len(batch) for batch in self.batches)


def job() -> GenerateJob:
    return GenerateJob(ASK, [], Control(enabled=False, strength=0.0, profile="x"), sampling=Sampling(max_tokens=4))


async def until(condition: object, seconds: float = 2.0) -> None:
    for _ in range(int(seconds / 0.005)):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def engine(backend: ScriptedBackend, *, max_running: int, max_queue_size: int = 8) -> Engine:
    return Engine(
        backend,  # type: ignore[arg-type]  # the protocol's members that the engine uses
        max_batch_size=2,
        batch_wait_seconds=0.0,
        max_queue_size=max_queue_size,
        max_running=max_running,
    )


async def test_a_later_request_is_answered_while_an_earlier_one_still_runs() -> None:
    backend = ScriptedBackend()
    served = engine(backend, max_running=8)
    served.start()
    long, short = job(), job()
    long_task = asyncio.create_task(served.generate(long))
    await until(lambda: backend.taken == 1)
    short_task = asyncio.create_task(served.generate(short))
    await until(lambda: backend.taken == 2)  # handed to the backend before the first one finished
    backend.finish(short, "short answer")
    assert (await short_task).text == "short answer"
    assert not long_task.done()
    backend.finish(long, "long answer")
    assert (await long_task).text == "long answer"
    await served.stop()


async def test_max_running_bounds_the_jobs_taken_and_the_rest_wait_in_the_queue() -> None:
    backend = ScriptedBackend()
    served = engine(backend, max_running=3, max_queue_size=2)
    served.start()
    jobs = [job() for _ in range(5)]
    tasks = []
    for taken, j in zip((1, 2, 3, 3, 3), jobs, strict=True):
        tasks.append(asyncio.create_task(served.generate(j)))
        await until(lambda taken=taken: backend.taken == taken)
    await asyncio.sleep(0.05)
    assert backend.taken == 3  # two wait in the queue, which is now full
    assert served.at_capacity
    with pytest.raises(QueueFull):
        await served.generate(job())
    backend.finish(jobs[1], "1")
    await until(lambda: backend.taken == 4)  # one answered: one more taken
    for j in jobs:
        if id(j) in backend.futures and not backend.futures[id(j)].done():
            backend.finish(j, "done")
    await until(lambda: backend.taken == 5)
    backend.finish(jobs[4], "done")
    assert [t.text for t in await asyncio.gather(*tasks)] == ["done", "1", "done", "done", "done"]
    await served.stop()


async def test_stop_waits_for_running_requests_and_a_failed_one_fails_alone() -> None:
    backend = ScriptedBackend()
    served = engine(backend, max_running=4)
    served.start()
    ok, broken = job(), job()
    tasks = [asyncio.create_task(served.generate(j)) for j in (ok, broken)]
    await until(lambda: backend.taken == 2)
    stopping = asyncio.create_task(served.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # two requests are still running
    backend.futures[id(broken)].set_exception(RuntimeError("step failed"))
    backend.finish(ok, "fine")
    assert (await tasks[0]).text == "fine"
    with pytest.raises(RuntimeError, match="step failed"):
        await tasks[1]
    await asyncio.wait_for(stopping, 2.0)
