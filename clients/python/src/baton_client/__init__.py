"""Python client for Baton, a gRPC coordination service on Redis: rate limits, fenced
locks, leader election, a cache, sessions and a job queue.

Layout:

- ``client.Client`` (threads) and ``aio.AsyncClient`` (asyncio): connection options, and
  ``.stubs``, the generated stubs of every service (``pb/``, from ``make gen``)
- ``ratelimit``: ``allow()``; ``Limit``, an inline limit definition
- ``lock``: ``lock()`` / ``acquire()`` and the leases they hold through KeepAlive
- ``election``: ``lead()`` / ``campaign()``, the leaderships they keep as the lock keeps
  leases, ``leader()`` and ``observe()``
- ``cache``: ``cache_get/set/delete()``, ``invalidate_tag()``, ``get_or_load()``
- ``session``: ``create_session()`` … ``revoke_sessions()``; ``django_sessions``: a Django
  session engine on them
- ``queue``: ``enqueue()`` and ``consume()``, the worker loop (``job.progress()``);
  ``watch_job()``, ``wait_for_job()``, ``watch_queue()`` and ``list_jobs()``;
  ``configure_queue()`` / ``get_queue_config()`` (groups and start limits)
- ``errors``: ``BatonError`` and its subclasses, from ``google.rpc`` error details;
  ``ErrorReason``, the generated enum of their ``reason`` (``BatonError.error_reason``)
"""

from .aio import AsyncClient
from .cache import CacheEntry
from .client import Client
from .election import (
    AsyncLeadership,
    AsyncObservation,
    ElectionEvent,
    ElectionEventKind,
    Leader,
    Leadership,
    Observation,
)
from .errors import (
    Aborted,
    AlreadyExists,
    BatonError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    JobCancelled,
    JobFailed,
    JobLeaseLost,
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
from .pb.baton.v1.errors_pb2 import ErrorReason
from .queue import (
    AsyncJob,
    AsyncJobWatch,
    AsyncQueueWatch,
    Enqueued,
    EventsMissed,
    Job,
    JobPage,
    JobProgress,
    JobSnapshot,
    JobState,
    JobWatch,
    QueueConfig,
    QueueEvent,
    QueueEventKind,
    QueueWatch,
    RetryBackoff,
)
from .ratelimit import Algorithm, Decision, Limit
from .session import Session

__all__ = [
    "Aborted",
    "Algorithm",
    "AlreadyExists",
    "AsyncClient",
    "AsyncJob",
    "AsyncJobWatch",
    "AsyncLeadership",
    "AsyncLease",
    "AsyncObservation",
    "AsyncQueueWatch",
    "BatonError",
    "CacheEntry",
    "Client",
    "DeadlineExceeded",
    "Decision",
    "ElectionEvent",
    "ElectionEventKind",
    "Enqueued",
    "ErrorReason",
    "EventsMissed",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobLeaseLost",
    "JobPage",
    "JobProgress",
    "JobSnapshot",
    "JobState",
    "JobWatch",
    "Leader",
    "Leadership",
    "Lease",
    "LeaseLost",
    "Limit",
    "LockNotAcquired",
    "NotFound",
    "Observation",
    "PermissionDenied",
    "QueueConfig",
    "QueueEvent",
    "QueueEventKind",
    "QueueWatch",
    "ResourceExhausted",
    "RetryBackoff",
    "Session",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "from_rpc_error",
]
