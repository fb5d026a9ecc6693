"""A lock around order processing: however many workers pick up order 1234, one processes it
at a time, and the fencing token lets the order store refuse a write from a worker whose
lease was lost (a long GC pause, a network partition) after another took over.

Run against `make run`'s baton (from the repository root, in another terminal)::

    cd clients/python && .venv/bin/python examples/lock_order.py

BATON_TARGET overrides the default localhost:50051.
"""

from __future__ import annotations

import logging
import os
import threading

import baton_client


class StaleToken(Exception):
    """Another worker holds the order now."""


class OrderStore:
    """Stands in for a database row that remembers the highest fencing token it saw."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self.last_token = 0
        self.state = "new"

    def write(self, token: int, state: str) -> None:
        with self._guard:
            if token < self.last_token:
                raise StaleToken(f"token {token} < {self.last_token}")
            self.last_token, self.state = token, state


def process_order(client: baton_client.Client, store: OrderStore, worker: int) -> None:
    with client.lock("order:1234", ttl=10, owner=f"worker-{worker}") as lease:
        # Charge the card, reserve the stock. The lease lives on heartbeats; lease.lost turns
        # True a safety margin (ttl/10) before Baton could give the lock to someone else —
        # also when this process was frozen past that point.
        if lease.wait_lost(0.1):
            return
        store.write(lease.fencing_token, f"processed by worker {worker}")
        logging.info("worker %d processed order 1234 (token %d)", worker, lease.fencing_token)


def main() -> None:
    store = OrderStore()
    with baton_client.Client(os.environ.get("BATON_TARGET", "localhost:50051")) as client:
        workers = [
            threading.Thread(target=process_order, args=(client, store, worker))
            for worker in range(3)
        ]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
    logging.info("order 1234: %s", store.state)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main()
