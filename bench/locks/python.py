"""Lock cycles through the Python client's own helper (``async with client.lock(...)`` on
the asyncio client), as bench/locks/main.go runs the Go helper and etcd's mutex: one
process, one channel, CONCURRENCY callers each cycling on names of their own for SECONDS.
Prints one JSON line in main.go's shape; a failed call ends it with a traceback.

    clients/python/.venv/bin/python bench/locks/python.py ADDRESS CONCURRENCY SECONDS
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import baton_client

# Long enough that no renewal falls inside a cycle, as in main.go.
TTL = 10.0


async def main(address: str, callers: int, seconds: float) -> None:
    run = f"{os.getpid()}-{time.time_ns()}"
    latencies: list[float] = []
    async with baton_client.AsyncClient(address) as client:
        cpu_before = time.process_time()
        started = time.perf_counter()
        deadline = started + seconds

        async def cycle(caller: int) -> None:
            i = 0
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                async with client.lock(f"cycle-{run}-{caller}-{i}", ttl=TTL):
                    pass
                latencies.append(time.perf_counter() - began)
                i += 1

        await asyncio.gather(*(cycle(caller) for caller in range(callers)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
    latencies.sort()

    def at(q: float) -> int:
        return round(1e6 * latencies[min(len(latencies) - 1, int(q * len(latencies)))])

    print(
        json.dumps(
            {
                "system": "baton-python",
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
    if len(sys.argv) != 4:
        raise SystemExit("usage: python bench/locks/python.py ADDRESS CONCURRENCY SECONDS")
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
