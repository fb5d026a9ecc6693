"""Progress, watch_job / wait_for_job, watch_queue and list_jobs against a real baton, sync and
asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import pytest
from conftest import unique
from harness import Baton, eventually, free_port

import baton_client
from baton_client import (
    EventsMissed,
    JobProgress,
    JobSnapshot,
    JobState,
    QueueEvent,
    QueueEventKind,
)
from baton_client.pb.baton.v1 import queue_pb2

# Tiny retry backoff, so a failed attempt is retried at once.
QUICK_RETRY = baton_client.RetryBackoff(initial=0.01, max=0.01, multiplier=1)
# A job that stays waiting for the whole test.
NEVER_DUE = 600.0
# The order states follow: a job's state never goes back.
LIFE = [JobState.READY, JobState.ACTIVE, JobState.SUCCEEDED]


@contextlib.contextmanager
def consuming(
    client: baton_client.Client, queue_name: str, handler: Callable, **options
) -> Iterator[None]:
    """Runs consume() in a thread for the block; fails if it raised or did not stop."""
    stop = threading.Event()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            client.consume(queue_name, handler, stop=stop, **options)
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "consume() did not return after stop"
        assert not raised, raised


@contextlib.asynccontextmanager
async def async_consuming(
    client: baton_client.AsyncClient, queue_name: str, handler: Callable, **options
) -> AsyncIterator[None]:
    stop = asyncio.Event()
    consumer = asyncio.create_task(client.consume(queue_name, handler, stop=stop, **options))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(consumer, 10)


class Background:
    """Runs ``target`` in a thread; ``result()`` waits for it and returns or raises."""

    def __init__(self, target: Callable[[], object]) -> None:
        self._outcome: list[object] = []
        self._error: list[BaseException] = []

        def run() -> None:
            try:
                self._outcome.append(target())
            except BaseException as error:
                self._error.append(error)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def result(self, timeout: float = 10) -> object:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"still running after {timeout}s"
        if self._error:
            raise self._error[0]
        return self._outcome[0]


class Events:
    """Reads a queue watch in a thread, so a test waits for each item with a patience."""

    def __init__(self, watch: baton_client.QueueWatch) -> None:
        self._items: queue.Queue[QueueEvent | EventsMissed | None] = queue.Queue()

        def read() -> None:
            for item in watch:
                self._items.put(item)
            self._items.put(None)

        threading.Thread(target=read, daemon=True).start()

    def next(self, timeout: float = 10) -> QueueEvent | EventsMissed:
        try:
            item = self._items.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout}s") from None
        assert item is not None, "the watch ended"
        return item


def until_succeeded(next_item: Callable[[], QueueEvent | EventsMissed]) -> list:
    """The watch's items up to the first SUCCEEDED event."""
    seen: list[QueueEvent | EventsMissed] = []
    while not seen or not _succeeded(seen[-1]):
        seen.append(next_item())
    return seen


def _succeeded(item: QueueEvent | EventsMissed) -> bool:
    return isinstance(item, QueueEvent) and item.kind == QueueEventKind.SUCCEEDED


def check_progress_then_result(
    snapshots: list[JobSnapshot], done: JobSnapshot, job_id: str
) -> None:
    """What a watcher and wait_for_job saw of a job that reported 50 / b"resizing" and
    returned b"thumb:cat.png"."""
    assert done.id == job_id
    assert done.state == JobState.SUCCEEDED
    assert done.result == b"thumb:cat.png"
    assert done.progress is not None
    assert (done.progress.value, done.progress.detail) == (50, b"resizing")
    assert done.finished_at is not None and done.attempts == 1
    assert done.payload == b"", "watch messages carry no payload"
    progressing = [job for job in snapshots if job.progress is not None]
    assert progressing, f"the watcher never saw the progress: {snapshots}"
    assert progressing[0].state == JobState.ACTIVE
    assert progressing[0].progress == done.progress
    assert snapshots[-1] == done, "the watch ended on the finished job"
    assert all(job.state in LIFE for job in snapshots), snapshots
    order = [LIFE.index(job.state) for job in snapshots]
    assert order == sorted(order), f"a state went back: {snapshots}"
    assert len(snapshots) == len({repr(job) for job in snapshots}), "a snapshot was repeated"


def check_queue_events(seen: list, job_id: str) -> None:
    """The events of a job enqueued with type "quarterly", that reported 0.5 / b"charts"."""
    assert all(isinstance(item, QueueEvent) for item in seen), f"events missed: {seen}"
    events: list[QueueEvent] = seen
    assert [event.kind for event in events] == [
        QueueEventKind.ENQUEUED,
        QueueEventKind.ACTIVE,
        QueueEventKind.PROGRESS,
        QueueEventKind.SUCCEEDED,
    ], events
    assert {event.job_id for event in events} == {job_id}
    assert [event.state for event in events] == [
        JobState.READY,
        JobState.ACTIVE,
        JobState.ACTIVE,
        JobState.SUCCEEDED,
    ]
    assert events[0].type == "quarterly"
    assert events[1].attempt == 1
    progress = events[2].progress
    assert progress is not None and (progress.value, progress.detail) == (0.5, b"charts")
    assert [event.progress is None for event in events] == [True, True, False, True]
    assert [event.at for event in events] == sorted(event.at for event in events)


def test_progress_is_seen_by_watch_job_then_wait_for_job_returns_the_result(
    client: baton_client.Client,
) -> None:
    queue_name = unique("thumbnails")
    enqueued = client.enqueue(queue_name, b"cat.png")
    progress_seen = threading.Event()
    snapshots: list[JobSnapshot] = []

    def follow() -> int:
        with client.watch_job(enqueued.job_id) as watch:
            for job in watch:
                snapshots.append(job)
                if job.progress is not None:
                    progress_seen.set()
            return watch.reopens

    watcher = Background(follow)

    def resize(job: baton_client.Job) -> bytes:
        job.progress(50, b"resizing")
        # Changes close together may come as one snapshot: the job finishes only once the
        # watcher has seen the progress.
        progress_seen.wait(10)
        return b"thumb:" + job.payload

    with consuming(client, queue_name, resize):
        done = client.wait_for_job(enqueued.job_id, timeout=30)
    assert watcher.result() == 0, "the watch ended by itself after the job finished"
    check_progress_then_result(snapshots, done, enqueued.job_id)


def test_wait_for_job_raises_job_failed_with_the_job_when_it_goes_dead(
    client: baton_client.Client,
) -> None:
    queue_name = unique("imports")
    enqueued = client.enqueue(queue_name, b"rows.csv", max_attempts=2, retry_backoff=QUICK_RETRY)
    resumed_from: list[JobProgress | None] = []

    def load(job: baton_client.Job) -> bytes:
        resumed_from.append(job.last_progress)
        job.progress(job.attempt * 10)
        raise ValueError(f"bad row on attempt {job.attempt}")

    with consuming(client, queue_name, load), pytest.raises(baton_client.JobFailed) as raised:
        client.wait_for_job(enqueued.job_id, timeout=30)
    failed = raised.value
    assert isinstance(failed, baton_client.BatonError)
    assert failed.code == grpc.StatusCode.UNKNOWN
    assert (failed.job.id, failed.job.state, failed.job.attempts) == (
        enqueued.job_id,
        JobState.DEAD,
        2,
    )
    assert failed.job.last_error == "bad row on attempt 2"
    assert failed.job.progress is not None and failed.job.progress.value == 20
    assert resumed_from[0] is None
    assert resumed_from[1] is not None and resumed_from[1].value == 10, "a retry resumes"


def test_wait_for_job_times_out_and_raises_job_failed_when_the_job_is_cancelled(
    client: baton_client.Client,
) -> None:
    enqueued = client.enqueue(unique("reminders"), delay=NEVER_DUE)
    started = time.monotonic()
    with pytest.raises(baton_client.DeadlineExceeded):
        client.wait_for_job(enqueued.job_id, timeout=0.3)
    assert time.monotonic() - started < 5

    waiter = Background(lambda: client.wait_for_job(enqueued.job_id, timeout=30))
    client.stubs.queue.CancelJob(queue_pb2.CancelJobRequest(job_id=enqueued.job_id))
    with pytest.raises(baton_client.JobFailed) as raised:
        waiter.result()
    assert raised.value.job.state == JobState.CANCELLED
    assert raised.value.code == grpc.StatusCode.CANCELLED
    assert raised.value.error_reason == baton_client.ErrorReason.JOB_CANCELLED


def test_watch_queue_sees_a_jobs_events_in_order(client: baton_client.Client) -> None:
    queue_name = unique("reports")

    def build(job: baton_client.Job) -> bytes:
        job.progress(0.5, b"charts")
        return b"report.pdf"

    # Entering the block returns once the watch has started: nothing before it is missed.
    with client.watch_queue(queue_name) as watch:
        events = Events(watch)
        enqueued = client.enqueue(queue_name, b"q3", type="quarterly")
        with consuming(client, queue_name, build):
            seen = until_succeeded(events.next)
    check_queue_events(seen, enqueued.job_id)


def test_a_progress_report_on_a_cancelled_job_raises_and_the_job_is_not_acked(
    client: baton_client.Client,
) -> None:
    queue_name = unique("exports")
    enqueued = client.enqueue(queue_name)
    started, cancelled = threading.Event(), threading.Event()
    refusals: list[baton_client.FailedPrecondition] = []
    flagged: list[bool] = []
    settled: list[BaseException | None] = []

    def export(job: baton_client.Job) -> bytes:
        started.set()
        cancelled.wait(10)
        try:
            job.progress(1)
        except baton_client.FailedPrecondition as error:
            refusals.append(error)
            flagged.append(job.cancelled.is_set())
            raise
        return b"never acked"

    with consuming(client, queue_name, export, on_settled=lambda _, error: settled.append(error)):
        assert started.wait(10)
        client.stubs.queue.CancelJob(queue_pb2.CancelJobRequest(job_id=enqueued.job_id))
        cancelled.set()
        eventually(lambda: bool(settled), "the delivery settled")
    assert [error.error_reason for error in refusals] == [baton_client.ErrorReason.JOB_CANCELLED]
    assert flagged == [True]
    assert len(settled) == 1 and isinstance(settled[0], baton_client.JobCancelled), settled
    with pytest.raises(baton_client.JobFailed):
        client.wait_for_job(enqueued.job_id, timeout=10)


def test_closing_a_queue_watch_ends_an_iteration_blocked_on_it(
    client: baton_client.Client,
) -> None:
    watch = client.watch_queue(unique("idle")).start()
    reader = Background(lambda: list(watch))
    watch.close()  # from another thread than the one blocked in next()
    assert reader.result() == []


def test_list_jobs_pages_through_succeeded_jobs_newest_first(client: baton_client.Client) -> None:
    queue_name = unique("invoices")
    with consuming(client, queue_name, lambda job: b"paid:" + job.payload):
        first = client.enqueue(queue_name, b"one")
        client.wait_for_job(first.job_id, timeout=30)
        second = client.enqueue(queue_name, b"two")
        client.wait_for_job(second.job_id, timeout=30)

    page = client.list_jobs(queue_name, JobState.SUCCEEDED, page_size=1)
    assert [job.id for job in page.jobs] == [second.job_id]
    job = page.jobs[0]
    assert (job.state, job.payload, job.result) == (JobState.SUCCEEDED, b"two", b"paid:two")
    assert page.next_page_token
    last = client.list_jobs(
        queue_name, JobState.SUCCEEDED, page_size=1, page_token=page.next_page_token
    )
    assert [job.id for job in last.jobs] == [first.job_id]
    assert last.next_page_token == ""
    assert client.list_jobs(queue_name, JobState.READY).jobs == []


def test_wait_for_job_resumes_on_another_replica_when_its_replica_shuts_down(
    start_baton: Callable[..., Baton],
) -> None:
    first = start_baton()
    second_addr = f"127.0.0.1:{free_port()}"
    queue_name = unique("payments")
    with baton_client.Client([first.addr, second_addr]) as client:
        enqueued = client.enqueue(queue_name, b"42 EUR")
        waiter = Background(lambda: client.wait_for_job(enqueued.job_id, timeout=30))
        eventually(
            lambda: first.counter("baton_grpc_requests_total", method="WatchJob") >= 1,
            "wait_for_job watches through the only replica up",
        )
        second = start_baton(second_addr)
        first.terminate()  # draining ends the WatchJob stream with UNAVAILABLE
        with (
            baton_client.Client(second.addr) as other,
            consuming(other, queue_name, lambda job: b"paid"),
        ):
            done = waiter.result(30)
    assert isinstance(done, JobSnapshot) and done.result == b"paid"
    assert second.counter("baton_grpc_requests_total", method="WatchJob") >= 1


async def test_async_progress_is_seen_by_watch_job_then_wait_for_job_returns_the_result(
    async_client: baton_client.AsyncClient,
) -> None:
    queue_name = unique("thumbnails")
    enqueued = await async_client.enqueue(queue_name, b"cat.png")
    progress_seen = asyncio.Event()
    snapshots: list[JobSnapshot] = []

    async def follow() -> int:
        async with async_client.watch_job(enqueued.job_id) as watch:
            async for job in watch:
                snapshots.append(job)
                if job.progress is not None:
                    progress_seen.set()
            return watch.reopens

    watcher = asyncio.create_task(follow())

    async def resize(job: baton_client.AsyncJob) -> bytes:
        await job.progress(50, b"resizing")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(progress_seen.wait(), 10)
        return b"thumb:" + job.payload

    async with async_consuming(async_client, queue_name, resize):
        done = await async_client.wait_for_job(enqueued.job_id, timeout=30)
    assert await asyncio.wait_for(watcher, 10) == 0
    check_progress_then_result(snapshots, done, enqueued.job_id)


async def test_async_wait_for_job_raises_job_failed_with_the_job_when_it_goes_dead(
    async_client: baton_client.AsyncClient,
) -> None:
    queue_name = unique("imports")
    enqueued = await async_client.enqueue(
        queue_name, b"rows.csv", max_attempts=2, retry_backoff=QUICK_RETRY
    )
    resumed_from: list[JobProgress | None] = []

    async def load(job: baton_client.AsyncJob) -> bytes:
        resumed_from.append(job.last_progress)
        await job.progress(job.attempt * 10)
        raise ValueError(f"bad row on attempt {job.attempt}")

    async with async_consuming(async_client, queue_name, load):
        with pytest.raises(baton_client.JobFailed) as raised:
            await async_client.wait_for_job(enqueued.job_id, timeout=30)
    failed = raised.value
    assert failed.code == grpc.StatusCode.UNKNOWN
    assert (failed.job.state, failed.job.attempts) == (JobState.DEAD, 2)
    assert failed.job.last_error == "bad row on attempt 2"
    assert resumed_from[0] is None
    assert resumed_from[1] is not None and resumed_from[1].value == 10


async def test_async_wait_for_job_times_out_and_raises_job_failed_when_cancelled(
    async_client: baton_client.AsyncClient,
) -> None:
    enqueued = await async_client.enqueue(unique("reminders"), delay=NEVER_DUE)
    with pytest.raises(baton_client.DeadlineExceeded):
        await asyncio.wait_for(async_client.wait_for_job(enqueued.job_id, timeout=0.3), 5)

    waiter = asyncio.create_task(async_client.wait_for_job(enqueued.job_id, timeout=30))
    await async_client.stubs.queue.CancelJob(queue_pb2.CancelJobRequest(job_id=enqueued.job_id))
    with pytest.raises(baton_client.JobFailed) as raised:
        await asyncio.wait_for(waiter, 10)
    assert raised.value.job.state == JobState.CANCELLED
    assert raised.value.error_reason == baton_client.ErrorReason.JOB_CANCELLED


async def test_async_watch_queue_sees_a_jobs_events_in_order(
    async_client: baton_client.AsyncClient,
) -> None:
    queue_name = unique("reports")

    async def build(job: baton_client.AsyncJob) -> bytes:
        await job.progress(0.5, b"charts")
        return b"report.pdf"

    async with async_client.watch_queue(queue_name) as watch:
        enqueued = await async_client.enqueue(queue_name, b"q3", type="quarterly")
        seen: list[QueueEvent | EventsMissed] = []
        async with async_consuming(async_client, queue_name, build):
            while not seen or not _succeeded(seen[-1]):
                seen.append(await asyncio.wait_for(anext(watch), 10))
    check_queue_events(seen, enqueued.job_id)
    with pytest.raises(StopAsyncIteration):
        await anext(watch)


async def test_async_list_jobs_lists_a_succeeded_job(
    async_client: baton_client.AsyncClient,
) -> None:
    queue_name = unique("invoices")
    async with async_consuming(async_client, queue_name, _paid):
        enqueued = await async_client.enqueue(queue_name, b"one")
        await async_client.wait_for_job(enqueued.job_id, timeout=30)
    page = await async_client.list_jobs(queue_name, JobState.SUCCEEDED)
    assert [(job.id, job.payload, job.result) for job in page.jobs] == [
        (enqueued.job_id, b"one", b"paid:one")
    ]
    assert page.next_page_token == ""


async def _paid(job: baton_client.AsyncJob) -> bytes:
    return b"paid:" + job.payload


async def test_async_wait_for_job_resumes_on_another_replica_when_its_replica_shuts_down(
    start_baton: Callable[..., Baton],
) -> None:
    first = start_baton()
    second_addr = f"127.0.0.1:{free_port()}"
    queue_name = unique("payments")
    async with baton_client.AsyncClient([first.addr, second_addr]) as client:
        enqueued = await client.enqueue(queue_name, b"42 EUR")
        waiter = asyncio.create_task(client.wait_for_job(enqueued.job_id, timeout=30))
        deadline = time.monotonic() + 10
        while first.counter("baton_grpc_requests_total", method="WatchJob") < 1:
            assert time.monotonic() < deadline, "wait_for_job never watched"
            await asyncio.sleep(0.02)
        second = start_baton(second_addr)
        await asyncio.to_thread(first.terminate)
        async with (
            baton_client.AsyncClient(second.addr) as other,
            async_consuming(other, queue_name, _paid),
        ):
            done = await asyncio.wait_for(waiter, 30)
    assert done.result == b"paid:42 EUR"
    assert second.counter("baton_grpc_requests_total", method="WatchJob") >= 1
