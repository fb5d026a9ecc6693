from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    INVALID_FIELD: _ClassVar[ErrorReason]
    STORAGE_UNAVAILABLE: _ClassVar[ErrorReason]
    STORAGE_FULL: _ClassVar[ErrorReason]
    SHUTTING_DOWN: _ClassVar[ErrorReason]
    RESPONSE_TOO_LARGE: _ClassVar[ErrorReason]
    INTERNAL: _ClassVar[ErrorReason]
    SERVER_DEADLINE_EXCEEDED: _ClassVar[ErrorReason]
    API_KEY_INVALID: _ClassVar[ErrorReason]
    RPC_NOT_ALLOWED: _ClassVar[ErrorReason]
    LEASE_NOT_HELD: _ClassVar[ErrorReason]
    VERSION_MISMATCH: _ClassVar[ErrorReason]
    ALREADY_EXISTS: _ClassVar[ErrorReason]
    FILL_TOKEN_STALE: _ClassVar[ErrorReason]
    SESSION_NOT_FOUND: _ClassVar[ErrorReason]
    SESSION_EXISTS: _ClassVar[ErrorReason]
    JOB_NOT_FOUND: _ClassVar[ErrorReason]
    JOB_NOT_LEASED: _ClassVar[ErrorReason]
    JOB_CANCELLED: _ClassVar[ErrorReason]
    SCHEDULE_NOT_FOUND: _ClassVar[ErrorReason]
    SCHEDULE_EXISTS: _ClassVar[ErrorReason]
    TOO_MANY_SCHEDULES: _ClassVar[ErrorReason]
ERROR_REASON_UNSPECIFIED: ErrorReason
INVALID_FIELD: ErrorReason
STORAGE_UNAVAILABLE: ErrorReason
STORAGE_FULL: ErrorReason
SHUTTING_DOWN: ErrorReason
RESPONSE_TOO_LARGE: ErrorReason
INTERNAL: ErrorReason
SERVER_DEADLINE_EXCEEDED: ErrorReason
API_KEY_INVALID: ErrorReason
RPC_NOT_ALLOWED: ErrorReason
LEASE_NOT_HELD: ErrorReason
VERSION_MISMATCH: ErrorReason
ALREADY_EXISTS: ErrorReason
FILL_TOKEN_STALE: ErrorReason
SESSION_NOT_FOUND: ErrorReason
SESSION_EXISTS: ErrorReason
JOB_NOT_FOUND: ErrorReason
JOB_NOT_LEASED: ErrorReason
JOB_CANCELLED: ErrorReason
SCHEDULE_NOT_FOUND: ErrorReason
SCHEDULE_EXISTS: ErrorReason
TOO_MANY_SCHEDULES: ErrorReason
