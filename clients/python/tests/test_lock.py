from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import unique
from harness import Baton, Redis, eventually, free_port

import baton_client
from baton_client.lock import _DueStarts, _LeaseState, _Stream
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
    assert cause.error_reason == baton_client.ErrorReason.LEASE_NOT_HELD


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


def test_heartbeats_move_held_until_forward(client: baton_client.Client) -> None:
    renewals: list[float] = []

    def renewed(lease: baton_client.Lease) -> None:
        renewals.append(lease.held_until)

    with client.lock(unique("sweep"), ttl=1.2, on_renewed=renewed) as lease:
        assert lease.margin == pytest.approx(0.12)
        assert not lease.wait_lost(timeout=2.4), f"lease lost: {lease.loss!r}"
    # The first message, then a heartbeat every ttl/3 (0.4 s), each answered: about 7 in 2.4 s.
    assert 5 <= len(renewals) <= 9, renewals
    assert renewals == sorted(renewals)
    # held_until is the send time of an answered message + ttl: never past now + ttl.
    assert renewals[-1] <= time.monotonic() + 1.2


class Lines:
    """A child's stdout lines, with the wall-clock time each was read."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.seen: list[tuple[float, str]] = []
        assert process.stdout is not None
        stdout = process.stdout

        def read() -> None:
            for line in stdout:
                self.lines.put((time.time(), line.strip()))

        threading.Thread(target=read, daemon=True).start()

    def until(self, prefix: str, timeout: float) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {prefix!r} line within {timeout}s: {self.seen}"
            try:
                read_at, line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append((read_at, line))
            if line.startswith(prefix):
                return read_at, line

    def drain(self) -> None:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return

    def loss_instants(self) -> list[float]:
        return [float(line.split()[1]) for _, line in self.seen if line.startswith("loss-at")]


@pytest.mark.parametrize("flavour", ["sync", "asyncio"])
def test_a_frozen_holder_loses_its_lease_before_another_is_granted(
    client: baton_client.Client, baton: Baton, flavour: str
) -> None:
    name = unique("ledger")
    script = str(Path(__file__).with_name("frozen_holder.py"))
    flags = ["--asyncio"] if flavour == "asyncio" else []
    holder = subprocess.Popen(
        [sys.executable, script, baton.addr, name, *flags], stdout=subprocess.PIPE, text=True
    )
    try:
        lines = Lines(holder)
        lines.until("held", timeout=10)
        for _ in range(3):  # a few heartbeats answered (one every ttl/3)
            lines.until("loss-at", timeout=2)
        os.kill(holder.pid, signal.SIGSTOP)
        stopped_at = time.time()
        # Its connection stays open; only its heartbeats stop.
        lease = client.acquire(name, ttl=5, wait=5, owner="successor")
        granted_at = time.time()
        # Redis runs on this machine, so its clock is this wall clock: the grant's instant.
        granted = lease.expires_at.timestamp() - lease.ttl
        time.sleep(0.2)  # anything the holder wrote before it froze is read by now
        lines.drain()
        last_reported = max(lines.loss_instants())
        os.kill(holder.pid, signal.SIGCONT)
        resumed_at = time.time()
        lost_read_at, lost_line = lines.until("lost", timeout=5)
        lease.release()
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.wait()
    lost_at = float(lost_line.split()[1])
    print(
        f"\nfrozen {flavour} holder: granted to another {granted_at - stopped_at:.3f}s"
        " after SIGSTOP;"
        f" holder's last loss instant {granted - last_reported:.3f}s before the grant;"
        f" loss reported {lost_at - resumed_at:.3f}s after SIGCONT"
    )
    assert granted_at - stopped_at < 2.0, "the frozen holder's lease outlived its ttl"
    assert last_reported < granted, "the holder would have believed it held the lock too long"
    assert lost_at - resumed_at < 0.5, "the loss was not reported promptly on resumption"
    assert lost_read_at - resumed_at < 1.0


def test_only_a_renewing_answer_moves_held_until() -> None:
    granted = lock_pb2.Lease(name="ledger", lease_id="L", fencing_token=7)
    granted.ttl.FromSeconds(3)
    state = _LeaseState(granted, proven_at=100.0, on_renewed=None)
    stream: _Stream[None] = _Stream(None)
    state._current = stream
    for sent in (101.0, 102.0, 103.0):
        state._sent(stream, sent)
    not_renewed = lock_pb2.KeepAliveResponse(lease=granted, renewed=False)
    renewed = lock_pb2.KeepAliveResponse(lease=granted, renewed=True)
    # Answers are matched to sends in order: the first (sent at 101) was not renewed.
    assert not state._answer(stream, not_renewed)
    assert state.held_until == 103.0  # still the grant's proof
    assert state.unrenewed_answers == 1
    assert state._answer(stream, renewed)  # sent at 102
    assert state.held_until == 105.0
    assert not state._answer(stream, not_renewed)  # sent at 103
    assert state.held_until == 105.0
    assert not stream.unanswered
    assert not state._answer(stream, renewed), "an answer to nothing sent proves nothing"
    assert state.held_until == 105.0


def freeze_after_an_answer(
    client: baton_client.Client, redis: Redis, ttl: float
) -> tuple[baton_client.Lease, float]:
    """Acquires a lease and SIGSTOPs Redis just after one of its heartbeats was answered
    (renewed), so the freeze starts a known ttl/3 before the next heartbeat; the lease and
    its held_until at the freeze."""
    answered = threading.Event()
    lease = client.acquire(unique("backup"), ttl, on_renewed=lambda _: answered.set())
    for _ in range(2):  # the first message's answer came before acquire() returned
        answered.clear()
        assert answered.wait(ttl), "no heartbeat answered"
    os.kill(redis.process.pid, signal.SIGSTOP)
    return lease, lease.held_until


# Baton's bound on each Redis call: while Redis is frozen, a heartbeat is answered
# renewed=false after this long.
FAST_REDIS_TIMEOUT = ("--redis-timeout", "300ms")


def test_a_lease_rides_out_a_redis_freeze_that_ends_before_its_margin(
    start_baton, redis: Redis
) -> None:
    baton = start_baton("127.0.0.1:0", *FAST_REDIS_TIMEOUT)
    ttl = 3.0
    with baton_client.Client(baton.addr) as client:
        lease, held_at_freeze = freeze_after_an_answer(client, redis, ttl)
        frozen_at = time.monotonic()
        try:
            # The next heartbeat goes out ttl/3 after the last renewed one and is answered
            # renewed=false 0.3 s later; the one after it comes after Redis returns.
            eventually(lambda: lease.unrenewed_answers >= 1, "a heartbeat answered unrenewed", 2)
            assert lease.held_until == held_at_freeze, "an unrenewed answer moved held_until"
            time.sleep(max(0.0, frozen_at + 1.9 - time.monotonic()))
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        resumed = time.monotonic()
        # Redis returned 0.8 s before held_until - margin: the next heartbeat renews it.
        assert resumed < held_at_freeze - lease.margin - 0.3
        eventually(lambda: lease.held_until > resumed + ttl / 2, "renewed after Redis returned")
        assert not lease.lost, lease.loss
        print(
            f"\nredis frozen {resumed - frozen_at:.2f}s: {lease.unrenewed_answers} heartbeat(s)"
            " answered unrenewed; lease kept"
        )
        lease.release()


def test_a_redis_freeze_past_the_margin_is_reported_lost_before_the_lease_expires(
    start_baton, redis: Redis
) -> None:
    baton = start_baton("127.0.0.1:0", *FAST_REDIS_TIMEOUT)
    ttl = 2.0
    with baton_client.Client(baton.addr) as client, baton_client.Client(baton.addr) as other:
        lease, held_at_freeze = freeze_after_an_answer(client, redis, ttl)
        frozen_at = time.monotonic()
        # By the Redis clock (this machine's wall clock): the lease ends unless renewed.
        expires = lease.expires_at.timestamp()
        successor: list[baton_client.Lease] = []
        waiter = threading.Thread(
            target=lambda: successor.append(other.acquire(lease.name, ttl, wait=10))
        )
        waiter.start()
        try:
            # Two heartbeats are answered renewed=false while Redis is frozen; if they
            # counted, the lease would be believed held until ttl after their send times.
            lost = lease.wait_lost(timeout=ttl + 1)
            lost_wall, lost_mono = time.time(), time.monotonic()
            unrenewed = lease.unrenewed_answers
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        waiter.join(15)
        for successor_lease in successor:
            successor_lease.release()
    assert lost, "the loss was not reported while Redis was frozen"
    assert unrenewed >= 1, "no heartbeat was answered while Redis was frozen"
    assert lease.held_until == held_at_freeze, "an unrenewed answer moved held_until"
    assert lease.loss is not None and lease.loss.__cause__ is None, "not the local timer"
    assert lost_mono - (held_at_freeze - lease.margin) < 0.2, "reported late"
    assert successor, "the other client never got the lock"
    granted = successor[0].expires_at.timestamp() - ttl
    print(
        f"\nredis frozen: {unrenewed} heartbeat(s) answered unrenewed; loss reported"
        f" {lost_mono - frozen_at:.3f}s after the freeze, {expires - lost_wall:.3f}s before the"
        f" lease's expiry in Redis, {granted - lost_wall:.3f}s before the next grant"
    )
    assert lost_wall < expires - lease.margin / 2, "the loss came too close to the expiry"
    assert lost_wall < granted


def test_a_grant_after_a_long_wait_is_proven_before_it_is_handed_out(
    client: baton_client.Client,
) -> None:
    name = unique("archive")
    first = client.acquire(name, ttl=5)
    threading.Timer(1.5, first.release).start()
    # Granted about 1.5 s after it was asked for, with a 1 s ttl: the Acquire's send time
    # proves nothing any more, so the grant is renewed before it is handed out.
    with client.lock(name, ttl=1, wait=5) as lease:
        assert lease.held_until > time.monotonic() + 0.5
        assert not lease.wait_lost(1.5), lease.loss


def _lock_calls(baton: Baton) -> dict[str, float]:
    return {
        method: baton.counter(
            "baton_grpc_requests_total", service="baton.v1.LockService", method=method
        )
        for method in ("Acquire", "KeepAlive", "Release")
    }


def test_a_short_hold_costs_acquire_and_release_and_a_long_one_a_stream(
    baton: Baton, client: baton_client.Client
) -> None:
    before = _lock_calls(baton)
    cycles = 20
    for i in range(cycles):
        with client.lock(unique(f"cycle-{i}"), ttl=5) as lease:
            # Granted at once: the Acquire's send dates it, no heartbeat need prove it first.
            assert lease.held_until > time.monotonic() + 4
    after = _lock_calls(baton)
    calls = {method: after[method] - before[method] for method in after}
    assert calls == {"Acquire": cycles, "KeepAlive": 0, "Release": cycles}

    # Held past a third of its ttl, a lease is kept by a stream, which then releases it.
    with client.lock(unique("long"), ttl=0.6) as lease:
        granted_until = lease.held_until
        eventually(lambda: lease.held_until > granted_until, "a renewal on the stream")
        time.sleep(0.5)
        assert not lease.lost, lease.loss
    eventually(
        lambda: _lock_calls(baton)["KeepAlive"] - after["KeepAlive"] >= 1, "the stream counted"
    )
    final = _lock_calls(baton)
    calls = {method: final[method] - after[method] for method in final}
    assert calls == {"Acquire": 1, "KeepAlive": 1, "Release": 0}


def test_due_starts_run_in_time_order_and_cancelled_ones_neither_run_nor_pile_up() -> None:
    starts = _DueStarts()
    started: list[str] = []
    done = threading.Event()

    def start(label: str) -> Callable[[], None]:
        def run() -> None:
            started.append(label)
            if label == "last":
                done.set()

        return run

    now = time.monotonic()
    starts.schedule(now + 0.2, start("second"))
    cancelled = starts.schedule(now + 0.1, start("cancelled"))
    starts.schedule(now + 0.05, start("first"))
    starts.schedule(now + 0.3, start("last"))
    starts.cancel(cancelled)
    # Thousands of leases released long before their first stream was due.
    for _ in range(5000):
        starts.cancel(starts.schedule(now + 3600, start("never")))
    assert len(starts._due) < 300, f"{len(starts._due)} entries kept for 4 live ones"
    assert done.wait(5), started
    assert started == ["first", "second", "last"]


def test_a_start_that_raises_does_not_stop_the_starts_after_it() -> None:
    starts = _DueStarts()
    later = threading.Event()

    def failing() -> None:
        raise RuntimeError("can't start new thread")

    now = time.monotonic()
    starts.schedule(now + 0.02, failing)
    starts.schedule(now + 0.05, later.set)
    assert later.wait(5), "the start after a failing one never ran"
