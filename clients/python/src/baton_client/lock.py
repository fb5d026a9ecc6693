"""Fenced locks: ``with client.lock(name, ttl=10) as lease:`` (and ``async with``).

A held lease is kept alive by a bidirectional ``KeepAlive`` stream on which the client
proves it is alive: the first message names the lease, then a heartbeat goes out every
ttl/3. Baton answers every message, in order, with ``renewed`` telling whether it renewed the
lease (it does not when a heartbeat comes closer than ttl/10 to the previous renewal, or when
Redis is unreachable). Baton never renews on its own, so a holder that stops — frozen,
paused, partitioned — loses the lease at most ttl after the send time of its last renewed
heartbeat.

The liveness proof, all on the client's monotonic clock: an answer ``renewed = true`` means
Baton renewed the lease after the message it answers was sent, so the lease is held at least
until that send time + ttl (``held_until``). Answers are matched to sends in FIFO order (each
stream keeps the send times of its unanswered messages); an answer ``renewed = false`` proves
nothing and only takes its send time off the queue. The lease is reported lost at
``held_until - margin`` (``margin = max(ttl/10, 50 ms)``, for clock-rate differences and
scheduling) by a local timer that does not depend on the stream, so a stalled stream, or a
process frozen and then resumed, still reports the loss, at once on resumption. It is also
lost when Baton answers LEASE_NOT_HELD or an error no retry can fix.

When the stream ends with UNAVAILABLE (a replica draining, a broken connection) a new one is
opened at once — backoff 50 ms growing to 250 ms — with the same lease id, on whichever
replica the balancer picks, until the lease would be reported lost. A half-close only ends
the heartbeats (the lease then runs out its ttl); cancelling a stream releases the lease.

A lock is granted by Acquire. Its first stream opens when its first heartbeat is due, a
third of the ttl after the grant, so a lock held for less costs Acquire and Release only
(measured with the asyncio client at 16 callers: 354 µs of its CPU per lock cycle when a
stream acquired and released every lock, 248 µs with Acquire and Release). The price: a
holder that dies in that first third leaves the lock held until its ttl runs out, where past
it the stream's end releases the lock at once. A grant too late to be dated by the Acquire's
send opens its stream at once: the renewal its first message makes proves it. release() sends
``release`` on the stream when one is open and waits for the answer; otherwise, or when the
stream is down or silent for 2 s, it calls Release.

A leadership (election.py) is a lease with the same KeepAlive contract on ElectionService, so
it is kept by the same machinery: ``_LeaseState`` (the liveness bookkeeping), ``_KeptLease``
(threads) and ``_AsyncKeptLease`` (tasks). What differs — the KeepAlive request type, the
call that gives the lease up (Release, Resign) — is named by the subclasses.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import heapq
import itertools
import math
import os
import queue
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc

from . import _retry
from ._connection import Backoff, Seconds, duration, seconds, stream_backoff, within
from .errors import BatonError, LeaseLost, LockNotAcquired, from_rpc_error
from .pb.baton.v1 import election_pb2, lock_pb2

if TYPE_CHECKING:
    from .pb.baton.v1 import lock_pb2_grpc

MAX_SERVER_WAIT = 3600.0
"""The longest wait_timeout Baton accepts; longer waits are made of several Acquires."""

MIN_MARGIN = 0.05
"""The smallest safety margin (seconds) between reporting a lease lost and its expiry."""

_RETRY_ACQUIRE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
STREAM_RELEASE_WAIT = 2.0
"""How long release() waits for the stream's answer before calling Release instead."""
# Stream endings worth resuming from; anything else but FAILED_PRECONDITION is final too.
_RESUMABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
)

L = TypeVar("L", bound="_LeaseState")
Renewed = Callable[[L], None]
# The requests that wait for a lease, and the KeepAlive messages that keep one, of both services.
R = TypeVar("R", lock_pb2.AcquireRequest, election_pb2.CampaignRequest)
KeepAliveRequest = lock_pb2.KeepAliveRequest | election_pb2.ElectionServiceKeepAliveRequest
KeepAliveResponse = lock_pb2.KeepAliveResponse | election_pb2.ElectionServiceKeepAliveResponse


def margin_of(ttl: float) -> float:
    """How long before ``held_until`` a lease of ``ttl`` seconds is reported lost."""
    return max(ttl / 10, MIN_MARGIN)


class _Attempt(Generic[R]):
    """One logical Acquire or Campaign: a random request_id reused by every retry, so a grant
    whose answer was lost is handed back instead of blocking us until its ttl runs out."""

    def __init__(self, request: R, wait: Seconds | None, default_timeout: float | None) -> None:
        request.request_id = secrets.token_hex(16)
        self.name = request.name
        self.request = request
        self.give_up_at = None if wait is None else time.monotonic() + seconds(wait)
        self.default_timeout = default_timeout
        self.backoff = Backoff()
        self.failing_since: float | None = None
        self.sent_at = 0.0
        """When the last round was sent: a grant it answers was made after this instant."""
        self.earliest_sent_at: float | None = None
        """When the earliest round whose grant a later round may hand back was sent."""

    def next_call(self) -> tuple[R, float, float | None]:
        """The request with this round's wait, the wait, and the call's timeout: the wait
        plus the default timeout, so a replica that dies mid-wait is noticed. Without a
        ``wait`` a round waits the longest Baton allows (for a Campaign the same as 0: as long
        as it takes, up to an hour) and the next round follows."""
        wait = MAX_SERVER_WAIT
        if self.give_up_at is not None:
            wait = max(self.give_up_at - time.monotonic(), 0.0)
        self.request.wait_timeout.CopyFrom(duration(wait))
        timeout = None if self.default_timeout is None else wait + self.default_timeout
        self.sent_at = time.monotonic()
        if self.earliest_sent_at is None:
            self.earliest_sent_at = self.sent_at
        return self.request, wait, timeout

    def answered(self) -> None:
        """A round was answered: failures before it no longer count against the retry budget
        (a candidate may wait for hours, through several outages)."""
        self.failing_since = None
        self.backoff.reset()

    def outcome(self, response: lock_pb2.AcquireResponse, wait: float) -> bool:
        """(Acquire) True when acquired; raises when the wait is over; False to wait again."""
        self.answered()
        if response.acquired:
            return True
        # A definite refusal: no earlier round holds a grant for this request_id any more.
        self.earliest_sent_at = None
        if wait < MAX_SERVER_WAIT:
            raise LockNotAcquired(self.name, response.holder.owner)
        return False

    def proven_at(self, lease: lock_pb2.Lease) -> float | None:
        """The instant a grant is known to postdate — the send of the earliest round that may
        have made it — or None when that is too long ago to prove enough: the grant was made
        somewhere between send and answer. The lease is then renewed once before it is handed
        out."""
        ttl = lease.ttl.ToTimedelta().total_seconds()
        sent_at = self.sent_at if self.earliest_sent_at is None else self.earliest_sent_at
        return None if time.monotonic() - sent_at > ttl / 2 else sent_at

    def retry_delay(self, error: grpc.RpcError) -> float:
        """Seconds before retrying, or raises when the error is final or retrying has gone
        on past the wait (or, with no wait given, past the default timeout)."""
        mapped = from_rpc_error(error)
        if error.code() not in _RETRY_ACQUIRE:  # type: ignore[attr-defined]
            raise mapped from None
        now = time.monotonic()
        self.failing_since = self.failing_since or now
        budget_end = self.give_up_at
        if budget_end is None and self.default_timeout is not None:
            budget_end = self.failing_since + self.default_timeout
        delay = self.backoff.delay(mapped.retry_after)
        if budget_end is not None and now + delay > budget_end:
            raise mapped from None
        return delay


def _acquire_request(name: str, ttl: Seconds, owner: str, permits: int) -> lock_pb2.AcquireRequest:
    return lock_pb2.AcquireRequest(name=name, ttl=duration(ttl), owner=owner, permits=permits)


Q = TypeVar("Q")


class _Stream(Generic[Q]):
    """One KeepAlive stream: the queue its requests go through (None half-closes it, which
    ends the heartbeats, not the lease) and its messages not answered yet, oldest first: their
    send times, and whether each is a release."""

    def __init__(self, requests: Q) -> None:
        self.requests = requests
        self.unanswered: collections.deque[tuple[float, bool]] = collections.deque()
        self.call: Any = None
        self.released: bool | None = None
        """The answer to a release sent on the stream, once answered."""
        self.release_settled = asyncio.Event()
        """(asyncio) Set when a release is answered or the stream ends."""


class _LeaseState:
    """What the sync and asyncio leases (and leaderships) share: the grant and the liveness
    bookkeeping. Every method that changes the bookkeeping runs under the lease's lock (sync)
    or on the event loop (asyncio).

    A grant given with ``proven_at=None`` is unproven until the first message of its first
    KeepAlive stream is answered ``renewed``: its ``held_until`` is until then only a bound
    (the grant came before its answer, so it ends by ttl after that without a renewal), and
    it is not handed out before the proof (see ``_wait_proven``)."""

    _keep_alive_request: type[KeepAliveRequest]
    """The KeepAlive message of the lease's service: the first one names the lease, an empty
    one is a heartbeat."""
    _already_gone: str
    """The loss reported when giving the lease up finds it gone; formatted with ``name``."""
    _releases_on_stream = False
    """Whether a ``release`` message on the stream gives the lease up (LockService's)."""

    def __init__(
        self, granted: lock_pb2.Lease, proven_at: float | None, on_renewed: Renewed[Any] | None
    ) -> None:
        self.name: str = granted.name
        self.lease_id: str = granted.lease_id
        """Proves holdership; treat it as a secret."""
        self.fencing_token: int = granted.fencing_token
        """Greater than every token granted before for this name: pass it to the protected
        resource, which must refuse writes with a lower token than it has seen."""
        self.ttl: float = granted.ttl.ToTimedelta().total_seconds()
        self.margin: float = margin_of(self.ttl)
        """How long before ``held_until`` the lease is reported lost."""
        self.expires_at: datetime.datetime = granted.expires_at.ToDatetime(datetime.UTC)
        """Expiry of the last confirmed renewal, by the Redis server's clock (for display:
        the liveness proof uses :attr:`held_until`)."""
        self._proven = proven_at is not None
        self.held_until: float = (time.monotonic() if proven_at is None else proven_at) + self.ttl
        """``time.monotonic()`` instant until which the lease is certainly held: the send
        time of the last message answered ``renewed`` (or of the Acquire) + ttl."""
        self.loss: LeaseLost | None = None
        self._on_renewed = on_renewed
        self._giving_up = False
        self._ended = False
        self._current: _Stream[Any] | None = None  # the open stream, if any
        # A proven grant needs no heartbeat before a third of its ttl: a lock held for less
        # never opens a stream. An unproven one opens it at once, to be proven by its answer.
        self._reopen_at = time.monotonic() if proven_at is None else proven_at + self.ttl / 3
        self._next_heartbeat = math.inf
        self._backoff = stream_backoff()
        self.longest_gap = 0.0
        """The longest time (s) between two renewing answers, for monitoring: about ttl/3
        normally, longer when the stream had to be reopened or Redis was unreachable."""
        self.longest_reconnect = 0.0
        """The longest time (s) from a stream breaking to the first answer on the next one."""
        self.unrenewed_answers = 0
        """How many heartbeats Baton answered without renewing the lease (too soon after the
        previous renewal, or Redis unreachable), for monitoring."""
        self._renewed_at = time.monotonic()
        self._broken_at: float | None = None

    @property
    def lost_at(self) -> float:
        """``time.monotonic()`` instant at which the lease is reported lost unless renewed."""
        return self.held_until - self.margin

    def _first_request(self) -> KeepAliveRequest:
        return self._keep_alive_request(
            name=self.name, lease_id=self.lease_id, ttl=duration(self.ttl)
        )

    def _next_step(self, now: float) -> tuple[str, float]:
        """What the keeper does now — ``"lose"``, ``"open"``, ``"beat"`` — or ``"wait"`` and
        until when."""
        if now >= self.lost_at:
            # While release() or resign() runs, the loss is not reported (it raises it if
            # Baton says so); the keeper just waits for the end.
            return ("wait", math.inf) if self._giving_up else ("lose", now)
        if self._current is None:
            if self._giving_up:
                return "wait", math.inf  # giving up: a new stream would only renew it
            if now >= self._reopen_at:
                return "open", now
            return "wait", min(self._reopen_at, self.lost_at)
        if now >= self._next_heartbeat:
            # Even when earlier ones are still unanswered (Redis slow or unreachable): Baton
            # answers them all in order, and the next one to renew the lease moves held_until.
            return "beat", now
        return "wait", min(self._next_heartbeat, self.lost_at)

    def _sent(self, stream: _Stream[Any], now: float, release: bool = False) -> None:
        stream.unanswered.append((now, release))
        self._next_heartbeat = now + self.ttl / 3

    def _answer(self, stream: _Stream[Any], response: KeepAliveResponse) -> bool:
        """Applies one answer, matched to the oldest unanswered send of ``stream``; True when
        ``held_until`` moved forward (or was proven). Only a renewing answer moves it:
        ``renewed = false`` (too soon after the previous renewal, or Redis unreachable) proves
        nothing."""
        now = time.monotonic()
        if not stream.unanswered:
            return False
        sent, release = stream.unanswered.popleft()
        if release:
            stream.released = response.released  # type: ignore[union-attr]
            stream.release_settled.set()
            return False
        if self._ended:
            return False
        if self._broken_at is not None:
            self.longest_reconnect = max(self.longest_reconnect, now - self._broken_at)
            self._broken_at = None
        if stream is self._current:
            self._backoff.reset()
        if not response.renewed:
            self.unrenewed_answers += 1
            return False
        self.longest_gap = max(self.longest_gap, now - self._renewed_at)
        self._renewed_at = now
        self.expires_at = response.lease.expires_at.ToDatetime(datetime.UTC)
        if self._proven and sent + self.ttl <= self.held_until:
            return False
        self._proven = True
        self.held_until = sent + self.ttl
        return True

    def _ended_with(self, stream: _Stream[Any], error: grpc.RpcError | None) -> LeaseLost | None:
        """Books the end of ``stream``; the loss it means, if any."""
        if self._ended or stream is not self._current:
            return None  # the lease is over anyway
        self._current = None
        if error is not None and error.code() not in _RESUMABLE:  # type: ignore[attr-defined]
            mapped = from_rpc_error(error)
            lost = LeaseLost(f"lease on {mapped!s}")
            lost.__cause__ = mapped
            return lost
        # Baton draining, a broken connection, or an end we did not ask for: resume at once
        # (after a short backoff) with the same lease id. The server's RetryInfo is not
        # waited for: the lease's deadline matters more, and another replica is up.
        now = time.monotonic()
        self._broken_at = self._broken_at or now
        self._reopen_at = now + self._backoff.delay(None)
        return None

    def _tell_renewed(self) -> None:
        if self._on_renewed is not None:
            # The callback's failure must not stop the keep-alive that reads the answers.
            with contextlib.suppress(Exception):
                self._on_renewed(self)

    def _expired_loss(self) -> LeaseLost:
        return LeaseLost(
            f"no heartbeat on {self.name!r} renewed in time: held until {self.margin}s"
            " after the moment this is reported, by the local clock"
        )

    def _give_up_outcome(self, given_up: bool, error: BatonError | None) -> None:
        if self.loss is not None:
            raise self.loss
        if error is not None:
            raise error
        if not given_up:
            raise LeaseLost(self._already_gone.format(name=self.name))

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} name={self.name!r} fencing_token={self.fencing_token}"
            f" lost={self.loss is not None}>"
        )


def _requests(
    pending: queue.SimpleQueue[KeepAliveRequest | None],
) -> Iterator[KeepAliveRequest]:
    """The request iterator of one sync stream; grpc reads it from a thread of its own."""
    while (request := pending.get()) is not None:
        yield request


class _DueStarts:
    """Calls each sync lease's ``start`` when its first stream is due, from one thread per
    process: a thread per lease, started at the grant, cost a lock cycle of the sync client
    about 300 µs of CPU (888 against 577 µs for bare Acquire + Release), and most locks are
    released before a third of their ttl. An entry cancelled before it is due is dropped
    when it comes up, or when cancelled entries are over half of all (as asyncio does with
    its timers), so that memory follows the leases held."""

    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # A forked child has no copy of the thread: it starts its own when needed.
        self._wake = threading.Condition()
        self._due: list[list[Any]] = []  # heap of [at, sequence, start or None]
        self._cancelled = 0
        self._sequence = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, at: float, start: Callable[[], None]) -> list[Any]:
        """Calls ``start`` at ``at`` (``time.monotonic()``) unless cancelled; the entry to
        cancel it with."""
        entry = [at, next(self._sequence), start]
        with self._wake:
            heapq.heappush(self._due, entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="baton-keepalive-starts", daemon=True
                )
                self._thread.start()
            elif self._due[0] is entry:
                self._wake.notify()
        return entry

    def cancel(self, entry: list[Any]) -> None:
        with self._wake:
            if entry[2] is None:
                return  # started, or cancelled already
            entry[2] = None
            self._cancelled += 1
            if self._cancelled > 100 and 2 * self._cancelled > len(self._due):
                self._due = [kept for kept in self._due if kept[2] is not None]
                heapq.heapify(self._due)
                self._cancelled = 0

    def _run(self) -> None:
        while True:
            with self._wake:
                while True:
                    while self._due and self._due[0][2] is None:
                        heapq.heappop(self._due)
                        self._cancelled -= 1
                    now = time.monotonic()
                    if self._due and self._due[0][0] <= now:
                        break
                    self._wake.wait(self._due[0][0] - now if self._due else None)
                entry = heapq.heappop(self._due)
                start, entry[2] = entry[2], None
            # Outside the lock: start takes the lease's guard, under which cancel is called.
            # Whatever one start raises, the leases after it still need theirs.
            with contextlib.suppress(Exception):
                start()


_KEEPER_STARTS = _DueStarts()


class _KeptLease(_LeaseState):
    """A lease kept alive by background threads (sync client) until given up: the keeper
    thread, started when the first stream is due (by _KEEPER_STARTS), opens streams, sends
    heartbeats and is the local timer; one reader thread per stream applies its answers."""

    def __init__(
        self,
        stub: Any,
        granted: lock_pb2.Lease,
        proven_at: float | None,
        on_renewed: Renewed[Any] | None = None,
    ) -> None:
        super().__init__(granted, proven_at, on_renewed)
        self._stub = stub
        self.lost_event = threading.Event()
        """Set when the lease is lost."""
        self._guard = threading.Condition()
        self._keeper: threading.Thread | None = None
        # Until its first stream is due the lease needs no thread of its own (nor a loss
        # timer: that is before its deadline), and most locks are released before.
        self._keeper_due = _KEEPER_STARTS.schedule(self._reopen_at, self._start_keeper)

    @property
    def lost(self) -> bool:
        return self.lost_event.is_set()

    def wait_lost(self, timeout: float | None = None) -> bool:
        """Blocks until the lease is lost (True) or ``timeout`` passes (False)."""
        return self.lost_event.wait(timeout)

    def _give_up_call(self) -> bool:
        """Release or Resign, one attempt (made with ``_retry.READY``): whether it ended a
        lease that was still held."""
        raise NotImplementedError

    def _give_up(self) -> None:
        """Gives the lease up so a waiter gets it at once. Raises :class:`LeaseLost` if it was
        lost while held; idempotent."""
        with self._guard:
            if self._giving_up:
                return
            if time.monotonic() >= self.lost_at:
                # Past its deadline, even if the timer has not said so yet (just resumed).
                self._lose(self._expired_loss())
            self._giving_up = True
        # Give up first: cancelling the stream also gives the lease up, and a Release or
        # Resign that came second would then answer that it was already gone.
        given_up, error = False, None
        answered, sent = self._release_on_stream()
        if answered is not None:
            given_up = answered
        else:
            try:
                # After a release that went out unanswered, "already gone" may be its doing.
                given_up = _retry.settle(self._give_up_call) or sent
            except BatonError as failed:
                error = failed
        with self._guard:
            self._end()
            keeper = self._keeper
        if keeper is not None:
            keeper.join()
        self._give_up_outcome(given_up, error)

    def _release_on_stream(self) -> tuple[bool | None, bool]:
        """Sends ``release`` on the open stream and waits for its answer: whether it released
        (None: no answer), and whether a release may have gone out."""
        with self._guard:
            stream = self._current
            if stream is None or not self._releases_on_stream or self._ended:
                return None, False
            self._sent(stream, time.monotonic(), release=True)
            stream.requests.put(lock_pb2.KeepAliveRequest(release=True))
            self._guard.wait_for(
                lambda: stream.released is not None or stream is not self._current or self._ended,
                STREAM_RELEASE_WAIT,
            )
            return stream.released, True

    def _wait_proven(self) -> None:
        """Blocks until an unproven grant is proven by its first KeepAlive answer; raises its
        loss if that came first (its stream is then cancelled, which gives it up)."""
        with self._guard:
            self._guard.wait_for(lambda: self._proven or self._ended)
        if self.loss is not None:
            raise self.loss

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc is None:
            self._give_up()
            return
        # The block's own exception matters more than a failed release.
        with contextlib.suppress(Exception):
            self._give_up()

    def _lose(self, loss: LeaseLost) -> None:
        """Under the guard."""
        if self._giving_up or self.loss is not None:
            return
        self.loss = loss
        self.lost_event.set()
        self._end()

    def _start_keeper(self) -> None:
        """Starts the keeper thread, once the first stream is due (from _KEEPER_STARTS)."""
        with self._guard:
            if self._ended or self._keeper is not None:
                return
            keeper = threading.Thread(
                target=self._keep_alive, name=f"baton-keepalive-{self.name}", daemon=True
            )
            try:
                keeper.start()
            except RuntimeError as failed:  # out of threads, or the interpreter exiting
                # Without its keeper nothing renews the lease or reports its loss: say so now.
                loss = LeaseLost(f"could not start the thread keeping {self.name!r}")
                loss.__cause__ = failed
                self._lose(loss)
                return
            self._keeper = keeper

    def _end(self) -> None:
        """Under the guard: cancels the stream (which gives the lease up on Baton, if it is
        still held) and stops the keeper."""
        self._ended = True
        _KEEPER_STARTS.cancel(self._keeper_due)
        if self._current is not None:
            self._current.call.cancel()
            self._current.requests.put(None)
        self._guard.notify_all()

    def _keep_alive(self) -> None:
        """The keeper thread: opens streams, sends heartbeats, and is the local timer that
        reports the loss at ``lost_at`` whatever the streams do."""
        with self._guard:
            while not self._ended:
                now = time.monotonic()
                step, until = self._next_step(now)
                if step == "lose":
                    self._lose(self._expired_loss())
                elif step == "open":
                    self._open(now)
                elif step == "beat":
                    assert self._current is not None
                    self._sent(self._current, now)
                    self._current.requests.put(self._keep_alive_request())
                else:
                    self._guard.wait(None if until == math.inf else until - now)

    def _open(self, now: float) -> None:
        """Under the guard."""
        stream: _Stream[queue.SimpleQueue[KeepAliveRequest | None]]
        stream = _Stream(queue.SimpleQueue())
        self._sent(stream, now)
        stream.requests.put(self._first_request())
        try:
            stream.call = self._stub.KeepAlive(_requests(stream.requests), wait_for_ready=True)
        except ValueError as closed:  # the client was closed while the lease was held
            stream.requests.put(None)
            loss = LeaseLost(f"client closed while holding {self.name!r}")
            loss.__cause__ = closed
            self._lose(loss)
            self._ended = True  # no channel left to keep the lease on, even while releasing
            return
        self._current = stream
        self._start_reader(stream)

    def _start_reader(self, stream: _Stream[queue.SimpleQueue[KeepAliveRequest | None]]) -> None:
        threading.Thread(
            target=self._read,
            args=(stream,),
            name=f"baton-keepalive-read-{self.name}",
            daemon=True,
        ).start()

    def _read(self, stream: _Stream[queue.SimpleQueue[KeepAliveRequest | None]]) -> None:
        error: grpc.RpcError | None = None
        try:
            for response in stream.call:
                with self._guard:
                    if time.monotonic() >= self.lost_at:
                        # Frozen past the deadline: the loss comes first, whatever this
                        # (old) answer says.
                        self._lose(self._expired_loss())
                    renewed = self._answer(stream, response)
                    # A proof awaited by _wait_proven, or a release's answer.
                    self._guard.notify_all()
                if renewed:
                    self._tell_renewed()
        except grpc.RpcError as raised:
            error = raised
        stream.requests.put(None)  # ends grpc's request thread
        with self._guard:
            loss = self._ended_with(stream, error)
            if loss is not None:
                self._lose(loss)
            self._guard.notify_all()


class Lease(_KeptLease):
    """A held lock (sync client), kept alive by background threads until released.

    Check :attr:`lost` (or wait on :attr:`lost_event`) during long work; leaving the
    ``with`` block releases the lease and raises :class:`LeaseLost` if it was lost while
    held (unless the block already raised).
    """

    _keep_alive_request = lock_pb2.KeepAliveRequest
    _already_gone = "lock {name!r} was already gone when released"
    _releases_on_stream = True
    _stub: lock_pb2_grpc.LockServiceStub

    def __init__(
        self,
        stub: lock_pb2_grpc.LockServiceStub,
        granted: lock_pb2.Lease,
        proven_at: float | None,
        on_renewed: Renewed[Lease] | None = None,
    ) -> None:
        super().__init__(stub, granted, proven_at, on_renewed)

    def release(self) -> None:
        """Releases the lease so a waiter gets it at once. Raises :class:`LeaseLost` if it was
        lost while held; idempotent."""
        self._give_up()

    def __enter__(self) -> Lease:
        return self

    def _give_up_call(self) -> bool:
        request = lock_pb2.ReleaseRequest(name=self.name, lease_id=self.lease_id)
        return self._stub.Release(request, **_retry.READY).released


async def _arequests(
    pending: asyncio.Queue[KeepAliveRequest | None],
) -> AsyncIterator[KeepAliveRequest]:
    while (request := await pending.get()) is not None:
        yield request


class _AsyncKeptLease(_LeaseState):
    """A lease kept alive by tasks (asyncio client) until given up: the keeper task opens
    streams and sends heartbeats, a reader task per stream applies its answers, and a timer
    on the event loop reports the loss at ``lost_at``."""

    def __init__(
        self,
        stub: Any,
        granted: lock_pb2.Lease,
        proven_at: float | None,
        on_renewed: Renewed[Any] | None = None,
    ) -> None:
        super().__init__(granted, proven_at, on_renewed)
        self._stub = stub
        self.lost_event = asyncio.Event()
        """Set when the lease is lost."""
        self._wake = asyncio.Event()
        self._proven_or_ended = asyncio.Event()
        self._readers: set[asyncio.Task[None]] = set()
        self._keeper: asyncio.Task[None] | None = None
        # Until its first stream is due the lease needs no keeper, nor a loss timer (that is
        # before its deadline): most locks are released before, and never cost either. The
        # event loop's clock is time.monotonic().
        self._timer = asyncio.get_running_loop().call_at(self._reopen_at, self._start_keeper)

    @property
    def lost(self) -> bool:
        return self.lost_event.is_set()

    async def wait_lost(self, timeout: float | None = None) -> bool:
        """Waits until the lease is lost (True) or ``timeout`` passes (False)."""
        try:
            await within(self.lost_event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _give_up_call(self) -> bool:
        """See :meth:`_KeptLease._give_up_call`."""
        raise NotImplementedError

    async def _give_up(self) -> None:
        """See :meth:`_KeptLease._give_up`."""
        if self._giving_up:
            return
        if time.monotonic() >= self.lost_at:
            self._lose(self._expired_loss())  # as in the sync lease
        self._giving_up = True
        given_up, error = False, None
        answered, sent = await self._release_on_stream()
        if answered is not None:
            given_up = answered
        else:
            try:
                given_up = await _retry.asettle(self._give_up_call) or sent
            except BatonError as failed:
                error = failed
        self._end()
        running = [*self._readers] if self._keeper is None else [self._keeper, *self._readers]
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        self._give_up_outcome(given_up, error)

    async def _release_on_stream(self) -> tuple[bool | None, bool]:
        """See :meth:`_KeptLease._release_on_stream`."""
        stream = self._current
        if stream is None or not self._releases_on_stream or self._ended:
            return None, False
        self._sent(stream, time.monotonic(), release=True)
        stream.requests.put_nowait(lock_pb2.KeepAliveRequest(release=True))
        with contextlib.suppress(TimeoutError):
            await within(stream.release_settled.wait(), STREAM_RELEASE_WAIT)
        return stream.released, True

    async def _wait_proven(self) -> None:
        """See :meth:`_KeptLease._wait_proven`."""
        await self._proven_or_ended.wait()
        if self.loss is not None:
            raise self.loss

    async def __aexit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc is None:
            await self._give_up()
            return
        with contextlib.suppress(Exception):
            await self._give_up()

    def _lose(self, loss: LeaseLost) -> None:
        if self._giving_up or self.loss is not None:
            return
        self.loss = loss
        self.lost_event.set()
        self._end()

    def _start_keeper(self) -> None:
        if self._ended:
            return
        loop = asyncio.get_running_loop()
        # From now on the local timer reports the loss at lost_at, whatever the streams do.
        self._timer = loop.call_at(self.lost_at, self._on_deadline)
        self._keeper = loop.create_task(self._keep_alive(), name=f"baton-keepalive-{self.name}")

    def _end(self) -> None:
        self._ended = True
        self._timer.cancel()
        if self._current is not None:
            self._current.call.cancel()
            self._current.requests.put_nowait(None)
        self._wake.set()
        self._proven_or_ended.set()

    def _on_deadline(self) -> None:
        if time.monotonic() >= self.lost_at:
            self._lose(self._expired_loss())
        else:  # renewed since this timer was set
            self._rearm()

    def _rearm(self) -> None:
        self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(self.lost_at, self._on_deadline)

    async def _keep_alive(self) -> None:
        while not self._ended:
            now = time.monotonic()
            step, until = self._next_step(now)
            if step == "lose":
                self._lose(self._expired_loss())
            elif step == "open":
                self._open(now)
            elif step == "beat":
                assert self._current is not None
                self._sent(self._current, now)
                self._current.requests.put_nowait(self._keep_alive_request())
            else:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    timeout = None if until == math.inf else until - now
                    await within(self._wake.wait(), timeout)

    def _open(self, now: float) -> None:
        stream: _Stream[asyncio.Queue[KeepAliveRequest | None]]
        stream = _Stream(asyncio.Queue())
        self._sent(stream, now)
        stream.requests.put_nowait(self._first_request())
        try:
            stream.call = self._stub.KeepAlive(_arequests(stream.requests), wait_for_ready=True)
        except Exception as closed:  # the client was closed while the lease was held
            loss = LeaseLost(f"client closed while holding {self.name!r}")
            loss.__cause__ = closed
            self._lose(loss)
            self._ended = True  # no channel left to keep the lease on, even while releasing
            return
        self._current = stream
        self._start_reader(stream)

    def _start_reader(self, stream: _Stream[asyncio.Queue[KeepAliveRequest | None]]) -> None:
        reader = asyncio.get_running_loop().create_task(self._read(stream))
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)

    async def _read(self, stream: _Stream[asyncio.Queue[KeepAliveRequest | None]]) -> None:
        error: grpc.RpcError | None = None
        try:
            async for response in stream.call:
                if time.monotonic() >= self.lost_at:
                    self._lose(self._expired_loss())
                if self._answer(stream, response):
                    self._rearm()
                    self._proven_or_ended.set()
                    self._tell_renewed()
        except grpc.RpcError as raised:
            error = raised
        except asyncio.CancelledError:
            # Only the call is ever cancelled (by _end, or by closing the client), never
            # this task: end the stream as any other.
            pass
        stream.requests.put_nowait(None)
        stream.release_settled.set()
        loss = self._ended_with(stream, error)
        if loss is not None:
            self._lose(loss)
        self._wake.set()


class AsyncLease(_AsyncKeptLease):
    """A held lock (asyncio client), kept alive by tasks until released.

    Check :attr:`lost` or ``await lease.wait_lost()``; leaving ``async with`` releases the
    lease and raises :class:`LeaseLost` if it was lost while held (unless the block raised).
    """

    _keep_alive_request = lock_pb2.KeepAliveRequest
    _already_gone = "lock {name!r} was already gone when released"
    _releases_on_stream = True
    _stub: lock_pb2_grpc.LockServiceStub

    def __init__(
        self,
        stub: lock_pb2_grpc.LockServiceStub,
        granted: lock_pb2.Lease,
        proven_at: float | None,
        on_renewed: Renewed[AsyncLease] | None = None,
    ) -> None:
        super().__init__(stub, granted, proven_at, on_renewed)

    async def release(self) -> None:
        """Releases the lease so a waiter gets it at once. Raises :class:`LeaseLost` if it was
        lost while held; idempotent."""
        await self._give_up()

    async def __aenter__(self) -> AsyncLease:
        return self

    async def _give_up_call(self) -> bool:
        request = lock_pb2.ReleaseRequest(name=self.name, lease_id=self.lease_id)
        return (await self._stub.Release(request, **_retry.READY)).released  # type: ignore[misc]


class Locks:
    """``lock()`` and ``acquire()`` for the sync :class:`baton_client.Client`."""

    _locks: lock_pb2_grpc.LockServiceStub
    _default_timeout: float | None

    def acquire(
        self,
        name: str,
        ttl: Seconds,
        *,
        wait: Seconds | None = None,
        owner: str = "",
        permits: int = 0,
        on_renewed: Renewed[Lease] | None = None,
    ) -> Lease:
        """Acquires ``name`` for ``ttl`` seconds (0.1 ..= 3600) and keeps it until released.

        Waits, woken by releases, until acquired or ``wait`` seconds pass
        (:class:`LockNotAcquired`); ``wait=0`` tries once, ``None`` waits indefinitely.
        ``permits=N`` makes the lock a semaphore with N holders. Retries Acquire on
        UNAVAILABLE with one request_id. ``on_renewed(lease)`` is called, from a background
        thread, each time :attr:`Lease.held_until` moves forward (its exceptions are ignored).
        A grant that came after a wait longer than ttl/2 is renewed once before it is
        returned (when it was made is unknown); if that finds it gone, :class:`LeaseLost`.
        """
        attempt = _Attempt(_acquire_request(name, ttl, owner, permits), wait, self._default_timeout)
        while True:
            request, round_wait, timeout = attempt.next_call()
            try:
                response = self._locks.Acquire(request, timeout=timeout, wait_for_ready=True)
            except grpc.RpcError as error:
                time.sleep(attempt.retry_delay(error))
                continue
            if attempt.outcome(response, round_wait):
                proven_at = attempt.proven_at(response.lease)
                lease = Lease(self._locks, response.lease, proven_at, on_renewed)
                if proven_at is None:
                    lease._wait_proven()
                return lease

    @contextlib.contextmanager
    def lock(
        self,
        name: str,
        ttl: Seconds,
        *,
        wait: Seconds | None = None,
        owner: str = "",
        permits: int = 0,
        on_renewed: Renewed[Lease] | None = None,
    ) -> Iterator[Lease]:
        """``with client.lock("order:1234", ttl=10) as lease:`` — see :meth:`acquire`."""
        with self.acquire(
            name, ttl, wait=wait, owner=owner, permits=permits, on_renewed=on_renewed
        ) as lease:
            yield lease


class AsyncLocks:
    """``lock()`` and ``acquire()`` for :class:`baton_client.AsyncClient`."""

    _locks: lock_pb2_grpc.LockServiceStub
    _default_timeout: float | None

    async def acquire(
        self,
        name: str,
        ttl: Seconds,
        *,
        wait: Seconds | None = None,
        owner: str = "",
        permits: int = 0,
        on_renewed: Renewed[AsyncLease] | None = None,
    ) -> AsyncLease:
        """See :meth:`Locks.acquire`; ``on_renewed`` runs on the event loop."""
        attempt = _Attempt(_acquire_request(name, ttl, owner, permits), wait, self._default_timeout)
        while True:
            request, round_wait, timeout = attempt.next_call()
            try:
                response = await self._locks.Acquire(  # type: ignore[misc]
                    request, timeout=timeout, wait_for_ready=True
                )
            except grpc.RpcError as error:
                await asyncio.sleep(attempt.retry_delay(error))
                continue
            if attempt.outcome(response, round_wait):
                proven_at = attempt.proven_at(response.lease)
                lease = AsyncLease(self._locks, response.lease, proven_at, on_renewed)
                if proven_at is None:
                    await lease._wait_proven()
                return lease

    @contextlib.asynccontextmanager
    async def lock(
        self,
        name: str,
        ttl: Seconds,
        *,
        wait: Seconds | None = None,
        owner: str = "",
        permits: int = 0,
        on_renewed: Renewed[AsyncLease] | None = None,
    ) -> AsyncIterator[AsyncLease]:
        """``async with client.lock("order:1234", ttl=10) as lease:`` — see :meth:`acquire`."""
        lease = await self.acquire(
            name, ttl, wait=wait, owner=owner, permits=permits, on_renewed=on_renewed
        )
        async with lease:
            yield lease
