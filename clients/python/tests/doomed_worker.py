"""Run by test_queue.test_two_workers_one_killed_mid_job as a child process: takes jobs,
says so on stdout, and hangs until it is killed."""

from __future__ import annotations

import sys
import threading

import baton_client


def main(target: str, queue: str) -> None:
    # Its two handlers run at once, and print writes a line's text and its end apart: two
    # unguarded prints could interleave into "started Astarted B".
    printing = threading.Lock()

    def hang(job: baton_client.Job) -> None:
        with printing:
            print(f"started {job.id}", flush=True)
        threading.Event().wait()

    with baton_client.Client(target) as client:
        client.consume(queue, hang, concurrency=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
