"""What the sync and asyncio clients share: targets, channel options, metadata, durations."""

from __future__ import annotations

import asyncio
import datetime
import json
import random
from collections.abc import Awaitable, Sequence
from typing import TypeVar

import grpc
from google.protobuf import duration_pb2

API_KEY_HEADER = "x-api-key"
DEFAULT_TIMEOUT = 10.0
"""Seconds allowed to unary calls made without a timeout of their own."""

RECONNECT_BACKOFF_MS = (100, 250)
"""The channel's reconnect backoff, first and longest (ms): a replica restarted in place (a
rolling restart) is found again within about 250 ms instead of gRPC's default 1 s growing
to 2 min."""

Seconds = float | datetime.timedelta


def seconds(value: Seconds) -> float:
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return float(value)


def duration(value: Seconds) -> duration_pb2.Duration:
    proto = duration_pb2.Duration()
    proto.FromNanoseconds(round(seconds(value) * 1e9))
    return proto


def target_of(target: str | Sequence[str]) -> str:
    """A list of ``ip:port`` replicas becomes gRPC's ``ipv4:a,b`` (or ``ipv6:``) target."""
    if isinstance(target, str):
        return target
    addresses = list(target)
    if not addresses:
        raise ValueError("target: at least one address is required")
    scheme = "ipv6" if addresses[0].startswith("[") else "ipv4"
    return f"{scheme}:{','.join(addresses)}"


def channel_options(target: str, load_balancing: str) -> list[tuple[str, str | int]]:
    first_backoff, max_backoff = RECONNECT_BACKOFF_MS
    options: list[tuple[str, str | int]] = [
        ("grpc.service_config", json.dumps({"loadBalancingConfig": [{load_balancing: {}}]})),
        ("grpc.initial_reconnect_backoff_ms", first_backoff),
        ("grpc.min_reconnect_backoff_ms", first_backoff),
        ("grpc.max_reconnect_backoff_ms", max_backoff),
    ]
    scheme, _, addresses = target.partition(":")
    if scheme in ("ipv4", "ipv6") and "," in addresses:
        # The default :authority would be the whole comma-separated list, which is not a
        # valid authority: servers reset every stream that carries it.
        options.append(("grpc.default_authority", addresses.split(",")[0]))
    return options


def credentials_of(tls: bool, root_certificates: bytes | None) -> grpc.ChannelCredentials | None:
    if not tls and root_certificates is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates=root_certificates)


def with_api_key(
    metadata: Sequence[tuple[str, str | bytes]] | None, api_key: str | None
) -> list[tuple[str, str | bytes]] | None:
    if not api_key:
        return list(metadata) if metadata is not None else None
    return [*(metadata or ()), (API_KEY_HEADER, api_key)]


class Backoff:
    """Capped exponential backoff with jitter, never shorter than the server's RetryInfo
    (unless told to ignore it)."""

    FIRST = 0.05
    MAX = 2.0

    def __init__(self, first: float = FIRST, max: float = MAX) -> None:
        self._first = first
        self._max = max
        self._next = first

    def reset(self) -> None:
        self._next = self._first

    def delay(self, retry_after: float | None) -> float:
        delay = self._next / 2 + random.random() * self._next
        self._next = min(self._next * 2, self._max)
        return max(min(delay, self._max), retry_after or 0.0)


def settle_backoff() -> Backoff:
    """The backoff of the calls that settle or keep what a client holds (Ack, Nack, Extend,
    Renew, Release, Proclaim, Resign): short, because another replica usually answers at once."""
    return Backoff(0.1, 0.5)


def stream_backoff() -> Backoff:
    """The backoff between reopening a KeepAlive stream: its lease has a deadline."""
    return Backoff(0.05, 0.25)


_T = TypeVar("_T")


async def within(awaitable: Awaitable[_T], timeout: float | None) -> _T:
    """``asyncio.wait_for`` without its Task: on Python 3.11 wait_for runs the awaitable in a
    Task of its own, three of them per cycle of the asyncio lock helper. Raises TimeoutError
    once ``timeout`` (None: never) passes; the awaitable is cancelled then."""
    async with asyncio.timeout(timeout):
        return await awaitable
