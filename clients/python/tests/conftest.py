from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from harness import Baton, Redis

import baton_client


@pytest.fixture
def redis() -> Iterator[Redis]:
    server = Redis()
    yield server
    server.stop()


@pytest.fixture
def start_baton(redis: Redis, tmp_path: Path) -> Iterator:
    """Starts baton replicas on the test's redis; all are killed at teardown."""
    started: list[Baton] = []

    def start(listen: str = "127.0.0.1:0", *extra_args: str) -> Baton:
        started.append(Baton(redis, tmp_path, listen, extra_args))
        return started[-1]

    yield start
    for replica in started:
        replica.kill()


@pytest.fixture
def baton(start_baton) -> Baton:
    return start_baton()


@pytest.fixture
def client(baton: Baton) -> Iterator[baton_client.Client]:
    with baton_client.Client(baton.addr) as connected:
        yield connected


@pytest.fixture
async def async_client(baton: Baton) -> AsyncIterator[baton_client.AsyncClient]:
    async with baton_client.AsyncClient(baton.addr) as connected:
        yield connected


def unique(prefix: str) -> str:
    """Names unique per test keep tests independent."""
    return f"{prefix}:{secrets.token_hex(6)}"
