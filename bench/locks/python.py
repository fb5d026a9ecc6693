"""Lock cycles through a Python lock helper, as bench/locks/main.go runs the Go helper and
etcd's mutex: one process, one client, CONCURRENCY callers each cycling on names of their own
for SECONDS. SYSTEM is ``baton`` (the default: ``async with client.lock(...)`` on the Python
client's asyncio client, run from the client's venv) or ``aetcd`` (etcd's asyncio client,
``lock(name).acquire()`` + ``release()``, run from the venv `make bench` makes in
bench/peers). Prints one JSON line in main.go's shape; a failed call ends it with a
traceback.

    clients/python/.venv/bin/python bench/locks/python.py ADDRESS CONCURRENCY SECONDS
    bench/peers/.venv/bin/python bench/locks/python.py ADDRESS CONCURRENCY SECONDS aetcd
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import version

# Long enough that no renewal falls inside a cycle, as in main.go.
TTL = 10

# One caller's cycle on a name: take the lock, give it back.
Cycle = Callable[[str], Awaitable[None]]


@asynccontextmanager
async def baton(address: str) -> AsyncIterator[tuple[str, Cycle]]:
    import baton_client

    async with baton_client.AsyncClient(address) as client:

        async def cycle(name: str) -> None:
            async with client.lock(name, ttl=TTL):
                pass

        yield "baton-python", cycle


@asynccontextmanager
async def aetcd(address: str) -> AsyncIterator[tuple[str, Cycle]]:
    import aetcd

    host, port = address.rsplit(":", 1)
    async with aetcd.Client(host=host, port=int(port)) as client:

        async def cycle(name: str) -> None:
            lock = client.lock(name.encode(), ttl=TTL)
            # A distinct name is always free: not acquiring it is a failure.
            if not await lock.acquire():
                raise RuntimeError(f"{name} was not acquired")
            await lock.release()

        yield f"aetcd {version('aetcd')}", cycle


SYSTEMS: dict[str, Callable[[str], AbstractAsyncContextManager[tuple[str, Cycle]]]] = {
    "baton": baton,
    "aetcd": aetcd,
}


async def main(address: str, callers: int, seconds: float, system: str) -> None:
    run = f"{os.getpid()}-{time.time_ns()}"
    latencies: list[float] = []
    async with SYSTEMS[system](address) as (name, cycle):
        cpu_before = time.process_time()
        started = time.perf_counter()
        deadline = started + seconds

        async def cycles(caller: int) -> None:
            i = 0
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                await cycle(f"cycle-{run}-{caller}-{i}")
                latencies.append(time.perf_counter() - began)
                i += 1

        await asyncio.gather(*(cycles(caller) for caller in range(callers)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
    latencies.sort()

    def at(q: float) -> int:
        return round(1e6 * latencies[min(len(latencies) - 1, int(q * len(latencies)))])

    print(
        json.dumps(
            {
                "system": name,
                "mode": "cycles",
                "concurrency": callers,
                "cycles": len(latencies),
                "seconds": round(elapsed, 3),
                "cycles_per_sec": len(latencies) / elapsed,
                "p50_us": at(0.5),
                "p99_us": at(0.99),
                "client_cpu_us": 1e6 * cpu / max(len(latencies), 1),
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5) or (
        len(sys.argv) == 5 and sys.argv[4] not in SYSTEMS
    ):
        raise SystemExit(
            "usage: python bench/locks/python.py ADDRESS CONCURRENCY SECONDS [baton|aetcd]"
        )
    system = sys.argv[4] if len(sys.argv) == 5 else "baton"
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), system))
