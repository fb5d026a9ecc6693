"""Retrying the calls that API.md declares safe to retry on UNAVAILABLE.

Two budgets: ordinary reads and deletes retry for the client's default timeout; the calls
that settle or keep what a client holds — Ack, Nack, Extend, Renew, Release, Proclaim,
Resign — retry for :data:`SETTLE_BUDGET` with :func:`~._connection.settle_backoff`, and are
made with ``wait_for_ready``, so that they ride out a whole replica restart or a short
outage (a rolling restart leaves a replica down for a few seconds) instead of giving up what
the client holds. Calls that are not idempotent (Enqueue without a dedup key, Acquire without a
request_id, conditional cache writes) are never retried: see :func:`once`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from ._connection import Backoff, settle_backoff
from .errors import from_rpc_error

T = TypeVar("T")

SETTLE_BUDGET = 10.0
"""Seconds Ack, Nack, Extend, Renew, Release, Proclaim and Resign are retried on
UNAVAILABLE: twice the longest outage the clients are meant to ride out (5 s)."""

READY: dict[str, Any] = {"wait_for_ready": True, "timeout": SETTLE_BUDGET}
"""The keywords of one settling attempt: with no replica reachable it waits for one to come
back (up to the budget) rather than failing at once."""


def _delay_or_raise(error: grpc.RpcError, backoff: Backoff, give_up_at: float | None) -> float:
    mapped = from_rpc_error(error)
    if error.code() != grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
        raise mapped from None
    delay = backoff.delay(mapped.retry_after)
    if give_up_at is not None and time.monotonic() + delay > give_up_at:
        raise mapped from None
    return delay


def call(stub_call: Callable[[], T], budget: float | None, backoff: Backoff | None = None) -> T:
    """Runs ``stub_call`` until it succeeds or fails with anything but UNAVAILABLE, for at most
    ``budget`` seconds of retrying; raises the mapped BatonError."""
    give_up_at = None if budget is None else time.monotonic() + budget
    backoff = backoff or Backoff()
    while True:
        try:
            return stub_call()
        except grpc.RpcError as error:
            time.sleep(_delay_or_raise(error, backoff, give_up_at))


async def acall(
    stub_call: Callable[[], Awaitable[T]], budget: float | None, backoff: Backoff | None = None
) -> T:
    """:func:`call` for asyncio stubs."""
    give_up_at = None if budget is None else time.monotonic() + budget
    backoff = backoff or Backoff()
    while True:
        try:
            return await stub_call()
        except grpc.RpcError as error:
            await asyncio.sleep(_delay_or_raise(error, backoff, give_up_at))


def settle(stub_call: Callable[[], T], budget: float = SETTLE_BUDGET) -> T:
    """:func:`call` with the settle backoff and at least the settle budget; ``stub_call``
    should pass ``wait_for_ready=True`` (see :data:`READY`)."""
    return call(stub_call, max(budget, SETTLE_BUDGET), settle_backoff())


async def asettle(stub_call: Callable[[], Awaitable[T]], budget: float = SETTLE_BUDGET) -> T:
    """:func:`settle` for asyncio stubs."""
    return await acall(stub_call, max(budget, SETTLE_BUDGET), settle_backoff())


def once(stub_call: Callable[[], T]) -> T:
    """Runs ``stub_call`` once, raising the mapped BatonError."""
    try:
        return stub_call()
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None


async def aonce(stub_call: Callable[[], Awaitable[T]]) -> T:
    """:func:`once` for asyncio stubs."""
    try:
        return await stub_call()
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None
