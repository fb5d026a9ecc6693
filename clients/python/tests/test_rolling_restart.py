"""A rolling restart under load: three replicas on one Redis are SIGTERMed and restarted in
turn while lock holders and workers keep going through the client's helpers."""

from __future__ import annotations

import collections
import itertools
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import unique
from harness import free_port

import baton_client
from baton_client.pb.baton.v1 import queue_pb2

JOBS = 2000
WORKERS = 3
HOLDERS = 3
LOCK_TTL = 2.0
HOLD = 2.5  # seconds each holder keeps its lease before releasing it and taking it again
# With the harness's --shutdown-delay 200ms.
GRACE_ARGS = ("--shutdown-grace", "5s")


class Load:
    """What the holders and workers observed."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.runs: collections.Counter[str] = collections.Counter()
        self.run_times: list[float] = []
        self.settle_errors: list[BaseException] = []
        self.lost_leases: list[str] = []
        self.holder_errors: list[BaseException] = []
        self.leases_held = 0
        self.longest_renewal_gap = 0.0
        self.unrenewed_answers = 0
        self.longest_reconnect = 0.0

    def handle(self, job: baton_client.Job) -> None:
        with self.guard:
            self.runs[job.id] += 1
            self.run_times.append(time.monotonic())
        time.sleep(random.uniform(0.005, 0.02))

    def settled(self, job: baton_client.Job, error: BaseException | None) -> None:
        if error is not None:
            with self.guard:
                self.settle_errors.append(error)


def hold_repeatedly(
    client: baton_client.Client, name: str, load: Load, done: threading.Event
) -> None:
    while not done.is_set():
        try:
            lease = client.acquire(name, LOCK_TTL, wait=10, owner=name)
        except Exception as error:  # a failed Acquire is not a lost lease, but is reported
            with load.guard:
                load.holder_errors.append(error)
            continue
        with load.guard:
            load.leases_held += 1
        if lease.wait_lost(HOLD):
            with load.guard:
                load.lost_leases.append(f"{name}: {lease.loss!r}")
        try:
            lease.release()
        except baton_client.LeaseLost as lost:
            with load.guard:
                load.lost_leases.append(f"{name} on release: {lost!r}")
        except Exception as error:
            with load.guard:
                load.holder_errors.append(error)
        with load.guard:
            load.longest_renewal_gap = max(load.longest_renewal_gap, lease.longest_gap)
            load.unrenewed_answers += lease.unrenewed_answers
            load.longest_reconnect = max(load.longest_reconnect, lease.longest_reconnect)


def test_rolling_restart_loses_no_lease_and_runs_no_job_twice(start_baton) -> None:
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    replicas = [start_baton(addr, *GRACE_ARGS) for addr in addrs]
    queue = unique("renders")
    load = Load()
    done = threading.Event()
    stop_workers = threading.Event()
    # Holder n sticks to replica n (pick_first, its replica listed first), so every restart
    # surely cuts a KeepAlive stream; round_robin could leave all of them elsewhere.
    clients = [baton_client.Client(addrs) for _ in range(WORKERS)] + [
        baton_client.Client(addrs[n:] + addrs[:n], load_balancing="pick_first")
        for n in range(HOLDERS)
    ]
    clients.append(baton_client.Client(addrs))
    producer = clients[-1]
    try:
        job_ids: list[str] = []
        for start in range(0, JOBS, 500):
            requests = [
                queue_pb2.EnqueueRequest(queue=queue, payload=b"frame", max_attempts=5)
                for _ in range(start, min(start + 500, JOBS))
            ]
            batch = queue_pb2.EnqueueBatchRequest(requests=requests)
            results = producer.stubs.queue.EnqueueBatch(batch).results
            job_ids.extend(result.job_id for result in results)

        worker_errors: list[BaseException] = []

        def work(client: baton_client.Client) -> None:
            try:
                client.consume(queue, load.handle, 1, stop=stop_workers, on_settled=load.settled)
            except BaseException as error:
                worker_errors.append(error)

        threads = [
            threading.Thread(target=work, args=(clients[n],), daemon=True) for n in range(WORKERS)
        ] + [
            threading.Thread(
                target=hold_repeatedly,
                args=(clients[WORKERS + n], unique(f"camera-{n}"), load, done),
                daemon=True,
            )
            for n in range(HOLDERS)
        ]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # under load before the first restart

        restarts: list[tuple[float, float]] = []  # (SIGTERM sent, restarted), monotonic
        for index, replica in enumerate(replicas):
            sent = time.monotonic()
            replica.terminate()  # SIGTERM; waits for the exit
            replicas[index] = start_baton(addrs[index], *GRACE_ARGS)
            restarts.append((sent, time.monotonic()))
            time.sleep(1.0)
        with load.guard:
            ran_during_restarts = sum(1 for at in load.run_times if at >= restarts[0][0])
            ran_after_last = sum(1 for at in load.run_times if at >= restarts[-1][0])
            left_after_restarts = JOBS - len(load.runs)

        deadline = time.monotonic() + 30
        while len(load.runs) < JOBS and time.monotonic() < deadline:
            time.sleep(0.05)
        elapsed = time.monotonic() - began
        done.set()
        stop_workers.set()
        for thread in threads:
            thread.join(15)
        assert not any(thread.is_alive() for thread in threads), "a worker or holder hung"

        with ThreadPoolExecutor(8) as pool:
            jobs = list(
                pool.map(
                    lambda job_id: (
                        producer.stubs.queue.GetJob(queue_pb2.GetJobRequest(job_id=job_id)).job
                    ),
                    job_ids,
                )
            )
    finally:
        done.set()
        stop_workers.set()
        for client in clients:
            client.close()

    duplicates = sum(count - 1 for count in load.runs.values() if count > 1)
    not_succeeded = [job for job in jobs if job.state != queue_pb2.JOB_STATE_SUCCEEDED]
    charged_twice = [job for job in jobs if job.attempts != 1]
    times = sorted(load.run_times)
    longest_pause = max(
        (later - earlier for earlier, later in itertools.pairwise(times)), default=0.0
    )
    print(
        f"\nrolling restart: {len(load.runs)}/{JOBS} jobs in {elapsed:.1f}s"
        f" ({ran_during_restarts} run during the restarts, {ran_after_last} of them after the"
        f" last SIGTERM, {left_after_restarts} left after them); SIGTERM to restarted:"
        f" {[round(up - sent, 2) for sent, up in restarts]}s;"
        f" duplicates {duplicates}; jobs not SUCCEEDED {len(not_succeeded)}; attempts != 1"
        f" {len(charged_twice)}; leases held {load.leases_held}, lost {len(load.lost_leases)};"
        f" longest KeepAlive reconnect (stream broken to first answer on the next)"
        f" {load.longest_reconnect:.3f}s; longest gap between renewing KeepAlive answers"
        f" {load.longest_renewal_gap:.3f}s (ttl/3 = {LOCK_TTL / 3:.3f}s); heartbeats answered"
        f" unrenewed {load.unrenewed_answers}; longest pause between"
        f" job starts {longest_pause:.3f}s;"
        f" settle errors {len(load.settle_errors)}; holder errors {len(load.holder_errors)}"
    )
    # The load really ran through every restart.
    assert ran_after_last > 0 and left_after_restarts > 0, "the jobs ran out during the restarts"
    assert not worker_errors, worker_errors
    assert not load.lost_leases, load.lost_leases
    assert load.longest_reconnect > 0, "no KeepAlive stream was cut: the restarts missed them"
    assert load.leases_held >= HOLDERS * 2
    assert duplicates == 0, [job_id for job_id, count in load.runs.items() if count > 1]
    assert not not_succeeded, not_succeeded[:3]
    assert not charged_twice, charged_twice[:3]
    assert not load.settle_errors, load.settle_errors[:3]
    assert not load.holder_errors, load.holder_errors[:3]
