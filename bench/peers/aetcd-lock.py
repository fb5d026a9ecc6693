"""Lock cycles through aetcd's lock helper (``client.lock(name, ttl)``, ``acquire()`` then
``release()``), the asyncio etcd client, the etcd counterpart of bench/locks/python.py: one
process, one aetcd client, CONCURRENCY callers each cycling on names of their own for DURATION
seconds. Prints one JSON line in bench/locks's shape (client_cpu_us: this process's CPU per
cycle). Run with the venv `make bench` makes from bench/peers/requirements.txt:

    bench/peers/.venv/bin/python bench/peers/aetcd-lock.py --target 127.0.0.1:2379 \\
        --concurrency 16 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from importlib.metadata import version

import aetcd


async def main(target: str, callers: int, seconds: float, ttl: int) -> None:
    host, port = target.rsplit(":", 1)
    run = f"{os.getpid()}-{time.time_ns()}"
    latencies: list[float] = []
    async with aetcd.Client(host=host, port=int(port)) as client:
        cpu_before = time.process_time()
        started = time.perf_counter()
        deadline = started + seconds

        async def cycle(caller: int) -> None:
            i = 0
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                lock = client.lock(f"cycle-{run}-{caller}-{i}".encode(), ttl=ttl)
                # A distinct name is always free: acquire fails only on an error.
                if not await lock.acquire():
                    raise RuntimeError("a free name was not acquired")
                await lock.release()
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
                "system": "aetcd",
                "version": version("aetcd"),
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:2379")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--ttl", type=int, default=10)
    flags = parser.parse_args()
    asyncio.run(main(flags.target, flags.concurrency, flags.duration, flags.ttl))
