"""The asyncio client: the same helpers as :class:`baton_client.Client`, awaitable."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from . import _connection, _tracing
from ._connection import DEFAULT_TIMEOUT
from .cache import AsyncCache
from .client import Stubs
from .election import AsyncElections
from .lock import AsyncLocks
from .queue import AsyncQueue
from .ratelimit import AsyncRateLimits
from .session import AsyncSessions


def _details(
    details: grpc.aio.ClientCallDetails,
    api_key: str | None,
    timeout: float | None,
    tracing: bool,
) -> grpc.aio.ClientCallDetails:
    metadata = _connection.with_api_key(details.metadata, api_key)  # type: ignore[arg-type]
    if tracing:
        # The interceptor runs in a task started by the call, with a copy of its context.
        metadata = _tracing.with_trace_context(metadata)
    return grpc.aio.ClientCallDetails(
        details.method,
        timeout if details.timeout is None else details.timeout,
        metadata,  # type: ignore[arg-type]
        details.credentials,
        details.wait_for_ready,
    )


class _UnaryDefaults(grpc.aio.UnaryUnaryClientInterceptor):
    """API key, default timeout and (with ``tracing``) the trace context on unary calls."""

    def __init__(self, api_key: str | None, default_timeout: float | None, tracing: bool) -> None:
        self._api_key = api_key
        self._default_timeout = default_timeout
        self._tracing = tracing

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(
            _details(details, self._api_key, self._default_timeout, self._tracing), request
        )


class _StreamDefaults(
    grpc.aio.UnaryStreamClientInterceptor, grpc.aio.StreamStreamClientInterceptor
):
    """API key on streams (KeepAlive and Consume are bidirectional), which get no default
    timeout: they are meant to stay open."""

    def __init__(self, api_key: str | None, tracing: bool) -> None:
        self._api_key = api_key
        self._tracing = tracing

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_details(details, self._api_key, None, self._tracing), request)

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(
            _details(details, self._api_key, None, self._tracing), request_iterator
        )


class AsyncClient(
    AsyncRateLimits, AsyncLocks, AsyncElections, AsyncCache, AsyncSessions, AsyncQueue
):
    """A connection to Baton for asyncio code; create it inside the running event loop.
    Arguments as for :class:`baton_client.Client`."""

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        load_balancing: str = "round_robin",
        options: Sequence[tuple[str, Any]] = (),
        tracing: bool = False,
    ) -> None:
        target = _connection.target_of(target)
        channel_options = [*_connection.channel_options(target, load_balancing), *options]
        credentials = _connection.credentials_of(tls, root_certificates)
        interceptors = [
            _UnaryDefaults(api_key, timeout, tracing),
            _StreamDefaults(api_key, tracing),
        ]
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(
                target, options=channel_options, interceptors=interceptors
            )
        else:
            self.channel = grpc.aio.secure_channel(
                target, credentials, options=channel_options, interceptors=interceptors
            )
        self.stubs = Stubs(self.channel)
        self._default_timeout = timeout
        self._rate_limits = self.stubs.rate_limits
        self._locks = self.stubs.locks
        self._elections = self.stubs.elections
        self._cache = self.stubs.cache
        self._sessions = self.stubs.sessions
        self._queue = self.stubs.queue

    async def close(self) -> None:
        """Closes the channel; see :meth:`baton_client.Client.close`."""
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
