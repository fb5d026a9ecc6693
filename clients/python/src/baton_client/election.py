"""Leader election: ``with client.lead(name, value, ttl=10) as leadership:`` (and
``async with``), ``leader()`` and ``observe()``, on ``baton.v1.ElectionService``.

Campaigning waits without polling: one Campaign call waits, woken by the leader's
resignation or expiry, until elected (a round lasts up to an hour, then the next follows);
on UNAVAILABLE it is retried with one request_id, so a leadership whose answer was lost is
handed back instead of blocking everyone until its ttl runs out.

A leadership is a lease with the lock's liveness contract, kept by the same machinery
(``lock._KeptLease``, ``lock._AsyncKeptLease``): heartbeats on a KeepAlive stream every
ttl/3, the loss reported ``max(ttl/10, 50 ms)`` before the last renewed heartbeat's send
time + ttl by a local timer, the stream reopened with the same lease id on UNAVAILABLE. As
the Campaign's answer may come long after the election (its send time proves nothing), a
leadership is handed out only once the first message of its KeepAlive stream is answered
``renewed``. Leaving the block resigns (Resign, then cancelling the stream), so the next
candidate is elected at once.

Observing streams the election's history: first its current state (``CURRENT``), then every
change in order. The stream is reopened when it breaks (a draining replica ends it with
UNAVAILABLE), and the first event after that is ``CURRENT`` again, as it is when the observer
fell behind: the changes in between are not replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from . import _retry
from ._connection import Backoff, Seconds, duration, within
from .errors import BatonError, LeaseLost, from_rpc_error
from .lock import _AsyncKeptLease, _Attempt, _KeptLease
from .pb.baton.v1 import election_pb2, lock_pb2
from .pb.baton.v1.errors_pb2 import ErrorReason

if TYPE_CHECKING:
    from .pb.baton.v1 import election_pb2_grpc

_Kind = election_pb2.ObserveResponse


class ElectionEventKind(enum.IntEnum):
    """What an :class:`ElectionEvent` tells; see proto/baton/v1/election.proto."""

    CURRENT = _Kind.KIND_CURRENT
    """The state when the stream opens, reopens, or the observer fell behind: ``leader`` is
    the current leadership, None when nobody leads."""
    ELECTED = _Kind.KIND_ELECTED
    """A new leader, with a term above every earlier one."""
    PROCLAIMED = _Kind.KIND_PROCLAIMED
    """The leader proclaimed a new value; the term is unchanged."""
    RESIGNED = _Kind.KIND_RESIGNED
    """The leader resigned (or its KeepAlive stream went away); nobody leads."""
    EXPIRED = _Kind.KIND_EXPIRED
    """The leader's lease ran out without renewal; nobody leads."""


@dataclass(frozen=True)
class Leader:
    """Who leads an election, as anyone may see it (never its lease id)."""

    name: str
    value: bytes
    """As given to the Campaign or the last Proclaim."""
    term: int
    """The leadership's fencing token: above every earlier term of the election. A resource
    the leader writes to refuses writes with a lower term than it has seen."""
    owner: str
    since: datetime.datetime
    """When this term began (Redis server clock)."""
    expires_at: datetime.datetime
    """When the leadership ends unless renewed (Redis server clock)."""


@dataclass(frozen=True)
class ElectionEvent:
    """One change in an election's history, or its current state."""

    kind: ElectionEventKind
    leader: Leader | None
    """The leadership after the change; for RESIGNED and EXPIRED, the one that ended."""
    at: datetime.datetime
    """When it happened (Redis server clock)."""


def _leader(leader: election_pb2.Leader) -> Leader:
    return Leader(
        name=leader.name,
        value=leader.value,
        term=leader.term,
        owner=leader.owner,
        since=leader.since.ToDatetime(datetime.UTC),
        expires_at=leader.expires_at.ToDatetime(datetime.UTC),
    )


def _event(response: election_pb2.ObserveResponse) -> ElectionEvent | None:
    """The event, or None for a kind this version does not know (a newer server's)."""
    try:
        kind = ElectionEventKind(response.kind)
    except ValueError:
        return None
    leader = _leader(response.leader) if response.HasField("leader") else None
    return ElectionEvent(kind=kind, leader=leader, at=response.at.ToDatetime(datetime.UTC))


def _campaign_request(
    name: str, value: bytes, ttl: Seconds, owner: str
) -> election_pb2.CampaignRequest:
    return election_pb2.CampaignRequest(name=name, ttl=duration(ttl), value=value, owner=owner)


def _not_leading(name: str, error: BatonError) -> LeaseLost | None:
    """The loss a Proclaim's failure reveals, if it does."""
    if error.error_reason != ErrorReason.LEASE_NOT_HELD:
        return None
    lost = LeaseLost(f"leadership of {name!r} was lost: Baton refused the proclaim")
    lost.__cause__ = error
    return lost


class Leadership(_KeptLease):
    """Leadership of an election (sync client), kept alive by background threads until
    resigned.

    Check :attr:`lost` (or wait on :attr:`lost_event`) during long work; leaving the
    ``with`` block resigns and raises :class:`LeaseLost` if leadership was lost while held
    (unless the block already raised). :attr:`term` is the fencing token to pass to what the
    leader writes to.
    """

    _keep_alive_request = election_pb2.ElectionServiceKeepAliveRequest
    _already_gone = "leadership of {name!r} was already gone when resigned"
    _stub: election_pb2_grpc.ElectionServiceStub

    def __init__(
        self,
        stub: election_pb2_grpc.ElectionServiceStub,
        granted: lock_pb2.Lease,
        leader: election_pb2.Leader,
    ) -> None:
        super().__init__(stub, granted, proven_at=None)
        self.value: bytes = leader.value
        """The value this leader leads with: the Campaign's, then the last proclaimed."""

    @property
    def term(self) -> int:
        """The leadership's term: its lease's fencing token, above every earlier term."""
        return self.fencing_token

    def proclaim(self, value: bytes) -> None:
        """Replaces the leader's value, keeping the term; observers see PROCLAIMED. Retried
        on UNAVAILABLE. When Baton answers that this no longer leads, the leadership is
        reported lost and :class:`LeaseLost` raised."""
        request = election_pb2.ProclaimRequest(name=self.name, lease_id=self.lease_id, value=value)
        try:
            response = _retry.settle(lambda: self._stub.Proclaim(request, **_retry.READY))
        except BatonError as error:
            lost = _not_leading(self.name, error)
            if lost is None:
                raise
            with self._guard:
                self._lose(lost)
            raise lost from error
        self.value = response.leader.value

    def resign(self) -> None:
        """Gives leadership up so the next candidate is elected at once. Raises
        :class:`LeaseLost` if it was lost while held; idempotent."""
        self._give_up()

    def __enter__(self) -> Leadership:
        return self

    def _give_up_call(self) -> bool:
        request = election_pb2.ResignRequest(name=self.name, lease_id=self.lease_id)
        return self._stub.Resign(request, **_retry.READY).resigned


class AsyncLeadership(_AsyncKeptLease):
    """Leadership of an election (asyncio client), kept alive by tasks until resigned.

    Check :attr:`lost` or ``await leadership.wait_lost()``; leaving ``async with`` resigns
    and raises :class:`LeaseLost` if leadership was lost while held (unless the block raised).
    """

    _keep_alive_request = election_pb2.ElectionServiceKeepAliveRequest
    _already_gone = "leadership of {name!r} was already gone when resigned"
    _stub: election_pb2_grpc.ElectionServiceStub

    def __init__(
        self,
        stub: election_pb2_grpc.ElectionServiceStub,
        granted: lock_pb2.Lease,
        leader: election_pb2.Leader,
    ) -> None:
        super().__init__(stub, granted, proven_at=None)
        self.value: bytes = leader.value
        """The value this leader leads with: the Campaign's, then the last proclaimed."""

    @property
    def term(self) -> int:
        """The leadership's term: its lease's fencing token, above every earlier term."""
        return self.fencing_token

    async def proclaim(self, value: bytes) -> None:
        """See :meth:`Leadership.proclaim`."""
        request = election_pb2.ProclaimRequest(name=self.name, lease_id=self.lease_id, value=value)
        try:
            response = await _retry.asettle(
                lambda: self._stub.Proclaim(request, **_retry.READY)  # type: ignore[arg-type,return-value]
            )
        except BatonError as error:
            lost = _not_leading(self.name, error)
            if lost is None:
                raise
            self._lose(lost)
            raise lost from error
        self.value = response.leader.value

    async def resign(self) -> None:
        """See :meth:`Leadership.resign`."""
        await self._give_up()

    async def __aenter__(self) -> AsyncLeadership:
        return self

    async def _give_up_call(self) -> bool:
        request = election_pb2.ResignRequest(name=self.name, lease_id=self.lease_id)
        return (await self._stub.Resign(request, **_retry.READY)).resigned  # type: ignore[misc]


def _reopen_delay(backoff: Backoff, error: grpc.RpcError | None) -> float | None:
    """Seconds before reopening an Observe stream that ended with ``error`` (None: ended
    without one), or None when it must not be reopened: CANCELLED (closed, or the client
    closed). Raises the mapped BatonError for an error no reopening can fix."""
    if error is None:
        return backoff.delay(None)
    code = error.code()  # type: ignore[attr-defined]
    if code == grpc.StatusCode.CANCELLED:
        return None
    mapped = from_rpc_error(error)
    if code != grpc.StatusCode.UNAVAILABLE:
        raise mapped from None
    # A draining replica's RetryInfo is not waited for: the balancer picks another one.
    draining = mapped.error_reason == ErrorReason.SHUTTING_DOWN
    return backoff.delay(None if draining else mapped.retry_after)


class Observation:
    """The events of one election (sync client), from ``client.observe(name)``: iterate it.

    The Observe stream is opened by the first ``next()`` and reopened when it breaks (its
    first event is then CURRENT again). :meth:`close` — from any thread — or leaving the
    ``with`` block ends the iteration, as does closing the client.
    """

    def __init__(self, stub: election_pb2_grpc.ElectionServiceStub, name: str) -> None:
        self.name = name
        self.reopens = 0
        """How many times the stream was reopened after breaking, for monitoring."""
        self._stub = stub
        self._request = election_pb2.ObserveRequest(name=name)
        self._guard = threading.Lock()
        self._closed = threading.Event()
        self._call: Any = None  # the open stream, if any
        self._backoff = Backoff()

    def __iter__(self) -> Observation:
        return self

    def __next__(self) -> ElectionEvent:
        while True:
            with self._guard:
                if self._closed.is_set():
                    raise StopIteration
                if self._call is None:
                    try:
                        self._call = self._stub.Observe(self._request, wait_for_ready=True)
                    except ValueError:  # the client was closed
                        raise StopIteration from None
                call = self._call
            error: grpc.RpcError | None = None
            try:
                response = next(call)
            except StopIteration:
                pass  # the stream never ends on its own: something between us ended it
            except grpc.RpcError as raised:
                error = raised
            else:
                self._backoff.reset()
                event = _event(response)
                if event is not None:
                    return event
                continue
            with self._guard:
                self._call = None
            if self._closed.is_set():
                raise StopIteration
            delay = _reopen_delay(self._backoff, error)
            if delay is None or self._closed.wait(delay):
                raise StopIteration
            self.reopens += 1

    def close(self) -> None:
        """Ends the iteration: a ``next()`` blocked on the stream returns at once."""
        with self._guard:
            self._closed.set()
            if self._call is not None:
                self._call.cancel()

    def __enter__(self) -> Observation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncObservation:
    """The events of one election (asyncio client), from ``client.observe(name)``: iterate
    it with ``async for``. As :class:`Observation`; cancelling the task that iterates it also
    ends the stream."""

    def __init__(self, stub: election_pb2_grpc.ElectionServiceStub, name: str) -> None:
        self.name = name
        self.reopens = 0
        """How many times the stream was reopened after breaking, for monitoring."""
        self._stub = stub
        self._request = election_pb2.ObserveRequest(name=name)
        self._closed = asyncio.Event()
        self._call: Any = None  # the open stream, if any
        self._backoff = Backoff()

    def __aiter__(self) -> AsyncObservation:
        return self

    async def __anext__(self) -> ElectionEvent:
        while True:
            if self._closed.is_set():
                raise StopAsyncIteration
            if self._call is None:
                try:
                    self._call = self._stub.Observe(self._request, wait_for_ready=True)
                except Exception:  # the client was closed
                    raise StopAsyncIteration from None
            call = self._call
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
                    event = _event(response)
                    if event is not None:
                        return event
                    continue
            self._call = None
            if self._closed.is_set():
                raise StopAsyncIteration
            delay = _reopen_delay(self._backoff, error)
            if delay is None:
                raise StopAsyncIteration
            with contextlib.suppress(TimeoutError):
                await within(self._closed.wait(), delay)
            if self._closed.is_set():
                raise StopAsyncIteration
            self.reopens += 1

    def close(self) -> None:
        """Ends the iteration: an ``__anext__`` waiting on the stream returns at once."""
        self._closed.set()
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self) -> AsyncObservation:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class Elections:
    """``lead()``, ``campaign()``, ``leader()`` and ``observe()`` for the sync
    :class:`baton_client.Client`."""

    _elections: election_pb2_grpc.ElectionServiceStub
    _default_timeout: float | None

    def campaign(
        self, name: str, value: bytes = b"", *, ttl: Seconds, owner: str = ""
    ) -> Leadership:
        """Waits until elected leader of ``name``, with ``value`` (at most 4 KiB: an address,
        an id) for observers, and keeps leadership — ``ttl`` seconds (0.1 ..= 3600) past the
        last renewed heartbeat — until resigned. ``owner`` names the candidate in
        :meth:`leader` and events, for observability.

        Waits as long as it takes, woken by the leader's resignation or expiry; retries the
        Campaign on UNAVAILABLE with one request_id, for up to the client's timeout of
        consecutive failures. Returns once the leadership's KeepAlive stream has renewed it;
        if it was lost before that, raises :class:`LeaseLost`.
        """
        attempt = _Attempt(_campaign_request(name, value, ttl, owner), None, self._default_timeout)
        while True:
            request, _, timeout = attempt.next_call()
            try:
                response = self._elections.Campaign(request, timeout=timeout, wait_for_ready=True)
            except grpc.RpcError as error:
                time.sleep(attempt.retry_delay(error))
                continue
            attempt.answered()
            if response.elected:
                break
        leadership = Leadership(self._elections, response.lease, response.leader)
        try:
            leadership._wait_proven()
        except LeaseLost:
            raise  # its stream was cancelled, which resigned it if it still led
        except BaseException:
            # Interrupted: resign rather than lead for nobody until the ttl runs out.
            with contextlib.suppress(Exception):
                leadership.resign()
            raise
        return leadership

    @contextlib.contextmanager
    def lead(
        self, name: str, value: bytes = b"", *, ttl: Seconds, owner: str = ""
    ) -> Iterator[Leadership]:
        """``with client.lead("scheduler", b"10.0.0.7:8080", ttl=10) as leadership:`` — see
        :meth:`campaign`. Leaving the block resigns."""
        with self.campaign(name, value, ttl=ttl, owner=owner) as leadership:
            yield leadership

    def leader(self, name: str) -> Leader | None:
        """Who leads ``name`` now: None when nobody does. Retried on UNAVAILABLE."""
        request = election_pb2.LeaderRequest(name=name)
        response = _retry.call(lambda: self._elections.Leader(request), self._default_timeout)
        return _leader(response.leader) if response.HasField("leader") else None

    def observe(self, name: str) -> Observation:
        """The events of election ``name``, first its current state: ``for event in
        client.observe("scheduler"):`` — see :class:`Observation`."""
        return Observation(self._elections, name)


class AsyncElections:
    """``lead()``, ``campaign()``, ``leader()`` and ``observe()`` for
    :class:`baton_client.AsyncClient`."""

    _elections: election_pb2_grpc.ElectionServiceStub
    _default_timeout: float | None

    async def campaign(
        self, name: str, value: bytes = b"", *, ttl: Seconds, owner: str = ""
    ) -> AsyncLeadership:
        """See :meth:`Elections.campaign`."""
        attempt = _Attempt(_campaign_request(name, value, ttl, owner), None, self._default_timeout)
        while True:
            request, _, timeout = attempt.next_call()
            try:
                response = await self._elections.Campaign(  # type: ignore[misc]
                    request, timeout=timeout, wait_for_ready=True
                )
            except grpc.RpcError as error:
                await asyncio.sleep(attempt.retry_delay(error))
                continue
            attempt.answered()
            if response.elected:
                break
        leadership = AsyncLeadership(self._elections, response.lease, response.leader)
        try:
            await leadership._wait_proven()
        except LeaseLost:
            raise
        except BaseException:  # cancelled: see Elections.campaign
            with contextlib.suppress(Exception):
                await leadership.resign()
            raise
        return leadership

    @contextlib.asynccontextmanager
    async def lead(
        self, name: str, value: bytes = b"", *, ttl: Seconds, owner: str = ""
    ) -> AsyncIterator[AsyncLeadership]:
        """``async with client.lead("scheduler", b"10.0.0.7:8080", ttl=10) as leadership:``
        — see :meth:`Elections.campaign`."""
        leadership = await self.campaign(name, value, ttl=ttl, owner=owner)
        async with leadership:
            yield leadership

    async def leader(self, name: str) -> Leader | None:
        """See :meth:`Elections.leader`."""
        request = election_pb2.LeaderRequest(name=name)
        response = await _retry.acall(
            lambda: self._elections.Leader(request),  # type: ignore[arg-type,return-value]
            self._default_timeout,
        )
        return _leader(response.leader) if response.HasField("leader") else None

    def observe(self, name: str) -> AsyncObservation:
        """``async for event in client.observe("scheduler"):`` — see :class:`AsyncObservation`."""
        return AsyncObservation(self._elections, name)
