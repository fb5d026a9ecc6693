from __future__ import annotations

import threading
import time

import pytest
from conftest import unique
from harness import free_port

import baton_client
from baton_client.pb.baton.v1 import lock_pb2


def test_contended_lock_is_exclusive_with_increasing_fencing_tokens(
    client: baton_client.Client,
) -> None:
    name = unique("order")
    workers, rounds = 5, 4
    tokens: list[int] = []  # in the order the critical sections ran
    holders = 0
    overlaps: list[int] = []
    guard = threading.Lock()

    def work(worker: int) -> None:
        nonlocal holders
        for _ in range(rounds):
            with client.lock(name, ttl=2, owner=f"worker-{worker}") as lease:
                with guard:
                    holders += 1
                    if holders != 1:
                        overlaps.append(holders)
                    tokens.append(lease.fencing_token)
                time.sleep(0.005)
                with guard:
                    holders -= 1

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not overlaps, "two holders at once"
    assert len(tokens) == workers * rounds
    assert tokens == sorted(set(tokens)), "fencing tokens must strictly increase"


def test_lock_with_wait_gives_up_while_held(client: baton_client.Client) -> None:
    name = unique("report")
    with client.lock(name, ttl=5, owner="first"):
        started = time.monotonic()
        with pytest.raises(baton_client.LockNotAcquired) as raised:
            client.acquire(name, ttl=5, wait=0.3)
        assert 0.25 <= time.monotonic() - started < 3
        assert raised.value.holder_owner == "first"


def test_release_hands_the_lock_to_a_waiter_at_once(client: baton_client.Client) -> None:
    name = unique("invoice")
    first = client.acquire(name, ttl=60)
    acquired: list[baton_client.Lease] = []
    waiter = threading.Thread(target=lambda: acquired.append(client.acquire(name, 60, wait=10)))
    waiter.start()
    time.sleep(0.2)
    first.release()
    # A minute-long ttl means only the explicit release could have freed it this fast.
    waiter.join(5)
    assert acquired and acquired[0].fencing_token > first.fencing_token
    acquired[0].release()


def test_lease_loss_is_signalled(client: baton_client.Client) -> None:
    with pytest.raises(baton_client.LeaseLost) as raised, client.lock(unique("pay"), 1) as lease:
        # Someone else holding the lease id releases it: the next renewal finds it gone.
        request = lock_pb2.ReleaseRequest(name=lease.name, lease_id=lease.lease_id)
        assert client.stubs.locks.Release(request).released
        assert lease.wait_lost(timeout=5), "loss not signalled"
        assert lease.lost
    cause = raised.value.__cause__
    assert isinstance(cause, baton_client.FailedPrecondition)
    assert cause.reason == "LEASE_NOT_HELD"


def test_keep_alive_resumes_on_another_replica_when_one_shuts_down(start_baton) -> None:
    first = start_baton()
    second_addr = f"127.0.0.1:{free_port()}"
    with baton_client.Client([first.addr, second_addr]) as client:
        # Only the first replica is up, so the lease and its KeepAlive stream live there.
        ttl = 2.0
        lease = client.acquire(unique("migration"), ttl)
        start_baton(second_addr)
        # Leave time for the channel's reconnect backoff to find the second replica.
        time.sleep(1.5)
        first.terminate()
        assert not lease.wait_lost(timeout=2 * ttl), f"lease lost: {lease.loss!r}"
        described = client.stubs.locks.Describe(lock_pb2.DescribeRequest(name=lease.name))
        assert [holder.fencing_token for holder in described.holders] == [lease.fencing_token]
        lease.release()
