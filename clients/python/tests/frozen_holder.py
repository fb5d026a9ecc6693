"""Run by test_lock.test_a_frozen_holder_loses_its_lease_before_another_is_granted as a child
process: holds a 1 s-ttl lock through the helper (sync, or asyncio with ``--asyncio``) and
reports on stdout, in wall-clock seconds, the instant its loss would fire each time that
instant moves (``loss-at T``), and when the loss fires (``lost T``)."""

from __future__ import annotations

import asyncio
import sys
import time

import baton_client


def wall(monotonic_instant: float) -> float:
    return time.time() + (monotonic_instant - time.monotonic())


def report(lease: baton_client.Lease | baton_client.AsyncLease) -> None:
    print(f"loss-at {wall(lease.lost_at):.6f}", flush=True)


def hold(target: str, name: str) -> None:
    with baton_client.Client(target) as client:
        lease = client.acquire(name, ttl=1, owner="frozen", on_renewed=report)
        report(lease)
        print("held", flush=True)
        lease.wait_lost()
        print(f"lost {time.time():.6f}", flush=True)


async def hold_async(target: str, name: str) -> None:
    async with baton_client.AsyncClient(target) as client:
        lease = await client.acquire(name, ttl=1, owner="frozen", on_renewed=report)
        report(lease)
        print("held", flush=True)
        await lease.wait_lost()
        print(f"lost {time.time():.6f}", flush=True)


if __name__ == "__main__":
    if sys.argv[3:] == ["--asyncio"]:
        asyncio.run(hold_async(sys.argv[1], sys.argv[2]))
    else:
        hold(sys.argv[1], sys.argv[2])
