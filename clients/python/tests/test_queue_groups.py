"""Groups and start limits through the client's own workers: ``enqueue(group=...)``,
``Job.group``, ``configure_queue`` and ``get_queue_config``."""

from __future__ import annotations

import asyncio
import collections
import datetime
import threading
import time

import pytest
from conftest import unique
from harness import eventually
from test_queue import Settlements, consuming

import baton_client
from baton_client import Algorithm, Limit, QueueConfig


class Ledger:
    """Which handlers run, per group, and the most that ever ran at once."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.active: collections.Counter[str] = collections.Counter()
        self.peak: collections.Counter[str] = collections.Counter()
        self.started: dict[str, list[int]] = collections.defaultdict(list)
        self.done: dict[str, list[int]] = collections.defaultdict(list)
        self.overtaken: list[str] = []

    def start(self, job: baton_client.Job) -> int:
        group, _, position = job.payload.decode().partition(":")
        assert job.group == group, (job.group, job.payload)
        with self.guard:
            self.active[group] += 1
            self.peak[group] = max(self.peak[group], self.active[group])
            if int(position) != len(self.done[group]):
                self.overtaken.append(
                    f"{group}: job {position} started with {len(self.done[group])} done"
                )
            self.started[group].append(int(position))
        return int(position)

    def end(self, job: baton_client.Job, succeeded: bool) -> None:
        with self.guard:
            self.active[job.group] -= 1
            if succeeded:
                self.done[job.group].append(int(job.payload.decode().partition(":")[2]))


def enqueue_interleaved(
    client: baton_client.Client, queue: str, groups: list[str], per_group: int, **options
) -> None:
    for position in range(per_group):
        for group in groups:
            client.enqueue(queue, f"{group}:{position}".encode(), group=group, **options)


def test_strict_fifo_groups_run_one_job_at_a_time_in_enqueue_order(
    client: baton_client.Client,
) -> None:
    queue = unique("fifo")
    client.configure_queue(queue, group_fifo=True)
    groups = ["acct-a", "acct-b", "acct-c"]
    # Each group's fourth job fails once: waiting to retry, it still holds its group.
    backoff = baton_client.RetryBackoff(initial=0.05, max=0.05, multiplier=1)
    enqueue_interleaved(client, queue, groups, 10, retry_backoff=backoff)
    ledger = Ledger()
    settled = Settlements()

    def handle(job: baton_client.Job) -> None:
        position = ledger.start(job)
        try:
            time.sleep(0.003)  # some work, so that overlapping jobs would show
            if position == 3 and job.attempt == 1:
                raise RuntimeError("try again")
        except BaseException:
            ledger.end(job, succeeded=False)
            raise
        ledger.end(job, succeeded=True)

    with consuming(client, queue, handle, 8, on_settled=settled):
        eventually(lambda: sum(settled.acked.values()) == 30, "every job acked", 30)
    assert dict(ledger.peak) == dict.fromkeys(groups, 1), "two jobs of a group at once"
    assert not ledger.overtaken
    for group in groups:
        assert ledger.done[group] == list(range(10)), group
        assert ledger.started[group] == [0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9], group
    assert [str(error) for error in settled.other] == ["try again"] * 3


def test_group_concurrency_is_never_exceeded(client: baton_client.Client) -> None:
    queue = unique("tenants")
    client.configure_queue(queue, group_concurrency=2)
    groups = ["t1", "t2", "t3", "t4"]
    enqueue_interleaved(client, queue, groups, 12)
    ledger = Ledger()
    settled = Settlements()

    def handle(job: baton_client.Job) -> None:
        ledger.start(job)
        time.sleep(0.01)  # holds the job, so that a third of its group would overlap
        ledger.end(job, succeeded=True)

    with consuming(client, queue, handle, 16, on_settled=settled):
        eventually(lambda: sum(settled.acked.values()) == 48, "every job acked", 30)
    assert not settled.other
    assert max(ledger.peak.values()) == 2, dict(ledger.peak)
    assert {group: len(done) for group, done in ledger.done.items()} == dict.fromkeys(groups, 12)


async def test_group_concurrency_is_never_exceeded_asyncio(
    async_client: baton_client.AsyncClient,
) -> None:
    queue = unique("tenants")
    await async_client.configure_queue(queue, group_concurrency=2)
    groups = ["t1", "t2", "t3"]
    for position in range(10):
        for group in groups:
            await async_client.enqueue(queue, f"{group}:{position}".encode(), group=group)
    ledger = Ledger()
    acked = 0
    errors: list[BaseException] = []
    all_acked = asyncio.Event()

    async def handle(job: baton_client.AsyncJob) -> None:
        ledger.start(job)
        await asyncio.sleep(0.01)  # holds the job, so that a third of its group would overlap
        ledger.end(job, succeeded=True)

    def settled(job: baton_client.Job, error: BaseException | None) -> None:
        nonlocal acked
        if error is not None:
            errors.append(error)
            return
        acked += 1
        if acked == 30:
            all_acked.set()

    stop = asyncio.Event()
    consumer = asyncio.create_task(
        async_client.consume(queue, handle, 16, stop=stop, on_settled=settled)
    )
    try:
        await asyncio.wait_for(all_acked.wait(), 30)
    finally:
        stop.set()
        await asyncio.wait_for(consumer, 10)
    assert not errors
    assert max(ledger.peak.values()) == 2, dict(ledger.peak)
    assert {group: len(done) for group, done in ledger.done.items()} == dict.fromkeys(groups, 10)


def test_a_start_limit_of_20_per_second_holds_back_the_rest(
    client: baton_client.Client,
) -> None:
    queue = unique("limited")
    limit = Limit(20, 1, Algorithm.SLIDING_WINDOW)
    client.configure_queue(queue, start_limit=limit)
    for position in range(45):
        client.enqueue(queue, f":{position}".encode())
    starts: list[float] = []
    guard = threading.Lock()
    settled = Settlements()

    def handle(job: baton_client.Job) -> None:
        with guard:
            starts.append(time.monotonic())

    with consuming(client, queue, handle, 16, on_settled=settled):
        eventually(lambda: sum(settled.acked.values()) == 45, "every job acked", 30)
    assert not settled.other
    assert len(starts) == 45, "a limited queue holds jobs back rather than handing them back"
    starts.sort()
    # Baton counts starts on its own clock at delivery; the handlers start a little later,
    # unevenly, so the windows checked here are 0.8 s long.
    first_second = [at for at in starts if at - starts[0] < 0.8]
    assert len(first_second) <= 20, f"{len(first_second)} starts in the first second"
    for i, first in enumerate(starts):
        within = sum(1 for at in starts[i:] if at - first < 0.8)
        assert within <= 20, f"{within} starts within 0.8 s from start {i}"
    # 45 starts at 20 per second: the last no sooner than 2 s after the first (less margin).
    assert starts[-1] - starts[0] >= 1.6, f"45 starts in {starts[-1] - starts[0]:.3f}s"


def test_get_queue_config_round_trips(client: baton_client.Client) -> None:
    queue = unique("configured")
    assert client.get_queue_config(queue) == QueueConfig()
    limit = Limit(50, datetime.timedelta(minutes=1), Algorithm.TOKEN_BUCKET, burst=5)
    client.configure_queue(
        queue, group_concurrency=3, start_limit=limit, start_limit_per_group=True
    )
    config = client.get_queue_config(queue)
    assert config == QueueConfig(group_concurrency=3, start_limit=limit, start_limit_per_group=True)
    assert config.start_limit is not None and config.start_limit.period == 60.0
    assert config.start_limit.algorithm is Algorithm.TOKEN_BUCKET
    # The whole configuration is replaced: what is not given is turned off.
    client.configure_queue(queue, group_fifo=True)
    assert client.get_queue_config(queue) == QueueConfig(group_fifo=True)


async def test_get_queue_config_round_trips_asyncio(
    async_client: baton_client.AsyncClient,
) -> None:
    queue = unique("configured")
    assert await async_client.get_queue_config(queue) == QueueConfig()
    limit = Limit(20, 1, Algorithm.SLIDING_WINDOW)
    await async_client.configure_queue(queue, group_fifo=True, start_limit=limit)
    assert await async_client.get_queue_config(queue) == QueueConfig(
        group_fifo=True, start_limit=limit
    )


def test_group_concurrency_over_10000_is_refused_naming_the_field(
    client: baton_client.Client,
) -> None:
    queue = unique("bad")
    with pytest.raises(baton_client.InvalidArgument) as raised:
        client.configure_queue(queue, group_concurrency=10_001)
    assert raised.value.error_reason == baton_client.ErrorReason.INVALID_FIELD
    assert raised.value.field == "config.group_concurrency"
    with pytest.raises(baton_client.InvalidArgument) as raised:
        client.configure_queue(queue, start_limit=Limit(0, 1))
    assert raised.value.field == "config.start_limit.limit"
    assert client.get_queue_config(queue) == QueueConfig(), "nothing was written"
    client.configure_queue(queue, group_concurrency=10_000)
    assert client.get_queue_config(queue).group_concurrency == 10_000


async def test_group_concurrency_over_10000_is_refused_asyncio(
    async_client: baton_client.AsyncClient,
) -> None:
    with pytest.raises(baton_client.InvalidArgument) as raised:
        await async_client.configure_queue(unique("bad"), group_concurrency=10_001)
    assert raised.value.field == "config.group_concurrency"


def test_job_snapshots_carry_their_group(client: baton_client.Client) -> None:
    queue = unique("snapshots")
    grouped = client.enqueue(queue, b"x", group="acct-42")
    ungrouped = client.enqueue(queue, b"y")
    page = client.list_jobs(queue, baton_client.JobState.READY)
    assert {job.id: job.group for job in page.jobs} == {
        grouped.job_id: "acct-42",
        ungrouped.job_id: "",
    }
