"""OpenTelemetry: calls carry the caller's trace to Baton, and a job's trace continues in the
worker and its ack. Baton traces every RPC (exporting to a closed local port: the export
errors are only logged) and logs one "rpc served" line per call, with its trace id, at debug
level; the tests look for their trace ids there."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest
from conftest import unique
from harness import Baton, eventually, free_port
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind

import baton_client


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """The global tracer provider (the worker's spans go there) records into memory."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the global one can be set only once
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    processor.shutdown()  # the provider keeps it, but it records nothing more


@pytest.fixture
def traced_baton(start_baton, monkeypatch: pytest.MonkeyPatch) -> Baton:
    monkeypatch.setenv("RUST_LOG", "info,baton=debug")
    return start_baton("127.0.0.1:0", "--otlp-endpoint", f"http://127.0.0.1:{free_port()}")


def served_traces(baton: Baton, method: str) -> set[str]:
    """The trace id of every "rpc served" line baton has logged for ``method``."""
    traces: set[str] = set()
    for line in baton.log_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        span = entry.get("span") or {}
        if entry.get("message") == "rpc served" and span.get("rpc.method") == method:
            traces.add(span.get("trace_id", ""))
    return traces


def trace_id(span: trace.Span) -> str:
    return trace.format_trace_id(span.get_span_context().trace_id)


def ended_span(spans: InMemorySpanExporter, context: SpanContext) -> ReadableSpan | None:
    for span in spans.get_finished_spans():
        if span.context is not None and span.context.span_id == context.span_id:
            return span
    return None


def check_processing(spans: InMemorySpanExporter, queue: str, context: SpanContext) -> None:
    """The handler ran in the worker's own span, "process <queue>", of kind consumer, which
    ends once the job is settled."""
    eventually(lambda: ended_span(spans, context) is not None, "the handler's span ends")
    processing = ended_span(spans, context)
    assert processing is not None
    assert processing.name == f"process {queue}"
    assert processing.kind == SpanKind.CONSUMER


def test_a_call_inside_a_span_reaches_baton_with_its_trace_id(
    traced_baton: Baton, spans: InMemorySpanExporter
) -> None:
    with (
        baton_client.Client(traced_baton.addr, tracing=True) as client,
        trace.get_tracer("test").start_as_current_span("login") as span,
    ):
        client.allow(unique("login"), 5, 60)
    eventually(
        lambda: trace_id(span) in served_traces(traced_baton, "Check"),
        f"baton logs the Check call under the caller's trace id {trace_id(span)}",
    )


def test_a_jobs_trace_continues_in_the_worker_and_its_ack(
    traced_baton: Baton, spans: InMemorySpanExporter
) -> None:
    queue = unique("emails")
    with baton_client.Client(traced_baton.addr, tracing=True) as client:
        with trace.get_tracer("test").start_as_current_span("signup") as span:
            client.enqueue(queue, b"to:ada")
        in_handler: list[SpanContext] = []
        settled: list[BaseException | None] = []
        done = threading.Event()

        def handler(job: baton_client.Job) -> None:
            in_handler.append(trace.get_current_span().get_span_context())

        def on_settled(job: baton_client.Job, error: BaseException | None) -> None:
            settled.append(error)
            done.set()

        stop = threading.Event()
        worker = threading.Thread(
            target=client.consume,
            args=(queue, handler),
            kwargs={"stop": stop, "on_settled": on_settled},
            daemon=True,
        )
        worker.start()
        try:
            assert done.wait(10), "the job was not settled within 10 s"
        finally:
            stop.set()
            worker.join(10)
        assert settled == [None], "the job is acked"
        assert trace.format_trace_id(in_handler[0].trace_id) == trace_id(span)
        check_processing(spans, queue, in_handler[0])
        # The worker acks through AckBatch, each call in the trace of the first job it acks.
        eventually(
            lambda: trace_id(span) in served_traces(traced_baton, "AckBatch"),
            "baton logs the AckBatch under the enqueuer's trace id",
        )
        assert trace_id(span) in served_traces(traced_baton, "Enqueue")


async def test_async_a_call_inside_a_span_reaches_baton_with_its_trace_id(
    traced_baton: Baton, spans: InMemorySpanExporter
) -> None:
    async with baton_client.AsyncClient(traced_baton.addr, tracing=True) as client:
        with trace.get_tracer("test").start_as_current_span("login") as span:
            await client.allow(unique("login"), 5, 60)
    eventually(
        lambda: trace_id(span) in served_traces(traced_baton, "Check"),
        f"baton logs the Check call under the caller's trace id {trace_id(span)}",
    )


async def test_async_a_jobs_trace_continues_in_the_worker_and_its_ack(
    traced_baton: Baton, spans: InMemorySpanExporter
) -> None:
    queue = unique("emails")
    async with baton_client.AsyncClient(traced_baton.addr, tracing=True) as client:
        with trace.get_tracer("test").start_as_current_span("signup") as span:
            await client.enqueue(queue, b"to:ada")
        in_handler: list[SpanContext] = []
        settled: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        async def handler(job: baton_client.Job) -> None:
            in_handler.append(trace.get_current_span().get_span_context())

        def on_settled(job: baton_client.Job, error: BaseException | None) -> None:
            if not settled.done():
                settled.set_result(error)

        stop = asyncio.Event()
        worker = asyncio.create_task(
            client.consume(queue, handler, stop=stop, on_settled=on_settled)
        )
        try:
            assert await asyncio.wait_for(settled, 10) is None, "the job is acked"
        finally:
            stop.set()
            await asyncio.wait_for(worker, 10)
        assert trace.format_trace_id(in_handler[0].trace_id) == trace_id(span)
        check_processing(spans, queue, in_handler[0])
        # The worker acks through AckBatch, each call in the trace of the first job it acks.
        eventually(
            lambda: trace_id(span) in served_traces(traced_baton, "AckBatch"),
            "baton logs the AckBatch under the enqueuer's trace id",
        )
        assert trace_id(span) in served_traces(traced_baton, "Enqueue")
