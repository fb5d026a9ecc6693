"""An email job queue with a worker: the sign-up handler enqueues a welcome email (once per
user, thanks to the dedup key, however often the request is retried), and workers send them,
retried with backoff when the mail server fails.

Run against `make run`'s baton (from the repository root, in other terminals)::

    cd clients/python && .venv/bin/python examples/email_queue.py worker   # Ctrl-C stops it
    cd clients/python && .venv/bin/python examples/email_queue.py enqueue ada@example.com

BATON_TARGET overrides the default localhost:50051.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import threading

import baton_client

QUEUE = "emails"


def enqueue(client: baton_client.Client, address: str) -> None:
    job = client.enqueue(
        QUEUE,
        address.encode(),
        type="welcome",
        dedup_key=f"welcome:{address}",
        dedup_ttl=24 * 3600,
        max_attempts=5,
        retry_backoff=baton_client.RetryBackoff(initial=1, max=60),
    )
    logging.info("job %s (duplicate: %s)", job.job_id, job.duplicate)


def send_welcome(job: baton_client.Job) -> bytes:
    if random.random() < 0.3:
        raise ConnectionError("smtp: 421 service not available")  # nacked: retried later
    if job.cancelled.wait(0.2):  # cancelled, or shutting down: the job is not acked
        return b""
    return f"sent to {job.payload.decode()}".encode()


def work(client: baton_client.Client) -> None:
    # SIGTERM (Kubernetes) or Ctrl-C: Baton delivers no more, the jobs in hand that never
    # started go back to the queue at once (no attempt used up), and the running ones get
    # 10 s to finish and be acked; consume() returns as soon as they are done.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    logging.info("worker ready")
    client.consume(
        QUEUE,
        send_welcome,
        concurrency=4,
        stop=stop,
        shutdown_grace=10,
        on_settled=lambda job, error: logging.info(
            "job %s attempt %d: %s", job.id, job.attempt, error or "acked"
        ),
    )


def main() -> None:
    with baton_client.Client(os.environ.get("BATON_TARGET", "localhost:50051")) as client:
        if sys.argv[1:2] == ["worker"]:
            work(client)
        elif sys.argv[1:2] == ["enqueue"] and len(sys.argv) == 3:
            enqueue(client, sys.argv[2])
        else:
            sys.exit(f"usage: {sys.argv[0]} worker | enqueue ADDRESS")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main()
