"""Baton errors as Python exceptions, built from the google.rpc details Baton attaches.

Branch on the exception class and on ``error_reason``, the ``google.rpc.ErrorInfo.reason`` as
the generated enum (``ErrorReason.LEASE_NOT_HELD``), never on the message text.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

import grpc

# googleapis-common-protos ships .pyi files but no py.typed marker, so mypy will not read them.
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from .pb.baton.v1.errors_pb2 import ErrorReason

if TYPE_CHECKING:
    from .queue import JobSnapshot

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class BatonError(Exception):
    """A failed Baton call.

    Attributes:
        code: the gRPC status code.
        reason: ``ErrorInfo.reason`` as sent: the name of an ``ErrorReason`` value (e.g.
            ``"STORAGE_UNAVAILABLE"``), or ``""`` when the server sent none (a transport
            failure, for instance). ``error_reason`` is the same as the enum.
        field: the request field an INVALID_ARGUMENT names (``BadRequest``), else ``None``.
        retry_after: seconds to wait before retrying (``RetryInfo``), else ``None``.
        message: the server's text, for logs only.
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        reason: str = "",
        field: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}{f' ({reason})' if reason else ''}: {message}")
        self.message = message
        self.code = code
        self.reason = reason
        self.field = field
        self.retry_after = retry_after

    @property
    def error_reason(self) -> ErrorReason:
        """``reason`` as the generated enum, to compare with ``ErrorReason.LEASE_NOT_HELD`` and
        the like: ``ERROR_REASON_UNSPECIFIED`` when the server sent no reason or one this
        version of the stubs does not know (a newer server's; ``reason`` still has it)."""
        try:
            return cast(ErrorReason, ErrorReason.Value(self.reason))
        except ValueError:
            return ErrorReason.ERROR_REASON_UNSPECIFIED


class InvalidArgument(BatonError):
    """Bad input; ``field`` names it. Nothing was written."""


class FailedPrecondition(BatonError):
    """A lease or token that is not the current one (``LEASE_NOT_HELD``, …)."""


class Unavailable(BatonError):
    """Baton or its Redis is unreachable; retry after ``retry_after`` where that is safe."""


class DeadlineExceeded(BatonError):
    """The call's deadline passed."""


class Aborted(BatonError):
    """A compare-and-set version mismatch."""


class AlreadyExists(BatonError):
    """Something that must be new exists already."""


class NotFound(BatonError):
    """The session or job does not exist."""


class ResourceExhausted(BatonError):
    """Redis is out of memory, or a message is over a size limit."""


class Unauthenticated(BatonError):
    """Missing or invalid API key."""


class PermissionDenied(BatonError):
    """The API key is valid but not for this namespace."""


class Unimplemented(BatonError):
    """The server does not offer this RPC (yet)."""


class Internal(BatonError):
    """A server bug; the cause is in the server's logs."""


_CLASS_BY_CODE: dict[grpc.StatusCode, type[BatonError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: Internal,
}


def from_rpc_error(error: grpc.RpcError) -> BatonError:
    """Turns an error raised by a generated stub (sync or asyncio) into a BatonError."""
    code = error.code()
    message = error.details() or ""
    reason, field, retry_after = "", None, None
    # types-grpcio gives a sync RpcError's trailing metadata as objects with .key and
    # .value, and grpc.aio's as a Metadata; both yield (key, value) pairs at run time,
    # which is all this reads.
    trailing = cast(Iterable[tuple[str, str | bytes]], error.trailing_metadata() or ())
    for key, value in trailing:
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToTimedelta().total_seconds()
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                if bad_request.field_violations:
                    field = bad_request.field_violations[0].field
    cls = _CLASS_BY_CODE.get(code, BatonError)
    return cls(message, code=code, reason=reason, field=field, retry_after=retry_after)


class LockNotAcquired(Exception):
    """The lock stayed held by others for the whole wait."""

    def __init__(self, name: str, holder_owner: str) -> None:
        super().__init__(f"lock {name!r} is held by {holder_owner!r}")
        self.name = name
        self.holder_owner = holder_owner


class LeaseLost(Exception):
    """The lease is gone, or may be, while it was meant to be held: Baton answered
    LEASE_NOT_HELD, an error no retry can fix occurred, or no heartbeat was answered in time
    (the lease's ``lost_at`` passed: ``held_until`` minus the safety margin). Another holder
    may have the lock (or leadership) now; the fencing token (term) is what protects the
    resource. ``__cause__`` is the BatonError that revealed the loss, if any."""


class JobCancelled(Exception):
    """CancelJob was called for a job while its handler ran: the job was not acked (Baton
    would refuse the Ack)."""


class JobLeaseLost(Exception):
    """Baton refused to extend a running job's lease (``JOB_NOT_LEASED``): it expired or the
    job went to another worker, whose result is the one that counts. The job was not acked.
    ``__cause__`` is the FailedPrecondition."""


class JobFailed(BatonError):
    """``wait_for_job``: the job finished without succeeding. ``job`` is its final snapshot:
    ``job.state`` is ``JobState.DEAD`` — out of attempts or dead-lettered, ``job.last_error``
    says why; ``code`` is UNKNOWN, as for an error raised by a server's handler — or
    ``JobState.CANCELLED`` — ``code`` CANCELLED, ``error_reason`` JOB_CANCELLED."""

    def __init__(
        self, message: str, *, code: grpc.StatusCode, reason: str = "", job: JobSnapshot
    ) -> None:
        super().__init__(message, code=code, reason=reason)
        self.job = job
