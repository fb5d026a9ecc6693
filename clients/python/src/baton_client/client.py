"""The sync client: one channel to a Baton deployment, the generated stubs, the helpers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from . import _connection
from ._connection import DEFAULT_TIMEOUT
from ._defaults import CallDefaults, DefaultsChannel
from .cache import Cache
from .election import Elections
from .lock import Locks
from .pb.baton.v1 import (
    cache_pb2_grpc,
    election_pb2_grpc,
    lock_pb2_grpc,
    queue_pb2_grpc,
    ratelimit_pb2_grpc,
    session_pb2_grpc,
)
from .queue import Queue
from .ratelimit import RateLimits
from .session import Sessions


class Stubs:
    """The generated stubs of every service on one channel, for RPCs the helpers do not
    cover. Their errors are raw ``grpc.RpcError``; ``baton_client.from_rpc_error`` maps them."""

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel | DefaultsChannel) -> None:
        self.rate_limits = ratelimit_pb2_grpc.RateLimiterServiceStub(channel)
        self.locks = lock_pb2_grpc.LockServiceStub(channel)
        self.elections = election_pb2_grpc.ElectionServiceStub(channel)
        self.cache = cache_pb2_grpc.CacheServiceStub(channel)
        self.sessions = session_pb2_grpc.SessionStoreServiceStub(channel)
        self.queue = queue_pb2_grpc.JobQueueServiceStub(channel)


class Client(RateLimits, Locks, Elections, Cache, Sessions, Queue):
    """A connection to Baton; thread-safe, one per process.

    Args:
        target: a gRPC target — ``"dns:///baton.prod.svc.cluster.local:50051"`` (a headless
            Service resolves to every pod), ``"127.0.0.1:50051"`` — or a list of ``ip:port``
            replicas.
        api_key: sent in the ``x-api-key`` header of every call; use TLS outside a trusted
            network.
        tls: encrypt with the system's root certificates (or ``root_certificates``).
        root_certificates: PEM roots to trust; implies TLS.
        timeout: seconds allowed to unary calls without a timeout of their own (``None``:
            unbounded).
        load_balancing: ``"round_robin"`` (spread calls over every resolved replica) or
            ``"pick_first"``.
        options: extra gRPC channel options.
        tracing: send the current OpenTelemetry trace context with every call (W3C
            ``traceparent``, through opentelemetry-api's global propagator), so that Baton's
            spans join the caller's trace. A no-op until an OpenTelemetry SDK is installed.
    """

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
            raw = grpc.insecure_channel(target, options=channel_options)
        else:
            raw = grpc.secure_channel(target, credentials, options=channel_options)
        self.channel: grpc.Channel = raw
        self.stubs = Stubs(DefaultsChannel(raw, CallDefaults(api_key, timeout, tracing)))
        self._default_timeout = timeout
        self._rate_limits = self.stubs.rate_limits
        self._locks = self.stubs.locks
        self._elections = self.stubs.elections
        self._cache = self.stubs.cache
        self._sessions = self.stubs.sessions
        self._queue = self.stubs.queue

    def close(self) -> None:
        """Closes the channel. Leases still held stop being kept alive and expire after their
        ttl; release them first to hand them over at once."""
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
