from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from conftest import unique
from harness import Baton

import baton_client
from baton_client.pb.baton.v1 import cache_pb2


def test_set_get_delete_and_compare_and_set(client: baton_client.Client) -> None:
    key = unique("user")
    first = client.cache_set(key, b"v1", ttl=60, tags=["users"])
    entry = client.cache_get(key)
    assert entry is not None and entry.value == b"v1" and entry.version == first.version
    client.cache_set(key, b"v2", ttl=60, if_version=first.version)
    with pytest.raises(baton_client.Aborted) as mismatch:
        client.cache_set(key, b"v3", ttl=60, if_version=first.version)
    assert mismatch.value.error_reason == baton_client.ErrorReason.VERSION_MISMATCH
    with pytest.raises(baton_client.AlreadyExists):
        client.cache_set(key, b"v3", ttl=60, if_absent=True)
    assert client.cache_delete(key) is True
    assert client.cache_get(key) is None

    client.cache_set(key, b"tagged", ttl=60, tags=["users"])
    client.invalidate_tag("users")
    assert client.cache_get(key) is None


def test_get_or_load_runs_one_loader_for_50_concurrent_callers(baton: Baton) -> None:
    key = unique("profile")
    loads = 0
    guard = threading.Lock()
    start = threading.Barrier(50)

    def load() -> bytes:
        nonlocal loads
        with guard:
            loads += 1
        time.sleep(0.2)  # a slow database
        return b'{"name":"Ada"}'

    # Five connections, as if five processes: one loader must win across all of them.
    clients = [baton_client.Client(baton.addr) for _ in range(5)]
    try:

        def caller(i: int) -> bytes:
            start.wait()
            return clients[i % 5].get_or_load(key, 60, load)

        with ThreadPoolExecutor(50) as pool:
            values = list(pool.map(caller, range(50)))
    finally:
        for connected in clients:
            connected.close()
    assert values == [b'{"name":"Ada"}'] * 50
    assert loads == 1


def test_get_or_load_hands_the_load_on_when_the_loader_fails(client: baton_client.Client) -> None:
    key = unique("profile")
    loading, fail = threading.Event(), threading.Event()

    def failing() -> bytes:
        loading.set()
        fail.wait(10)
        raise ConnectionError("database down")

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.get_or_load, key, 60, failing, load_timeout=60)
        assert loading.wait(10)
        second = pool.submit(client.get_or_load, key, 60, lambda: b"from the second loader")
        time.sleep(0.1)  # the second caller is now waiting on the first's load
        failed_at = time.monotonic()
        fail.set()
        with pytest.raises(ConnectionError):
            first.result(10)
        # Abandoned, not left to its one-minute load timeout.
        assert second.result(10) == b"from the second loader"
        assert time.monotonic() - failed_at < 3


def test_fill_with_a_stale_token_is_failed_precondition(client: baton_client.Client) -> None:
    key = unique("profile")
    fetched = client.stubs.cache.Fetch(cache_pb2.FetchRequest(key=key))
    assert fetched.fill_token
    client.cache_set(key, b"newer", ttl=60)
    stale_fill = cache_pb2.FillRequest(key=key, fill_token=fetched.fill_token, value=b"older")
    stale_fill.ttl.FromSeconds(60)
    with pytest.raises(grpc.RpcError) as raised:
        client.stubs.cache.Fill(stale_fill)
    mapped = baton_client.from_rpc_error(raised.value)
    assert isinstance(mapped, baton_client.FailedPrecondition)
    assert mapped.error_reason == baton_client.ErrorReason.FILL_TOKEN_STALE
