from __future__ import annotations

import collections
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import pytest
from conftest import unique
from harness import Baton, eventually, free_port

import baton_client
from baton_client.pb.baton.v1 import queue_pb2


class Settlements:
    """What consume() reported for each delivery."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.acked: collections.Counter[str] = collections.Counter()
        self.other: list[BaseException] = []

    def __call__(self, job: baton_client.Job, error: BaseException | None) -> None:
        with self.guard:
            if error is None:
                self.acked[job.id] += 1
            else:
                self.other.append(error)


@contextlib.contextmanager
def consuming(
    client: baton_client.Client, queue: str, handler: Callable, concurrency: int = 1, **options
) -> Iterator[None]:
    """Runs consume() in a thread for the block; fails if it raised or did not stop."""
    stop = threading.Event()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            client.consume(queue, handler, concurrency, stop=stop, **options)
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "consume() did not return after stop"
        assert not raised, raised


def job_state(client: baton_client.Client, job_id: str) -> queue_pb2.Job:
    return client.stubs.queue.GetJob(queue_pb2.GetJobRequest(job_id=job_id)).job


def assert_ran_once_or_never_charged(
    client: baton_client.Client, ids: list[str], started: Collection[str]
) -> None:
    """Each job that started SUCCEEDED on its first attempt; every other is READY, uncharged."""
    for job_id in ids:
        job = job_state(client, job_id)
        if job_id in started:
            assert (job.state, job.attempts) == (queue_pb2.JOB_STATE_SUCCEEDED, 1), job
        else:
            assert (job.state, job.attempts) == (queue_pb2.JOB_STATE_READY, 0), job


def test_enqueue_with_dedup_key_answers_the_first_job(client: baton_client.Client) -> None:
    queue = unique("emails")
    first = client.enqueue(queue, b"welcome", dedup_key="signup:42", dedup_ttl=60)
    second = client.enqueue(queue, b"welcome", dedup_key="signup:42", dedup_ttl=60)
    assert not first.duplicate
    assert second.duplicate and second.job_id == first.job_id


def test_consume_acks_success_and_nacks_failure_with_its_text(
    client: baton_client.Client,
) -> None:
    queue = unique("emails")
    backoff = baton_client.RetryBackoff(initial=0.01, max=0.01, multiplier=1)
    enqueued = client.enqueue(queue, b"to:ada", retry_backoff=backoff)
    seen: list[baton_client.Job] = []

    def send(job: baton_client.Job) -> bytes:
        seen.append(job)
        if job.attempt == 1:
            raise ConnectionError("smtp: 421 try again later")
        return b"sent"

    with consuming(client, queue, send):
        eventually(
            lambda: job_state(client, enqueued.job_id).state == queue_pb2.JOB_STATE_SUCCEEDED,
            "job succeeded",
        )
    assert [job.attempt for job in seen] == [1, 2]
    assert seen[1].payload == b"to:ada"
    assert seen[1].last_error == "smtp: 421 try again later"
    assert job_state(client, enqueued.job_id).result == b"sent"


def test_a_long_handler_keeps_its_lease_by_extending_it(client: baton_client.Client) -> None:
    queue = unique("reports")
    enqueued = client.enqueue(queue)
    settled = Settlements()
    deliveries: list[int] = []

    def report(job: baton_client.Job) -> None:
        deliveries.append(job.attempt)
        job.cancelled.wait(2.5)  # 2.5 visibility timeouts

    # Two workers: without extension the lease would expire and the idle one get the job.
    with (
        consuming(client, queue, report, visibility_timeout=1, on_settled=settled),
        consuming(client, queue, report, visibility_timeout=1, on_settled=settled),
    ):
        eventually(lambda: len(settled.acked) == 1, "job acked")
    assert deliveries == [1], "the lease was not extended"
    assert not settled.other
    assert job_state(client, enqueued.job_id).attempts == 1


def test_cancel_job_flags_its_handler_and_it_is_not_acked(client: baton_client.Client) -> None:
    queue = unique("exports")
    enqueued = client.enqueue(queue)
    started = threading.Event()
    reasons: list[str | None] = []
    settled = Settlements()

    def export(job: baton_client.Job) -> None:
        started.set()
        job.cancelled.wait(10)
        reasons.append(job.cancel_reason)

    with consuming(client, queue, export, on_settled=settled):
        assert started.wait(10)
        client.stubs.queue.CancelJob(queue_pb2.CancelJobRequest(job_id=enqueued.job_id))
        eventually(lambda: len(settled.other) == 1, "cancellation reported")
    assert reasons == ["cancelled"]
    assert isinstance(settled.other[0], baton_client.JobCancelled)
    assert not settled.acked
    assert job_state(client, enqueued.job_id).state == queue_pb2.JOB_STATE_CANCELLED


def test_two_workers_one_killed_mid_job(client: baton_client.Client, baton: Baton) -> None:
    queue = unique("emails")
    enqueued = {client.enqueue(queue, f"email-{i}".encode()).job_id for i in range(20)}
    doomed = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("doomed_worker.py")), baton.addr, queue],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert doomed.stdout is not None
        in_doomed_hands = {doomed.stdout.readline().split()[1] for _ in range(2)}
        settled = Settlements()
        attempts: dict[str, int] = {}

        def send(job: baton_client.Job) -> None:
            attempts[job.id] = job.attempt
            time.sleep(0.02)

        with consuming(client, queue, send, 4, on_settled=settled):
            eventually(lambda: len(settled.acked) >= 18, "the survivor acked the other jobs")
            # Killed mid-job: its connection drops and Baton hands its two jobs back at once,
            # long before their 30 s visibility timeout.
            doomed.kill()
            eventually(lambda: len(settled.acked) == 20, "every job acked")
    finally:
        doomed.kill()
        doomed.wait()
    assert set(settled.acked) == enqueued
    assert all(count == 1 for count in settled.acked.values()), settled.acked
    assert not settled.other
    assert {attempts[job_id] for job_id in in_doomed_hands} == {2}


def test_consume_reconnects_after_a_shutdown_and_acks_the_job_in_hand(start_baton) -> None:
    first, second = start_baton(), start_baton()
    queue = unique("emails")
    release = threading.Event()
    started: list[bytes] = []
    settled = Settlements()

    def send(job: baton_client.Job) -> None:
        started.append(job.payload)
        if job.payload == b"in hand":
            release.wait(10)

    # pick_first: the stream is on the first replica until it shuts down.
    with (
        baton_client.Client([first.addr, second.addr], load_balancing="pick_first") as worker,
        baton_client.Client(second.addr) as producer,
        consuming(worker, queue, send, on_settled=settled),
    ):
        producer.enqueue(queue, b"in hand")
        eventually(lambda: started == [b"in hand"], "the first job started")
        first.terminate()  # the stream ends UNAVAILABLE (SHUTTING_DOWN); the lease is kept
        release.set()
        eventually(lambda: len(settled.acked) == 1, "the job in hand acked via the other replica")
        producer.enqueue(queue, b"after")
        eventually(lambda: len(settled.acked) == 2, "the worker reconnected to the other replica")
    assert started == [b"in hand", b"after"]
    assert not settled.other


def test_consume_raises_an_error_no_retry_can_fix(client: baton_client.Client) -> None:
    with pytest.raises(baton_client.InvalidArgument) as raised:
        client.consume("", lambda job: None)
    assert raised.value.field == "queue"


def enqueue_many(client: baton_client.Client, queue: str, count: int, **fields) -> list[str]:
    """Enqueues ``count`` jobs in batches; their ids, in order."""
    ids: list[str] = []
    for start in range(0, count, 500):
        requests = [
            queue_pb2.EnqueueRequest(queue=queue, payload=f"{n}".encode(), **fields)
            for n in range(start, min(start + 500, count))
        ]
        batch = queue_pb2.EnqueueBatchRequest(requests=requests)
        ids.extend(result.job_id for result in client.stubs.queue.EnqueueBatch(batch).results)
    return ids


def test_stop_finishes_100_jobs_in_flight_and_takes_no_more(client: baton_client.Client) -> None:
    queue = unique("thumbnails")
    ids = enqueue_many(client, queue, 250)
    guard = threading.Lock()
    started: dict[str, int] = {}  # job id -> attempt
    settled = Settlements()
    stop = threading.Event()

    def resize(job: baton_client.Job) -> None:
        with guard:
            started[job.id] = job.attempt
        time.sleep(0.3)

    worker = threading.Thread(
        target=client.consume,
        args=(queue, resize, 100),
        kwargs={"stop": stop, "shutdown_grace": 10, "on_settled": settled},
    )
    worker.start()
    eventually(lambda: len(started) == 100, "100 handlers running")
    stop.set()
    stopped_at = time.monotonic()
    worker.join(10)
    took = time.monotonic() - stopped_at
    assert not worker.is_alive(), "consume() did not return after stop"
    print(f"\nstop with 100 jobs in flight: consume() returned after {took:.3f}s")
    # The handlers needed 0.3 s; a whole grace period (10 s) was not waited.
    assert took < 1.5
    assert len(started) == 100, "jobs were started after the stop"
    assert not settled.other, settled.other
    assert set(settled.acked) == set(started)
    assert_ran_once_or_never_charged(client, ids, started)


def test_deliveries_never_started_go_back_without_charging_an_attempt(
    client: baton_client.Client,
) -> None:
    queue = unique("invoices")
    ids = enqueue_many(client, queue, 120)
    guard = threading.Lock()
    started: list[str] = []
    stop = threading.Event()

    def bill(job: baton_client.Job) -> None:
        # The first job decides to stop: the rest of the burst (up to 60 deliveries) arrives
        # or waits for a thread after the decision.
        stop.set()
        with guard:
            started.append(job.id)
        time.sleep(0.2)

    began = time.monotonic()
    client.consume(queue, bill, 60, stop=stop, shutdown_grace=10)
    took = time.monotonic() - began
    assert 1 <= len(started) < 60, started
    assert_ran_once_or_never_charged(client, ids, started)
    print(f"\nhand-back: {len(started)} started, consume() took {took:.3f}s")
    # Baton ended the drained stream itself (no wait for the stop's patience).
    assert took < 1.5


def test_stop_hands_prefetched_jobs_back_uncharged_while_handlers_run_on(
    client: baton_client.Client,
) -> None:
    queue = unique("thumbnails")
    ids = enqueue_many(client, queue, 10)
    concurrency, prefetch = 2, 3
    guard = threading.Lock()
    started: set[str] = set()
    release = threading.Event()
    stop = threading.Event()
    settled = Settlements()

    def render(job: baton_client.Job) -> None:
        with guard:
            started.add(job.id)
        release.wait(20)

    def leased() -> int:
        return [job_state(client, job_id).state for job_id in ids].count(queue_pb2.JOB_STATE_ACTIVE)

    worker = threading.Thread(
        target=client.consume,
        args=(queue, render, concurrency),
        kwargs={"stop": stop, "prefetch": prefetch, "shutdown_grace": 10, "on_settled": settled},
    )
    worker.start()
    try:
        # Two running, three more leased and waiting for a thread.
        eventually(
            lambda: len(started) == concurrency and leased() == concurrency + prefetch,
            "two handlers running and five jobs leased",
        )
        stop.set()
        # The waiting ones go back while the running handlers have not finished.
        eventually(lambda: leased() == concurrency, "only the running jobs still leased", 5)
    finally:
        stop.set()
        release.set()
        worker.join(10)
    assert not worker.is_alive(), "consume() did not return after stop"
    assert len(started) == concurrency, "a prefetched job started after the stop"
    assert sum(settled.acked.values()) == concurrency and not settled.other, settled.other
    assert_ran_once_or_never_charged(client, ids, started)


def test_stop_hands_back_deliveries_of_an_earlier_stream_through_the_open_one(
    start_baton,
) -> None:
    # Stream A (replica 1) delivers 5 jobs, whose handlers run; replica 1 drains, stream B
    # (replica 2) delivers the other 5, which wait for a thread; replica 2 drains and stream
    # C (replica 1, restarted) has nothing to deliver. On stop, B's five go back through C
    # — which itself holds nothing, so Baton ends it as soon as it is drained.
    first_addr, second_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    first, second, bystander = start_baton(first_addr), start_baton(second_addr), start_baton()
    queue = unique("exports")
    release = threading.Event()
    guard = threading.Lock()
    started: list[str] = []
    settled = Settlements()
    stop = threading.Event()

    def export(job: baton_client.Job) -> None:
        with guard:
            started.append(job.id)
        release.wait(20)

    with (
        baton_client.Client([first_addr, second_addr], load_balancing="pick_first") as worker,
        baton_client.Client(bystander.addr) as producer,
    ):
        ids = enqueue_many(producer, queue, 10)

        def active() -> int:
            states = [job_state(producer, job_id).state for job_id in ids]
            return states.count(queue_pb2.JOB_STATE_ACTIVE)

        consumer = threading.Thread(
            target=worker.consume,
            args=(queue, export, 5),
            kwargs={"stop": stop, "on_settled": settled},
        )
        consumer.start()
        try:
            eventually(lambda: len(started) == 5, "stream A's five handlers running")
            first.terminate()
            eventually(lambda: active() == 10, "stream B delivered the other five")
            first = start_baton(first_addr)
            second.terminate()
            eventually(
                lambda: first.gauge("baton_queue_consumers") == 1, "stream C open on replica 1"
            )
            stop.set()
            # B's deliveries are back before the running handlers finish.
            eventually(lambda: active() == 5, "stream B's deliveries handed back", 5)
        finally:
            stop.set()
            release.set()
            consumer.join(10)
        assert not consumer.is_alive(), "consume() did not return after stop"
        jobs = {job_id: job_state(producer, job_id) for job_id in ids}
    assert len(started) == 5, "a delivery of stream B was started after the stop"
    assert not settled.other, settled.other
    assert set(settled.acked) == set(started)
    for job_id, job in jobs.items():
        if job_id in started:
            assert (job.state, job.attempts) == (queue_pb2.JOB_STATE_SUCCEEDED, 1), job
        else:
            assert (job.state, job.attempts) == (queue_pb2.JOB_STATE_READY, 0), job
