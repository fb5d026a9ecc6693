import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BatchSetStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BATCH_SET_STATUS_UNSPECIFIED: _ClassVar[BatchSetStatus]
    BATCH_SET_STATUS_STORED: _ClassVar[BatchSetStatus]
    BATCH_SET_STATUS_VERSION_MISMATCH: _ClassVar[BatchSetStatus]
    BATCH_SET_STATUS_ALREADY_EXISTS: _ClassVar[BatchSetStatus]
BATCH_SET_STATUS_UNSPECIFIED: BatchSetStatus
BATCH_SET_STATUS_STORED: BatchSetStatus
BATCH_SET_STATUS_VERSION_MISMATCH: BatchSetStatus
BATCH_SET_STATUS_ALREADY_EXISTS: BatchSetStatus

class CacheEntry(_message.Message):
    __slots__ = ("value", "version", "expires_at", "stale")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    value: bytes
    version: int
    expires_at: _timestamp_pb2.Timestamp
    stale: bool
    def __init__(self, value: _Optional[bytes] = ..., version: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stale: _Optional[bool] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("found", "entry")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    found: bool
    entry: CacheEntry
    def __init__(self, found: _Optional[bool] = ..., entry: _Optional[_Union[CacheEntry, _Mapping]] = ...) -> None: ...

class SetRequest(_message.Message):
    __slots__ = ("key", "value", "ttl", "if_version", "if_absent", "tags", "stale_ttl")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    IF_VERSION_FIELD_NUMBER: _ClassVar[int]
    IF_ABSENT_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    STALE_TTL_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    ttl: _duration_pb2.Duration
    if_version: int
    if_absent: bool
    tags: _containers.RepeatedScalarFieldContainer[str]
    stale_ttl: _duration_pb2.Duration
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., if_version: _Optional[int] = ..., if_absent: _Optional[bool] = ..., tags: _Optional[_Iterable[str]] = ..., stale_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SetResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: CacheEntry
    def __init__(self, entry: _Optional[_Union[CacheEntry, _Mapping]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("key", "if_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    IF_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    if_version: int
    def __init__(self, key: _Optional[str] = ..., if_version: _Optional[int] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class BatchGetRequest(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, keys: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchGetEntry(_message.Message):
    __slots__ = ("key", "found", "entry")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    key: str
    found: bool
    entry: CacheEntry
    def __init__(self, key: _Optional[str] = ..., found: _Optional[bool] = ..., entry: _Optional[_Union[CacheEntry, _Mapping]] = ...) -> None: ...

class BatchGetResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[BatchGetEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[BatchGetEntry, _Mapping]]] = ...) -> None: ...

class BatchSetEntry(_message.Message):
    __slots__ = ("key", "value", "ttl", "if_version", "if_absent", "tags", "stale_ttl")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    IF_VERSION_FIELD_NUMBER: _ClassVar[int]
    IF_ABSENT_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    STALE_TTL_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    ttl: _duration_pb2.Duration
    if_version: int
    if_absent: bool
    tags: _containers.RepeatedScalarFieldContainer[str]
    stale_ttl: _duration_pb2.Duration
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., if_version: _Optional[int] = ..., if_absent: _Optional[bool] = ..., tags: _Optional[_Iterable[str]] = ..., stale_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class BatchSetRequest(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[BatchSetEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[BatchSetEntry, _Mapping]]] = ...) -> None: ...

class BatchSetResult(_message.Message):
    __slots__ = ("key", "status", "entry")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    key: str
    status: BatchSetStatus
    entry: CacheEntry
    def __init__(self, key: _Optional[str] = ..., status: _Optional[_Union[BatchSetStatus, str]] = ..., entry: _Optional[_Union[CacheEntry, _Mapping]] = ...) -> None: ...

class BatchSetResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchSetResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchSetResult, _Mapping]]] = ...) -> None: ...

class InvalidateTagRequest(_message.Message):
    __slots__ = ("tag",)
    TAG_FIELD_NUMBER: _ClassVar[int]
    tag: str
    def __init__(self, tag: _Optional[str] = ...) -> None: ...

class InvalidateTagResponse(_message.Message):
    __slots__ = ("invalidated",)
    INVALIDATED_FIELD_NUMBER: _ClassVar[int]
    invalidated: bool
    def __init__(self, invalidated: _Optional[bool] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("key", "lease_ttl", "wait_timeout")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    WAIT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    key: str
    lease_ttl: _duration_pb2.Duration
    wait_timeout: _duration_pb2.Duration
    def __init__(self, key: _Optional[str] = ..., lease_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., wait_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class FetchResponse(_message.Message):
    __slots__ = ("found", "entry", "fill_token")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    FILL_TOKEN_FIELD_NUMBER: _ClassVar[int]
    found: bool
    entry: CacheEntry
    fill_token: str
    def __init__(self, found: _Optional[bool] = ..., entry: _Optional[_Union[CacheEntry, _Mapping]] = ..., fill_token: _Optional[str] = ...) -> None: ...

class FillRequest(_message.Message):
    __slots__ = ("key", "fill_token", "value", "ttl", "tags", "abandon", "stale_ttl")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FILL_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    ABANDON_FIELD_NUMBER: _ClassVar[int]
    STALE_TTL_FIELD_NUMBER: _ClassVar[int]
    key: str
    fill_token: str
    value: bytes
    ttl: _duration_pb2.Duration
    tags: _containers.RepeatedScalarFieldContainer[str]
    abandon: bool
    stale_ttl: _duration_pb2.Duration
    def __init__(self, key: _Optional[str] = ..., fill_token: _Optional[str] = ..., value: _Optional[bytes] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ..., abandon: _Optional[bool] = ..., stale_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class FillResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: CacheEntry
    def __init__(self, entry: _Optional[_Union[CacheEntry, _Mapping]] = ...) -> None: ...
