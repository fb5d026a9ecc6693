"""Retrying the calls that API.md declares safe to retry on UNAVAILABLE."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from ._connection import Backoff
from .errors import from_rpc_error

T = TypeVar("T")


def _delay_or_raise(error: grpc.RpcError, backoff: Backoff, give_up_at: float | None) -> float:
    mapped = from_rpc_error(error)
    if error.code() != grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
        raise mapped from None
    delay = backoff.delay(mapped.retry_after)
    if give_up_at is not None and time.monotonic() + delay > give_up_at:
        raise mapped from None
    return delay


def call(stub_call: Callable[[], T], budget: float | None) -> T:
    """Runs ``stub_call`` until it succeeds or fails with anything but UNAVAILABLE, for at most
    ``budget`` seconds of retrying; raises the mapped BatonError."""
    give_up_at = None if budget is None else time.monotonic() + budget
    backoff = Backoff()
    while True:
        try:
            return stub_call()
        except grpc.RpcError as error:
            time.sleep(_delay_or_raise(error, backoff, give_up_at))


async def acall(stub_call: Callable[[], Awaitable[T]], budget: float | None) -> T:
    """:func:`call` for asyncio stubs."""
    give_up_at = None if budget is None else time.monotonic() + budget
    backoff = Backoff()
    while True:
        try:
            return await stub_call()
        except grpc.RpcError as error:
            await asyncio.sleep(_delay_or_raise(error, backoff, give_up_at))


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
