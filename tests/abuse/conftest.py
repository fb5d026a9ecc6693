"""Processes for the HTTP/2 abuse tests: a private redis-server, and baton started with the
`[server]` settings each test needs. Both are stopped by pid at teardown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BATON_BIN = Path(os.environ.get("BATON_BIN", REPO / "target" / "debug" / "baton"))
REDIS_SERVER_BIN = os.environ.get("REDIS_SERVER_BIN", "redis-server")

# A debug build starting on a busy 2-core machine: generous.
STARTUP_TIMEOUT = 30.0

ServerSetting = str | int | bool


def free_port() -> int:
    """A port nothing listens on now (never Redis' default 6379, which may be someone else's)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != 6379:
            return port


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM to this one pid, SIGKILL if it has not exited within `grace`."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class Redis:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / f"redis-{self.port}.log"
        args = [
            REDIS_SERVER_BIN,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not redis_ping(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_path.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} did not answer PING")
            time.sleep(0.05)


class Baton:
    """One baton process; `addr` is the gRPC address it logged once listening."""

    def __init__(self, workdir: Path, redis_port: int, server: dict[str, ServerSetting]) -> None:
        if not BATON_BIN.exists():
            raise RuntimeError(f"{BATON_BIN} is missing: cargo build --locked --bin baton")
        self.server = server
        name = f"baton-{len(list(workdir.glob('baton-*.toml')))}"
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(server_config(server))
        self.log_path = workdir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
        args = [
            str(BATON_BIN),
            "--config", str(self.config_path),
            "--listen", "127.0.0.1:0",
            "--metrics-listen", "127.0.0.1:0",
            "--redis-url", f"redis://127.0.0.1:{redis_port}",
            "--log-format", "json",
            "--shutdown-delay", "100ms",
            "--shutdown-grace", "5s",
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.addr = self._wait_for_grpc_addr()

    def _wait_for_grpc_addr(self) -> tuple[str, int]:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.log().splitlines():
                if not line.startswith("{"):
                    continue
                address = json.loads(line).get("grpc_addr")
                if address:
                    host, port = address.rsplit(":", 1)
                    return host, int(port)
            if self.process.poll() is not None:
                raise RuntimeError(f"baton exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"baton logged no grpc_addr within {STARTUP_TIMEOUT} s:\n{self.log()}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)


def server_config(server: dict[str, ServerSetting]) -> str:
    lines = ["[server]"]
    for key, value in server.items():
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, int):
            rendered = str(value)
        else:
            rendered = json.dumps(value)
        lines.append(f"{key} = {rendered}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = Redis(tmp_path_factory.mktemp("redis"))
    yield server
    stop_process(server.process)


@pytest.fixture
def start_baton(redis: Redis, tmp_path: Path) -> Iterator[Callable[..., Baton]]:
    """`start_baton(max_concurrent_streams=10, ...)`: a baton with those `[server]` settings."""
    started: list[Baton] = []

    def start(**server: ServerSetting) -> Baton:
        baton = Baton(tmp_path, redis.port, server)
        started.append(baton)
        return baton

    yield start
    for baton in started:
        baton.stop()
