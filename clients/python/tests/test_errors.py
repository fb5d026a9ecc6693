from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from conftest import unique
from harness import Redis, eventually

import baton_client
from baton_client.pb.baton.v1 import lock_pb2, ratelimit_pb2, ratelimit_pb2_grpc


def test_invalid_argument_names_the_field(client: baton_client.Client) -> None:
    with pytest.raises(baton_client.InvalidArgument) as raised:
        client.allow("", limit=5, period=60)
    assert raised.value.error_reason == baton_client.ErrorReason.INVALID_FIELD
    assert raised.value.field == "limits[0].key"


def test_failed_precondition_from_a_generated_stub(client: baton_client.Client) -> None:
    request = lock_pb2.RenewRequest(name=unique("order"), lease_id="0" * 32)
    with pytest.raises(grpc.RpcError) as raised:
        client.stubs.locks.Renew(request)
    mapped = baton_client.from_rpc_error(raised.value)
    assert isinstance(mapped, baton_client.FailedPrecondition)
    assert mapped.error_reason == baton_client.ErrorReason.LEASE_NOT_HELD


def test_unavailable_when_redis_is_down_carries_retry_after(
    client: baton_client.Client, redis: Redis
) -> None:
    assert client.allow(unique("warmup"), 5, 60)
    redis.stop()
    failures: list[baton_client.Unavailable] = []

    def fails_unavailable() -> bool:
        try:
            client.allow(unique("login"), 5, 60)
        except baton_client.Unavailable as error:
            failures.append(error)
            return True
        return False

    eventually(fails_unavailable, "allow() raises Unavailable")
    assert failures[0].error_reason == baton_client.ErrorReason.STORAGE_UNAVAILABLE
    assert failures[0].retry_after is not None and failures[0].retry_after > 0


def test_error_reason_reads_every_reason_and_maps_the_rest_to_unspecified() -> None:
    for name, value in baton_client.ErrorReason.items():
        error = baton_client.BatonError("refused", code=grpc.StatusCode.ABORTED, reason=name)
        assert error.error_reason == value, name
    # No reason (a transport failure), or one a newer server sends: unknown, not an error.
    for sent in ("", "A_REASON_FROM_THE_FUTURE"):
        error = baton_client.BatonError("refused", code=grpc.StatusCode.ABORTED, reason=sent)
        assert error.error_reason == baton_client.ErrorReason.ERROR_REASON_UNSPECIFIED
        assert error.reason == sent


class _RecordingLimiter(ratelimit_pb2_grpc.RateLimiterServiceServicer):
    def __init__(self) -> None:
        self.metadata: dict[str, str] = {}
        self.unblock = threading.Event()

    def Check(self, request, context):
        self.metadata = dict(context.invocation_metadata())
        self.unblock.wait(5)
        return ratelimit_pb2.CheckResponse(allowed=True)


@pytest.fixture
def fake_limiter():
    limiter = _RecordingLimiter()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    ratelimit_pb2_grpc.add_RateLimiterServiceServicer_to_server(limiter, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield limiter, f"127.0.0.1:{port}"
    limiter.unblock.set()
    server.stop(0)


def test_api_key_travels_in_metadata(fake_limiter) -> None:
    limiter, addr = fake_limiter
    limiter.unblock.set()
    with baton_client.Client(addr, api_key="k-123") as client:
        assert client.allow("key", 1, 1)
    assert limiter.metadata.get("x-api-key") == "k-123"


def test_default_timeout_bounds_calls(fake_limiter) -> None:
    _, addr = fake_limiter
    with (
        baton_client.Client(addr, timeout=0.1) as client,
        pytest.raises(baton_client.DeadlineExceeded),
    ):
        client.allow("key", 1, 1)


async def test_the_asyncio_client_sends_the_api_key_and_bounds_calls(fake_limiter) -> None:
    limiter, addr = fake_limiter
    async with baton_client.AsyncClient(addr, api_key="k-456", timeout=0.1) as client:
        started = time.monotonic()
        with pytest.raises(baton_client.DeadlineExceeded):
            await client.allow("key", 1, 1)
        assert time.monotonic() - started < 3, "the default timeout did not bound the call"
        assert limiter.metadata.get("x-api-key") == "k-456"
        # A timeout of the call's own outlasts the default: answered after 0.3 s.
        limiter.unblock.set()
        limiter.unblock.clear()
        threading.Timer(0.3, limiter.unblock.set).start()
        response = await client.stubs.rate_limits.Check(ratelimit_pb2.CheckRequest(), timeout=5)
        assert response.allowed
