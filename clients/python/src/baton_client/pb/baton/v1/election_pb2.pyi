import datetime

from baton_client.pb.baton.v1 import lock_pb2 as _lock_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Leader(_message.Message):
    __slots__ = ("name", "value", "term", "since", "owner", "expires_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: bytes
    term: int
    since: _timestamp_pb2.Timestamp
    owner: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., value: _Optional[bytes] = ..., term: _Optional[int] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., owner: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CampaignRequest(_message.Message):
    __slots__ = ("name", "ttl", "value", "owner", "wait_timeout", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    WAIT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    ttl: _duration_pb2.Duration
    value: bytes
    owner: str
    wait_timeout: _duration_pb2.Duration
    request_id: str
    def __init__(self, name: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., value: _Optional[bytes] = ..., owner: _Optional[str] = ..., wait_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CampaignResponse(_message.Message):
    __slots__ = ("elected", "lease", "leader")
    ELECTED_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    elected: bool
    lease: _lock_pb2.Lease
    leader: Leader
    def __init__(self, elected: _Optional[bool] = ..., lease: _Optional[_Union[_lock_pb2.Lease, _Mapping]] = ..., leader: _Optional[_Union[Leader, _Mapping]] = ...) -> None: ...

class ProclaimRequest(_message.Message):
    __slots__ = ("name", "lease_id", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    lease_id: str
    value: bytes
    def __init__(self, name: _Optional[str] = ..., lease_id: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class ProclaimResponse(_message.Message):
    __slots__ = ("leader",)
    LEADER_FIELD_NUMBER: _ClassVar[int]
    leader: Leader
    def __init__(self, leader: _Optional[_Union[Leader, _Mapping]] = ...) -> None: ...

class LeaderRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class LeaderResponse(_message.Message):
    __slots__ = ("leader",)
    LEADER_FIELD_NUMBER: _ClassVar[int]
    leader: Leader
    def __init__(self, leader: _Optional[_Union[Leader, _Mapping]] = ...) -> None: ...

class ResignRequest(_message.Message):
    __slots__ = ("name", "lease_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    lease_id: str
    def __init__(self, name: _Optional[str] = ..., lease_id: _Optional[str] = ...) -> None: ...

class ResignResponse(_message.Message):
    __slots__ = ("resigned",)
    RESIGNED_FIELD_NUMBER: _ClassVar[int]
    resigned: bool
    def __init__(self, resigned: _Optional[bool] = ...) -> None: ...

class ObserveRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ObserveResponse(_message.Message):
    __slots__ = ("kind", "leader", "at")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[ObserveResponse.Kind]
        KIND_CURRENT: _ClassVar[ObserveResponse.Kind]
        KIND_ELECTED: _ClassVar[ObserveResponse.Kind]
        KIND_PROCLAIMED: _ClassVar[ObserveResponse.Kind]
        KIND_RESIGNED: _ClassVar[ObserveResponse.Kind]
        KIND_EXPIRED: _ClassVar[ObserveResponse.Kind]
    KIND_UNSPECIFIED: ObserveResponse.Kind
    KIND_CURRENT: ObserveResponse.Kind
    KIND_ELECTED: ObserveResponse.Kind
    KIND_PROCLAIMED: ObserveResponse.Kind
    KIND_RESIGNED: ObserveResponse.Kind
    KIND_EXPIRED: ObserveResponse.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    kind: ObserveResponse.Kind
    leader: Leader
    at: _timestamp_pb2.Timestamp
    def __init__(self, kind: _Optional[_Union[ObserveResponse.Kind, str]] = ..., leader: _Optional[_Union[Leader, _Mapping]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ElectionServiceKeepAliveRequest(_message.Message):
    __slots__ = ("name", "lease_id", "ttl")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    name: str
    lease_id: str
    ttl: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., lease_id: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ElectionServiceKeepAliveResponse(_message.Message):
    __slots__ = ("lease", "renewed")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    RENEWED_FIELD_NUMBER: _ClassVar[int]
    lease: _lock_pb2.Lease
    renewed: bool
    def __init__(self, lease: _Optional[_Union[_lock_pb2.Lease, _Mapping]] = ..., renewed: _Optional[bool] = ...) -> None: ...
