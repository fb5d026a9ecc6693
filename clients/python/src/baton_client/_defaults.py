"""What every call of a client gets unless it says otherwise: the API key, the default
timeout (unary calls only: streams such as KeepAlive and Consume are meant to stay open) and,
with tracing, the current OpenTelemetry trace context.

They are filled in by the channel the stubs are made on, at the moment a call is made, rather
than by gRPC client interceptors: grpc.aio runs every intercepted call in a Task of its own,
which cost the asyncio client about 15 µs of CPU per call (a lock cycle's two calls went from
147 to 176 µs of client CPU at 16 callers). Filling them in at the call also reads the trace
context of the caller itself, in either client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import _connection, _tracing

Metadata = Sequence[tuple[str, str | bytes]]


class CallDefaults:
    def __init__(self, api_key: str | None, default_timeout: float | None, tracing: bool) -> None:
        self._api_key = api_key
        self._default_timeout = default_timeout
        self._tracing = tracing

    def timeout(self, timeout: float | None, unary: bool) -> float | None:
        return self._default_timeout if timeout is None and unary else timeout

    def metadata(self, metadata: Metadata | None) -> Metadata | None:
        metadata = _connection.with_api_key(metadata, self._api_key)
        return _tracing.with_trace_context(metadata) if self._tracing else metadata


class _Defaulted:
    """One method's multicallable (sync or asyncio) with the defaults filled in."""

    __slots__ = ("_defaults", "_inner", "_unary")

    def __init__(self, inner: Any, defaults: CallDefaults, unary: bool) -> None:
        self._inner = inner
        self._defaults = defaults
        self._unary = unary

    def _call(
        self, call: Any, request: Any, timeout: float | None, metadata: Metadata | None, **kw: Any
    ) -> Any:
        defaults = self._defaults
        return call(
            request,
            timeout=defaults.timeout(timeout, self._unary),
            metadata=defaults.metadata(metadata),
            **kw,
        )

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **kw: Any,
    ) -> Any:
        return self._call(self._inner, request, timeout, metadata, **kw)

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **kw: Any,
    ) -> Any:
        return self._call(self._inner.with_call, request, timeout, metadata, **kw)

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **kw: Any,
    ) -> Any:
        return self._call(self._inner.future, request, timeout, metadata, **kw)


class DefaultsChannel:
    """A channel (``grpc.Channel`` or ``grpc.aio.Channel``) whose calls get the defaults;
    everything else is the wrapped channel's."""

    def __init__(self, channel: Any, defaults: CallDefaults) -> None:
        self._channel = channel
        self._defaults = defaults

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Defaulted(self._channel.unary_unary(method, *args, **kwargs), self._defaults, True)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Defaulted(
            self._channel.unary_stream(method, *args, **kwargs), self._defaults, False
        )

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Defaulted(
            self._channel.stream_unary(method, *args, **kwargs), self._defaults, False
        )

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Defaulted(
            self._channel.stream_stream(method, *args, **kwargs), self._defaults, False
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)
