"""Leader election against a real baton: lead() / campaign(), leader(), observe(), sync and
asyncio."""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import pytest
from conftest import unique
from harness import free_port

import baton_client
from baton_client import ElectionEvent, ElectionEventKind
from baton_client.pb.baton.v1 import election_pb2

CURRENT = ElectionEventKind.CURRENT
ELECTED = ElectionEventKind.ELECTED
PROCLAIMED = ElectionEventKind.PROCLAIMED
RESIGNED = ElectionEventKind.RESIGNED

# Long enough that only a resignation can hand leadership over within a test's patience.
NEVER_EXPIRES = 60.0


class Events:
    """Reads an observation in a thread, so a test waits for each event with a patience."""

    def __init__(self, observation: baton_client.Observation) -> None:
        self._events: queue.Queue[ElectionEvent | None] = queue.Queue()

        def read() -> None:
            for event in observation:
                self._events.put(event)
            self._events.put(None)

        threading.Thread(target=read, daemon=True).start()

    def next(self, timeout: float = 10) -> ElectionEvent:
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout}s") from None
        assert event is not None, "the observation ended"
        return event

    def ended(self, timeout: float = 10) -> bool:
        try:
            return self._events.get(timeout=timeout) is None
        except queue.Empty:
            return False


def test_candidates_lead_one_at_a_time_with_rising_terms(client: baton_client.Client) -> None:
    name = unique("scheduler")
    candidates, rounds = 3, 3
    terms: list[int] = []  # in the order the leaderships ran
    leading = 0
    overlaps: list[int] = []
    guard = threading.Lock()

    def campaign(candidate: int) -> None:
        nonlocal leading
        for _ in range(rounds):
            owner = f"candidate-{candidate}"
            with client.lead(name, owner.encode(), ttl=NEVER_EXPIRES, owner=owner) as leadership:
                with guard:
                    leading += 1
                    if leading != 1:
                        overlaps.append(leading)
                    terms.append(leadership.term)
                time.sleep(0.005)
                with guard:
                    leading -= 1

    threads = [threading.Thread(target=campaign, args=(n,)) for n in range(candidates)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not overlaps, "two leaders at once"
    assert len(terms) == candidates * rounds, "a candidate was never elected"
    assert terms == sorted(set(terms)), "terms must strictly increase"


def test_the_next_candidate_is_elected_as_soon_as_the_leader_exits(
    client: baton_client.Client,
) -> None:
    name = unique("primary")
    elected = threading.Event()
    second_terms: list[int] = []

    def second() -> None:
        with client.lead(name, b"second", ttl=NEVER_EXPIRES, owner="second") as leadership:
            second_terms.append(leadership.term)
            elected.set()

    with client.lead(name, b"first", ttl=NEVER_EXPIRES, owner="first") as first:
        waiter = threading.Thread(target=second)
        waiter.start()
        assert not elected.wait(0.5), "two leaders at once"
        leader = client.leader(name)
        assert leader is not None and leader.owner == "first" and leader.term == first.term
    exited = time.monotonic()
    assert elected.wait(5), "the waiting candidate was not elected"
    assert time.monotonic() - exited < 2, "elected after a wait, not at the resignation"
    waiter.join(5)
    assert second_terms[0] > first.term
    assert client.leader(name) is None, "the second did not resign on exit"


def test_leader_answers_value_owner_and_term(client: baton_client.Client) -> None:
    name = unique("api")
    assert client.leader(name) is None
    with client.lead(name, b"10.0.0.7:8080", ttl=5, owner="pod-a") as leadership:
        leader = client.leader(name)
        assert leader is not None
        assert (leader.name, leader.value, leader.owner) == (name, b"10.0.0.7:8080", "pod-a")
        assert leader.term == leadership.term and leadership.name == name
        assert leader.since <= leader.expires_at
        leadership.proclaim(b"10.0.0.8:8080")
        assert leadership.value == b"10.0.0.8:8080"
        proclaimed = client.leader(name)
        assert proclaimed is not None
        assert (proclaimed.value, proclaimed.term) == (b"10.0.0.8:8080", leadership.term)
    assert client.leader(name) is None


def test_loss_is_reported_when_the_leadership_is_resigned_behind_its_back(
    client: baton_client.Client,
) -> None:
    with (
        pytest.raises(baton_client.LeaseLost) as raised,
        client.lead(unique("billing"), ttl=1) as leadership,
    ):
        # Someone else holding the lease id resigns: the next heartbeat finds it gone.
        request = election_pb2.ResignRequest(name=leadership.name, lease_id=leadership.lease_id)
        assert client.stubs.elections.Resign(request).resigned
        assert leadership.wait_lost(timeout=5), "loss not signalled"
        assert leadership.lost
    assert raised.value is leadership.loss
    cause = raised.value.__cause__
    assert isinstance(cause, baton_client.FailedPrecondition)
    assert cause.error_reason == baton_client.ErrorReason.LEASE_NOT_HELD


def test_a_deposed_leader_that_proclaims_is_told_it_lost(client: baton_client.Client) -> None:
    # The ttl spaces heartbeats 20 s apart: only the proclaim can notice the loss in time.
    with client.lead(unique("billing"), b"old", ttl=NEVER_EXPIRES) as leadership:
        request = election_pb2.ResignRequest(name=leadership.name, lease_id=leadership.lease_id)
        assert client.stubs.elections.Resign(request).resigned
        with pytest.raises(baton_client.LeaseLost) as raised:
            leadership.proclaim(b"new")
        assert leadership.lost and leadership.value == b"old"
        cause = raised.value.__cause__
        assert isinstance(cause, baton_client.FailedPrecondition)
        assert cause.error_reason == baton_client.ErrorReason.LEASE_NOT_HELD
        with pytest.raises(baton_client.LeaseLost):
            leadership.resign()


def test_loss_is_reported_before_expiry_when_the_only_baton_dies(start_baton) -> None:
    baton = start_baton()
    ttl = 3.0
    with baton_client.Client(baton.addr) as client:
        with (
            pytest.raises(baton_client.LeaseLost) as raised,
            client.lead(unique("cron"), ttl=ttl) as leadership,
        ):
            baton.kill()
            killed = time.monotonic()
            # Renewals fail (the stream is reopened in vain): the local timer reports the loss.
            assert leadership.wait_lost(timeout=ttl + 2), "loss not reported"
            lost = time.monotonic()
            assert leadership.loss is not None and leadership.loss.__cause__ is None
            assert lost < leadership.held_until, "reported after Baton could expire it"
            assert lost - killed < ttl
            start_baton(baton.addr)  # so that the resignation on exit is answered
        assert raised.value is leadership.loss
        # The term of the next leadership is above the lost one's.
        with client.lead(leadership.name, ttl=ttl) as successor:
            assert successor.term > leadership.term


def test_a_leadership_won_after_a_wait_longer_than_its_ttl_is_proven_before_it_is_handed_out(
    client: baton_client.Client,
) -> None:
    name = unique("archive")
    first = client.campaign(name, ttl=5)
    threading.Timer(1.5, first.resign).start()
    started = time.monotonic()
    # Elected about 1.5 s after the Campaign was sent, with a 1 s ttl: the Campaign's send time
    # proves nothing any more, the first KeepAlive answer does.
    with client.lead(name, ttl=1) as leadership:
        assert time.monotonic() - started > 1.2
        assert leadership.held_until > time.monotonic() + 0.5
        assert not leadership.wait_lost(1.5), leadership.loss


def test_observe_sees_current_elected_proclaimed_resigned_in_order(
    client: baton_client.Client,
) -> None:
    name = unique("leader")
    with client.observe(name) as observation:
        events = Events(observation)
        current = events.next()
        assert (current.kind, current.leader) == (CURRENT, None)
        with client.lead(name, b"v1", ttl=5, owner="pod-a") as leadership:
            leadership.proclaim(b"v2")
        seen = [events.next() for _ in range(3)]
    assert [event.kind for event in seen] == [ELECTED, PROCLAIMED, RESIGNED]
    assert all(event.leader is not None for event in seen)
    leaders = [event.leader for event in seen if event.leader is not None]
    assert [leader.term for leader in leaders] == [leadership.term] * 3
    assert [leader.value for leader in leaders] == [b"v1", b"v2", b"v2"]
    assert leaders[0].owner == "pod-a"
    assert [event.at for event in seen] == sorted(event.at for event in seen)
    assert events.ended(), "closing did not end the iteration"


def test_observe_reopens_when_its_replica_shuts_down_and_resumes_with_the_current_state(
    start_baton,
) -> None:
    first = start_baton()
    second_addr = f"127.0.0.1:{free_port()}"
    name = unique("primary")
    with (
        baton_client.Client([first.addr, second_addr]) as client,
        client.observe(name) as observation,
    ):
        events = Events(observation)
        assert events.next().kind == CURRENT  # the stream is open, on the only replica up
        second = start_baton(second_addr)
        first.terminate()  # draining ends the stream with UNAVAILABLE (SHUTTING_DOWN)
        with (
            baton_client.Client(second.addr) as other,
            other.lead(name, b"elsewhere", ttl=10) as leadership,
        ):
            event = events.next()
            assert event.kind == CURRENT, "the first event after reopening is the current state"
            if event.leader is None:  # reopened before the election
                event = events.next()
                assert event.kind == ELECTED
            assert event.leader is not None
            assert (event.leader.term, event.leader.value) == (leadership.term, b"elsewhere")
        assert observation.reopens >= 1


def test_closing_an_observation_ends_an_iteration_blocked_on_it(
    client: baton_client.Client,
) -> None:
    observation = client.observe(unique("idle"))
    events = Events(observation)
    assert events.next().kind == CURRENT
    observation.close()  # from another thread than the one blocked in next()
    assert events.ended(timeout=5)


async def test_async_candidates_lead_one_at_a_time_and_the_next_is_elected_on_exit(
    async_client: baton_client.AsyncClient,
) -> None:
    name = unique("scheduler")
    terms: list[int] = []
    leading = 0
    overlaps = 0

    async def campaign(owner: str) -> None:
        nonlocal leading, overlaps
        for _ in range(3):
            async with async_client.lead(
                name, owner.encode(), ttl=NEVER_EXPIRES, owner=owner
            ) as leadership:
                leading += 1
                overlaps += leading != 1
                terms.append(leadership.term)
                leader = await async_client.leader(name)
                assert leader is not None
                assert (leader.term, leader.value) == (leadership.term, owner.encode())
                await asyncio.sleep(0.005)
                leading -= 1

    # Six handovers within the patience, with a minute-long ttl: each came from a resignation.
    await asyncio.wait_for(asyncio.gather(campaign("a"), campaign("b")), 30)
    assert overlaps == 0, "two leaders at once"
    assert len(terms) == 6
    assert terms == sorted(set(terms)), "terms must strictly increase"
    assert await async_client.leader(name) is None


async def test_async_loss_is_reported_when_the_leadership_is_resigned_behind_its_back(
    async_client: baton_client.AsyncClient,
) -> None:
    with pytest.raises(baton_client.LeaseLost) as raised:
        async with async_client.lead(unique("billing"), ttl=1) as leadership:
            request = election_pb2.ResignRequest(name=leadership.name, lease_id=leadership.lease_id)
            assert (await async_client.stubs.elections.Resign(request)).resigned
            assert await leadership.wait_lost(timeout=5), "loss not signalled"
    cause = raised.value.__cause__
    assert isinstance(cause, baton_client.FailedPrecondition)
    assert cause.error_reason == baton_client.ErrorReason.LEASE_NOT_HELD


async def test_async_observe_sees_current_elected_proclaimed_resigned_in_order(
    async_client: baton_client.AsyncClient,
) -> None:
    name = unique("leader")
    async with async_client.observe(name) as observation:
        current = await asyncio.wait_for(anext(observation), 10)
        assert (current.kind, current.leader) == (CURRENT, None)
        async with async_client.lead(name, b"v1", ttl=5) as leadership:
            leader = await async_client.leader(name)
            assert leader is not None and (leader.value, leader.term) == (b"v1", leadership.term)
            await leadership.proclaim(b"v2")
            assert leadership.value == b"v2"
        seen = [await asyncio.wait_for(anext(observation), 10) for _ in range(3)]
    assert [event.kind for event in seen] == [ELECTED, PROCLAIMED, RESIGNED]
    leaders = [event.leader for event in seen if event.leader is not None]
    assert [(leader.term, leader.value) for leader in leaders] == [
        (leadership.term, b"v1"),
        (leadership.term, b"v2"),
        (leadership.term, b"v2"),
    ]
    with pytest.raises(StopAsyncIteration):
        await anext(observation)


async def test_async_observe_reopens_when_its_replica_shuts_down(start_baton) -> None:
    first = start_baton()
    second_addr = f"127.0.0.1:{free_port()}"
    name = unique("primary")
    async with (
        baton_client.AsyncClient([first.addr, second_addr]) as client,
        client.observe(name) as observation,
    ):
        assert (await asyncio.wait_for(anext(observation), 10)).kind == CURRENT
        second = start_baton(second_addr)
        await asyncio.to_thread(first.terminate)
        async with (
            baton_client.AsyncClient(second.addr) as other,
            other.lead(name, b"elsewhere", ttl=10) as leadership,
        ):
            event = await asyncio.wait_for(anext(observation), 10)
            assert event.kind == CURRENT, "the first event after reopening is the current state"
            if event.leader is None:  # reopened before the election
                event = await asyncio.wait_for(anext(observation), 10)
                assert event.kind == ELECTED
            assert event.leader is not None and event.leader.term == leadership.term
        assert observation.reopens >= 1


async def test_async_observation_ends_when_its_task_is_cancelled_or_it_is_closed(
    async_client: baton_client.AsyncClient,
) -> None:
    name = unique("idle")
    observation = async_client.observe(name)
    assert (await asyncio.wait_for(anext(observation), 10)).kind == CURRENT
    stream = observation._call
    waiting = asyncio.ensure_future(anext(observation))
    await asyncio.sleep(0.05)  # let it wait on the stream
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert stream.cancelled(), "the stream outlived the task"

    closed = async_client.observe(name)
    seen: list[ElectionEvent] = []

    async def follow() -> None:
        async for event in closed:
            seen.append(event)

    async def first_seen() -> None:
        while not seen:
            await asyncio.sleep(0.01)

    follower = asyncio.create_task(follow())
    await asyncio.wait_for(first_seen(), 10)
    closed.close()
    await asyncio.wait_for(follower, 5)
    assert [event.kind for event in seen] == [CURRENT]
