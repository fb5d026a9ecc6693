"""Python client for Baton, a gRPC coordination service on Redis: rate limits, fenced
locks, a cache, sessions and a job queue.

Layout:

- ``client.Client`` (threads) and ``aio.AsyncClient`` (asyncio): connection options, and
  ``.stubs``, the generated stubs of every service (``pb/``, from ``make gen``)
- ``ratelimit``: ``allow()``
- ``lock``: ``lock()`` / ``acquire()`` and the leases they hold through KeepAlive
- ``errors``: ``BatonError`` and its subclasses, from ``google.rpc`` error details
"""

from .aio import AsyncClient
from .client import Client
from .errors import (
    Aborted,
    AlreadyExists,
    BatonError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LeaseLost,
    LockNotAcquired,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    from_rpc_error,
)
from .lock import AsyncLease, Lease
from .ratelimit import Algorithm, Decision

__all__ = [
    "Aborted",
    "Algorithm",
    "AlreadyExists",
    "AsyncClient",
    "AsyncLease",
    "BatonError",
    "Client",
    "DeadlineExceeded",
    "Decision",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "Lease",
    "LeaseLost",
    "LockNotAcquired",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "from_rpc_error",
]
