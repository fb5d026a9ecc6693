"""A worker's acks, coalesced into AckBatch calls.

An ack goes out at once when no AckBatch of the worker is in flight; the acks of handlers
that finish while one is go out together as the next call when it returns — or sooner, once
``max_batch`` of them wait (a full call) or the oldest has waited :data:`ACK_BATCH_DELAY`
(a call retrying through an outage, or stuck on a frozen replica, does not hold the others
back). A call's results stay under :data:`_BATCH_BYTES`. Each ack gets the outcome its
single Ack would have had: ``None`` when acked, a ``FailedPrecondition`` with the result's
reason (``JOB_NOT_LEASED``, ``JOB_CANCELLED``) when not, the call's error when the call
failed past the settle budget (retried on UNAVAILABLE, as Ack is); a call refused as a whole
(a result over Baton's limit, more acks than Baton takes, a server without AckBatch) is
replaced by one Ack per job. A call carries the OpenTelemetry context of its first ack.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry.context import Context

from . import _retry, _tracing
from .errors import BatonError, FailedPrecondition
from .pb.baton.v1 import queue_pb2

if TYPE_CHECKING:
    from .pb.baton.v1 import queue_pb2_grpc

DEFAULT_ACK_BATCH_SIZE = 256
"""Acks per AckBatch call at most, unless ``ack_batch_size`` says otherwise."""
ACK_BATCH_DELAY = 0.010
"""Seconds an ack waits at most for the AckBatch in flight before it goes out in a call of
its own."""
_BATCH_BYTES = 1 << 20  # results per call, far below Baton's 4 MiB message limit
_on_queued: Callable[[], None] | None = None
"""When set (by the tests), hears every ack queued, once it waits for a call."""

# Errors that say nothing about the acks one by one: each is then sent alone.
_REFUSED_AS_A_WHOLE = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
)
_REFUSALS = {
    "JOB_NOT_LEASED": "this lease is not the job's current one: it expired, was re-delivered, "
    "or the job is gone",
    "JOB_CANCELLED": "the job was cancelled; this lease can no longer settle it",
}


def _refusal(result: queue_pb2.AckResult) -> BatonError | None:
    """What a single Ack would have raised for this outcome (None: acked)."""
    if result.acked:
        return None
    return FailedPrecondition(
        _REFUSALS.get(result.reason, "the ack was not applied"),
        code=grpc.StatusCode.FAILED_PRECONDITION,
        reason=result.reason,
    )


def _outcomes(response: queue_pb2.AckBatchResponse, count: int) -> list[BaseException | None]:
    if len(response.results) != count:
        error = BatonError(
            f"AckBatch answered {len(response.results)} results for {count} acks",
            code=grpc.StatusCode.INTERNAL,
        )
        return [error] * count
    return [_refusal(result) for result in response.results]


class _Pending:
    __slots__ = ("context", "done", "lead", "outcome", "queued", "queued_at", "request", "wake")

    def __init__(self, request: queue_pb2.AckRequest, lock: threading.Lock) -> None:
        self.request = request
        self.context: Context = otel_context.get_current()  # the job's process span
        self.queued_at = time.monotonic()
        self.queued = True  # not yet in a call
        self.outcome: BaseException | None = None
        self.done = False
        self.lead: list[_Pending] | None = None  # a call this ack's thread is to make
        self.wake = threading.Condition(lock)


class _Waiting:
    """Acks waiting for a call, oldest first, with their results' total size: whether a call
    is due is then known without reading every waiting ack, which each ack would otherwise
    do (a tenth of an asyncio worker's CPU with 256 jobs in hand, measured)."""

    __slots__ = ("acks", "size")

    def __init__(self) -> None:
        self.acks: deque[Any] = deque()
        self.size = 0

    def __len__(self) -> int:
        return len(self.acks)

    def push(self, pending: Any) -> None:
        self.acks.append(pending)
        self.size += len(pending.request.result)

    def take(self, count: int, size: int) -> list[Any]:
        """The oldest ``count`` acks, whose results weigh ``size``."""
        self.size -= size
        return [self.acks.popleft() for _ in range(count)]


def _take(
    waiting: _Waiting, max_batch: int, in_flight: int, now: float, delay: float
) -> list[list[Any]]:
    """The calls to make now: every full one, then the rest if no call is in flight or the
    oldest has waited ``delay``."""
    batches: list[list[Any]] = []
    while waiting:
        # Full: a call could not take every waiting ack (a lone ack over the byte bound goes
        # in a call of its own, which is not full).
        full = len(waiting) >= max_batch or (len(waiting) > 1 and waiting.size > _BATCH_BYTES)
        overdue = now - waiting.acks[0].queued_at >= delay
        if not (full or overdue or in_flight + len(batches) == 0):
            break
        count, size = 0, 0
        for pending in waiting.acks:
            if count == max_batch:
                break
            weight = len(pending.request.result)
            if count and size + weight > _BATCH_BYTES:
                break
            count, size = count + 1, size + weight
        batches.append(waiting.take(count, size))
    return batches


class AckBatcher:
    """The acks of a sync worker, whose handler threads wait for their outcomes. The thread
    of a call's first ack makes the call (leader/followers: no thread of its own)."""

    def __init__(
        self, stub: queue_pb2_grpc.JobQueueServiceStub, budget: float, max_batch: int
    ) -> None:
        self._stub = stub
        self._budget = budget
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._waiting = _Waiting()
        self._in_flight = 0

    def ack(self, request: queue_pb2.AckRequest) -> BatonError | None:
        """Acks one delivery; returns the refusal or failure its single Ack would have raised
        (anything else is raised)."""
        pending = _Pending(request, self._lock)
        with self._lock:
            self._waiting.push(pending)
            if _on_queued is not None:
                _on_queued()
            self._dispatch(pending.queued_at)
            while not pending.done:
                if pending.lead is not None:
                    batch, pending.lead = pending.lead, None
                    self._lock.release()
                    try:
                        self._send(batch)
                    finally:
                        self._lock.acquire()
                    continue
                timeout = None
                if pending.queued:
                    timeout = max(ACK_BATCH_DELAY - (time.monotonic() - pending.queued_at), 0.0)
                if not pending.wake.wait(timeout):
                    self._dispatch(time.monotonic())
        if pending.outcome is None or isinstance(pending.outcome, BatonError):
            return pending.outcome
        raise pending.outcome

    def _dispatch(self, now: float) -> None:
        """Under the lock: hands each call to make now to its first ack's thread."""
        for batch in _take(self._waiting, self._max_batch, self._in_flight, now, ACK_BATCH_DELAY):
            self._in_flight += 1
            for pending in batch:
                pending.queued = False
            batch[0].lead = batch
            batch[0].wake.notify()

    def _send(self, batch: list[_Pending]) -> None:
        outcomes: list[BaseException | None]
        try:
            outcomes = self._call(batch)
        except BaseException as unexpected:  # every waiter must hear of it
            outcomes = [unexpected] * len(batch)
        with self._lock:
            self._in_flight -= 1
            for pending, outcome in zip(batch, outcomes, strict=True):
                pending.outcome, pending.done = outcome, True
                pending.wake.notify()
            self._dispatch(time.monotonic())

    def _call(self, batch: list[_Pending]) -> list[BaseException | None]:
        request = queue_pb2.AckBatchRequest(acks=[pending.request for pending in batch])
        try:
            with _tracing.attached(batch[0].context):
                response = _retry.settle(
                    lambda: self._stub.AckBatch(request, **_retry.READY), self._budget
                )
        except BatonError as failed:
            if failed.code not in _REFUSED_AS_A_WHOLE:
                return [failed] * len(batch)
            return [self._ack_one(pending) for pending in batch]
        return _outcomes(response, len(batch))

    def _ack_one(self, pending: _Pending) -> BatonError | None:
        try:
            with _tracing.attached(pending.context):
                _retry.settle(lambda: self._stub.Ack(pending.request, **_retry.READY), self._budget)
        except BatonError as failed:
            return failed
        return None


class _AsyncPending:
    __slots__ = ("context", "future", "queued_at", "request")

    def __init__(self, request: queue_pb2.AckRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.context: Context = otel_context.get_current()
        self.queued_at = time.monotonic()
        self.future: asyncio.Future[BaseException | None] = loop.create_future()


class AsyncAckBatcher:
    """The acks of an asyncio worker; each call is a task of its own."""

    def __init__(
        self, stub: queue_pb2_grpc.JobQueueServiceStub, budget: float, max_batch: int
    ) -> None:
        self._stub = stub
        self._budget = budget
        self._max_batch = max_batch
        self._waiting = _Waiting()
        self._calls: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    async def ack(self, request: queue_pb2.AckRequest) -> BatonError | None:
        """See :meth:`AckBatcher.ack`. Cancelling the caller leaves the ack in its call."""
        pending = _AsyncPending(request, asyncio.get_running_loop())
        self._waiting.push(pending)
        if _on_queued is not None:
            _on_queued()
        self._dispatch()
        outcome = await pending.future
        if outcome is None or isinstance(outcome, BatonError):
            return outcome
        raise outcome

    def _dispatch(self) -> None:
        now = time.monotonic()
        for batch in _take(self._waiting, self._max_batch, len(self._calls), now, ACK_BATCH_DELAY):
            call = asyncio.create_task(self._send(batch), name="baton-ack-batch")
            self._calls.add(call)
        if self._waiting and self._timer is None:
            wait = max(ACK_BATCH_DELAY - (now - self._waiting.acks[0].queued_at), 0.0)
            self._timer = asyncio.get_running_loop().call_later(wait, self._overdue)

    def _overdue(self) -> None:
        self._timer = None
        self._dispatch()

    async def _send(self, batch: list[_AsyncPending]) -> None:
        outcomes: list[BaseException | None] = []
        try:
            outcomes = await self._call(batch)
        except BaseException as unexpected:
            outcomes = [unexpected] * len(batch)
            if isinstance(unexpected, asyncio.CancelledError):
                raise
        finally:
            self._calls.discard(asyncio.current_task())  # type: ignore[arg-type]
            for pending, outcome in zip(batch, outcomes or [None] * len(batch), strict=True):
                if not pending.future.done():  # its job's task may have been cancelled
                    pending.future.set_result(outcome)
            if self._waiting:
                self._dispatch()

    async def _call(self, batch: list[_AsyncPending]) -> list[BaseException | None]:
        request = queue_pb2.AckBatchRequest(acks=[pending.request for pending in batch])
        try:
            with _tracing.attached(batch[0].context):
                response = await _retry.asettle(
                    lambda: self._stub.AckBatch(request, **_retry.READY),  # type: ignore[arg-type,return-value]
                    self._budget,
                )
        except BatonError as failed:
            if failed.code not in _REFUSED_AS_A_WHOLE:
                return [failed] * len(batch)
            return list(await asyncio.gather(*(self._ack_one(pending) for pending in batch)))
        return _outcomes(response, len(batch))

    async def _ack_one(self, pending: _AsyncPending) -> BatonError | None:
        try:
            with _tracing.attached(pending.context):
                await _retry.asettle(
                    lambda: self._stub.Ack(pending.request, **_retry.READY),  # type: ignore[arg-type,return-value]
                    self._budget,
                )
        except BatonError as failed:
            return failed
        return None

    async def aclose(self) -> None:
        """Cancels the calls under way (their jobs' tasks are done: nobody waits for them)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        calls = list(self._calls)
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
