"""The asyncio client: the same behaviours as the sync tests, through AsyncClient."""

from __future__ import annotations

import asyncio

import pytest
from conftest import unique
from harness import free_port

import baton_client
from baton_client.pb.baton.v1 import lock_pb2


async def test_allow_denies_past_the_limit(async_client: baton_client.AsyncClient) -> None:
    key = unique("login")
    assert [(await async_client.allow(key, 2, 60)).allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]


async def test_invalid_argument_names_the_field(async_client: baton_client.AsyncClient) -> None:
    with pytest.raises(baton_client.InvalidArgument) as raised:
        await async_client.allow("k", limit=0, period=60)
    assert raised.value.reason == "INVALID_FIELD"
    assert raised.value.field is not None and raised.value.field.startswith("limits[0]")


async def test_contended_lock_is_exclusive_with_increasing_fencing_tokens(
    async_client: baton_client.AsyncClient,
) -> None:
    name = unique("order")
    tokens: list[int] = []
    holders = 0
    overlaps = 0

    async def work() -> None:
        nonlocal holders, overlaps
        for _ in range(4):
            async with async_client.lock(name, ttl=2) as lease:
                holders += 1
                overlaps += holders != 1
                tokens.append(lease.fencing_token)
                await asyncio.sleep(0.005)
                holders -= 1

    await asyncio.wait_for(asyncio.gather(*(work() for _ in range(5))), 30)
    assert overlaps == 0
    assert len(tokens) == 20
    assert tokens == sorted(set(tokens)), "fencing tokens must strictly increase"


async def test_lease_loss_is_signalled(async_client: baton_client.AsyncClient) -> None:
    with pytest.raises(baton_client.LeaseLost) as raised:
        async with async_client.lock(unique("pay"), ttl=1) as lease:
            request = lock_pb2.ReleaseRequest(name=lease.name, lease_id=lease.lease_id)
            assert (await async_client.stubs.locks.Release(request)).released
            assert await lease.wait_lost(timeout=5), "loss not signalled"
    assert isinstance(raised.value.__cause__, baton_client.FailedPrecondition)
    assert raised.value.__cause__.reason == "LEASE_NOT_HELD"


async def test_lock_with_wait_gives_up_while_held(
    async_client: baton_client.AsyncClient,
) -> None:
    name = unique("report")
    async with async_client.lock(name, ttl=5, owner="first"):
        with pytest.raises(baton_client.LockNotAcquired):
            await async_client.acquire(name, ttl=5, wait=0)


async def test_keep_alive_resumes_on_another_replica_when_one_shuts_down(start_baton) -> None:
    first = start_baton()
    second_addr = f"127.0.0.1:{free_port()}"
    async with baton_client.AsyncClient([first.addr, second_addr]) as client:
        ttl = 2.0
        lease = await client.acquire(unique("migration"), ttl)
        start_baton(second_addr)
        await asyncio.sleep(1.5)
        await asyncio.to_thread(first.terminate)
        assert not await lease.wait_lost(timeout=2 * ttl), f"lease lost: {lease.loss!r}"
        described = await client.stubs.locks.Describe(lock_pb2.DescribeRequest(name=lease.name))
        assert [holder.fencing_token for holder in described.holders] == [lease.fencing_token]
        await lease.release()
