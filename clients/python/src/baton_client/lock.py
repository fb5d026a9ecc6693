"""Fenced locks: ``with client.lock(name, ttl=10) as lease:`` (and ``async with``).

A held lease is kept alive by a ``KeepAlive`` stream. When the stream ends with UNAVAILABLE
(a replica shutting down, a broken connection) it is resumed with the same lease id on
whichever replica the balancer picks next; the lease counts as lost only when Baton answers
LEASE_NOT_HELD, an error no retry can fix occurs, or no renewal was confirmed for a whole
ttl — the server renews before it answers, so by then the lease has certainly expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from ._connection import Backoff, Seconds, duration, seconds
from .errors import BatonError, LeaseLost, LockNotAcquired, from_rpc_error
from .pb.baton.v1 import lock_pb2

if TYPE_CHECKING:
    from .pb.baton.v1 import lock_pb2_grpc

MAX_SERVER_WAIT = 3600.0
"""The longest wait_timeout Baton accepts; longer waits are made of several Acquires."""

_RETRY_ACQUIRE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
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


class _Attempt:
    """One logical Acquire: a random request_id reused by every retry, so a grant whose
    answer was lost is handed back instead of blocking us until its ttl runs out."""

    def __init__(
        self,
        name: str,
        ttl: Seconds,
        wait: Seconds | None,
        owner: str,
        permits: int,
        default_timeout: float | None,
    ) -> None:
        self.name = name
        self.request = lock_pb2.AcquireRequest(
            name=name,
            ttl=duration(ttl),
            owner=owner,
            permits=permits,
            request_id=secrets.token_hex(16),
        )
        self.give_up_at = None if wait is None else time.monotonic() + seconds(wait)
        self.default_timeout = default_timeout
        self.backoff = Backoff()
        self.failing_since: float | None = None

    def next_call(self) -> tuple[lock_pb2.AcquireRequest, float, float | None]:
        """The request with this round's wait, the wait, and the call's timeout: the wait
        plus the default timeout, so a replica that dies mid-wait is noticed."""
        wait = MAX_SERVER_WAIT
        if self.give_up_at is not None:
            wait = max(self.give_up_at - time.monotonic(), 0.0)
        self.request.wait_timeout.CopyFrom(duration(wait))
        timeout = None if self.default_timeout is None else wait + self.default_timeout
        return self.request, wait, timeout

    def outcome(self, response: lock_pb2.AcquireResponse, wait: float) -> bool:
        """True when acquired; raises when the wait is over; False to wait again."""
        if response.acquired:
            return True
        if wait < MAX_SERVER_WAIT:
            raise LockNotAcquired(self.name, response.holder.owner)
        return False

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


class _LeaseState:
    """What the sync and asyncio leases share: the grant and the loss bookkeeping."""

    def __init__(self, granted: lock_pb2.Lease) -> None:
        self.name: str = granted.name
        self.lease_id: str = granted.lease_id
        """Proves holdership; treat it as a secret."""
        self.fencing_token: int = granted.fencing_token
        """Greater than every token granted before for this name: pass it to the protected
        resource, which must refuse writes with a lower token than it has seen."""
        self.ttl: float = granted.ttl.ToTimedelta().total_seconds()
        self.expires_at: datetime.datetime = granted.expires_at.ToDatetime(datetime.UTC)
        """Expiry of the last confirmed renewal, by the Redis server's clock."""
        self.loss: LeaseLost | None = None
        self._unlocking = False

    def _keep_alive_request(self) -> lock_pb2.KeepAliveRequest:
        return lock_pb2.KeepAliveRequest(
            name=self.name, lease_id=self.lease_id, ttl=duration(self.ttl)
        )

    @staticmethod
    def _loss_of(error: grpc.RpcError) -> LeaseLost | None:
        """The loss a stream ending with ``error`` means, or None if it can be resumed."""
        if error.code() in _RESUMABLE:  # type: ignore[attr-defined]
            return None
        mapped = from_rpc_error(error)
        lost = LeaseLost(f"lease on {mapped!s}")
        lost.__cause__ = mapped
        return lost

    def _expired_loss(self) -> LeaseLost:
        return LeaseLost(f"no renewal confirmed within the ttl ({self.ttl}s)")

    def _release_outcome(self, released: bool, error: BatonError | None) -> None:
        if self.loss is not None:
            raise self.loss
        if error is not None:
            raise error
        if not released:
            raise LeaseLost(f"lock {self.name!r} was already gone when released")

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} name={self.name!r} fencing_token={self.fencing_token}"
            f" lost={self.loss is not None}>"
        )


class Lease(_LeaseState):
    """A held lock (sync client), kept alive by a background thread until released.

    Check :attr:`lost` (or wait on :attr:`lost_event`) during long work; leaving the
    ``with`` block releases the lease and raises :class:`LeaseLost` if it was lost while
    held (unless the block already raised).
    """

    def __init__(
        self,
        stub: lock_pb2_grpc.LockServiceStub,
        granted: lock_pb2.Lease,
        release_timeout: float,
    ) -> None:
        super().__init__(granted)
        self._stub = stub
        self._release_timeout = release_timeout
        self.lost_event = threading.Event()
        """Set when the lease is lost."""
        self._ended = threading.Event()
        self._guard = threading.Condition()
        self._call: Any = None
        self._renew_by = time.monotonic() + self.ttl
        self._keeper = threading.Thread(
            target=self._keep_alive, name=f"baton-keepalive-{self.name}", daemon=True
        )
        self._watchdog = threading.Thread(
            target=self._watch_expiry, name=f"baton-lease-expiry-{self.name}", daemon=True
        )
        self._keeper.start()
        self._watchdog.start()

    @property
    def lost(self) -> bool:
        return self.lost_event.is_set()

    def wait_lost(self, timeout: float | None = None) -> bool:
        """Blocks until the lease is lost (True) or ``timeout`` passes (False)."""
        return self.lost_event.wait(timeout)

    def release(self) -> None:
        """Releases the lease so a waiter gets it at once. Raises :class:`LeaseLost` if it was
        lost while held; idempotent."""
        with self._guard:
            if self._unlocking:
                return
            self._unlocking = True
        released, error = self._release_with_retries()
        self._end()
        self._keeper.join()
        self._watchdog.join()
        self._release_outcome(released, error)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc is None:
            self.release()
            return
        # The block's own exception matters more than a failed release.
        with contextlib.suppress(Exception):
            self.release()

    def _release_with_retries(self) -> tuple[bool, BatonError | None]:
        give_up_at = time.monotonic() + self._release_timeout
        backoff = Backoff()
        request = lock_pb2.ReleaseRequest(name=self.name, lease_id=self.lease_id)
        while True:
            try:
                return self._stub.Release(request).released, None
            except grpc.RpcError as error:
                mapped = from_rpc_error(error)
                delay = backoff.delay(mapped.retry_after)
                # Release is safe to retry on UNAVAILABLE.
                if error.code() != grpc.StatusCode.UNAVAILABLE or (  # type: ignore[attr-defined]
                    time.monotonic() + delay > give_up_at
                ):
                    return False, mapped
                time.sleep(delay)

    def _lose(self, loss: LeaseLost) -> None:
        with self._guard:
            if self._unlocking or self.loss is not None:
                return
            self.loss = loss
        self.lost_event.set()
        self._end()

    def _end(self) -> None:
        with self._guard:
            self._ended.set()
            if self._call is not None:
                self._call.cancel()
            self._guard.notify_all()

    def _keep_alive(self) -> None:
        backoff = Backoff()
        while not self._ended.is_set():
            try:
                call = self._stub.KeepAlive(self._keep_alive_request())
            except ValueError as closed:  # the client was closed while the lease was held
                loss = LeaseLost(f"client closed while holding {self.name!r}")
                loss.__cause__ = closed
                self._lose(loss)
                return
            with self._guard:
                if self._ended.is_set():
                    call.cancel()
                    return
                self._call = call
            try:
                for response in call:
                    self._renewed(response.lease)
                    backoff.reset()
                error: grpc.RpcError | None = None
            except grpc.RpcError as raised:
                error = raised
            if self._ended.is_set():
                return
            loss = self._loss_of(error) if error is not None else None
            if loss is not None:
                self._lose(loss)
                return
            retry_after = from_rpc_error(error).retry_after if error is not None else None
            if self._ended.wait(backoff.delay(retry_after)):
                return

    def _renewed(self, lease: lock_pb2.Lease) -> None:
        with self._guard:
            self.expires_at = lease.expires_at.ToDatetime(datetime.UTC)
            self._renew_by = time.monotonic() + self.ttl
            self._guard.notify_all()

    def _watch_expiry(self) -> None:
        with self._guard:
            while not self._ended.is_set():
                remaining = self._renew_by - time.monotonic()
                if remaining <= 0:
                    break
                self._guard.wait(remaining)
            else:
                return
        self._lose(self._expired_loss())


class AsyncLease(_LeaseState):
    """A held lock (asyncio client), kept alive by a task until released.

    Check :attr:`lost` or ``await lease.wait_lost()``; leaving ``async with`` releases the
    lease and raises :class:`LeaseLost` if it was lost while held (unless the block raised).
    """

    def __init__(
        self,
        stub: lock_pb2_grpc.LockServiceStub,
        granted: lock_pb2.Lease,
        release_timeout: float,
    ) -> None:
        super().__init__(granted)
        self._stub = stub
        self._release_timeout = release_timeout
        self.lost_event = asyncio.Event()
        """Set when the lease is lost."""
        self._ended = asyncio.Event()
        self._released = False
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(self.ttl, self._on_expiry)
        self._keeper = loop.create_task(self._keep_alive(), name=f"baton-keepalive-{self.name}")

    @property
    def lost(self) -> bool:
        return self.lost_event.is_set()

    async def wait_lost(self, timeout: float | None = None) -> bool:
        """Waits until the lease is lost (True) or ``timeout`` passes (False)."""
        try:
            await asyncio.wait_for(self.lost_event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def release(self) -> None:
        """Releases the lease so a waiter gets it at once. Raises :class:`LeaseLost` if it was
        lost while held; idempotent."""
        if self._unlocking:
            return
        self._unlocking = True
        released, error = await self._release_with_retries()
        self._end()
        with contextlib.suppress(asyncio.CancelledError):
            await self._keeper
        self._release_outcome(released, error)

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc is None:
            await self.release()
            return
        with contextlib.suppress(Exception):
            await self.release()

    async def _release_with_retries(self) -> tuple[bool, BatonError | None]:
        give_up_at = time.monotonic() + self._release_timeout
        backoff = Backoff()
        request = lock_pb2.ReleaseRequest(name=self.name, lease_id=self.lease_id)
        while True:
            try:
                response = await self._stub.Release(request)  # type: ignore[misc]
                return response.released, None
            except grpc.RpcError as error:
                mapped = from_rpc_error(error)
                delay = backoff.delay(mapped.retry_after)
                if error.code() != grpc.StatusCode.UNAVAILABLE or (  # type: ignore[attr-defined]
                    time.monotonic() + delay > give_up_at
                ):
                    return False, mapped
                await asyncio.sleep(delay)

    def _lose(self, loss: LeaseLost) -> None:
        if self._unlocking or self.loss is not None:
            return
        self.loss = loss
        self.lost_event.set()
        self._end()

    def _end(self) -> None:
        self._ended.set()
        self._expiry.cancel()
        if asyncio.current_task() is not self._keeper:
            self._keeper.cancel()

    def _on_expiry(self) -> None:
        self._lose(self._expired_loss())

    async def _keep_alive(self) -> None:
        backoff = Backoff()
        while not self._ended.is_set():
            call = self._stub.KeepAlive(self._keep_alive_request())
            try:
                async for response in call:  # type: ignore[attr-defined]
                    self._renewed(response.lease)
                    backoff.reset()
                error: grpc.RpcError | None = None
            except grpc.RpcError as raised:
                error = raised
            finally:
                call.cancel()
            loss = self._loss_of(error) if error is not None else None
            if loss is not None:
                self._lose(loss)
                return
            retry_after = from_rpc_error(error).retry_after if error is not None else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), backoff.delay(retry_after))

    def _renewed(self, lease: lock_pb2.Lease) -> None:
        self.expires_at = lease.expires_at.ToDatetime(datetime.UTC)
        self._expiry.cancel()
        self._expiry = asyncio.get_running_loop().call_later(self.ttl, self._on_expiry)


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
    ) -> Lease:
        """Acquires ``name`` for ``ttl`` seconds (0.1 ..= 3600) and keeps it until released.

        Waits, woken by releases, until acquired or ``wait`` seconds pass
        (:class:`LockNotAcquired`); ``wait=0`` tries once, ``None`` waits indefinitely.
        ``permits=N`` makes the lock a semaphore with N holders. Retries Acquire on
        UNAVAILABLE with one request_id.
        """
        attempt = _Attempt(name, ttl, wait, owner, permits, self._default_timeout)
        while True:
            request, round_wait, timeout = attempt.next_call()
            try:
                response = self._locks.Acquire(request, timeout=timeout)
            except grpc.RpcError as error:
                time.sleep(attempt.retry_delay(error))
                continue
            if attempt.outcome(response, round_wait):
                return Lease(self._locks, response.lease, self._default_timeout or 10.0)

    @contextlib.contextmanager
    def lock(
        self,
        name: str,
        ttl: Seconds,
        *,
        wait: Seconds | None = None,
        owner: str = "",
        permits: int = 0,
    ) -> Iterator[Lease]:
        """``with client.lock("order:1234", ttl=10) as lease:`` — see :meth:`acquire`."""
        with self.acquire(name, ttl, wait=wait, owner=owner, permits=permits) as lease:
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
    ) -> AsyncLease:
        """See :meth:`Locks.acquire`."""
        attempt = _Attempt(name, ttl, wait, owner, permits, self._default_timeout)
        while True:
            request, round_wait, timeout = attempt.next_call()
            try:
                response = await self._locks.Acquire(request, timeout=timeout)  # type: ignore[misc]
            except grpc.RpcError as error:
                await asyncio.sleep(attempt.retry_delay(error))
                continue
            if attempt.outcome(response, round_wait):
                return AsyncLease(self._locks, response.lease, self._default_timeout or 10.0)

    @contextlib.asynccontextmanager
    async def lock(
        self,
        name: str,
        ttl: Seconds,
        *,
        wait: Seconds | None = None,
        owner: str = "",
        permits: int = 0,
    ) -> AsyncIterator[AsyncLease]:
        """``async with client.lock("order:1234", ttl=10) as lease:`` — see :meth:`acquire`."""
        lease = await self.acquire(name, ttl, wait=wait, owner=owner, permits=permits)
        async with lease:
            yield lease
