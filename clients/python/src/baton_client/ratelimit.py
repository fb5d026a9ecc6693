"""Rate limits: ``allow()`` on ``baton.v1.RateLimiterService/Check``."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import grpc

from ._connection import Seconds, duration, seconds
from .errors import from_rpc_error
from .pb.baton.v1 import ratelimit_pb2

if TYPE_CHECKING:
    from .pb.baton.v1 import ratelimit_pb2_grpc


class Algorithm(enum.IntEnum):
    """How a limit counts; see proto/baton/v1/ratelimit.proto."""

    FIXED_WINDOW = ratelimit_pb2.ALGORITHM_FIXED_WINDOW
    """At most ``limit`` per window; a window starts at the key's first hit."""
    SLIDING_WINDOW = ratelimit_pb2.ALGORITHM_SLIDING_WINDOW
    """An exact sliding log: in every span of one period at most ``limit`` are admitted.

    One entry per admitted unit, so the server refuses a limit above its
    ``max_sliding_window_limit`` (10,000 by default): use ``TOKEN_BUCKET`` for larger ones.
    The default.
    """
    TOKEN_BUCKET = ratelimit_pb2.ALGORITHM_TOKEN_BUCKET
    """GCRA: ``burst`` at once, then one every ``period / limit``."""


@dataclass(frozen=True)
class Limit:
    """A limit defined inline: at most ``limit`` per ``period`` seconds, counted by
    ``algorithm``; e.g. a queue's start limit (``configure_queue(start_limit=...)``)."""

    limit: int
    """Admitted per period; at least 1."""
    period: Seconds
    """From 1 ms up to Baton's maximum (30 days by default); a timedelta given is kept as
    seconds, so that equal limits compare equal."""
    algorithm: Algorithm = Algorithm.SLIDING_WINDOW
    """An algorithm a newer Baton reports and this version does not know is kept as its
    number."""
    burst: int = 0
    """Token bucket only: how many may pass at once; 0 means ``limit``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "period", seconds(self.period))


def _limit_proto(limit: Limit) -> ratelimit_pb2.Limit:
    return ratelimit_pb2.Limit(
        algorithm=int(limit.algorithm),  # type: ignore[arg-type]
        limit=limit.limit,
        period=duration(limit.period),
        burst=limit.burst,
    )


def _limit(proto: ratelimit_pb2.Limit) -> Limit:
    try:
        algorithm = Algorithm(proto.algorithm)
    except ValueError:
        algorithm = cast(Algorithm, int(proto.algorithm))
    return Limit(
        limit=proto.limit,
        period=proto.period.ToTimedelta(),
        algorithm=algorithm,
        burst=proto.burst,
    )


@dataclass(frozen=True)
class Decision:
    """The verdict of ``allow()``. A denial is ``allowed=False``, never an exception."""

    allowed: bool
    limit: int
    """The limit's size (for a token bucket, its burst); 0 when degraded."""
    remaining: int
    """What is left after this request (after it would have been, if denied)."""
    retry_after: float
    """Seconds until a request of the same cost could pass; 0 when allowed."""
    reset_after: float
    """Seconds until the limit is fully replenished."""
    degraded: bool
    """Answered without Redis because fail-open applied during an outage."""

    def __bool__(self) -> bool:
        return self.allowed


def _check_request(
    key: str,
    limit: int | None,
    period: Seconds | None,
    policy: str | None,
    algorithm: Algorithm,
    burst: int,
    cost: int,
    fail_open: bool,
    dry_run: bool,
) -> ratelimit_pb2.CheckRequest:
    if policy is not None:
        if limit is not None or period is not None:
            raise TypeError("allow() takes either limit and period, or policy")
        limit_request = ratelimit_pb2.LimitRequest(key=key, policy=policy, cost=cost)
    else:
        if limit is None or period is None:
            raise TypeError("allow() needs limit and period (or a policy name)")
        inline = ratelimit_pb2.Limit(
            algorithm=algorithm.value, limit=limit, period=duration(period), burst=burst
        )
        limit_request = ratelimit_pb2.LimitRequest(key=key, limit=inline, cost=cost)
    return ratelimit_pb2.CheckRequest(limits=[limit_request], fail_open=fail_open, dry_run=dry_run)


def _decision(response: ratelimit_pb2.CheckResponse) -> Decision:
    # A degraded answer carries no per-limit results.
    result = response.results[0] if response.results else ratelimit_pb2.LimitResult()
    return Decision(
        allowed=response.allowed,
        limit=result.limit,
        remaining=result.remaining,
        retry_after=response.retry_after.ToTimedelta().total_seconds(),
        reset_after=result.reset_after.ToTimedelta().total_seconds(),
        degraded=response.degraded,
    )


class RateLimits:
    """``allow()`` for the sync :class:`baton_client.Client`."""

    _rate_limits: ratelimit_pb2_grpc.RateLimiterServiceStub

    def allow(
        self,
        key: str,
        limit: int | None = None,
        period: Seconds | None = None,
        *,
        policy: str | None = None,
        algorithm: Algorithm = Algorithm.SLIDING_WINDOW,
        burst: int = 0,
        cost: int = 1,
        fail_open: bool = False,
        dry_run: bool = False,
    ) -> Decision:
        """Consumes ``cost`` of the limit "``limit`` per ``period`` seconds" on ``key`` (or
        of the server-configured ``policy``), shared by every caller. Not retried: a call
        whose answer was lost may already have consumed."""
        request = _check_request(
            key, limit, period, policy, algorithm, burst, cost, fail_open, dry_run
        )
        try:
            return _decision(self._rate_limits.Check(request))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None


class AsyncRateLimits:
    """``allow()`` for :class:`baton_client.AsyncClient`."""

    _rate_limits: ratelimit_pb2_grpc.RateLimiterServiceStub

    async def allow(
        self,
        key: str,
        limit: int | None = None,
        period: Seconds | None = None,
        *,
        policy: str | None = None,
        algorithm: Algorithm = Algorithm.SLIDING_WINDOW,
        burst: int = 0,
        cost: int = 1,
        fail_open: bool = False,
        dry_run: bool = False,
    ) -> Decision:
        """See :meth:`RateLimits.allow`."""
        request = _check_request(
            key, limit, period, policy, algorithm, burst, cost, fail_open, dry_run
        )
        try:
            return _decision(await self._rate_limits.Check(request))  # type: ignore[misc]
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
