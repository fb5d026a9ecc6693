"""Real redis-server and baton processes for the client's tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
START_PATIENCE = 30.0
_GRPC_ADDR = re.compile(rb'"grpc_addr":"([^"]+)"')
_METRICS_ADDR = re.compile(rb'"metrics_addr":"([^"]+)"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def eventually(condition: Callable[[], bool], what: str, patience: float = 10.0) -> None:
    deadline = time.monotonic() + patience
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {patience}s")
        time.sleep(0.02)


def _stop(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if process.poll() is None:
        process.send_signal(sig)
    process.wait(timeout=30)


class Redis:
    """A private, non-persistent redis-server on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_PATIENCE
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGKILL: an outage, not a shutdown."""
        _stop(self.process, signal.SIGKILL)


def baton_binary() -> str:
    """$BATON_BIN, else <repo>/target/debug/baton, built if missing."""
    if configured := os.environ.get("BATON_BIN"):
        return configured
    binary = REPO / "target" / "debug" / "baton"
    if not binary.exists():
        subprocess.run(["cargo", "build", "--bin", "baton"], cwd=REPO, check=True)
    return str(binary)


class Baton:
    """One baton server process; ``addr`` comes from its JSON "serving" log line."""

    def __init__(
        self,
        redis: Redis,
        log_dir: Path,
        listen: str = "127.0.0.1:0",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        # A file, not a pipe: a pipe nobody drains would block baton once full.
        self.log_path = log_dir / f"baton-{time.monotonic_ns()}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    baton_binary(),
                    "--listen",
                    listen,
                    "--metrics-listen",
                    "127.0.0.1:0",
                    "--log-format",
                    "json",
                    "--redis-url",
                    redis.url,
                    "--shutdown-delay",
                    "200ms",
                    *extra_args,
                ],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + START_PATIENCE
        while True:
            written = self.log_path.read_bytes()
            match, metrics = _GRPC_ADDR.search(written), _METRICS_ADDR.search(written)
            if match and metrics:
                self.addr = match.group(1).decode()
                self.metrics_addr = metrics.group(1).decode()
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"baton did not start:\n{self.log_path.read_text()}")
            time.sleep(0.02)

    def gauge(self, name: str) -> float:
        """The value of an unlabelled gauge on the replica's /metrics (0 when absent)."""
        with urllib.request.urlopen(f"http://{self.metrics_addr}/metrics", timeout=5) as page:
            for line in page.read().decode().splitlines():
                if line.startswith(f"{name} "):
                    return float(line.split()[1])
        return 0.0

    def counter(self, name: str, **labels: str) -> float:
        """The sum of the samples of the counter ``name`` on the replica's /metrics whose
        labels include ``labels`` (0 when there are none)."""
        with urllib.request.urlopen(f"http://{self.metrics_addr}/metrics", timeout=5) as page:
            lines = page.read().decode().splitlines()
        total = 0.0
        for line in lines:
            sample, _, value = line.partition(" ")
            if sample != name and not sample.startswith(name + "{"):
                continue
            if all(f'{label}="{want}"' in sample for label, want in labels.items()) and value:
                total += float(value.split()[0])  # then any exemplar
        return total

    def terminate(self) -> None:
        """SIGTERM: a graceful shutdown; waits for the exit."""
        _stop(self.process, signal.SIGTERM)

    def kill(self) -> None:
        _stop(self.process, signal.SIGKILL)
