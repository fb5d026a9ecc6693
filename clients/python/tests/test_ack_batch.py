"""The workers coalesce their acks into AckBatch calls: fewer calls than jobs, each job with
its own outcome, as with one Ack per job. Baton's /metrics counts the calls it served."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from conftest import unique
from harness import Baton, eventually
from test_queue import Settlements, consuming, job_state

import baton_client
from baton_client import _acks
from baton_client.pb.baton.v1 import queue_pb2
from baton_client.pb.baton.v1.errors_pb2 import ErrorReason

JOBS, CONCURRENCY = 500, 64


def served(baton: Baton, method: str) -> int:
    """How many calls of a JobQueueService method baton answered, whatever their code."""
    return int(
        baton.counter(
            "baton_grpc_requests_total", service="baton.v1.JobQueueService", method=method
        )
    )


def enqueue_request(queue: str, count: int) -> queue_pb2.EnqueueBatchRequest:
    return queue_pb2.EnqueueBatchRequest(
        requests=[
            queue_pb2.EnqueueRequest(queue=queue, payload=f"job-{n}".encode()) for n in range(count)
        ]
    )


def enqueue_batch(client: baton_client.Client, queue: str, count: int) -> list[str]:
    response = client.stubs.queue.EnqueueBatch(enqueue_request(queue, count))
    return [result.job_id for result in response.results]


async def aenqueue_batch(client: baton_client.AsyncClient, queue: str, count: int) -> list[str]:
    response = await client.stubs.queue.EnqueueBatch(enqueue_request(queue, count))
    return [result.job_id for result in response.results]


class Call:
    """One AckBatch call a worker made: the leases it acked and Baton's answer."""

    def __init__(self, request: queue_pb2.AckBatchRequest) -> None:
        self.leases = [ack.lease_id for ack in request.acks]
        self.results: list[queue_pb2.AckResult] = []
        self.code: grpc.StatusCode = grpc.StatusCode.OK


class SyncSpy:
    """The client's JobQueueService stub, recording its AckBatch calls; the first one runs
    ``hold`` before it goes out."""

    def __init__(self, stub: Any, hold: Callable[[], None]) -> None:
        self._stub = stub
        self._hold = hold
        self._guard = threading.Lock()
        self.calls: list[Call] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    def AckBatch(self, request: queue_pb2.AckBatchRequest, **kwargs: Any) -> Any:
        call = Call(request)
        with self._guard:
            self.calls.append(call)
            first = len(self.calls) == 1
        if first:
            self._hold()
        try:
            response = self._stub.AckBatch(request, **kwargs)
        except grpc.RpcError as error:
            call.code = error.code()  # type: ignore[attr-defined]
            raise
        call.results = list(response.results)
        return response


class AsyncSpy(SyncSpy):
    def __init__(self, stub: Any, hold: Callable[[], Awaitable[None]]) -> None:
        super().__init__(stub, lambda: None)
        self._ahold = hold

    async def AckBatch(self, request: queue_pb2.AckBatchRequest, **kwargs: Any) -> Any:  # type: ignore[override]
        call = Call(request)
        self.calls.append(call)
        if len(self.calls) == 1:
            await self._ahold()
        response = await self._stub.AckBatch(request, **kwargs)
        call.results = list(response.results)
        return response


def count_queued(monkeypatch: pytest.MonkeyPatch, total: int, reached: Callable[[], None]) -> None:
    """Calls ``reached`` once ``total`` acks wait for (or are in) an AckBatch call, and makes
    the queued acks wait for the call in flight however long it takes."""
    monkeypatch.setattr(_acks, "ACK_BATCH_DELAY", 60.0)
    queued = 0

    def on_queued() -> None:
        nonlocal queued
        queued += 1
        if queued == total:
            reached()

    monkeypatch.setattr(_acks, "_on_queued", on_queued)


def check_second_call(spy: SyncSpy, lost_lease: str, size: int) -> None:
    assert len(spy.calls) == 2, "one call alone, then one with the acks that waited for it"
    second = spy.calls[1]
    assert len(second.leases) == size and len(second.results) == size
    assert lost_lease in second.leases
    for lease, result in zip(second.leases, second.results, strict=True):
        if lease == lost_lease:
            assert not result.acked and result.reason == "JOB_NOT_LEASED", result
        else:
            assert result.acked, (lease, result)


def check_lost(error: BaseException | None) -> None:
    """Reported as a single Ack's refusal was."""
    assert isinstance(error, baton_client.FailedPrecondition), error
    assert error.error_reason == ErrorReason.JOB_NOT_LEASED
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION


def test_concurrent_handlers_ack_through_few_ack_batch_calls(
    baton: Baton, client: baton_client.Client
) -> None:
    queue = unique("coalesced")
    ids = enqueue_batch(client, queue, JOBS)
    runs: collections.Counter[str] = collections.Counter()
    guard = threading.Lock()
    settled = Settlements()

    def handle(job: baton_client.Job) -> bytes:
        with guard:
            runs[job.id] += 1
        return b"done"

    with consuming(client, queue, handle, CONCURRENCY, on_settled=settled):
        eventually(lambda: len(settled.acked) == JOBS, "500 jobs acked", patience=30)
    assert set(settled.acked.values()) == {1} and not settled.other
    assert runs == collections.Counter(ids)
    for job_id in ids:
        job = job_state(client, job_id)
        assert (job.state, job.attempts, job.result) == (queue_pb2.JOB_STATE_SUCCEEDED, 1, b"done")
    batches, singles = served(baton, "AckBatch"), served(baton, "Ack")
    assert 0 < batches < JOBS and singles == 0, (batches, singles)


def test_a_lost_lease_in_a_batch_is_reported_while_the_others_are_acked(
    baton: Baton, client: baton_client.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One job's lease is lost while its handler runs (another party nacks the delivery to
    the dead-letter set, which the worker is not told of); its ack goes out in the same call
    as six others, and is reported as its single Ack's refusal was, while the six are acked."""
    jobs = 8
    all_queued, first_call_out = threading.Event(), threading.Event()
    count_queued(monkeypatch, jobs, all_queued.set)

    def hold() -> None:  # the first call waits until every other ack waits for it
        first_call_out.set()
        all_queued.wait(10)

    spy = SyncSpy(client._queue, hold)
    monkeypatch.setattr(client, "_queue", spy)
    queue = unique("lost")
    ids = enqueue_batch(client, queue, jobs)
    lost = ids[0]
    barrier = threading.Barrier(jobs, timeout=10)
    runs: collections.Counter[str] = collections.Counter()
    leases: dict[str, str] = {}
    settled = Settlements()
    lost_outcome: list[BaseException | None] = []
    lost_settled = threading.Event()

    def handle(job: baton_client.Job) -> None:
        runs[job.id] += 1
        leases[job.id] = job.lease_id
        barrier.wait()
        if job.id == lost:
            nack = queue_pb2.NackRequest(
                lease_id=job.lease_id, error="taken over", dead_letter=True
            )
            client.stubs.queue.Nack(nack)
            first_call_out.wait(10)  # its ack waits for the call in flight

    def on_settled(job: baton_client.Job, error: BaseException | None) -> None:
        settled(job, error)
        if job.id == lost:
            lost_outcome.append(error)
            lost_settled.set()

    with consuming(client, queue, handle, jobs, on_settled=on_settled):
        assert lost_settled.wait(20), "the job whose lease was lost was not reported"
        eventually(lambda: len(settled.acked) == jobs - 1, "the seven others acked")
    check_lost(lost_outcome[0])
    check_second_call(spy, leases[lost], jobs - 1)
    assert runs == collections.Counter(ids)
    for job_id in ids:
        job = job_state(client, job_id)
        want = queue_pb2.JOB_STATE_DEAD if job_id == lost else queue_pb2.JOB_STATE_SUCCEEDED
        assert (job.state, job.attempts) == (want, 1), job
    assert served(baton, "Ack") == 0


def test_an_ack_refused_with_its_batch_is_sent_alone_for_its_own_outcome(
    start_baton, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """A result over Baton's limit makes it refuse the whole AckBatch (INVALID_ARGUMENT); the
    worker then acks each job of the call alone, so only that job fails, as with Ack."""
    config = tmp_path / "baton.toml"
    config.write_text("[limits]\nmax_value_bytes = 1024\n")
    baton = start_baton("127.0.0.1:0", "--config", str(config))
    jobs = 6
    all_queued, first_call_out = threading.Event(), threading.Event()
    count_queued(monkeypatch, jobs, all_queued.set)

    def hold() -> None:
        first_call_out.set()
        all_queued.wait(10)

    with baton_client.Client(baton.addr) as client:
        spy = SyncSpy(client._queue, hold)
        monkeypatch.setattr(client, "_queue", spy)
        queue = unique("oversized")
        ids = enqueue_batch(client, queue, jobs)
        barrier = threading.Barrier(jobs, timeout=10)
        settled = Settlements()
        outcomes: dict[str, BaseException | None] = {}

        def handle(job: baton_client.Job) -> bytes:
            barrier.wait()
            if job.id != ids[0]:
                return b"ok"
            first_call_out.wait(10)
            return bytes(2048)

        def on_settled(job: baton_client.Job, error: BaseException | None) -> None:
            settled(job, error)
            outcomes[job.id] = error

        with consuming(client, queue, handle, jobs, on_settled=on_settled):
            eventually(lambda: len(outcomes) == jobs, "every job settled", patience=20)
        refused = outcomes[ids[0]]
        assert isinstance(refused, baton_client.InvalidArgument) and refused.field == "result"
        assert all(outcomes[job_id] is None for job_id in ids[1:])
        assert len(spy.calls) == 2 and spy.calls[1].code == grpc.StatusCode.INVALID_ARGUMENT
        assert len(spy.calls[1].leases) == jobs - 1
        assert served(baton, "Ack") == jobs - 1  # the refused call's acks, one by one
        for job_id in ids[1:]:
            assert job_state(client, job_id).state == queue_pb2.JOB_STATE_SUCCEEDED


def test_ack_batch_size_zero_sends_one_ack_per_job(
    baton: Baton, client: baton_client.Client
) -> None:
    queue = unique("single")
    enqueue_batch(client, queue, 20)
    settled = Settlements()
    with consuming(client, queue, lambda job: None, 4, on_settled=settled, ack_batch_size=0):
        eventually(lambda: len(settled.acked) == 20, "20 jobs acked")
    assert (served(baton, "Ack"), served(baton, "AckBatch")) == (20, 0)


async def test_async_concurrent_handlers_ack_through_few_ack_batch_calls(
    baton: Baton, async_client: baton_client.AsyncClient
) -> None:
    queue = unique("coalesced")
    ids = await aenqueue_batch(async_client, queue, JOBS)
    runs: collections.Counter[str] = collections.Counter()
    settled = Settlements()

    async def handle(job: baton_client.Job) -> bytes:
        runs[job.id] += 1
        return b"done"

    stop = asyncio.Event()
    consumer = asyncio.create_task(
        async_client.consume(queue, handle, CONCURRENCY, stop=stop, on_settled=settled)
    )
    try:
        async with asyncio.timeout(30):
            while len(settled.acked) < JOBS:
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(consumer, 10)
    assert set(settled.acked.values()) == {1} and not settled.other
    assert runs == collections.Counter(ids)
    for job_id in ids:
        job = (await async_client.stubs.queue.GetJob(queue_pb2.GetJobRequest(job_id=job_id))).job
        assert (job.state, job.attempts, job.result) == (queue_pb2.JOB_STATE_SUCCEEDED, 1, b"done")
    batches, singles = served(baton, "AckBatch"), served(baton, "Ack")
    assert 0 < batches < JOBS and singles == 0, (batches, singles)


async def test_async_a_lost_lease_in_a_batch_is_reported_while_the_others_are_acked(
    baton: Baton, async_client: baton_client.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the sync test, through the asyncio worker."""
    jobs = 8
    all_queued, first_call_out = asyncio.Event(), asyncio.Event()
    count_queued(monkeypatch, jobs, all_queued.set)

    async def hold() -> None:
        first_call_out.set()
        await asyncio.wait_for(all_queued.wait(), 10)

    spy = AsyncSpy(async_client._queue, hold)
    monkeypatch.setattr(async_client, "_queue", spy)
    queue = unique("lost")
    ids = await aenqueue_batch(async_client, queue, jobs)
    lost = ids[0]
    barrier = asyncio.Barrier(jobs)
    runs: collections.Counter[str] = collections.Counter()
    leases: dict[str, str] = {}
    settled = Settlements()
    lost_outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def handle(job: baton_client.Job) -> None:
        runs[job.id] += 1
        leases[job.id] = job.lease_id
        await asyncio.wait_for(barrier.wait(), 10)
        if job.id == lost:
            nack = queue_pb2.NackRequest(
                lease_id=job.lease_id, error="taken over", dead_letter=True
            )
            await async_client.stubs.queue.Nack(nack)
            await asyncio.wait_for(first_call_out.wait(), 10)

    def on_settled(job: baton_client.Job, error: BaseException | None) -> None:
        settled(job, error)
        if job.id == lost:
            lost_outcome.set_result(error)

    stop = asyncio.Event()
    consumer = asyncio.create_task(
        async_client.consume(queue, handle, jobs, stop=stop, on_settled=on_settled)
    )
    try:
        check_lost(await asyncio.wait_for(lost_outcome, 20))
        async with asyncio.timeout(10):
            while len(settled.acked) < jobs - 1:
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(consumer, 10)
    check_second_call(spy, leases[lost], jobs - 1)
    assert runs == collections.Counter(ids)
    for job_id in ids:
        job = (await async_client.stubs.queue.GetJob(queue_pb2.GetJobRequest(job_id=job_id))).job
        want = queue_pb2.JOB_STATE_DEAD if job_id == lost else queue_pb2.JOB_STATE_SUCCEEDED
        assert (job.state, job.attempts) == (want, 1), job
    assert served(baton, "Ack") == 0


class _Queued:
    """An ack as the batcher keeps it: its request, and when it was queued."""

    def __init__(self, result_bytes: int, queued_at: float = 0.0) -> None:
        self.request = queue_pb2.AckRequest(lease_id="l", result=b"r" * result_bytes)
        self.queued_at = queued_at


def _sizes(batches: list[list[Any]]) -> list[list[int]]:
    return [[len(pending.request.result) for pending in batch] for batch in batches]


def test_a_call_is_due_when_full_by_count_or_bytes_overdue_or_none_in_flight() -> None:
    kib = 1 << 10
    waiting = _acks._Waiting()
    take = lambda in_flight, now=0.0: _acks._take(waiting, 4, in_flight, now, 0.010)  # noqa: E731
    for _ in range(3):
        waiting.push(_Queued(10))
    assert take(in_flight=1) == []  # 3 small acks wait for the call in flight
    assert _sizes(take(in_flight=0)) == [[10, 10, 10]]  # none in flight: they go at once
    for _ in range(5):
        waiting.push(_Queued(10))
    assert _sizes(take(in_flight=1)) == [[10] * 4]  # a full call goes; one is left waiting
    assert _sizes(take(in_flight=1, now=0.010)) == [[10]]  # overdue
    waiting.push(_Queued(2048 * kib))
    assert take(in_flight=1) == []  # a lone ack over the byte bound is not a full call
    waiting.push(_Queued(10))
    # Over the bound with two: the big one goes alone, the small one waits.
    assert _sizes(take(in_flight=1)) == [[2048 * kib]]
    for _ in range(2):
        waiting.push(_Queued(600 * kib))
    assert _sizes(take(in_flight=1)) == [[10, 600 * kib]]  # 1 MiB would be passed with three
    assert len(waiting) == 1 and waiting.size == 600 * kib
    assert _sizes(take(in_flight=0)) == [[600 * kib]]
    assert len(waiting) == 0 and waiting.size == 0
