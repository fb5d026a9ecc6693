"""OpenTelemetry: the trace context sent with calls, and the worker's span per job.

Only opentelemetry-api is used, a no-op until the application installs an SDK: the global
propagator (W3C ``traceparent`` and ``baggage`` unless ``OTEL_PROPAGATORS`` says otherwise)
writes the current context into a call's metadata, and reads the context a job travelled
with (``Job.trace_context``: the enqueuer's, or Baton's delivery span when Baton traces).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from contextvars import Token

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

_TRACER_NAME = "baton_client"

Metadata = list[tuple[str, "str | bytes"]]


def with_trace_context(metadata: Sequence[tuple[str, str | bytes]] | None) -> Metadata | None:
    """``metadata`` plus the current trace context (nothing is added outside a trace)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return list(metadata) if metadata is not None else None
    # gRPC metadata keys are lower case.
    return [*(metadata or ()), *((key.lower(), value) for key, value in carrier.items())]


def job_context(trace_context: Mapping[str, str]) -> Context:
    """The context a job's work continues: the one it carries, else a new trace (not the
    span, if any, that the worker itself runs in)."""
    return propagate.extract(dict(trace_context), context=Context())


@contextlib.contextmanager
def attached(ctx: Context) -> Iterator[None]:
    """Makes ``ctx`` current, so that the calls made inside carry it."""
    token = context.attach(ctx)
    try:
        yield
    finally:
        context.detach(token)


# A proxy until the application installs an SDK, then that SDK's tracer: got once, since
# getting it is a fifth of a job's tracing cost without an SDK.
_tracer = trace.get_tracer(_TRACER_NAME)


class Processing:
    """The job's handler and its Ack or Nack run in here: a span "process <queue>" (kind
    consumer) child of the job's context when an SDK is installed, else the job's context
    itself. The caller sets the span's error status (see :func:`failed`). A class rather
    than a generator: it is entered for every job."""

    __slots__ = ("_context", "_span", "_token")

    def __init__(
        self, queue: str, job_id: str, attempt: int, trace_context: Mapping[str, str]
    ) -> None:
        ctx = job_context(trace_context)
        self._span = _tracer.start_span(
            f"process {queue}",
            context=ctx,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "baton",
                "messaging.operation.type": "process",
                "messaging.destination.name": queue,
                "messaging.message.id": job_id,
                "baton.job.attempt": attempt,
            },
        )
        if self._span.get_span_context().is_valid:
            # Without an SDK the span is the invalid no-op one: the job's context stays current.
            ctx = trace.set_span_in_context(self._span, ctx)
        self._context = ctx
        self._token: Token[Context] | None = None

    def __enter__(self) -> Span:
        self._token = context.attach(self._context)
        return self._span

    def __exit__(self, *_: object) -> None:
        try:
            if self._token is not None:
                context.detach(self._token)
        finally:
            self._span.end()


def failed(span: Span, error: BaseException | None) -> None:
    """Marks the span failed when the handler raised or the job could not be settled."""
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, str(error) or type(error).__name__))
