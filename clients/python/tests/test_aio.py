"""The asyncio client: the same behaviours as the sync tests, through AsyncClient."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import unique
from harness import Baton, free_port

import baton_client
from baton_client.pb.baton.v1 import lock_pb2, queue_pb2


async def test_allow_denies_past_the_limit(async_client: baton_client.AsyncClient) -> None:
    key = unique("login")
    assert [(await async_client.allow(key, 2, 60)).allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]


async def test_invalid_argument_names_the_field(async_client: baton_client.AsyncClient) -> None:
    with pytest.raises(baton_client.InvalidArgument) as raised:
        await async_client.allow("k", limit=0, period=60)
    assert raised.value.error_reason == baton_client.ErrorReason.INVALID_FIELD
    assert raised.value.field is not None and raised.value.field.startswith("limits[0]")


async def test_contended_lock_is_exclusive_with_increasing_fencing_tokens(
    async_client: baton_client.AsyncClient,
) -> None:
    name = unique("order")
    tokens: list[int] = []
    holders = 0
    overlaps = 0

    async def work() -> None:
        nonlocal holders, overlaps
        for _ in range(4):
            async with async_client.lock(name, ttl=2) as lease:
                holders += 1
                overlaps += holders != 1
                tokens.append(lease.fencing_token)
                await asyncio.sleep(0.005)
                holders -= 1

    await asyncio.wait_for(asyncio.gather(*(work() for _ in range(5))), 30)
    assert overlaps == 0
    assert len(tokens) == 20
    assert tokens == sorted(set(tokens)), "fencing tokens must strictly increase"


async def test_lease_loss_is_signalled(async_client: baton_client.AsyncClient) -> None:
    with pytest.raises(baton_client.LeaseLost) as raised:
        async with async_client.lock(unique("pay"), ttl=1) as lease:
            request = lock_pb2.ReleaseRequest(name=lease.name, lease_id=lease.lease_id)
            assert (await async_client.stubs.locks.Release(request)).released
            assert await lease.wait_lost(timeout=5), "loss not signalled"
    assert isinstance(raised.value.__cause__, baton_client.FailedPrecondition)
    assert raised.value.__cause__.error_reason == baton_client.ErrorReason.LEASE_NOT_HELD


async def test_lock_with_wait_gives_up_while_held(
    async_client: baton_client.AsyncClient,
) -> None:
    name = unique("report")
    async with async_client.lock(name, ttl=5, owner="first"):
        with pytest.raises(baton_client.LockNotAcquired):
            await async_client.acquire(name, ttl=5, wait=0)


async def test_keep_alive_resumes_on_another_replica_when_one_shuts_down(start_baton) -> None:
    first = start_baton()
    second_addr = f"127.0.0.1:{free_port()}"
    async with baton_client.AsyncClient([first.addr, second_addr]) as client:
        ttl = 2.0
        lease = await client.acquire(unique("migration"), ttl)
        start_baton(second_addr)
        await asyncio.sleep(1.5)
        await asyncio.to_thread(first.terminate)
        assert not await lease.wait_lost(timeout=2 * ttl), f"lease lost: {lease.loss!r}"
        described = await client.stubs.locks.Describe(lock_pb2.DescribeRequest(name=lease.name))
        assert [holder.fencing_token for holder in described.holders] == [lease.fencing_token]
        await lease.release()


async def test_get_or_load_runs_one_loader_for_50_concurrent_callers(
    async_client: baton_client.AsyncClient,
) -> None:
    key = unique("profile")
    loads = 0

    async def load() -> bytes:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.2)  # a slow database
        return b'{"name":"Ada"}'

    values = await asyncio.gather(*(async_client.get_or_load(key, 60, load) for _ in range(50)))
    assert values == [b'{"name":"Ada"}'] * 50
    assert loads == 1


async def test_consume_acks_nacks_and_cancels_the_handler_task(
    async_client: baton_client.AsyncClient,
) -> None:
    queue = unique("emails")
    backoff = baton_client.RetryBackoff(initial=0.01, max=0.01, multiplier=1)
    flaky = await async_client.enqueue(queue, b"flaky", retry_backoff=backoff)
    endless = await async_client.enqueue(queue, b"endless")
    outcomes: list[tuple[bytes, int, BaseException | None]] = []
    endless_started = asyncio.Event()
    endless_cancelled = asyncio.Event()

    async def handle(job: baton_client.Job) -> bytes | None:
        if job.payload == b"endless":
            endless_started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                endless_cancelled.set()
                raise
        if job.attempt == 1:
            raise ValueError("first attempt fails")
        return b"done"

    stop = asyncio.Event()
    consumer = asyncio.create_task(
        async_client.consume(
            queue,
            handle,
            2,
            stop=stop,
            on_settled=lambda job, error: outcomes.append((job.payload, job.attempt, error)),
        )
    )
    await asyncio.wait_for(endless_started.wait(), 10)
    await async_client.stubs.queue.CancelJob(queue_pb2.CancelJobRequest(job_id=endless.job_id))
    await asyncio.wait_for(endless_cancelled.wait(), 10)
    while len(outcomes) < 3:
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(consumer, 10)

    by_job = {(payload, attempt): error for payload, attempt, error in outcomes}
    assert isinstance(by_job[(b"flaky", 1)], ValueError)
    assert by_job[(b"flaky", 2)] is None
    assert isinstance(by_job[(b"endless", 1)], baton_client.JobCancelled)
    job = (await async_client.stubs.queue.GetJob(queue_pb2.GetJobRequest(job_id=flaky.job_id))).job
    assert job.result == b"done" and job.last_error == "first attempt fails"


async def test_sessions_round_trip(async_client: baton_client.AsyncClient) -> None:
    subject = unique("user")
    session_id, _ = await async_client.create_session(subject, {"theme": b"dark"})
    assert (await async_client.get_session(session_id)).data == {"theme": b"dark"}
    assert await async_client.revoke_sessions(subject) == 1
    with pytest.raises(baton_client.NotFound):
        await async_client.get_session(session_id, touch=False)


async def test_session_timeouts_change_on_update_and_count_and_clear_see_them(
    async_client: baton_client.AsyncClient,
) -> None:
    session_id, created = await async_client.create_session(
        unique("user"), idle_timeout=600, absolute_timeout=7200
    )
    other_id, _ = await async_client.create_session("")
    assert await async_client.count_sessions() == 2

    updated = await async_client.update_session(
        session_id, set={"remember": b"yes"}, idle_timeout=3600, absolute_timeout=5400
    )
    assert updated.idle_expires_at - updated.last_seen_at == datetime.timedelta(hours=1)
    assert updated.absolute_expires_at - created.created_at == datetime.timedelta(hours=1.5)

    await async_client.update_session(other_id, idle_timeout=0.2)
    deadline = asyncio.get_running_loop().time() + 10
    while await async_client.count_sessions() != 1:
        assert asyncio.get_running_loop().time() < deadline, "the shortened session never ended"
        await asyncio.sleep(0.02)

    assert await async_client.clear_sessions() == 1
    assert await async_client.count_sessions() == 0
    with pytest.raises(baton_client.NotFound):
        await async_client.get_session(session_id, touch=False)


@pytest.mark.parametrize("how", ["stop", "cancel"])
async def test_stopping_finishes_started_jobs_and_hands_back_the_rest(
    async_client: baton_client.AsyncClient, how: str
) -> None:
    queue = unique("invoices")
    ids = [(await async_client.enqueue(queue, f"{n}".encode())).job_id for n in range(80)]
    started: list[str] = []
    stop = asyncio.Event()
    fifth_started = asyncio.Event()

    async def bill(job: baton_client.Job) -> None:
        started.append(job.id)
        if len(started) == 5:
            fifth_started.set()
            if how == "stop":
                stop.set()
        await asyncio.sleep(0.3)

    # "stop": the first five handlers to start decide to stop, and the rest of the burst of 40
    # deliveries goes back. "cancel": five in flight, and the task running consume() is
    # cancelled while their handlers run: they finish, and nothing more is taken.
    concurrency = 40 if how == "stop" else 5
    loop = asyncio.get_running_loop()
    consumer = asyncio.create_task(async_client.consume(queue, bill, concurrency, stop=stop))
    await asyncio.wait_for(fifth_started.wait(), 10)
    stopped_at = loop.time()
    if how == "cancel":
        consumer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(consumer, 10)
    took = loop.time() - stopped_at
    assert len(started) == 5, started
    assert took < 1.5, f"consume() took {took:.3f}s to stop"
    for job_id in ids:
        job = (await async_client.stubs.queue.GetJob(queue_pb2.GetJobRequest(job_id=job_id))).job
        if job_id in started:
            assert (job.state, job.attempts) == (queue_pb2.JOB_STATE_SUCCEEDED, 1), job
        else:
            assert (job.state, job.attempts) == (queue_pb2.JOB_STATE_READY, 0), job


async def test_stop_hands_prefetched_jobs_back_uncharged_while_handlers_run_on(
    async_client: baton_client.AsyncClient,
) -> None:
    queue = unique("thumbnails")
    ids = [(await async_client.enqueue(queue, f"{n}".encode())).job_id for n in range(10)]
    concurrency, prefetch = 2, 3
    started: set[str] = set()
    release = asyncio.Event()
    stop = asyncio.Event()

    async def render(job: baton_client.Job) -> None:
        started.add(job.id)
        await release.wait()

    async def leased() -> int:
        jobs = [
            (await async_client.stubs.queue.GetJob(queue_pb2.GetJobRequest(job_id=job_id))).job
            for job_id in ids
        ]
        return [job.state for job in jobs].count(queue_pb2.JOB_STATE_ACTIVE)

    async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
        deadline = time.monotonic() + 10
        while not await condition():
            assert time.monotonic() < deadline, f"{what}: not true within 10 s"
            await asyncio.sleep(0.02)

    consumer = asyncio.create_task(
        async_client.consume(queue, render, concurrency, stop=stop, prefetch=prefetch)
    )
    try:

        async def two_running_five_leased() -> bool:
            return len(started) == concurrency and await leased() == concurrency + prefetch

        await until(two_running_five_leased, "two handlers running and five jobs leased")
        stop.set()

        async def only_running_leased() -> bool:
            return await leased() == concurrency

        # The waiting ones go back while the running handlers have not finished.
        await until(only_running_leased, "only the running jobs still leased")
    finally:
        stop.set()
        release.set()
        await asyncio.wait_for(consumer, 10)
    assert len(started) == concurrency, "a prefetched job started after the stop"
    for job_id in ids:
        job = (await async_client.stubs.queue.GetJob(queue_pb2.GetJobRequest(job_id=job_id))).job
        expected = (
            (queue_pb2.JOB_STATE_SUCCEEDED, 1)
            if job_id in started
            else (queue_pb2.JOB_STATE_READY, 0)
        )
        assert (job.state, job.attempts) == expected, job


async def test_an_extend_refused_because_the_ack_landed_first_is_not_a_lost_lease(
    async_client: baton_client.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ack is applied, but its answer is late: the heartbeats meanwhile (every third of
    # the 1 s visibility) extend a lease Baton has already ended, and are refused.
    queue = unique("invoices")
    await async_client.enqueue(queue, b"inv-1")
    ack_batch = async_client.stubs.queue.AckBatch
    applied = asyncio.Event()

    def answered_late(request: queue_pb2.AckBatchRequest, **kwargs: object) -> Awaitable[object]:
        async def call() -> object:
            response = await ack_batch(request, **kwargs)  # type: ignore[arg-type]
            applied.set()
            await asyncio.sleep(1.5)
            return response

        return call()

    monkeypatch.setattr(async_client.stubs.queue, "AckBatch", answered_late)
    settled: list[BaseException | None] = []
    stop = asyncio.Event()

    def on_settled(job: baton_client.Job, error: BaseException | None) -> None:
        settled.append(error)
        stop.set()

    async def invoice(job: baton_client.Job) -> bytes:
        return b"sent"

    await asyncio.wait_for(
        async_client.consume(
            queue, invoice, 1, stop=stop, visibility_timeout=1.0, on_settled=on_settled
        ),
        20,
    )
    assert applied.is_set(), "the ack did not go through AckBatch"
    assert settled == [None], f"the acked job was reported as {settled}"


async def test_an_async_lock_cycle_opens_no_stream_and_a_late_grant_is_proven_on_one(
    baton: Baton, async_client: baton_client.AsyncClient
) -> None:
    def calls() -> dict[str, float]:
        return {
            method: baton.counter(
                "baton_grpc_requests_total", service="baton.v1.LockService", method=method
            )
            for method in ("Acquire", "KeepAlive", "Release")
        }

    def since(before: dict[str, float]) -> dict[str, float]:
        return {method: count - before[method] for method, count in calls().items()}

    before = calls()
    for i in range(10):
        async with async_client.lock(unique(f"cycle-{i}"), ttl=5) as lease:
            assert lease.held_until > time.monotonic() + 4
    assert since(before) == {"Acquire": 10, "KeepAlive": 0, "Release": 10}

    before = calls()
    name = unique("late")
    # Released well before a third of its ttl: no stream.
    first = await async_client.acquire(name, ttl=10)
    asyncio.get_running_loop().call_later(1.5, lambda: asyncio.ensure_future(first.release()))
    # Granted about 1.5 s after it was asked for, with a 1 s ttl: proven by the renewal that
    # opening its stream makes at once, not lost as it is handed out.
    async with async_client.lock(name, ttl=1, wait=5) as lease:
        assert lease.held_until > time.monotonic() + 0.5
        assert not await lease.wait_lost(1.5), lease.loss
    for _ in range(100):  # a stream is counted once it has ended
        if since(before)["KeepAlive"] >= 1:
            break
        await asyncio.sleep(0.05)
    # The late grant's stream released it; the first lease, held 1.5 s of its 5, had none.
    assert since(before) == {"Acquire": 2, "KeepAlive": 1, "Release": 1}


async def test_a_holder_that_blocked_its_event_loop_past_the_deadline_is_told_on_release(
    async_client: baton_client.AsyncClient,
) -> None:
    # Blocked past its deadline (4.5 s: a 0.5 s margin before the 5 s ttl) but released before
    # Redis lets the lease go: Release succeeds, and yet, as the loop never ran the lease's
    # timers, only the release itself can report that the lock may have changed hands.
    with pytest.raises(baton_client.LeaseLost) as raised:
        async with async_client.lock(unique("blocked"), ttl=5) as lease:
            time.sleep(4.75)
            assert not lease.lost, "the loss came from a timer the blocked loop could not run"
    assert "no heartbeat" in str(raised.value), raised.value


@pytest.mark.parametrize("batched", [True, False], ids=["many-a-message", "one-a-message"])
async def test_the_worker_takes_jobs_one_or_many_to_a_message(
    async_client: baton_client.AsyncClient, monkeypatch: pytest.MonkeyPatch, batched: bool
) -> None:
    """The worker asks for a fetch's jobs in one message, and still takes them one to a
    message, as a server from before ``batch_deliveries`` sends them."""
    opening = baton_client.queue._consume_request

    def consume_request(*args: Any, **kwargs: Any) -> queue_pb2.ConsumeRequest:
        request = opening(*args, **kwargs)
        assert request.batch_deliveries
        request.batch_deliveries = batched
        return request

    monkeypatch.setattr(baton_client.queue, "_consume_request", consume_request)
    queue = unique("shapes")
    enqueued = {(await async_client.enqueue(queue, str(i).encode())).job_id for i in range(40)}
    acked: list[str] = []

    async def handle(job: baton_client.AsyncJob) -> None:
        await asyncio.sleep(0)

    stop = asyncio.Event()
    consumer = asyncio.create_task(
        async_client.consume(
            queue,
            handle,
            8,
            stop=stop,
            on_settled=lambda job, error: acked.append(job.id) if error is None else None,
        )
    )
    deadline = time.monotonic() + 20
    while len(acked) < len(enqueued) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(consumer, 10)
    assert sorted(acked) == sorted(enqueued)


async def test_a_stream_that_asks_gets_a_fetch_in_one_message(
    async_client: baton_client.AsyncClient,
) -> None:
    queue = unique("one-message")
    for i in range(5):
        await async_client.enqueue(queue, str(i).encode())
    request = baton_client.queue._consume_request(queue, 10, 0, 30, (), "test")
    call = async_client.stubs.queue.Consume(iter([request]))
    try:
        response = await asyncio.wait_for(call.read(), 10)
    finally:
        call.cancel()
    assert response.WhichOneof("event") == "deliveries"
    payloads = [delivery.job.payload for delivery in response.deliveries.deliveries]
    assert payloads == [b"0", b"1", b"2", b"3", b"4"]
