from __future__ import annotations

import collections
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import unique
from harness import Baton, eventually

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
