"""Job queue: ``enqueue`` and ``consume``, the worker loop.

``consume`` runs a handler on each delivered job, at most ``concurrency`` at a time: it acks
the job when the handler returns (its return value is the job's result), nacks it with the
exception's text when the handler raises, extends the lease every third of the visibility
timeout while the job is in hand, stops the handler's work when the job is cancelled or its
lease is lost (and then neither acks nor nacks), and reopens the stream promptly when it
breaks — to whichever replica the balancer picks; a draining replica keeps the leases —
while the handlers already running go on and are acked through it (Ack, Nack and Extend are
retried past a replica restart). Delivery is at least once, so handlers should be idempotent.

A graceful stop (``stop``, or cancelling the asyncio worker) sends ``drain`` on the
bidirectional Consume stream, so Baton delivers nothing more; the deliveries in hand that no
handler started — also those of an earlier stream, cut by a draining replica — go back with
``unstarted_lease_ids`` on the open stream, ready again at once, their attempt not charged;
the running handlers finish and are acked; and the worker returns as soon as they are done
(Baton then ends the stream), or after ``shutdown_grace`` (30 s by default), having flagged
the handlers still running and handed their jobs back by cancelling the stream (a job of an
earlier stream cut short that way waits for its visibility timeout instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import threading
import time
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.trace import Span

from . import _retry, _tracing
from ._acks import DEFAULT_ACK_BATCH_SIZE, AckBatcher, AsyncAckBatcher
from ._connection import Backoff, Seconds, duration, seconds, stream_backoff
from .errors import (
    BatonError,
    FailedPrecondition,
    JobCancelled,
    JobLeaseLost,
    from_rpc_error,
)
from .pb.baton.v1 import queue_pb2
from .pb.baton.v1.errors_pb2 import ErrorReason

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
DEFAULT_SHUTDOWN_GRACE = 30.0
"""Seconds running handlers get to finish after a stop before they are flagged (asyncio:
cancelled); keep it below the platform's kill deadline (Kubernetes: 30 s by default)."""

# How often a sync consume() looks at its stop event (deliveries and handler starts look at
# it too, so nothing starts after it is set).
_STOP_POLL = 0.05
# After the last handler is done, how long a stopping worker waits for Baton to end the
# drained stream (which also confirms the hand-backs) before cancelling it.
_END_PATIENCE = 2.0
# A stream open this long was a success: the reconnect backoff starts afresh.
_STABLE = 1.0
# Threads extending leases in parallel (a sync worker).
_EXTENDERS = 4


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
    trace_context: dict[str, str] = field(default_factory=dict, repr=False)
    """The OpenTelemetry context the job travelled with (W3C ``traceparent``): the
    enqueuer's, or Baton's delivery span when Baton traces. ``consume`` runs the handler in
    it."""

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
        trace_context=dict(job.trace_context),
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
    if error.error_reason == ErrorReason.JOB_CANCELLED:
        outcome: Exception = JobCancelled(f"job cancelled: {error}")
        reason = "cancelled"
    else:
        outcome = JobLeaseLost(f"job lease lost: {error}")
        reason = "lease_lost"
    outcome.__cause__ = error
    return reason, outcome


def _processing(job: Job) -> contextlib.AbstractContextManager[Span]:
    """The job's trace context (and span) its handler, Ack and Nack run in."""
    return _tracing.processing(job.queue, job.id, job.attempt, job.trace_context)


SyncHandler = Callable[[Job], "bytes | None"]
AsyncHandler = Callable[[Job], Awaitable["bytes | None"]]
Settled = Callable[[Job, "BaseException | None"], None]


class _Settling:
    """What the sync and asyncio workers share: reporting how each delivery ended, and the
    bookkeeping of a graceful stop."""

    def __init__(self, request: queue_pb2.ConsumeRequest, on_settled: Settled | None) -> None:
        self._request = request
        self._visibility = request.visibility_timeout.ToTimedelta().total_seconds()
        self._max_in_flight = request.max_in_flight
        self._on_settled = on_settled
        self._outcomes: dict[str, Exception] = {}  # lease id -> why the job was dropped
        self._held: dict[str, Job] = {}  # by lease id, from delivery until settled
        # Held, and no handler started on it yet, whichever stream delivered it: any open
        # stream of the queue can hand it back.
        self._unstarted: dict[str, Job] = {}
        self._stopping = False  # the stop decision: no handler starts from then on

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

    def _hand_back(self, jobs: list[Job]) -> list[queue_pb2.ConsumeRequest]:
        """Forgets ``jobs`` (held, never started) and returns the messages that hand them
        back: Baton makes them ready again at once without charging the attempt."""
        for job in jobs:
            self._held.pop(job.lease_id, None)
            self._unstarted.pop(job.lease_id, None)
        ids = [job.lease_id for job in jobs]
        step = max(self._max_in_flight, 1)  # Baton takes at most max_in_flight per message
        return [
            queue_pb2.ConsumeRequest(unstarted_lease_ids=ids[start : start + step])
            for start in range(0, len(ids), step)
        ]

    def _stop_messages(self) -> list[queue_pb2.ConsumeRequest]:
        """Makes the stop decision; the messages that tell the open stream: every delivery in
        hand never started goes back — also those of earlier streams (cut by a draining
        replica), which Baton takes back through any stream of the queue — and the last
        message also drains. Baton applies a message's hand-back before its drain, and ends a
        drained stream that holds nothing at once, before reading further: a hand-back sent
        after the drain could find the stream gone."""
        self._stopping = True
        messages = self._hand_back(list(self._unstarted.values()))
        if not messages:
            return [queue_pb2.ConsumeRequest(drain=True)]
        messages[-1].drain = True
        return messages

    def _extend_request(self, job: Job) -> queue_pb2.ExtendRequest:
        return queue_pb2.ExtendRequest(
            lease_id=job.lease_id, visibility_timeout=self._request.visibility_timeout
        )

    def _extend_refused(self, job: Job, error: BatonError) -> str | None:
        """The cancel reason a failed Extend means, if any."""
        if not isinstance(error, FailedPrecondition) or job.lease_id not in self._held:
            return None  # UNAVAILABLE past the retry budget: the next beat tries again
        reason, self._outcomes[job.lease_id] = _lost(error)
        return reason


def _reconnect_delay(backoff: Backoff, error: grpc.RpcError | None) -> float:
    """The wait before opening another Consume stream. A draining replica's RetryInfo is not
    waited for: the channel routes the new stream to another replica."""
    if error is None:
        return backoff.delay(None)
    mapped = from_rpc_error(error)
    draining = mapped.error_reason == ErrorReason.SHUTTING_DOWN
    return backoff.delay(None if draining else mapped.retry_after)


def _consume_requests(
    pending: SimpleQueue[queue_pb2.ConsumeRequest | None],
) -> Iterator[queue_pb2.ConsumeRequest]:
    """The request iterator of one sync Consume stream; grpc reads it from its own thread."""
    while (request := pending.get()) is not None:
        yield request


class _SyncStream:
    """One sync Consume stream: ``requests`` feeds it (None half-closes it)."""

    def __init__(self) -> None:
        self.requests: SimpleQueue[queue_pb2.ConsumeRequest | None] = SimpleQueue()
        self.call: Any = None


class _Worker(_Settling):
    """One sync ``consume()`` call: the stream follower (the caller's thread), a pool of
    handler threads, a heartbeat thread that extends leases, and a stop thread that watches
    ``stop`` and then winds the worker down."""

    def __init__(
        self,
        stub: queue_pb2_grpc.JobQueueServiceStub,
        request: queue_pb2.ConsumeRequest,
        handler: SyncHandler,
        concurrency: int,
        stop: threading.Event | None,
        shutdown_grace: float,
        on_settled: Settled | None,
        ack_batch_size: int,
    ) -> None:
        super().__init__(request, on_settled)
        self._stub = stub
        self._handler = handler
        self._stop = stop
        self._grace = shutdown_grace
        # None: one Ack per job.
        self._acks = (
            AckBatcher(stub, self._visibility, ack_batch_size) if ack_batch_size > 0 else None
        )
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="baton-worker")
        self._extender = ThreadPoolExecutor(_EXTENDERS, thread_name_prefix="baton-extend")
        self._extending: set[str] = set()  # lease ids with an Extend under way
        self._guard = threading.Condition()
        self._stopped = threading.Event()  # set with the stop decision
        self._finished = threading.Event()
        self._stream: _SyncStream | None = None  # the open stream, if any

    def run(self) -> None:
        heartbeat = threading.Thread(target=self._heartbeat, name="baton-heartbeat", daemon=True)
        stopper = threading.Thread(target=self._watch_stop, name="baton-stop", daemon=True)
        heartbeat.start()
        stopper.start()
        backoff = stream_backoff()
        try:
            while not self._stopped.is_set():
                error = self._follow(backoff)
                if self._stopped.is_set():
                    break
                if error is not None and error.code() not in _RESUMABLE:  # type: ignore[attr-defined]
                    raise from_rpc_error(error) from None
                if self._stopped.wait(_reconnect_delay(backoff, error)):
                    break
        finally:
            with self._guard:
                self._begin_stop()
            stopper.join()
            self._executor.shutdown(wait=True)
            self._finished.set()
            self._extender.shutdown(wait=False, cancel_futures=True)

    def _follow(self, backoff: Backoff) -> grpc.RpcError | None:
        """Reads one stream until it ends; returns the error that ended it."""
        stream = _SyncStream()
        stream.requests.put(self._request)
        opened_at = time.monotonic()
        with self._guard:
            if self._stopped.is_set():
                return None
            stream.call = self._stub.Consume(
                _consume_requests(stream.requests), wait_for_ready=True
            )
            self._stream = stream
        error: grpc.RpcError | None = None
        try:
            for response in stream.call:
                backoff.reset()
                event = response.WhichOneof("event")
                if event == "delivery":
                    self._deliver(stream, response.delivery)
                elif event == "cancelled":
                    self._cancel(response.cancelled.lease_id, "cancelled")
        except grpc.RpcError as raised:
            error = raised
        if time.monotonic() - opened_at > _STABLE:
            backoff.reset()
        stream.requests.put(None)  # ends grpc's request thread
        with self._guard:
            if self._stream is stream:
                self._stream = None
            self._guard.notify_all()
        return error

    def _begin_stop(self) -> None:
        """Under the guard: the stop decision, told to the open stream (if any; without one,
        the deliveries in hand are kept and run: there is no stream to hand them back on)."""
        if self._stopped.is_set():
            return
        messages = self._stop_messages() if self._stream is not None else []
        self._stopping = True
        self._stopped.set()
        if self._stream is not None:
            for message in messages:
                self._stream.requests.put(message)
        self._guard.notify_all()

    def _stop_requested(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _deliver(self, stream: _SyncStream, delivery: queue_pb2.Delivery) -> None:
        job = _job(delivery)
        with self._guard:
            if self._stop_requested():
                self._begin_stop()
            if self._stopping:
                # Arrived after the stop decision: never started, so it goes back at once
                # and its attempt is not charged.
                for message in self._hand_back([job]):
                    stream.requests.put(message)
                return
            self._held[job.lease_id] = job
            self._unstarted[job.lease_id] = job
        self._executor.submit(self._process, job)

    def _cancel(self, lease_id: str, reason: str) -> None:
        with self._guard:
            job = self._held.get(lease_id)
        if job is not None:
            job._cancel(reason)

    def _process(self, job: Job) -> None:
        with self._guard:
            if self._stop_requested():
                self._begin_stop()
            if self._unstarted.pop(job.lease_id, None) is None:
                return  # handed back
        try:
            if job.cancelled.is_set():
                self._report_dropped(job)  # cancelled before it started
                return
            with _processing(job) as span:
                try:
                    result, error = self._handler(job), None
                except Exception as raised:
                    result, error = None, raised
                _tracing.failed(span, self._settle(job, result, error))
        finally:
            with self._guard:
                self._held.pop(job.lease_id, None)
                self._guard.notify_all()

    def _settle(
        self, job: Job, result: bytes | None, error: Exception | None
    ) -> BaseException | None:
        """Acks or nacks the job; returns what went wrong (reported), if anything."""
        if job.cancelled.is_set():
            # Cut short by shutdown: not the job's fault, so no Nack (which would use up an
            # attempt); the stream's close hands it back at once.
            self._report_dropped(job)
            return None
        # Retried past a replica restart; past the visibility timeout (when it is longer)
        # the lease has expired and every retry would be refused anyway.
        try:
            if error is None:
                ack = queue_pb2.AckRequest(lease_id=job.lease_id, result=result or b"")
                if self._acks is not None:
                    refused = self._acks.ack(ack)
                    if refused is not None:
                        raise refused
                else:
                    _retry.settle(lambda: self._stub.Ack(ack, **_retry.READY), self._visibility)
            else:
                nack = queue_pb2.NackRequest(lease_id=job.lease_id, error=_error_text(error))
                _retry.settle(lambda: self._stub.Nack(nack, **_retry.READY), self._visibility)
        except BatonError as failed:
            self._report(job, failed)
            return failed
        self._report(job, error)
        return error

    def _watch_stop(self) -> None:
        """Waits for the stop decision (``stop`` set, or consume() ending), then winds down:
        the running handlers get the grace to finish, then are flagged; once every handler
        is done, the stream is left to Baton to end (it does once this stream holds nothing)
        or, if jobs were cut short, cancelled so that they go back at once."""
        while not self._stopped.wait(_STOP_POLL):
            if self._stop_requested():
                with self._guard:
                    self._begin_stop()
        with self._guard:
            give_up_at = time.monotonic() + self._grace
            while self._held and (left := give_up_at - time.monotonic()) > 0:
                self._guard.wait(left)
            cut_short = list(self._held.values())
            for job in cut_short:
                job._cancel("shutdown")
            # Threads cannot be interrupted: a handler that ignores job.cancelled is waited
            # for, and its result is not acked.
            while self._held:
                self._guard.wait()
            end_by = time.monotonic() + (0.0 if cut_short else _END_PATIENCE)
            while self._stream is not None and (left := end_by - time.monotonic()) > 0:
                self._guard.wait(left)
            stream = self._stream
        if stream is not None:
            stream.call.cancel()

    def _heartbeat(self) -> None:
        """Extends every held lease each third of the visibility timeout (so that two failed
        Extends in a row still leave time for a third)."""
        while not self._finished.wait(self._visibility / 3):
            with self._guard:
                due = [
                    job
                    for job in self._held.values()
                    if not job.cancelled.is_set() and job.lease_id not in self._extending
                ]
                self._extending.update(job.lease_id for job in due)
            for job in due:
                try:
                    self._extender.submit(self._extend, job)
                except RuntimeError:  # shut down: the worker is finishing
                    return

    def _extend(self, job: Job) -> None:
        request = self._extend_request(job)
        try:
            with _tracing.attached(_tracing.job_context(job.trace_context)):
                _retry.settle(lambda: self._stub.Extend(request, **_retry.READY))
        except BatonError as error:
            with self._guard:
                reason = self._extend_refused(job, error)
            if reason is not None:
                job._cancel(reason)
        finally:
            with self._guard:
                self._extending.discard(job.lease_id)


class _AsyncStream:
    """One asyncio Consume stream: ``requests`` feeds it (None half-closes it)."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[queue_pb2.ConsumeRequest | None] = asyncio.Queue()
        self.call: Any = None
        self.reader: asyncio.Task[grpc.RpcError | None] | None = None

    async def iterate(self) -> AsyncIterator[queue_pb2.ConsumeRequest]:
        while (request := await self.requests.get()) is not None:
            yield request


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
        ack_batch_size: int,
    ) -> None:
        super().__init__(request, on_settled)
        self._stub = stub
        self._handler = handler
        self._stop = stop or asyncio.Event()
        self._grace = shutdown_grace
        self._acks = (
            AsyncAckBatcher(stub, self._visibility, ack_batch_size) if ack_batch_size > 0 else None
        )
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}  # by lease id, one per held job
        self._stopped = asyncio.Event()  # set with the stop decision
        self._stream: _AsyncStream | None = None

    async def run(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeat())
        watcher = asyncio.create_task(self._watch_stop())
        backoff = stream_backoff()
        try:
            while not self._stopped.is_set():
                stream = self._open()
                opened_at = time.monotonic()
                assert stream.reader is not None
                # asyncio.wait leaves the reader alone when consume() itself is cancelled:
                # the stream must outlive that, to drain and hand back.
                stopped = asyncio.create_task(self._stopped.wait())
                try:
                    await asyncio.wait({stream.reader, stopped}, return_when=FIRST_COMPLETED)
                finally:
                    stopped.cancel()
                if self._stopped.is_set():
                    break
                error = stream.reader.result()
                if time.monotonic() - opened_at > _STABLE:
                    backoff.reset()
                if error is not None and error.code() not in _RESUMABLE:  # type: ignore[attr-defined]
                    raise from_rpc_error(error) from None
                with contextlib.suppress(TimeoutError):
                    delay = _reconnect_delay(backoff, error)
                    await asyncio.wait_for(self._stopped.wait(), delay)
        finally:
            # Also when consume() itself is cancelled: the stop is as graceful as for
            # ``stop``, so no job stays leased to a worker that is gone.
            self._begin_stop()
            await self._wind_down()
            heartbeat.cancel()
            watcher.cancel()
            await asyncio.gather(heartbeat, watcher, return_exceptions=True)

    def _open(self) -> _AsyncStream:
        stream = _AsyncStream()
        stream.requests.put_nowait(self._request)
        stream.call = self._stub.Consume(stream.iterate(), wait_for_ready=True)
        stream.reader = asyncio.create_task(self._read(stream))
        self._stream = stream
        return stream

    async def _read(self, stream: _AsyncStream) -> grpc.RpcError | None:
        error: grpc.RpcError | None = None
        try:
            async for response in stream.call:
                event = response.WhichOneof("event")
                if event == "delivery":
                    self._deliver(stream, response.delivery)
                elif event == "cancelled":
                    self._cancel(response.cancelled.lease_id, "cancelled")
        except grpc.RpcError as raised:
            error = raised
        except asyncio.CancelledError:
            pass  # the call was cancelled by _wind_down
        finally:
            stream.requests.put_nowait(None)
            if self._stream is stream:
                self._stream = None
        return error

    def _begin_stop(self) -> None:
        """See :meth:`_Worker._begin_stop`."""
        if self._stopped.is_set():
            return
        if self._stream is not None:
            before = set(self._unstarted)
            for message in self._stop_messages():
                self._stream.requests.put_nowait(message)
            for lease_id in before - set(self._unstarted):  # handed back
                self._tasks.pop(lease_id).cancel()
        self._stopping = True
        self._stopped.set()

    async def _watch_stop(self) -> None:
        await self._stop.wait()
        self._begin_stop()

    def _deliver(self, stream: _AsyncStream, delivery: queue_pb2.Delivery) -> None:
        job = _job(delivery)
        if self._stop.is_set():
            self._begin_stop()
        if self._stopping:
            for message in self._hand_back([job]):  # see _Worker._deliver
                stream.requests.put_nowait(message)
            return
        self._held[job.lease_id] = job
        self._unstarted[job.lease_id] = job
        self._tasks[job.lease_id] = asyncio.create_task(
            self._process(job), name=f"baton-job-{job.id}"
        )

    def _cancel(self, lease_id: str, reason: str) -> None:
        job = self._held.get(lease_id)
        if job is not None:
            job._cancel(reason)
            task = self._tasks.get(lease_id)
            if task is not None:
                task.cancel()

    async def _process(self, job: Job) -> None:
        try:
            async with self._slots:
                if self._stop.is_set():
                    self._begin_stop()  # hands this job back and cancels this task
                    await asyncio.sleep(0)
                self._unstarted.pop(job.lease_id, None)
                if job.cancelled.is_set():
                    self._report_dropped(job)  # cancelled before it started
                    return
                with _processing(job) as span:
                    try:
                        result, error = await self._handler(job), None
                    except asyncio.CancelledError:
                        if job.cancel_reason is None:
                            raise  # not ours to swallow
                        result, error = None, None
                    except Exception as raised:
                        result, error = None, raised
                    _tracing.failed(span, await self._settle(job, result, error))
        except asyncio.CancelledError:
            # Handed back, or cancelled while waiting for a slot.
            if job.cancel_reason is None and job.lease_id in self._held:
                raise
            self._report_dropped(job)
        finally:
            self._held.pop(job.lease_id, None)
            self._unstarted.pop(job.lease_id, None)
            self._tasks.pop(job.lease_id, None)

    async def _settle(
        self, job: Job, result: bytes | None, error: Exception | None
    ) -> BaseException | None:
        if job.cancelled.is_set():
            self._report_dropped(job)  # see _Worker._settle
            return None
        try:
            if error is None:
                ack = queue_pb2.AckRequest(lease_id=job.lease_id, result=result or b"")
                if self._acks is not None:
                    refused = await self._acks.ack(ack)
                    if refused is not None:
                        raise refused
                else:
                    await _retry.asettle(
                        lambda: self._stub.Ack(ack, **_retry.READY),  # type: ignore[arg-type,return-value]
                        self._visibility,
                    )
            else:
                nack = queue_pb2.NackRequest(lease_id=job.lease_id, error=_error_text(error))
                await _retry.asettle(
                    lambda: self._stub.Nack(nack, **_retry.READY),  # type: ignore[arg-type,return-value]
                    self._visibility,
                )
        except BatonError as failed:
            self._report(job, failed)
            return failed
        self._report(job, error)
        return error

    async def _heartbeat(self) -> None:
        extending: set[str] = set()

        async def extend(job: Job) -> None:
            request = self._extend_request(job)
            try:
                with _tracing.attached(_tracing.job_context(job.trace_context)):
                    await _retry.asettle(lambda: self._stub.Extend(request, **_retry.READY))  # type: ignore[arg-type,return-value]
            except BatonError as error:
                reason = self._extend_refused(job, error)
                if reason is not None:
                    self._cancel(job.lease_id, reason)
            finally:
                extending.discard(job.lease_id)

        beats: set[asyncio.Task[None]] = set()
        try:
            while True:
                await asyncio.sleep(self._visibility / 3)
                for job in list(self._held.values()):
                    if job.cancelled.is_set() or job.lease_id in extending:
                        continue
                    extending.add(job.lease_id)
                    beat = asyncio.create_task(extend(job))
                    beats.add(beat)
                    beat.add_done_callback(beats.discard)
        finally:
            for beat in beats:
                beat.cancel()

    async def _wind_down(self) -> None:
        """See :meth:`_Worker._watch_stop`; a handler that outlives the grace is cancelled."""
        tasks = list(self._tasks.values())
        if tasks and self._grace > 0:
            await asyncio.wait(tasks, timeout=self._grace)
        cut_short = False
        for lease_id, task in list(self._tasks.items()):
            cut_short = True
            self._held[lease_id]._cancel("shutdown")
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._acks is not None:
            await self._acks.aclose()  # only the acks of jobs cut short can be left
        stream = self._stream
        if stream is None or stream.reader is None:
            return
        if not cut_short:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(stream.reader), _END_PATIENCE)
        stream.call.cancel()
        await asyncio.gather(stream.reader, return_exceptions=True)


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
        shutdown_grace: Seconds = DEFAULT_SHUTDOWN_GRACE,
        on_settled: Settled | None = None,
        ack_batch_size: int = DEFAULT_ACK_BATCH_SIZE,
    ) -> None:
        """Runs ``handler(job)`` on the jobs of ``queue`` in ``concurrency`` threads until
        ``stop`` is set (or an error no retry can fix, which it raises).

        Returning acks the job (bytes returned become its result); raising nacks it with the
        exception's text, to be retried after its backoff. ``job.cancelled`` is set when the
        result no longer counts — CancelJob, a lost lease, or shutdown — and the job is then
        not acked. On ``stop`` Baton is told to deliver no more, no new job starts, the jobs
        never started go back to the queue at once without using up an attempt, and running
        handlers finish and are acked; consume() returns as soon as they are done. Handlers
        still running after ``shutdown_grace`` seconds get ``job.cancelled`` set (threads
        cannot be interrupted: return soon after) and their jobs go back to the queue.
        ``visibility_timeout`` bounds how long the jobs of a crashed worker wait before
        another worker gets them; ``on_settled(job, error)`` reports each delivery's end
        (None: acked; the handler's exception: nacked; JobCancelled, JobLeaseLost, or the
        BatonError of a failed Ack/Nack). Each handler runs in the job's OpenTelemetry trace
        (``job.trace_context``), in a span "process <queue>" of kind consumer, as do the
        job's Ack or Nack; with ``tracing=True`` on the client they carry it to Baton.

        Acks are coalesced: one goes out at once as an AckBatch call when none of this
        worker's is in flight; those of handlers finishing while one is go out together when
        it returns, or once ``ack_batch_size`` (default 256; keep it within Baton's batch
        limit, 1,000 by default) of them wait, or once the oldest has waited 10 ms. Each job
        keeps its own outcome, as with one Ack per job, and each call carries the trace
        context of the first job it acks. ``ack_batch_size=0`` sends one Ack per job."""
        request = _consume_request(queue, max(concurrency, 1), visibility_timeout, types, consumer)
        worker = _Worker(
            self._queue,
            request,
            handler,
            max(concurrency, 1),
            stop,
            seconds(shutdown_grace),
            on_settled,
            ack_batch_size,
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
        shutdown_grace: Seconds = DEFAULT_SHUTDOWN_GRACE,
        on_settled: Settled | None = None,
        ack_batch_size: int = DEFAULT_ACK_BATCH_SIZE,
    ) -> None:
        """Runs ``await handler(job)`` on the jobs of ``queue``, ``concurrency`` at a time,
        until ``stop`` is set or the task running it is cancelled (a stop as graceful as
        ``stop``). As :meth:`Queue.consume`, except that a handler whose job is cancelled,
        whose lease is lost, or that outlives the ``shutdown_grace`` is itself cancelled
        (CancelledError)."""
        request = _consume_request(queue, max(concurrency, 1), visibility_timeout, types, consumer)
        worker = _AsyncWorker(
            self._queue,
            request,
            handler,
            max(concurrency, 1),
            stop,
            seconds(shutdown_grace),
            on_settled,
            ack_batch_size,
        )
        await worker.run()
