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

A handler reports how far it is with ``job.progress(value, detail)`` (``await`` it in
asyncio), kept with the job and sent to its watchers. Callers follow a job with
``watch_job`` (its snapshots, until it finishes) or ``wait_for_job`` (its outcome:
request/response over the queue is ``enqueue`` then ``wait_for_job``), a whole queue with
``watch_queue`` (its events from the moment the watch starts), and page through a queue's
jobs in one state with ``list_jobs``. The watches are reopened, on whichever replica the
balancer picks, when their stream ends UNAVAILABLE (a draining replica ends them so).

A job may belong to a ``group`` (a tenant, a customer): deliveries go round-robin across a
queue's groups, and ``configure_queue`` bounds how many jobs of one group are active at once,
makes each group strict FIFO, or limits job starts per period (``get_queue_config`` reads it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import threading
import time
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc

from . import _retry, _tracing
from ._acks import DEFAULT_ACK_BATCH_SIZE, AckBatcher, AsyncAckBatcher
from ._connection import Backoff, Seconds, duration, seconds, stream_backoff, within
from .election import _reopen_delay
from .errors import (
    BatonError,
    DeadlineExceeded,
    FailedPrecondition,
    JobCancelled,
    JobFailed,
    JobLeaseLost,
    from_rpc_error,
)
from .pb.baton.v1 import queue_pb2
from .pb.baton.v1.errors_pb2 import ErrorReason
from .ratelimit import Limit, _limit, _limit_proto

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


@dataclass(frozen=True)
class QueueConfig:
    """How a queue delivers (``configure_queue``, ``get_queue_config``); the defaults are a
    queue never configured: no group limit, no start limit."""

    group_concurrency: int = 0
    """At most this many jobs of one group active at once, on every replica together; 0
    means no limit (at most 10,000)."""
    group_fifo: bool = False
    """Each group strict FIFO: one job at a time, in enqueue order; a job waiting to retry
    holds its group (one that goes dead or is cancelled releases it)."""
    start_limit: Limit | None = None
    """At most this many job starts (deliveries) per period; jobs over it stay READY until
    it allows them. None: no limit."""
    start_limit_per_group: bool = False
    """Apply ``start_limit`` to each group on its own (the ungrouped jobs as one more group)
    rather than to the whole queue."""


def _queue_config_proto(config: QueueConfig) -> queue_pb2.QueueConfig:
    proto = queue_pb2.QueueConfig(
        group_concurrency=config.group_concurrency,
        group_fifo=config.group_fifo,
        start_limit_per_group=config.start_limit_per_group,
    )
    if config.start_limit is not None:
        proto.start_limit.CopyFrom(_limit_proto(config.start_limit))
    return proto


def _queue_config(proto: queue_pb2.QueueConfig) -> QueueConfig:
    return QueueConfig(
        group_concurrency=proto.group_concurrency,
        group_fifo=proto.group_fifo,
        start_limit=_limit(proto.start_limit) if proto.HasField("start_limit") else None,
        start_limit_per_group=proto.start_limit_per_group,
    )


class JobState(enum.IntEnum):
    """Where a job is in its life; see proto/baton/v1/queue.proto."""

    UNSPECIFIED = queue_pb2.JOB_STATE_UNSPECIFIED
    """A state this version of the client does not know (a newer server's)."""
    READY = queue_pb2.JOB_STATE_READY
    """Waiting in the queue, due now."""
    SCHEDULED = queue_pb2.JOB_STATE_SCHEDULED
    """Waiting for its ``run_at`` (a delay or a scheduled time)."""
    ACTIVE = queue_pb2.JOB_STATE_ACTIVE
    """Leased to a worker."""
    SUCCEEDED = queue_pb2.JOB_STATE_SUCCEEDED
    """Finished: acked, with its ``result``."""
    FAILED = queue_pb2.JOB_STATE_FAILED
    """An attempt failed; waiting for its backoff to retry at ``run_at``."""
    DEAD = queue_pb2.JOB_STATE_DEAD
    """Finished: out of attempts or dead-lettered; in the dead-letter set until redriven."""
    CANCELLED = queue_pb2.JOB_STATE_CANCELLED
    """Finished: cancelled by CancelJob."""

    @property
    def finished(self) -> bool:
        """SUCCEEDED, DEAD or CANCELLED."""
        return self in (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED)


def _job_state(value: int) -> JobState:
    try:
        return JobState(value)
    except ValueError:
        return JobState.UNSPECIFIED


class QueueEventKind(enum.IntEnum):
    """What a :class:`QueueEvent` tells; see proto/baton/v1/queue.proto."""

    ENQUEUED = queue_pb2.QUEUE_EVENT_KIND_ENQUEUED
    """Added by enqueue, EnqueueBatch or a schedule (READY or SCHEDULED; ``type`` is set)."""
    ACTIVE = queue_pb2.QUEUE_EVENT_KIND_ACTIVE
    """Delivered to a worker (``attempt`` is the delivery's)."""
    PROGRESS = queue_pb2.QUEUE_EVENT_KIND_PROGRESS
    """Its handler reported progress (``progress``)."""
    SUCCEEDED = queue_pb2.QUEUE_EVENT_KIND_SUCCEEDED
    """Acked."""
    FAILED = queue_pb2.QUEUE_EVENT_KIND_FAILED
    """Nacked and waiting to retry (``error``, ``run_at``)."""
    DEAD = queue_pb2.QUEUE_EVENT_KIND_DEAD
    """Out of attempts or dead-lettered (``error``)."""
    STALLED = queue_pb2.QUEUE_EVENT_KIND_STALLED
    """Its lease expired or its worker's stream ended without settling it: READY again."""
    RETURNED = queue_pb2.QUEUE_EVENT_KIND_RETURNED
    """Handed back unstarted by a stopping worker: READY again, the attempt not charged."""
    REDRIVEN = queue_pb2.QUEUE_EVENT_KIND_REDRIVEN
    """Moved from the dead-letter set back to READY by RetryDeadJobs."""
    CANCELLED = queue_pb2.QUEUE_EVENT_KIND_CANCELLED
    """Cancelled by CancelJob."""


@dataclass(frozen=True)
class JobProgress:
    """How far a handler said it was with a job (:meth:`Job.progress`)."""

    value: float
    """The application's measure: a percentage, a count of items."""
    detail: bytes
    """An optional small detail (a stage, a message), up to 4 KiB."""
    reported_at: datetime.datetime
    """When it was reported (Redis server clock)."""


def _time(message: Any, name: str) -> datetime.datetime | None:
    """The Timestamp field ``name`` of ``message`` as a datetime, None when unset."""
    if not message.HasField(name):
        return None
    stamp: datetime.datetime = getattr(message, name).ToDatetime(datetime.UTC)
    return stamp


def _progress(message: Any) -> JobProgress | None:
    """The ``progress`` field of a Job or QueueEvent, None when unset."""
    if not message.HasField("progress"):
        return None
    progress = message.progress
    return JobProgress(
        value=progress.value,
        detail=progress.detail,
        reported_at=progress.reported_at.ToDatetime(datetime.UTC),
    )


@dataclass(frozen=True)
class JobSnapshot:
    """A job as Baton keeps it, at one moment: from ``watch_job``, ``wait_for_job`` and
    ``list_jobs`` (a handler gets a :class:`Job`, one delivery, instead)."""

    id: str
    queue: str
    type: str
    payload: bytes
    """Empty in the snapshots of ``watch_job`` and ``wait_for_job`` (Baton does not repeat
    it: ``client.stubs.queue.GetJob`` reads it); ``list_jobs`` includes it."""
    priority: int
    state: JobState
    attempts: int
    """How many times it was delivered since it was enqueued or last redriven."""
    max_attempts: int
    created_at: datetime.datetime
    run_at: datetime.datetime | None
    """When it is (or was) due: its scheduled time, or the time of its next retry."""
    last_error: str
    """The exception text of the latest failed attempt, or a note that a lease expired."""
    result: bytes
    """What the handler returned; empty until SUCCEEDED."""
    dedup_key: str
    retry_backoff: RetryBackoff | None
    """The retry schedule in effect (Baton's defaults filled in), in seconds."""
    finished_at: datetime.datetime | None
    """When it became SUCCEEDED, DEAD or CANCELLED; None before."""
    progress: JobProgress | None
    """The latest progress reported by any of its deliveries; None before the first."""
    group: str = ""
    """The group given to ``enqueue``; empty for none."""
    trace_context: dict[str, str] = field(default_factory=dict, repr=False)
    """The W3C trace context the job travels with (see :attr:`Job.trace_context`)."""

    @property
    def finished(self) -> bool:
        """SUCCEEDED, DEAD or CANCELLED."""
        return self.state.finished


def _snapshot(job: queue_pb2.Job) -> JobSnapshot:
    backoff = None
    if job.HasField("backoff"):
        backoff = RetryBackoff(
            initial=job.backoff.initial.ToTimedelta().total_seconds(),
            max=job.backoff.max.ToTimedelta().total_seconds(),
            multiplier=job.backoff.multiplier,
        )
    return JobSnapshot(
        id=job.job_id,
        queue=job.queue,
        type=job.type,
        payload=job.payload,
        priority=job.priority,
        state=_job_state(job.state),
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        created_at=job.created_at.ToDatetime(datetime.UTC),
        run_at=_time(job, "run_at"),
        last_error=job.last_error,
        result=job.result,
        dedup_key=job.dedup_key,
        retry_backoff=backoff,
        finished_at=_time(job, "finished_at"),
        progress=_progress(job),
        group=job.group,
        trace_context=dict(job.trace_context),
    )


@dataclass(frozen=True)
class JobPage:
    """One page of ``list_jobs``."""

    jobs: list[JobSnapshot]
    next_page_token: str
    """Pass as ``page_token`` for the next page; empty on the last page."""


@dataclass(frozen=True)
class QueueEvent:
    """One thing that happened to one job of a watched queue."""

    kind: QueueEventKind
    job_id: str
    state: JobState
    """The job's state after the event."""
    attempt: int
    """The job's delivery count after the event."""
    at: datetime.datetime
    """When it happened (Redis server clock)."""
    progress: JobProgress | None
    """PROGRESS: the progress reported; else None."""
    error: str
    """FAILED and DEAD: the error (the handler's exception text, or why the lease ended)."""
    run_at: datetime.datetime | None
    """ENQUEUED as SCHEDULED, and FAILED: when the job is due; else None."""
    type: str
    """ENQUEUED: the job's type."""


@dataclass(frozen=True)
class EventsMissed:
    """Events of the watched queue were lost between the previous event and the next: the
    watcher read more slowly than they came, its replica fell behind Redis, or the watch's
    stream broke and was reopened."""

    count: int
    """How many were lost; 0 when unknown (always so after a reopened stream)."""


def _queue_event(event: queue_pb2.QueueEvent) -> QueueEvent | None:
    """The event, or None for a kind this version does not know (a newer server's)."""
    try:
        kind = QueueEventKind(event.kind)
    except ValueError:
        return None
    return QueueEvent(
        kind=kind,
        job_id=event.job_id,
        state=_job_state(event.state),
        attempt=event.attempt,
        at=event.at.ToDatetime(datetime.UTC),
        progress=_progress(event),
        error=event.error,
        run_at=_time(event, "run_at"),
        type=event.type,
    )


# Orders a job's cancellation with the first use of its `cancelled` Event (one lock for all:
# both are rare).
_CANCEL_LOCK = threading.Lock()


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
    group: str = ""
    """The group given to ``enqueue``; empty for none."""
    cancel_reason: str | None = None
    """``"cancelled"``, ``"lease_lost"`` or ``"shutdown"`` once ``cancelled`` is set."""
    trace_context: dict[str, str] = field(default_factory=dict, repr=False)
    """The OpenTelemetry context the job travelled with (W3C ``traceparent``): the
    enqueuer's, or Baton's delivery span when Baton traces. ``consume`` runs the handler in
    it."""
    last_progress: JobProgress | None = None
    """The latest progress reported for the job — on a retry, by an earlier attempt, which a
    handler can resume from; None before the first report."""
    _stub: queue_pb2_grpc.JobQueueServiceStub | None = field(default=None, repr=False)
    # Told when Baton refuses a progress report: the lease is no longer this delivery's.
    _refused: Callable[[Job, BatonError], None] | None = field(default=None, repr=False)
    # Made on first use: most handlers never look, and an Event costs a job ~2 µs.
    _cancelled: threading.Event | None = field(default=None, repr=False)

    @property
    def cancelled(self) -> threading.Event:
        """Set when the handler should stop: the job was cancelled, its lease lost, or the
        worker is shutting down. Its result no longer counts; long handlers should check it."""
        event = self._cancelled
        if event is None:
            with _CANCEL_LOCK:  # see _cancel
                if self._cancelled is None:
                    self._cancelled = threading.Event()
                    if self.cancel_reason is not None:
                        self._cancelled.set()
                event = self._cancelled
        return event

    def progress(self, value: float, detail: bytes = b"") -> None:
        """Reports how far the handler is with the job: ``value`` (any finite number: a
        percentage, a count of items — the application's choice) and an optional
        ``detail`` (at most 4 KiB: a stage, a message). Baton keeps the latest with the job
        (``JobSnapshot.progress``, and ``last_progress`` of a retry) and sends it to the
        job's and the queue's watchers. It does not prolong the lease (``consume`` does).

        Retried on UNAVAILABLE (a repeated report only sets the same progress again).
        When Baton refuses it because the job is no longer this delivery's — cancelled
        (``JOB_CANCELLED``) or its lease lost (``JOB_NOT_LEASED``) — ``cancelled`` is set,
        the job will not be acked, and the :class:`FailedPrecondition` is raised."""
        stub, request = self._progress_request(value, detail)
        try:
            _retry.settle(lambda: stub.UpdateProgress(request, **_retry.READY))
        except FailedPrecondition as refused:
            self._lose(refused)
            raise

    def _progress_request(
        self, value: float, detail: bytes
    ) -> tuple[queue_pb2_grpc.JobQueueServiceStub, queue_pb2.UpdateProgressRequest]:
        if self._stub is None:
            raise RuntimeError("progress() reports on a job delivered by consume()")
        request = queue_pb2.UpdateProgressRequest(
            lease_id=self.lease_id, value=value, detail=detail
        )
        return self._stub, request

    def _lose(self, refused: BatonError) -> None:
        if self._refused is not None:
            self._refused(self, refused)

    def _cancel(self, reason: str) -> None:
        # Under the lock with `cancelled`'s first use: an Event made meanwhile is made set.
        with _CANCEL_LOCK:
            if self.cancel_reason is None:
                self.cancel_reason = reason
            event = self._cancelled
        if event is not None:
            event.set()


class AsyncJob(Job):
    """One delivery of a job to an asyncio handler: a :class:`Job` whose ``progress`` is a
    coroutine."""

    async def progress(self, value: float, detail: bytes = b"") -> None:  # type: ignore[override]
        """See :meth:`Job.progress`: ``await job.progress(50, b"resizing")``."""
        stub, request = self._progress_request(value, detail)
        try:
            await _retry.asettle(
                lambda: stub.UpdateProgress(request, **_retry.READY)  # type: ignore[arg-type,return-value]
            )
        except FailedPrecondition as refused:
            self._lose(refused)
            raise


_Delivered = TypeVar("_Delivered", bound=Job)


def _job(
    delivery: queue_pb2.Delivery,
    kind: type[_Delivered],
    stub: queue_pb2_grpc.JobQueueServiceStub,
    refused: Callable[[Job, BatonError], None],
) -> _Delivered:
    job = delivery.job
    return kind(
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
        group=job.group,
        trace_context=dict(job.trace_context),
        last_progress=_progress(job),
        _stub=stub,
        _refused=refused,
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
    group: str,
) -> queue_pb2.EnqueueRequest:
    request = queue_pb2.EnqueueRequest(
        queue=queue,
        payload=payload,
        type=type,
        priority=priority,
        max_attempts=max_attempts,
        dedup_key=dedup_key,
        group=group,
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
    queue: str,
    concurrency: int,
    prefetch: int,
    visibility_timeout: Seconds,
    types: Any,
    consumer: str,
) -> queue_pb2.ConsumeRequest:
    return queue_pb2.ConsumeRequest(
        queue=queue,
        max_in_flight=concurrency + max(prefetch, 0),
        visibility_timeout=duration(visibility_timeout),
        types=list(types),
        consumer=consumer,
        # A fetch's jobs in one message: each message read costs grpcio's Python layer more
        # than the job it carries costs the worker. Older servers send one job a message.
        batch_deliveries=True,
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


def _processing(job: Job) -> _tracing.Processing:
    """The job's trace context (and span) its handler, Ack and Nack run in."""
    return _tracing.Processing(job.queue, job.id, job.attempt, job.trace_context)


SyncHandler = Callable[[Job], "bytes | None"]
AsyncHandler = Callable[[AsyncJob], Awaitable["bytes | None"]]
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
        # Lease ids whose Ack or Nack is under way. They are still extended (an ack may wait
        # for a batch), but an Extend refused for one leaves the outcome to the settlement.
        self._settling: set[str] = set()
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
        if job.lease_id in self._settling:
            # Most likely refused because the Ack got there first; if the lease was lost
            # instead, the Ack is refused too and reports it.
            return None
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
                elif event == "deliveries":
                    for delivery in response.deliveries.deliveries:
                        self._deliver(stream, delivery)
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
        job = _job(delivery, Job, self._stub, self._refused)
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
            if job.cancel_reason is not None:
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
                self._settling.discard(job.lease_id)
                self._guard.notify_all()

    def _settle(
        self, job: Job, result: bytes | None, error: Exception | None
    ) -> BaseException | None:
        """Acks or nacks the job; returns what went wrong (reported), if anything."""
        if job.cancel_reason is not None:
            # Cut short by shutdown: not the job's fault, so no Nack (which would use up an
            # attempt); the stream's close hands it back at once.
            self._report_dropped(job)
            return None
        self._settling.add(job.lease_id)
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

    def _refused(self, job: Job, error: BatonError) -> None:
        """Flags a job whose Extend or progress report Baton refused because its lease is
        no longer this worker's."""
        with self._guard:
            reason = self._extend_refused(job, error)
        if reason is not None:
            job._cancel(reason)

    def _heartbeat(self) -> None:
        """Extends every held lease each third of the visibility timeout (so that two failed
        Extends in a row still leave time for a third)."""
        while not self._finished.wait(self._visibility / 3):
            with self._guard:
                due = [
                    job
                    for job in self._held.values()
                    if job.cancel_reason is None and job.lease_id not in self._extending
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
            self._refused(job, error)
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
                    await within(self._stopped.wait(), delay)
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
                elif event == "deliveries":
                    for delivery in response.deliveries.deliveries:
                        self._deliver(stream, delivery)
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
        job = _job(delivery, AsyncJob, self._stub, self._progress_refused)
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

    def _progress_refused(self, job: Job, error: BatonError) -> None:
        """Flags a job whose progress report Baton refused because its lease is no longer
        this worker's; the handler gets the error (its task is left to handle it)."""
        reason = self._extend_refused(job, error)
        if reason is not None:
            job._cancel(reason)

    async def _process(self, job: AsyncJob) -> None:
        try:
            async with self._slots:
                if self._stop.is_set():
                    self._begin_stop()  # hands this job back and cancels this task
                    await asyncio.sleep(0)
                self._unstarted.pop(job.lease_id, None)
                if job.cancel_reason is not None:
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
            self._settling.discard(job.lease_id)
            self._unstarted.pop(job.lease_id, None)
            self._tasks.pop(job.lease_id, None)

    async def _settle(
        self, job: Job, result: bytes | None, error: Exception | None
    ) -> BaseException | None:
        if job.cancel_reason is not None:
            self._report_dropped(job)  # see _Worker._settle
            return None
        self._settling.add(job.lease_id)
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
                    if job.cancel_reason is not None or job.lease_id in extending:
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


_Item = TypeVar("_Item")


class _Watch(Generic[_Item]):
    """A server stream of the sync client read as an iterator: opened by the first
    ``next()`` (or ``start``), reopened when it ends UNAVAILABLE — with a short backoff, on
    whichever replica the balancer picks — and ended by :meth:`close` from any thread, by
    leaving the ``with`` block, or by closing the client."""

    def __init__(self, deadline: float | None = None) -> None:
        self.reopens = 0
        """How many times the stream was reopened after breaking, for monitoring."""
        self._guard = threading.Lock()
        self._closed = threading.Event()
        self._call: Any = None  # the open stream, if any
        self._backoff = stream_backoff()
        self._deadline = deadline  # time.monotonic() past which the watch fails
        self._gap = False  # reopened: say so before the next item

    def _open(self, timeout: float | None) -> Any:
        raise NotImplementedError

    def _item(self, response: Any) -> _Item | None:
        """What a message of the stream yields; None: nothing."""
        raise NotImplementedError

    def _reopened(self) -> _Item | None:
        """What a reopened stream yields first; None: nothing."""
        return None

    def _complete(self) -> bool:
        """Whether the iteration is over (nothing more can come)."""
        return False

    def _ended_ok(self) -> bool:
        """Whether a stream that ends OK ends the iteration, rather than being reopened."""
        return False

    def _timeout(self) -> float | None:
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._expired()
        return left

    def _expired(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            "the watch's timeout passed", code=grpc.StatusCode.DEADLINE_EXCEEDED
        )

    def _connect(self) -> Any:
        """Under the guard: the open stream, opened if need be; None once the client is
        closed."""
        if self._call is None:
            try:
                self._call = self._open(self._timeout())
            except ValueError:  # the client was closed
                return None
        return self._call

    def __iter__(self) -> _Watch[_Item]:
        return self

    def __next__(self) -> _Item:
        while True:
            with self._guard:
                if self._closed.is_set() or self._complete():
                    raise StopIteration
                call = self._connect()
                if call is None:
                    raise StopIteration
                if self._gap:
                    self._gap = False
                    gap = self._reopened()
                    if gap is not None:
                        return gap
            error: grpc.RpcError | None = None
            try:
                response = next(call)
            except StopIteration:
                pass
            except grpc.RpcError as raised:
                error = raised
            else:
                self._backoff.reset()
                item = self._item(response)
                if item is not None:
                    return item
                continue
            with self._guard:
                self._call = None
            if self._closed.is_set() or self._complete():
                raise StopIteration
            if error is None and self._ended_ok():
                raise StopIteration
            if (
                error is not None
                and self._deadline is not None
                and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
            ):
                raise self._expired() from None
            delay = _reopen_delay(self._backoff, error)
            if delay is None:
                raise StopIteration
            if self._deadline is not None and time.monotonic() + delay >= self._deadline:
                raise self._expired()
            if self._closed.wait(delay):
                raise StopIteration
            self.reopens += 1
            self._gap = True

    def close(self) -> None:
        """Ends the iteration: a ``next()`` blocked on the stream returns at once."""
        with self._guard:
            self._closed.set()
            if self._call is not None:
                self._call.cancel()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _AsyncWatch(Generic[_Item]):
    """:class:`_Watch` for the asyncio client: iterate it with ``async for``; cancelling the
    task that iterates also ends the stream."""

    def __init__(self) -> None:
        self.reopens = 0
        """How many times the stream was reopened after breaking, for monitoring."""
        self._closed = asyncio.Event()
        self._call: Any = None  # the open stream, if any
        self._backoff = stream_backoff()
        self._gap = False  # reopened: say so before the next item

    def _open(self) -> Any:
        raise NotImplementedError

    def _item(self, response: Any) -> _Item | None:
        raise NotImplementedError

    def _reopened(self) -> _Item | None:
        return None

    def _complete(self) -> bool:
        return False

    def _ended_ok(self) -> bool:
        return False

    def _connect(self) -> Any:
        """The open stream, opened if need be; None once the client is closed."""
        if self._call is None:
            try:
                self._call = self._open()
            except Exception:  # the client was closed
                return None
        return self._call

    def __aiter__(self) -> _AsyncWatch[_Item]:
        return self

    async def __anext__(self) -> _Item:
        while True:
            if self._closed.is_set() or self._complete():
                raise StopAsyncIteration
            call = self._connect()
            if call is None:
                raise StopAsyncIteration
            if self._gap:
                self._gap = False
                gap = self._reopened()
                if gap is not None:
                    return gap
            error: grpc.RpcError | None = None
            try:
                response = await call.read()
            except grpc.RpcError as raised:
                error = raised
            except asyncio.CancelledError:
                # Either this task was cancelled — the stream goes with it — or the call was
                # (close(), or the client closed), which ends the iteration.
                call.cancel()
                self._call = None
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                raise StopAsyncIteration from None
            else:
                if response is not grpc.aio.EOF:
                    self._backoff.reset()
                    item = self._item(response)
                    if item is not None:
                        return item
                    continue
            self._call = None
            if self._closed.is_set() or self._complete():
                raise StopAsyncIteration
            if error is None and self._ended_ok():
                raise StopAsyncIteration
            delay = _reopen_delay(self._backoff, error)
            if delay is None:
                raise StopAsyncIteration
            with contextlib.suppress(TimeoutError):
                await within(self._closed.wait(), delay)
            if self._closed.is_set():
                raise StopAsyncIteration
            self.reopens += 1
            self._gap = True

    def close(self) -> None:
        """Ends the iteration: an ``__anext__`` waiting on the stream returns at once."""
        self._closed.set()
        if self._call is not None:
            self._call.cancel()

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class _FollowsJob:
    """What the sync and asyncio job watches share: the snapshots, without repeats."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.last: JobSnapshot | None = None
        """The latest snapshot seen; after the iteration, the job as it finished."""
        self._request = queue_pb2.WatchJobRequest(job_id=job_id)
        self._last: queue_pb2.Job | None = None

    def _snapshot(self, response: queue_pb2.WatchJobResponse) -> JobSnapshot | None:
        if response.job == self._last:
            return None  # the first message of a reopened stream, when nothing changed
        self._last = response.job
        self.last = _snapshot(response.job)
        return self.last

    def _finished(self) -> bool:
        return self.last is not None and self.last.finished

    def _final(self) -> bool:
        """Baton ends the stream OK after the finished state, which may be one this version
        does not know."""
        return self.last is not None and (
            self.last.finished or self.last.state == JobState.UNSPECIFIED
        )

    def _outcome(self) -> JobSnapshot:
        """The finished job for ``wait_for_job``: SUCCEEDED, else raised."""
        job = self.last
        if job is None or not self._final():
            raise BatonError(
                f"watching job {self.job_id} ended before it finished: the client was closed",
                code=grpc.StatusCode.CANCELLED,
            )
        if job.state == JobState.SUCCEEDED:
            return job
        if job.state == JobState.CANCELLED:
            raise JobFailed(
                f"job {job.id} was cancelled",
                code=grpc.StatusCode.CANCELLED,
                reason=ErrorReason.Name(ErrorReason.JOB_CANCELLED),
                job=job,
            )
        if job.state == JobState.DEAD:
            raise JobFailed(
                f"job {job.id} is dead after {job.attempts} attempt(s): {job.last_error}",
                code=grpc.StatusCode.UNKNOWN,
                job=job,
            )
        raise BatonError(
            f"job {job.id} finished in a state this client does not know",
            code=grpc.StatusCode.UNKNOWN,
        )


class JobWatch(_FollowsJob, _Watch[JobSnapshot]):
    """The snapshots of one job (sync client), from ``client.watch_job(job_id)``: iterate
    it. First the job as it is, then the job after each change, last in a finished state,
    after which the iteration ends; a snapshot carries no payload. Changes close together may
    come as one snapshot showing the latest; the state never goes back. The WatchJob stream
    is reopened when it ends UNAVAILABLE (a snapshot unchanged since the last one is not
    repeated). :class:`NotFound` when the job does not exist or is past retention.
    :meth:`close` — from any thread — or leaving the ``with`` block ends the iteration."""

    def __init__(
        self,
        stub: queue_pb2_grpc.JobQueueServiceStub,
        job_id: str,
        deadline: float | None = None,
    ) -> None:
        _FollowsJob.__init__(self, job_id)
        _Watch.__init__(self, deadline)
        self._stub = stub

    def _open(self, timeout: float | None) -> Any:
        return self._stub.WatchJob(self._request, timeout=timeout, wait_for_ready=True)

    def _item(self, response: queue_pb2.WatchJobResponse) -> JobSnapshot | None:
        return self._snapshot(response)

    def _complete(self) -> bool:
        return self._finished()

    def _ended_ok(self) -> bool:
        return self._final()

    def _expired(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"job {self.job_id} did not finish in time", code=grpc.StatusCode.DEADLINE_EXCEEDED
        )

    def __enter__(self) -> JobWatch:
        return self


class AsyncJobWatch(_FollowsJob, _AsyncWatch[JobSnapshot]):
    """The snapshots of one job (asyncio client), from ``client.watch_job(job_id)``:
    iterate it with ``async for``. As :class:`JobWatch`; cancelling the task that iterates
    it also ends the stream."""

    def __init__(self, stub: queue_pb2_grpc.JobQueueServiceStub, job_id: str) -> None:
        _FollowsJob.__init__(self, job_id)
        _AsyncWatch.__init__(self)
        self._stub = stub

    def _open(self) -> Any:
        return self._stub.WatchJob(self._request, wait_for_ready=True)

    def _item(self, response: queue_pb2.WatchJobResponse) -> JobSnapshot | None:
        return self._snapshot(response)

    def _complete(self) -> bool:
        return self._finished()

    def _ended_ok(self) -> bool:
        return self._final()

    async def __aenter__(self) -> AsyncJobWatch:
        return self


def _watched(response: queue_pb2.WatchQueueResponse) -> QueueEvent | EventsMissed | None:
    which = response.WhichOneof("message")
    if which == "event":
        return _queue_event(response.event)
    if which == "missed":
        return EventsMissed(count=response.missed.count)
    return None  # a message this version does not know


class QueueWatch(_Watch["QueueEvent | EventsMissed"]):
    """The events of one queue (sync client), from ``client.watch_queue(queue)``: iterate
    it. Events start when the watch does (there is no replay): entering the ``with`` block
    (or :meth:`start`) returns once Baton has started it, so every event after that is
    seen — or an :class:`EventsMissed` stands in their place, when the watcher read too
    slowly, its replica fell behind Redis, or the stream broke (it is reopened at once, on
    whichever replica the balancer picks, and ``EventsMissed(count=0)`` comes first).
    :meth:`close` — from any thread — or leaving the ``with`` block ends the iteration."""

    def __init__(self, stub: queue_pb2_grpc.JobQueueServiceStub, queue: str) -> None:
        super().__init__()
        self.queue = queue
        self._stub = stub
        self._request = queue_pb2.WatchQueueRequest(queue=queue)

    def _open(self, timeout: float | None) -> Any:
        return self._stub.WatchQueue(self._request, timeout=timeout, wait_for_ready=True)

    def _item(self, response: queue_pb2.WatchQueueResponse) -> QueueEvent | EventsMissed | None:
        return _watched(response)

    def _reopened(self) -> QueueEvent | EventsMissed | None:
        return EventsMissed(count=0)

    def start(self) -> QueueWatch:
        """Opens the stream, if not yet open, and waits until Baton has started the watch
        (its answer's headers), or the stream has failed (the error then comes from
        ``next()``); with no replica reachable it waits for one."""
        with self._guard:
            if self._closed.is_set():
                return self
            call = self._connect()
        if call is not None:
            call.initial_metadata()
        return self

    def __enter__(self) -> QueueWatch:
        return self.start()


class AsyncQueueWatch(_AsyncWatch["QueueEvent | EventsMissed"]):
    """The events of one queue (asyncio client), from ``client.watch_queue(queue)``:
    ``async with client.watch_queue(queue) as events: async for event in events:``. As
    :class:`QueueWatch`; cancelling the task that iterates it also ends the stream."""

    def __init__(self, stub: queue_pb2_grpc.JobQueueServiceStub, queue: str) -> None:
        super().__init__()
        self.queue = queue
        self._stub = stub
        self._request = queue_pb2.WatchQueueRequest(queue=queue)

    def _open(self) -> Any:
        return self._stub.WatchQueue(self._request, wait_for_ready=True)

    def _item(self, response: queue_pb2.WatchQueueResponse) -> QueueEvent | EventsMissed | None:
        return _watched(response)

    def _reopened(self) -> QueueEvent | EventsMissed | None:
        return EventsMissed(count=0)

    async def start(self) -> AsyncQueueWatch:
        """See :meth:`QueueWatch.start`."""
        call = None if self._closed.is_set() else self._connect()
        if call is not None:
            with contextlib.suppress(grpc.RpcError):  # the error comes from __anext__
                await call.initial_metadata()
        return self

    async def __aenter__(self) -> AsyncQueueWatch:
        return await self.start()


def _list_jobs_request(
    queue: str, state: JobState | int, page_size: int, page_token: str
) -> queue_pb2.ListJobsRequest:
    return queue_pb2.ListJobsRequest(
        queue=queue,
        state=int(state),  # type: ignore[arg-type]
        page_size=page_size,
        page_token=page_token,
    )


def _job_page(response: queue_pb2.ListJobsResponse) -> JobPage:
    return JobPage(
        jobs=[_snapshot(job) for job in response.jobs], next_page_token=response.next_page_token
    )


def _configure_queue_request(
    queue: str,
    group_concurrency: int,
    group_fifo: bool,
    start_limit: Limit | None,
    start_limit_per_group: bool,
) -> queue_pb2.ConfigureQueueRequest:
    config = QueueConfig(group_concurrency, group_fifo, start_limit, start_limit_per_group)
    return queue_pb2.ConfigureQueueRequest(queue=queue, config=_queue_config_proto(config))


class Queue:
    """``enqueue()``, ``consume()``, ``watch_job()``, ``wait_for_job()``, ``watch_queue()``,
    ``list_jobs()``, ``configure_queue()`` and ``get_queue_config()`` for the sync
    :class:`baton_client.Client`."""

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
        group: str = "",
    ) -> Enqueued:
        """Adds a job to ``queue``, ready now, after ``delay`` seconds or at ``run_at``.

        With a ``dedup_key``, another enqueue to the queue with the same key within
        ``dedup_ttl`` answers the first job's id with ``duplicate=True``; that also makes the
        call safe to retry, so only then is it retried on UNAVAILABLE — without a key a retry
        after a lost answer could enqueue the job twice.

        ``group`` (a tenant, a customer; up to 512 bytes) puts the job in a group: deliveries
        go round-robin across the queue's groups, within a group in enqueue order
        (``priority`` orders ungrouped jobs only), under the limits of ``configure_queue``."""
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
            group,
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
        prefetch: int = 0,
    ) -> None:
        """Runs ``handler(job)`` on the jobs of ``queue`` in ``concurrency`` threads until
        ``stop`` is set (or an error no retry can fix, which it raises).

        Returning acks the job (bytes returned become its result, sent with the Ack); raising
        nacks it with the exception's text, to be retried after its backoff;
        ``job.progress(value, detail)`` reports how far it is. ``job.cancelled`` is set when the
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
        context of the first job it acks. ``ack_batch_size=0`` sends one Ack per job.

        ``prefetch`` (default 0) leases that many jobs beyond ``concurrency``, so that a
        handler that finishes starts its next job without waiting for a delivery. They are
        extended while they wait; on ``stop`` those not started go back to the queue at once
        without their attempt charged. Baton leases at most 1,000 jobs to one stream by
        default (``concurrency + prefetch``)."""
        request = _consume_request(
            queue, max(concurrency, 1), prefetch, visibility_timeout, types, consumer
        )
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

    def watch_job(self, job_id: str) -> JobWatch:
        """The snapshots of job ``job_id`` as it changes, until it finishes: ``for job in
        client.watch_job(job_id):`` — first as it is, then after each change (delivered,
        progress reported, failed and waiting to retry, handed back), last SUCCEEDED (with
        its ``result``), DEAD (with its ``last_error``) or CANCELLED; see :class:`JobWatch`.
        """
        return JobWatch(self._queue, job_id)

    def wait_for_job(self, job_id: str, timeout: Seconds | None = None) -> JobSnapshot:
        """Waits until job ``job_id`` finishes and returns it when SUCCEEDED: its ``result``
        is what the handler returned. Request/response over the queue is ``enqueue`` then
        ``wait_for_job``.

        Raises :class:`JobFailed` (its ``job`` is the final snapshot) when the job went
        DEAD or was CANCELLED, :class:`NotFound` when it does not exist or is past
        retention, :class:`DeadlineExceeded` when it has not finished within ``timeout``
        seconds (None: as long as it takes). The WatchJob stream it waits on is reopened
        when it ends UNAVAILABLE (a draining replica ends it so; any replica can serve it),
        after 50 ms growing to 250 ms."""
        deadline = None if timeout is None else time.monotonic() + seconds(timeout)
        with JobWatch(self._queue, job_id, deadline) as watch:
            for _ in watch:
                pass
        return watch._outcome()

    def watch_queue(self, queue: str) -> QueueWatch:
        """The events of ``queue`` — enqueued, delivered, progress, succeeded, failed,
        dead, stalled, handed back, redriven, cancelled — and :class:`EventsMissed` where
        some were lost: ``with client.watch_queue(queue) as events: for event in events:``.
        Entering the block returns once the watch has started; see :class:`QueueWatch`."""
        return QueueWatch(self._queue, queue)

    def list_jobs(
        self, queue: str, state: JobState | int, page_size: int = 0, page_token: str = ""
    ) -> JobPage:
        """One page of ``queue``'s jobs in ``state``, with their payloads: READY (oldest
        due first), SCHEDULED (delayed jobs and FAILED ones waiting to retry, soonest
        first), ACTIVE (lease expiring soonest first), SUCCEEDED (the most recently finished
        first, as many as Baton keeps) or DEAD (oldest death first). ``page_size`` 0 means
        100 (at most 1000); pass the page's ``next_page_token`` as ``page_token`` for the
        next one. A page over the message limit is :class:`ResourceExhausted`
        (RESPONSE_TOO_LARGE): ask for a smaller one. Retried on UNAVAILABLE."""
        request = _list_jobs_request(queue, state, page_size, page_token)
        response = _retry.call(lambda: self._queue.ListJobs(request), self._default_timeout)
        return _job_page(response)

    def configure_queue(
        self,
        queue: str,
        *,
        group_concurrency: int = 0,
        group_fifo: bool = False,
        start_limit: Limit | None = None,
        start_limit_per_group: bool = False,
    ) -> None:
        """Sets how ``queue`` delivers — the whole configuration: what is not given is
        turned off. ``group_concurrency`` bounds the jobs of one group active at once, on
        every replica together (0: no limit; at most 10,000). ``group_fifo`` makes each group
        strict FIFO: one job at a time, in enqueue order, a job waiting to retry holding its
        group (implies ``group_concurrency`` 1). ``start_limit`` bounds job starts
        (deliveries) per period, counted with the rate limiter's algorithms — a
        ``SLIDING_WINDOW`` limit holds in every span of one period — queue-wide, or per group
        with ``start_limit_per_group`` (the ungrouped jobs counting as one more group); jobs
        over it stay READY until it allows them. It applies from each replica's next
        delivery; jobs already delivered are not affected.

        Raises :class:`InvalidArgument` naming the field (``config.group_concurrency``, the
        start limit's fields) for a bad configuration. Retried on UNAVAILABLE."""
        request = _configure_queue_request(
            queue, group_concurrency, group_fifo, start_limit, start_limit_per_group
        )
        _retry.call(lambda: self._queue.ConfigureQueue(request), self._default_timeout)

    def get_queue_config(self, queue: str) -> QueueConfig:
        """``queue``'s configuration (``configure_queue``); a queue never configured has
        the default :class:`QueueConfig`. Retried on UNAVAILABLE."""
        request = queue_pb2.GetQueueConfigRequest(queue=queue)
        response = _retry.call(lambda: self._queue.GetQueueConfig(request), self._default_timeout)
        return _queue_config(response.config)


class AsyncQueue:
    """``enqueue()``, ``consume()``, ``watch_job()``, ``wait_for_job()``, ``watch_queue()``,
    ``list_jobs()``, ``configure_queue()`` and ``get_queue_config()`` for
    :class:`baton_client.AsyncClient`."""

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
        group: str = "",
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
            group,
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
        prefetch: int = 0,
    ) -> None:
        """Runs ``await handler(job)`` on the jobs of ``queue``, ``concurrency`` at a time,
        until ``stop`` is set or the task running it is cancelled (a stop as graceful as
        ``stop``). As :meth:`Queue.consume`, except that a handler whose job is cancelled,
        whose lease is lost, or that outlives the ``shutdown_grace`` is itself cancelled
        (CancelledError)."""
        request = _consume_request(
            queue, max(concurrency, 1), prefetch, visibility_timeout, types, consumer
        )
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

    def watch_job(self, job_id: str) -> AsyncJobWatch:
        """``async for job in client.watch_job(job_id):`` — see :meth:`Queue.watch_job`."""
        return AsyncJobWatch(self._queue, job_id)

    async def wait_for_job(self, job_id: str, timeout: Seconds | None = None) -> JobSnapshot:
        """See :meth:`Queue.wait_for_job`."""
        watch = AsyncJobWatch(self._queue, job_id)
        try:
            async with asyncio.timeout(None if timeout is None else seconds(timeout)):
                async for _ in watch:
                    pass
        except TimeoutError:
            raise DeadlineExceeded(
                f"job {job_id} did not finish in time", code=grpc.StatusCode.DEADLINE_EXCEEDED
            ) from None
        finally:
            watch.close()
        return watch._outcome()

    def watch_queue(self, queue: str) -> AsyncQueueWatch:
        """``async with client.watch_queue(queue) as events: async for event in events:`` —
        see :meth:`Queue.watch_queue`."""
        return AsyncQueueWatch(self._queue, queue)

    async def list_jobs(
        self, queue: str, state: JobState | int, page_size: int = 0, page_token: str = ""
    ) -> JobPage:
        """See :meth:`Queue.list_jobs`."""
        request = _list_jobs_request(queue, state, page_size, page_token)
        response = await _retry.acall(
            lambda: self._queue.ListJobs(request),  # type: ignore[arg-type,return-value]
            self._default_timeout,
        )
        return _job_page(response)

    async def configure_queue(
        self,
        queue: str,
        *,
        group_concurrency: int = 0,
        group_fifo: bool = False,
        start_limit: Limit | None = None,
        start_limit_per_group: bool = False,
    ) -> None:
        """See :meth:`Queue.configure_queue`."""
        request = _configure_queue_request(
            queue, group_concurrency, group_fifo, start_limit, start_limit_per_group
        )
        await _retry.acall(
            lambda: self._queue.ConfigureQueue(request),  # type: ignore[arg-type,return-value]
            self._default_timeout,
        )

    async def get_queue_config(self, queue: str) -> QueueConfig:
        """See :meth:`Queue.get_queue_config`."""
        request = queue_pb2.GetQueueConfigRequest(queue=queue)
        response = await _retry.acall(
            lambda: self._queue.GetQueueConfig(request),  # type: ignore[arg-type,return-value]
            self._default_timeout,
        )
        return _queue_config(response.config)
