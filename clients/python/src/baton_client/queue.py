"""Job queue: ``enqueue`` and ``consume``, the worker loop.

``consume`` runs a handler on each delivered job, at most ``concurrency`` at a time: it acks
the job when the handler returns (its return value is the job's result), nacks it with the
exception's text when the handler raises, extends the lease every third of the visibility
timeout while the job is in hand, stops the handler's work when the job is cancelled or its
lease is lost (and then neither acks nor nacks), and reconnects with backoff when the stream
breaks — to whichever replica the balancer picks — while the handlers already running go on
and are acked through it. Delivery is at least once, so handlers should be idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from . import _retry
from ._connection import Backoff, Seconds, duration, seconds
from .errors import (
    BatonError,
    FailedPrecondition,
    JobCancelled,
    JobLeaseLost,
    from_rpc_error,
)
from .pb.baton.v1 import queue_pb2

if TYPE_CHECKING:
    from .pb.baton.v1 import queue_pb2_grpc

DEFAULT_VISIBILITY_TIMEOUT = 30.0
"""Seconds a delivery is leased before ``consume`` must extend it."""

# Stream endings worth reconnecting after; anything else is an error no retry can fix.
_RESUMABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
)
# How often a sync consume() looks at its stop event.
_STOP_POLL = 0.1


@dataclass(frozen=True)
class RetryBackoff:
    """The wait before retry n is ``initial * multiplier ** (n - 1)``, at most ``max``."""

    initial: Seconds
    max: Seconds
    multiplier: float = 2.0


@dataclass(frozen=True)
class Enqueued:
    job_id: str
    duplicate: bool
    """The dedup key matched an earlier job, whose id ``job_id`` is; nothing was added."""


@dataclass(eq=False)
class Job:
    """One delivery of a job to a handler."""

    id: str
    queue: str
    type: str
    payload: bytes
    priority: int
    attempt: int
    """1 on the first delivery, 2 on the first retry, …"""
    max_attempts: int
    last_error: str
    """The exception text of the previous attempt, if it failed."""
    created_at: datetime.datetime
    lease_id: str
    """Proves this delivery to Ack/Nack/Extend on the raw stub; ``consume`` does all three."""
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    """Set when the handler should stop: the job was cancelled, its lease lost, or the
    worker is shutting down. Its result no longer counts; long handlers should check it."""
    cancel_reason: str | None = None
    """``"cancelled"``, ``"lease_lost"`` or ``"shutdown"`` once ``cancelled`` is set."""

    def _cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.cancelled.set()


def _job(delivery: queue_pb2.Delivery) -> Job:
    job = delivery.job
    return Job(
        id=job.job_id,
        queue=job.queue,
        type=job.type,
        payload=job.payload,
        priority=job.priority,
        attempt=delivery.attempt,
        max_attempts=job.max_attempts,
        last_error=job.last_error,
        created_at=job.created_at.ToDatetime(datetime.UTC),
        lease_id=delivery.lease_id,
    )


def _enqueue_request(
    queue: str,
    payload: bytes,
    type: str,
    delay: Seconds | None,
    run_at: datetime.datetime | None,
    priority: int,
    max_attempts: int,
    retry_backoff: RetryBackoff | None,
    dedup_key: str,
    dedup_ttl: Seconds | None,
) -> queue_pb2.EnqueueRequest:
    request = queue_pb2.EnqueueRequest(
        queue=queue,
        payload=payload,
        type=type,
        priority=priority,
        max_attempts=max_attempts,
        dedup_key=dedup_key,
    )
    if delay is not None:
        request.delay.CopyFrom(duration(delay))
    if run_at is not None:
        request.run_at.FromDatetime(run_at)
    if retry_backoff is not None:
        request.backoff.CopyFrom(
            queue_pb2.Backoff(
                initial=duration(retry_backoff.initial),
                max=duration(retry_backoff.max),
                multiplier=retry_backoff.multiplier,
            )
        )
    if dedup_ttl:
        request.dedup_ttl.CopyFrom(duration(dedup_ttl))
    return request


def _consume_request(
    queue: str, concurrency: int, visibility_timeout: Seconds, types: Any, consumer: str
) -> queue_pb2.ConsumeRequest:
    return queue_pb2.ConsumeRequest(
        queue=queue,
        max_in_flight=concurrency,
        visibility_timeout=duration(visibility_timeout),
        types=list(types),
        consumer=consumer,
    )


def _error_text(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _lost(error: BatonError) -> tuple[str, Exception]:
    """The cancel reason and the exception a refused Extend means."""
    if error.reason == "JOB_CANCELLED":
        outcome: Exception = JobCancelled(f"job cancelled: {error}")
        reason = "cancelled"
    else:
        outcome = JobLeaseLost(f"job lease lost: {error}")
        reason = "lease_lost"
    outcome.__cause__ = error
    return reason, outcome


SyncHandler = Callable[[Job], "bytes | None"]
AsyncHandler = Callable[[Job], Awaitable["bytes | None"]]
Settled = Callable[[Job, "BaseException | None"], None]


class _Settling:
    """What the sync and asyncio workers share: reporting how each delivery ended."""

    def __init__(self, on_settled: Settled | None) -> None:
        self._on_settled = on_settled
        self._outcomes: dict[str, Exception] = {}  # lease id -> why the job was dropped

    def _report(self, job: Job, error: BaseException | None) -> None:
        if self._on_settled is not None:
            self._on_settled(job, error)

    def _report_dropped(self, job: Job) -> None:
        """Reports a job whose result no longer counts, unless it was dropped by shutdown,
        which is not the job's fate: it goes back to the queue."""
        outcome = self._outcomes.pop(job.lease_id, None)
        if job.cancel_reason == "cancelled":
            self._report(job, outcome or JobCancelled(f"job {job.id} cancelled"))
        elif job.cancel_reason == "lease_lost":
            self._report(job, outcome or JobLeaseLost(f"job {job.id} lease lost"))


class _Worker(_Settling):
    """One sync ``consume()`` call: the stream follower (the caller's thread), a pool of
    handler threads, and a heartbeat thread that extends leases and watches ``stop``."""

    def __init__(
        self,
        stub: queue_pb2_grpc.JobQueueServiceStub,
        request: queue_pb2.ConsumeRequest,
        handler: SyncHandler,
        concurrency: int,
        stop: threading.Event | None,
        shutdown_grace: float,
        on_settled: Settled | None,
    ) -> None:
        super().__init__(on_settled)
        self._stub = stub
        self._request = request
        self._handler = handler
        self._visibility = request.visibility_timeout.ToTimedelta().total_seconds()
        self._stop = stop
        self._grace = shutdown_grace
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="baton-worker")
        self._guard = threading.Condition()
        self._held: dict[str, Job] = {}  # by lease id, from delivery until settled
        self._stopping = threading.Event()  # no handler starts from then on
        self._finished = threading.Event()
        self._call: Any = None

    def run(self) -> None:
        heartbeat = threading.Thread(target=self._heartbeat, name="baton-heartbeat", daemon=True)
        heartbeat.start()
        backoff = Backoff()
        try:
            while not self._stopping.is_set():
                error = self._follow(backoff)
                if self._stopping.is_set():
                    break
                if error is not None and error.code() not in _RESUMABLE:  # type: ignore[attr-defined]
                    raise from_rpc_error(error) from None
                retry_after = from_rpc_error(error).retry_after if error is not None else None
                if self._stopping.wait(backoff.delay(retry_after)):
                    break
        finally:
            self._drain()
            self._executor.shutdown(wait=True)
            self._finished.set()
            heartbeat.join()

    def _follow(self, backoff: Backoff) -> grpc.RpcError | None:
        """Reads one stream until it ends; returns the error that ended it."""
        call = self._stub.Consume(self._request)
        with self._guard:
            if self._stopping.is_set():
                call.cancel()
                return None
            self._call = call
        try:
            call.initial_metadata()  # type: ignore[attr-defined]
            backoff.reset()
            for response in call:
                event = response.WhichOneof("event")
                if event == "delivery":
                    self._deliver(response.delivery)
                elif event == "cancelled":
                    self._cancel(response.cancelled.lease_id, "cancelled")
        except grpc.RpcError as error:
            return error
        return None

    def _deliver(self, delivery: queue_pb2.Delivery) -> None:
        job = _job(delivery)
        with self._guard:
            if self._stopping.is_set():
                return  # handed back when the stream closes
            self._held[job.lease_id] = job
        self._executor.submit(self._process, job)

    def _cancel(self, lease_id: str, reason: str) -> None:
        with self._guard:
            job = self._held.get(lease_id)
        if job is not None:
            job._cancel(reason)

    def _process(self, job: Job) -> None:
        try:
            if job.cancelled.is_set() or self._stopping.is_set():
                # Never started: a cancelled job is reported, and any other goes back to
                # the queue when the stream closes.
                self._report_dropped(job)
                return
            try:
                result, error = self._handler(job), None
            except Exception as raised:
                result, error = None, raised
            self._settle(job, result, error)
        finally:
            with self._guard:
                self._held.pop(job.lease_id, None)
                self._guard.notify_all()

    def _settle(self, job: Job, result: bytes | None, error: Exception | None) -> None:
        if job.cancelled.is_set():
            # Cut short by shutdown: not the job's fault, so no Nack (which would use up an
            # attempt); the stream's close hands it back at once.
            self._report_dropped(job)
            return
        # Past the visibility timeout the lease has expired and every retry would be refused.
        try:
            if error is None:
                ack = queue_pb2.AckRequest(lease_id=job.lease_id, result=result or b"")
                _retry.call(lambda: self._stub.Ack(ack), self._visibility)
            else:
                nack = queue_pb2.NackRequest(lease_id=job.lease_id, error=_error_text(error))
                _retry.call(lambda: self._stub.Nack(nack), self._visibility)
        except BatonError as failed:
            self._report(job, failed)
            return
        self._report(job, error)

    def _heartbeat(self) -> None:
        """Extends every held lease each third of the visibility timeout (so that two failed
        Extends in a row still leave time for a third), and starts the drain on ``stop``."""
        next_extend = time.monotonic() + self._visibility / 3
        while not self._finished.wait(_STOP_POLL):
            if self._stop is not None and self._stop.is_set() and not self._stopping.is_set():
                self._stopping.set()
                threading.Thread(target=self._drain, name="baton-drain", daemon=True).start()
            if time.monotonic() < next_extend:
                continue
            next_extend = time.monotonic() + self._visibility / 3
            with self._guard:
                held = [job for job in self._held.values() if not job.cancelled.is_set()]
            for job in held:
                self._extend(job)

    def _extend(self, job: Job) -> None:
        request = queue_pb2.ExtendRequest(
            lease_id=job.lease_id, visibility_timeout=self._request.visibility_timeout
        )
        try:
            self._stub.Extend(request)
        except grpc.RpcError as error:
            mapped = from_rpc_error(error)
            if isinstance(mapped, FailedPrecondition):
                reason, self._outcomes[job.lease_id] = _lost(mapped)
                job._cancel(reason)
            # Anything else (UNAVAILABLE, …) is retried at the next beat.

    def _drain(self) -> None:
        """Starts no more handlers, gives the running ones the grace to finish, flags the rest,
        waits for them, and closes the stream: the jobs that never started go back at once."""
        with self._guard:
            self._stopping.set()
            give_up_at = time.monotonic() + self._grace
            while self._held and (left := give_up_at - time.monotonic()) > 0:
                self._guard.wait(left)
            for job in self._held.values():
                job._cancel("shutdown")
            # Threads cannot be interrupted: a handler that ignores job.cancelled is waited
            # for, and its result is not acked.
            while self._held:
                self._guard.wait()
            call = self._call
        if call is not None:
            call.cancel()


class _AsyncWorker(_Settling):
    """One asyncio ``consume()`` call: a stream reader task, a task per job (cancelled when the
    job is), and a heartbeat task that extends leases."""

    def __init__(
        self,
        stub: queue_pb2_grpc.JobQueueServiceStub,
        request: queue_pb2.ConsumeRequest,
        handler: AsyncHandler,
        concurrency: int,
        stop: asyncio.Event | None,
        shutdown_grace: float,
        on_settled: Settled | None,
    ) -> None:
        super().__init__(on_settled)
        self._stub = stub
        self._request = request
        self._handler = handler
        self._visibility = request.visibility_timeout.ToTimedelta().total_seconds()
        self._stop = stop or asyncio.Event()
        self._grace = shutdown_grace
        self._slots = asyncio.Semaphore(concurrency)
        self._held: dict[str, tuple[Job, asyncio.Task[None]]] = {}
        self._stopping = False
        self._call: Any = None

    async def run(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeat())
        backoff = Backoff()
        try:
            while not self._stop.is_set():
                error = await self._follow(backoff)
                if self._stop.is_set():
                    break
                if error is not None and error.code() not in _RESUMABLE:  # type: ignore[attr-defined]
                    raise from_rpc_error(error) from None
                retry_after = from_rpc_error(error).retry_after if error is not None else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff.delay(retry_after))
        finally:
            # Also when consume() itself is cancelled: its handlers are cancelled after the
            # grace and the stream closed, so no job stays leased to a worker that is gone.
            await self._drain()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _follow(self, backoff: Backoff) -> grpc.RpcError | None:
        call = self._stub.Consume(self._request)
        self._call = call
        reader = asyncio.create_task(self._read(call, backoff))
        stopped = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait({reader, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if reader in done:
            return reader.result()
        # Keep the stream, and so the leases of the jobs in hand, until the handlers are
        # done; _drain then closes it, which ends the reader.
        await self._drain()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        return None

    async def _read(self, call: Any, backoff: Backoff) -> grpc.RpcError | None:
        try:
            await call.initial_metadata()
            backoff.reset()
            async for response in call:
                event = response.WhichOneof("event")
                if event == "delivery":
                    self._deliver(response.delivery)
                elif event == "cancelled":
                    self._cancel(response.cancelled.lease_id, "cancelled")
        except grpc.RpcError as error:
            return error
        return None

    def _deliver(self, delivery: queue_pb2.Delivery) -> None:
        if self._stopping:
            return  # handed back when the stream closes
        job = _job(delivery)
        task = asyncio.create_task(self._process(job), name=f"baton-job-{job.id}")
        self._held[job.lease_id] = (job, task)

    def _cancel(self, lease_id: str, reason: str) -> None:
        held = self._held.get(lease_id)
        if held is not None:
            job, task = held
            job._cancel(reason)
            task.cancel()

    async def _process(self, job: Job) -> None:
        try:
            async with self._slots:
                if job.cancelled.is_set() or self._stopping:
                    self._report_dropped(job)  # never started; see _Worker._process
                    return
                try:
                    result, error = await self._handler(job), None
                except asyncio.CancelledError:
                    if job.cancel_reason is None:
                        raise  # not ours to swallow
                    result, error = None, None
                except Exception as raised:
                    result, error = None, raised
                await self._settle(job, result, error)
        except asyncio.CancelledError:
            # Cancelled while waiting for a slot.
            if job.cancel_reason is None:
                raise
            self._report_dropped(job)
        finally:
            self._held.pop(job.lease_id, None)

    async def _settle(self, job: Job, result: bytes | None, error: Exception | None) -> None:
        if job.cancelled.is_set():
            self._report_dropped(job)  # see _Worker._settle
            return
        try:
            if error is None:
                ack = queue_pb2.AckRequest(lease_id=job.lease_id, result=result or b"")
                await _retry.acall(lambda: self._stub.Ack(ack), self._visibility)  # type: ignore[arg-type,return-value]
            else:
                nack = queue_pb2.NackRequest(lease_id=job.lease_id, error=_error_text(error))
                await _retry.acall(lambda: self._stub.Nack(nack), self._visibility)  # type: ignore[arg-type,return-value]
        except BatonError as failed:
            self._report(job, failed)
            return
        self._report(job, error)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._visibility / 3)
            held = [job for job, _ in self._held.values() if not job.cancelled.is_set()]
            await asyncio.gather(*(self._extend(job) for job in held))

    async def _extend(self, job: Job) -> None:
        request = queue_pb2.ExtendRequest(
            lease_id=job.lease_id, visibility_timeout=self._request.visibility_timeout
        )
        try:
            await self._stub.Extend(request)  # type: ignore[misc]
        except grpc.RpcError as error:
            mapped = from_rpc_error(error)
            if isinstance(mapped, FailedPrecondition):
                reason, self._outcomes[job.lease_id] = _lost(mapped)
                self._cancel(job.lease_id, reason)

    async def _drain(self) -> None:
        self._stopping = True
        tasks = [task for _, task in self._held.values()]
        if tasks and self._grace > 0:
            await asyncio.wait(tasks, timeout=self._grace)
        for job, task in list(self._held.values()):
            job._cancel("shutdown")
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._call is not None:
            self._call.cancel()


class Queue:
    """``enqueue()`` and ``consume()`` for the sync :class:`baton_client.Client`."""

    _queue: queue_pb2_grpc.JobQueueServiceStub
    _default_timeout: float | None

    def enqueue(
        self,
        queue: str,
        payload: bytes = b"",
        *,
        type: str = "",
        delay: Seconds | None = None,
        run_at: datetime.datetime | None = None,
        priority: int = 0,
        max_attempts: int = 0,
        retry_backoff: RetryBackoff | None = None,
        dedup_key: str = "",
        dedup_ttl: Seconds | None = None,
    ) -> Enqueued:
        """Adds a job to ``queue``, ready now, after ``delay`` seconds or at ``run_at``.

        With a ``dedup_key``, another enqueue to the queue with the same key within
        ``dedup_ttl`` answers the first job's id with ``duplicate=True``; that also makes the
        call safe to retry, so only then is it retried on UNAVAILABLE — without a key a retry
        after a lost answer could enqueue the job twice."""
        request = _enqueue_request(
            queue,
            payload,
            type,
            delay,
            run_at,
            priority,
            max_attempts,
            retry_backoff,
            dedup_key,
            dedup_ttl,
        )
        if dedup_key:
            response = _retry.call(lambda: self._queue.Enqueue(request), self._default_timeout)
        else:
            response = _retry.once(lambda: self._queue.Enqueue(request))
        return Enqueued(job_id=response.job_id, duplicate=response.duplicate)

    def consume(
        self,
        queue: str,
        handler: SyncHandler,
        concurrency: int = 1,
        *,
        stop: threading.Event | None = None,
        visibility_timeout: Seconds = DEFAULT_VISIBILITY_TIMEOUT,
        types: tuple[str, ...] | list[str] = (),
        consumer: str = "",
        shutdown_grace: Seconds = 0.0,
        on_settled: Settled | None = None,
    ) -> None:
        """Runs ``handler(job)`` on the jobs of ``queue`` in ``concurrency`` threads until
        ``stop`` is set (or an error no retry can fix, which it raises).

        Returning acks the job (bytes returned become its result); raising nacks it with the
        exception's text, to be retried after its backoff. ``job.cancelled`` is set when the
        result no longer counts — CancelJob, a lost lease, or shutdown — and the job is then
        not acked. On ``stop`` no new job starts; running handlers get ``shutdown_grace``
        seconds before ``job.cancelled`` is set (threads cannot be interrupted: return soon
        after), and the jobs never started go back to the queue at once.
        ``visibility_timeout`` bounds how long the jobs of a crashed worker wait before
        another worker gets them; ``on_settled(job, error)`` reports each delivery's end
        (None: acked; the handler's exception: nacked; JobCancelled, JobLeaseLost, or the
        BatonError of a failed Ack/Nack)."""
        request = _consume_request(queue, max(concurrency, 1), visibility_timeout, types, consumer)
        worker = _Worker(
            self._queue,
            request,
            handler,
            max(concurrency, 1),
            stop,
            seconds(shutdown_grace),
            on_settled,
        )
        worker.run()


class AsyncQueue:
    """``enqueue()`` and ``consume()`` for :class:`baton_client.AsyncClient`."""

    _queue: queue_pb2_grpc.JobQueueServiceStub
    _default_timeout: float | None

    async def enqueue(
        self,
        queue: str,
        payload: bytes = b"",
        *,
        type: str = "",
        delay: Seconds | None = None,
        run_at: datetime.datetime | None = None,
        priority: int = 0,
        max_attempts: int = 0,
        retry_backoff: RetryBackoff | None = None,
        dedup_key: str = "",
        dedup_ttl: Seconds | None = None,
    ) -> Enqueued:
        """See :meth:`Queue.enqueue`."""
        request = _enqueue_request(
            queue,
            payload,
            type,
            delay,
            run_at,
            priority,
            max_attempts,
            retry_backoff,
            dedup_key,
            dedup_ttl,
        )
        if dedup_key:
            response = await _retry.acall(
                lambda: self._queue.Enqueue(request),  # type: ignore[arg-type,return-value]
                self._default_timeout,
            )
        else:
            response = await _retry.aonce(lambda: self._queue.Enqueue(request))  # type: ignore[arg-type,return-value]
        return Enqueued(job_id=response.job_id, duplicate=response.duplicate)

    async def consume(
        self,
        queue: str,
        handler: AsyncHandler,
        concurrency: int = 1,
        *,
        stop: asyncio.Event | None = None,
        visibility_timeout: Seconds = DEFAULT_VISIBILITY_TIMEOUT,
        types: tuple[str, ...] | list[str] = (),
        consumer: str = "",
        shutdown_grace: Seconds = 0.0,
        on_settled: Settled | None = None,
    ) -> None:
        """Runs ``await handler(job)`` on the jobs of ``queue``, ``concurrency`` at a time,
        until ``stop`` is set or the task running it is cancelled. As
        :meth:`Queue.consume`, except that a handler whose job is cancelled, whose lease is
        lost, or that outlives the ``shutdown_grace`` is itself cancelled (CancelledError)."""
        request = _consume_request(queue, max(concurrency, 1), visibility_timeout, types, consumer)
        worker = _AsyncWorker(
            self._queue,
            request,
            handler,
            max(concurrency, 1),
            stop,
            seconds(shutdown_grace),
            on_settled,
        )
        await worker.run()
