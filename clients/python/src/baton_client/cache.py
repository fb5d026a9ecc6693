"""Cache: ``cache_get`` / ``cache_set`` / ``cache_delete`` / ``invalidate_tag`` and
``get_or_load``, which runs one loader per miss across every caller (``Fetch`` / ``Fill``)."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _retry
from ._connection import DEFAULT_TIMEOUT, Seconds, duration
from .errors import BatonError
from .pb.baton.v1 import cache_pb2

if TYPE_CHECKING:
    from .pb.baton.v1 import cache_pb2_grpc

FETCH_WAIT = 1.0
"""Seconds one Fetch waits for another caller's loader before asking again. A waiting Fetch
is only ever answered the value or a timeout, never the fill token, so this bounds how long
a loader's failure (its abandoned token) keeps the waiters idle."""


@dataclass(frozen=True)
class CacheEntry:
    """A cached value with its metadata."""

    value: bytes
    version: int
    """Changes on every write; pass it as ``if_version`` for compare-and-set."""
    expires_at: datetime.datetime
    """When the entry stops being fresh, by the Redis server's clock."""
    stale: bool
    """Served past ``expires_at``, within its stale ttl, while another caller refreshes it."""


def _entry(entry: cache_pb2.CacheEntry) -> CacheEntry:
    return CacheEntry(
        value=entry.value,
        version=entry.version,
        expires_at=entry.expires_at.ToDatetime(datetime.UTC),
        stale=entry.stale,
    )


def _set_request(
    key: str,
    value: bytes,
    ttl: Seconds,
    if_version: int,
    if_absent: bool,
    tags: Iterable[str],
    stale_ttl: Seconds | None,
) -> cache_pb2.SetRequest:
    request = cache_pb2.SetRequest(
        key=key,
        value=value,
        ttl=duration(ttl),
        if_version=if_version,
        if_absent=if_absent,
        tags=list(tags),
    )
    if stale_ttl:
        request.stale_ttl.CopyFrom(duration(stale_ttl))
    return request


def _fetch_request(key: str, load_timeout: Seconds | None) -> cache_pb2.FetchRequest:
    request = cache_pb2.FetchRequest(key=key, wait_timeout=duration(FETCH_WAIT))
    if load_timeout:
        request.lease_ttl.CopyFrom(duration(load_timeout))
    return request


def _fill_request(
    key: str,
    token: str,
    value: bytes,
    ttl: Seconds,
    tags: Iterable[str],
    stale_ttl: Seconds | None,
) -> cache_pb2.FillRequest:
    request = cache_pb2.FillRequest(
        key=key, fill_token=token, value=value, ttl=duration(ttl), tags=list(tags)
    )
    if stale_ttl:
        request.stale_ttl.CopyFrom(duration(stale_ttl))
    return request


class Cache:
    """The cache helpers of the sync :class:`baton_client.Client`."""

    _cache: cache_pb2_grpc.CacheServiceStub
    _default_timeout: float | None

    def cache_get(self, key: str) -> CacheEntry | None:
        """The fresh entry of ``key``, or None. Retried on UNAVAILABLE."""
        response = _retry.call(
            lambda: self._cache.Get(cache_pb2.GetRequest(key=key)), self._default_timeout
        )
        return _entry(response.entry) if response.found else None

    def cache_set(
        self,
        key: str,
        value: bytes,
        ttl: Seconds,
        *,
        if_version: int = 0,
        if_absent: bool = False,
        tags: Iterable[str] = (),
        stale_ttl: Seconds | None = None,
    ) -> CacheEntry:
        """Writes ``key`` for ``ttl`` seconds. ``if_version`` (else :class:`Aborted`, reason
        ``VERSION_MISMATCH``) and ``if_absent`` (else :class:`AlreadyExists`) make it
        conditional; ``tags`` are for :meth:`invalidate_tag`; ``stale_ttl`` lets
        :meth:`get_or_load` serve it stale that long past ``ttl`` while one caller refreshes
        it. Not retried: a conditional write whose answer was lost would fail its retry."""
        request = _set_request(key, value, ttl, if_version, if_absent, tags, stale_ttl)
        return _entry(_retry.once(lambda: self._cache.Set(request)).entry)

    def cache_delete(self, key: str, *, if_version: int = 0) -> bool:
        """Removes ``key``; False when there was nothing to remove. Retried on UNAVAILABLE."""
        request = cache_pb2.DeleteRequest(key=key, if_version=if_version)
        return _retry.call(lambda: self._cache.Delete(request), self._default_timeout).deleted

    def invalidate_tag(self, tag: str) -> None:
        """Makes every entry written with ``tag`` read as missing."""
        _retry.once(lambda: self._cache.InvalidateTag(cache_pb2.InvalidateTagRequest(tag=tag)))

    def get_or_load(
        self,
        key: str,
        ttl: Seconds,
        loader: Callable[[], bytes],
        *,
        tags: Iterable[str] = (),
        stale_ttl: Seconds | None = None,
        load_timeout: Seconds | None = None,
    ) -> bytes:
        """The cached value of ``key``, or ``loader()``'s, stored for ``ttl`` seconds.

        Across every caller of every process one loader runs per miss; the others wait for
        its value instead of all hitting the database. If the loader raises, the duty passes
        at once to a waiting caller and the exception propagates. A stale entry (see
        ``stale_ttl``) is refreshed by one caller while the others get it at once; if that
        refresh fails, its caller gets the stale value too. ``load_timeout`` (default 10 s)
        is how long the others wait for a loader that neither fills nor fails (a crashed
        process) before one of them takes over."""
        call_timeout = FETCH_WAIT + (self._default_timeout or DEFAULT_TIMEOUT)
        request = _fetch_request(key, load_timeout)
        while True:
            response = _retry.call(
                lambda: self._cache.Fetch(request, timeout=call_timeout), self._default_timeout
            )
            if response.fill_token:
                try:
                    return self._load_and_fill(
                        key, response.fill_token, ttl, loader, tags, stale_ttl
                    )
                except Exception:
                    if response.found:
                        return response.entry.value
                    raise
            if response.found:
                return response.entry.value
            # The wait ran out while another caller was loading: ask again.

    def _load_and_fill(
        self,
        key: str,
        token: str,
        ttl: Seconds,
        loader: Callable[[], bytes],
        tags: Iterable[str],
        stale_ttl: Seconds | None,
    ) -> bytes:
        try:
            value = loader()
        except BaseException:
            # Hand the duty on at once rather than after the load timeout.
            abandon = cache_pb2.FillRequest(key=key, fill_token=token, abandon=True)
            with contextlib.suppress(BatonError):
                _retry.call(lambda: self._cache.Fill(abandon), self._default_timeout)
            raise
        # The loaded value is the caller's answer whatever Fill says: FILL_TOKEN_STALE means
        # a newer write won (or a retried Fill had been applied), and any other failure only
        # costs the next caller a load.
        fill = _fill_request(key, token, value, ttl, tags, stale_ttl)
        with contextlib.suppress(BatonError):
            _retry.call(lambda: self._cache.Fill(fill), self._default_timeout)
        return value


class AsyncCache:
    """The cache helpers of :class:`baton_client.AsyncClient`; see :class:`Cache`."""

    _cache: cache_pb2_grpc.CacheServiceStub
    _default_timeout: float | None

    async def cache_get(self, key: str) -> CacheEntry | None:
        """See :meth:`Cache.cache_get`."""
        response = await _retry.acall(
            lambda: self._cache.Get(cache_pb2.GetRequest(key=key)),  # type: ignore[arg-type,return-value]
            self._default_timeout,
        )
        return _entry(response.entry) if response.found else None

    async def cache_set(
        self,
        key: str,
        value: bytes,
        ttl: Seconds,
        *,
        if_version: int = 0,
        if_absent: bool = False,
        tags: Iterable[str] = (),
        stale_ttl: Seconds | None = None,
    ) -> CacheEntry:
        """See :meth:`Cache.cache_set`."""
        request = _set_request(key, value, ttl, if_version, if_absent, tags, stale_ttl)
        response = await _retry.aonce(lambda: self._cache.Set(request))  # type: ignore[arg-type,return-value]
        return _entry(response.entry)

    async def cache_delete(self, key: str, *, if_version: int = 0) -> bool:
        """See :meth:`Cache.cache_delete`."""
        request = cache_pb2.DeleteRequest(key=key, if_version=if_version)
        response = await _retry.acall(
            lambda: self._cache.Delete(request),  # type: ignore[arg-type,return-value]
            self._default_timeout,
        )
        return response.deleted

    async def invalidate_tag(self, tag: str) -> None:
        """See :meth:`Cache.invalidate_tag`."""
        request = cache_pb2.InvalidateTagRequest(tag=tag)
        await _retry.aonce(lambda: self._cache.InvalidateTag(request))  # type: ignore[arg-type,return-value]

    async def get_or_load(
        self,
        key: str,
        ttl: Seconds,
        loader: Callable[[], Awaitable[bytes]],
        *,
        tags: Iterable[str] = (),
        stale_ttl: Seconds | None = None,
        load_timeout: Seconds | None = None,
    ) -> bytes:
        """See :meth:`Cache.get_or_load`; ``loader`` is a coroutine function."""
        call_timeout = FETCH_WAIT + (self._default_timeout or DEFAULT_TIMEOUT)
        request = _fetch_request(key, load_timeout)
        while True:
            response = await _retry.acall(
                lambda: self._cache.Fetch(request, timeout=call_timeout),  # type: ignore[arg-type,return-value]
                self._default_timeout,
            )
            if response.fill_token:
                try:
                    return await self._load_and_fill(
                        key, response.fill_token, ttl, loader, tags, stale_ttl
                    )
                except Exception:
                    if response.found:
                        return response.entry.value
                    raise
            if response.found:
                return response.entry.value

    async def _load_and_fill(
        self,
        key: str,
        token: str,
        ttl: Seconds,
        loader: Callable[[], Awaitable[bytes]],
        tags: Iterable[str],
        stale_ttl: Seconds | None,
    ) -> bytes:
        try:
            value = await loader()
        except BaseException:
            # Also when this caller was cancelled mid-load: hand the duty on at once.
            abandon = cache_pb2.FillRequest(key=key, fill_token=token, abandon=True)
            with contextlib.suppress(BatonError):
                await _retry.acall(
                    lambda: self._cache.Fill(abandon),  # type: ignore[arg-type,return-value]
                    self._default_timeout,
                )
            raise
        fill = _fill_request(key, token, value, ttl, tags, stale_ttl)
        with contextlib.suppress(BatonError):
            await _retry.acall(
                lambda: self._cache.Fill(fill),  # type: ignore[arg-type,return-value]
                self._default_timeout,
            )
        return value
