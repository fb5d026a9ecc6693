"""The asyncio client: the same helpers as :class:`baton_client.Client`, awaitable."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from . import _connection
from ._connection import DEFAULT_TIMEOUT
from ._defaults import CallDefaults, DefaultsChannel
from .cache import AsyncCache
from .client import Stubs
from .election import AsyncElections
from .lock import AsyncLocks
from .queue import AsyncQueue
from .ratelimit import AsyncRateLimits
from .session import AsyncSessions


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
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(target, options=channel_options)
        else:
            self.channel = grpc.aio.secure_channel(target, credentials, options=channel_options)
        self.stubs = Stubs(DefaultsChannel(self.channel, CallDefaults(api_key, timeout, tracing)))
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
