"""End-to-end jobs/s through the Python client's own worker: a few producers enqueue the jobs
with EnqueueBatch while one worker consumes them with a handler that does nothing; the clock
runs from the first enqueue to the last ack. Prints one JSON line. The asyncio worker
(``AsyncClient.consume``) by default; ``PYTHON_WORKER=threads`` measures the sync one
(``Client.consume``, one thread per unit of concurrency). See README.md.

    clients/python/.venv/bin/python bench/workers/python.py \
        ADDRESS [QUEUE] [JOBS] [CONCURRENCY] [BATCH]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time

import baton_client
from baton_client.pb.baton.v1 import queue_pb2
from baton_client.queue import DEFAULT_ACK_BATCH_SIZE

PRODUCERS = 4
PATIENCE = 300.0
PAYLOAD = b"j" * 64


def positive(index: int, fallback: int) -> int:
    if len(sys.argv) <= index or not sys.argv[index]:
        return fallback
    value = int(sys.argv[index])
    if value <= 0:
        raise SystemExit(f"argument {index}: want a positive integer, got {sys.argv[index]!r}")
    return value


def shares(jobs: int, batch: int) -> list[list[int]]:
    """Each producer's batch sizes."""
    out = []
    for p in range(PRODUCERS):
        share = jobs // PRODUCERS + (1 if p < jobs % PRODUCERS else 0)
        out.append([min(batch, share - start) for start in range(0, share, batch)])
    return out


def request(queue: str, n: int) -> queue_pb2.EnqueueBatchRequest:
    return queue_pb2.EnqueueBatchRequest(
        requests=[queue_pb2.EnqueueRequest(queue=queue, payload=PAYLOAD) for _ in range(n)]
    )


class Tally:
    """Settlements so far. As bench/peers/bullmq.mjs measures BullMQ, the clock starts once
    the worker has acked 4 × its concurrency (its ramp-up): ``warmed_at``."""

    def __init__(self, jobs: int, concurrency: int) -> None:
        self.jobs, self.acked, self.failed = jobs, 0, 0
        self.warmup = min(4 * concurrency, jobs // 2)
        self.warmed_at: float | None = None
        self.lock = threading.Lock()

    def settled(self, job: baton_client.Job, error: BaseException | None) -> bool:
        """Counts a settlement; True for the last ack."""
        with self.lock:
            if error is not None:
                self.failed += 1
                if self.failed <= 5:
                    print(f"job {job.id}: {error}", file=sys.stderr)
                return False
            self.acked += 1
            if self.acked == self.warmup:
                self.warmed_at = time.perf_counter()
            return self.acked == self.jobs


async def run_asyncio(
    addr: str,
    queue: str,
    jobs: int,
    concurrency: int,
    batch: int,
    options: dict[str, int],
) -> tuple[float, Tally]:
    tally = Tally(jobs, concurrency)
    async with baton_client.AsyncClient(addr) as client:
        done, stop = asyncio.Event(), asyncio.Event()

        async def handle(job: baton_client.Job) -> None:
            return None

        def settled(job: baton_client.Job, error: BaseException | None) -> None:
            if tally.settled(job, error):
                done.set()

        worker = asyncio.create_task(
            client.consume(queue, handle, concurrency, stop=stop, on_settled=settled, **options)
        )

        async def produce(sizes: list[int]) -> None:
            for n in sizes:
                await client.stubs.queue.EnqueueBatch(request(queue, n))

        started = time.perf_counter()
        await asyncio.gather(*(produce(sizes) for sizes in shares(jobs, batch)))
        waiting = asyncio.create_task(done.wait())
        await asyncio.wait({waiting, worker}, timeout=PATIENCE, return_when=asyncio.FIRST_COMPLETED)
        seconds = time.perf_counter() - (tally.warmed_at or started)
        waiting.cancel()
        stop.set()
        await worker
    return seconds, tally


def run_threads(
    addr: str,
    queue: str,
    jobs: int,
    concurrency: int,
    batch: int,
    options: dict[str, int],
) -> tuple[float, Tally]:
    tally = Tally(jobs, concurrency)
    done, stop = threading.Event(), threading.Event()
    with baton_client.Client(addr) as client:

        def settled(job: baton_client.Job, error: BaseException | None) -> None:
            if tally.settled(job, error):
                done.set()

        worker = threading.Thread(
            target=client.consume,
            args=(queue, lambda job: None, concurrency),
            kwargs={"stop": stop, "on_settled": settled, **options},
            daemon=True,
        )
        worker.start()
        started = time.perf_counter()
        producers = [
            threading.Thread(
                target=lambda sizes=sizes: [
                    client.stubs.queue.EnqueueBatch(request(queue, n)) for n in sizes
                ]
            )
            for sizes in shares(jobs, batch)
        ]
        for producer in producers:
            producer.start()
        for producer in producers:
            producer.join()
        done.wait(PATIENCE)
        seconds = time.perf_counter() - (tally.warmed_at or started)
        stop.set()
        worker.join(60)
    return seconds, tally


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    addr = sys.argv[1]
    queue = f"bench-workers-python-{os.getpid()}"
    if len(sys.argv) > 2 and sys.argv[2]:
        queue = sys.argv[2]
    jobs, concurrency, batch = positive(3, 20_000), positive(4, 256), positive(5, 100)
    # ACK_BATCH_SIZE=0 measures the worker without ack coalescing (one Ack per job);
    # PREFETCH leases that many jobs beyond the concurrency.
    options = {
        "ack_batch_size": int(os.environ.get("ACK_BATCH_SIZE", DEFAULT_ACK_BATCH_SIZE)),
        "prefetch": int(os.environ.get("PREFETCH", "0")),
    }
    kind = os.environ.get("PYTHON_WORKER", "asyncio")
    if kind == "asyncio":
        seconds, tally = asyncio.run(run_asyncio(addr, queue, jobs, concurrency, batch, options))
    elif kind == "threads":
        seconds, tally = run_threads(addr, queue, jobs, concurrency, batch, options)
    else:
        raise SystemExit(f"PYTHON_WORKER: asyncio or threads, not {kind!r}")
    if tally.acked != jobs or tally.failed:
        raise SystemExit(f"bench/workers/python: {tally.acked}/{jobs} acked, {tally.failed} failed")
    print(
        json.dumps(
            {
                "client": "python",
                "jobs": jobs,
                "warmup": tally.warmup,
                "seconds": round(seconds, 3),
                "jobs_per_s": round((jobs - tally.warmup) / seconds),
                "concurrency": concurrency,
                **options,
                "worker": kind,
            },
            separators=(",", ":"),
        )
    )


if __name__ == "__main__":
    main()
