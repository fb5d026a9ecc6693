"""Shared helpers for the deploy tests: paths, `baton --help`, kustomize, the Dockerfile,
and the processes (redis-server, baton, grpc-health-probe) the live tests run."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent
REPO = DEPLOY.parent
KUSTOMIZE_ROOT = DEPLOY / "kubernetes"
BASE = KUSTOMIZE_ROOT / "base"
DEV = KUSTOMIZE_ROOT / "overlays" / "dev"
PROMETHEUS_COMPONENT = KUSTOMIZE_ROOT / "components" / "prometheus-operator"
DOCKERFILE = DEPLOY / "Dockerfile"
DASHBOARD = DEPLOY / "grafana" / "baton-dashboard.json"

BATON_BIN = Path(os.environ.get("BATON_BIN", REPO / "target" / "debug" / "baton"))
TOOLS_BIN = Path(os.environ.get("DEPLOY_BIN", DEPLOY / "bin"))
KUSTOMIZE = TOOLS_BIN / "kustomize"
KUBECHECK = TOOLS_BIN / "kubecheck"
HEALTH_PROBE = TOOLS_BIN / "grpc-health-probe"

# Health names from docs API.md: what baton serves, and what each probe must ask.
SERVICE_HEALTH_NAMES = (
    "baton.v1.RateLimiterService",
    "baton.v1.LockService",
    "baton.v1.CacheService",
    "baton.v1.SessionStoreService",
    "baton.v1.JobQueueService",
)
PROBE_SERVICE = {"startupProbe": "", "readinessProbe": "", "livenessProbe": "liveness"}

# Custom resources: kubecheck has no schema for them, the tests check them structurally.
CRD_KINDS = ("ServiceMonitor", "PrometheusRule")


# --- baton --help -------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    name: str  # without the leading dashes
    env: str | None
    default: str | None
    possible_values: tuple[str, ...] = ()


@functools.cache
def baton_flags() -> dict[str, Flag]:
    """Flags of the real binary, keyed by env name, parsed from `baton --help`."""
    # A BATON_* variable in our own environment would show up in the help text as a value.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    text = subprocess.run(
        [str(BATON_BIN), "--help"], env=env, capture_output=True, text=True, check=True
    ).stdout
    flags: dict[str, Flag] = {}
    blocks = re.split(r"\n(?=\s+(?:-\w, )?--[a-z])", text)
    for block in blocks:
        match = re.match(r"\s+(?:-\w, )?--([a-z0-9-]+)", block)
        if not match:
            continue
        body = " ".join(block.split())
        env_name = re.search(r"\[env: (\w+)=", body)
        default = re.search(r"\[default: ([^\]]*)\]", body)
        values = re.search(r"\[possible values: ([^\]]*)\]", body)
        flag = Flag(
            name=match.group(1),
            env=env_name.group(1) if env_name else None,
            default=default.group(1) if default else None,
            possible_values=tuple(v.strip() for v in values.group(1).split(",")) if values else (),
        )
        if flag.env:
            flags[flag.env] = flag
    if not flags:
        raise AssertionError(f"no BATON_* flags found in `baton --help`:\n{text}")
    return flags


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def parse_duration(text: str) -> float:
    """Seconds in a humantime duration as baton's flags take them ("20s", "1m30s", "500ms")."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"not a duration this test understands: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


# --- kustomize ------------------------------------------------------------------------


@functools.cache
def kustomize_build(directory: Path) -> tuple[dict, ...]:
    result = subprocess.run([str(KUSTOMIZE), "build", str(directory)], capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"kustomize build {directory} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@functools.cache
def build_with_prometheus_component() -> tuple[dict, ...]:
    """The dev overlay plus the Prometheus Operator component, as a user would combine them."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [os.path.relpath(DEV, root)],
                    "components": [os.path.relpath(PROMETHEUS_COMPONENT, root)],
                }
            )
        )
        return kustomize_build(root)


def objects(docs, kind: str) -> list[dict]:
    return [doc for doc in docs if doc.get("kind") == kind]


def one(docs, kind: str, name: str | None = None) -> dict:
    found = [doc for doc in objects(docs, kind) if name is None or doc["metadata"]["name"] == name]
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def generated(docs, kind: str, base_name: str) -> dict:
    """A generated ConfigMap/Secret, whose name kustomize suffixes with a content hash."""
    found = [
        d
        for d in objects(docs, kind)
        if re.fullmatch(re.escape(base_name) + r"(-[a-z0-9]{10})?", d["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one generated {kind} {base_name}"
    return found[0]


def pod_templates(docs):
    """(workload, pod spec) for every Deployment and StatefulSet."""
    for doc in docs:
        if doc.get("kind") in ("Deployment", "StatefulSet"):
            yield doc, doc["spec"]["template"]["spec"]


def baton_container(docs) -> dict:
    deployment = one(docs, "Deployment", "baton")
    containers = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "baton"]
    assert len(containers) == 1
    return containers[0]


def container_port(container: dict, name: str) -> int:
    ports = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == name]
    assert len(ports) == 1, f"container {container['name']} needs exactly one port named {name}"
    return ports[0]


def baton_env(docs) -> dict[str, str]:
    """The BATON_* environment a baton pod sees from its ConfigMap (secrets excluded)."""
    container = baton_container(docs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        env.update(one(docs, "ConfigMap", ref)["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def kustomization_files(directory: Path) -> list[Path]:
    """Every file a kustomization references, recursively through directories it includes."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    files: list[Path] = [directory / "kustomization.yaml"]
    for entry in kustomization.get("resources", []) + kustomization.get("components", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            files.extend(kustomization_files(target))
        else:
            files.append(target)
    for patch in kustomization.get("patches", []) + kustomization.get("patchesStrategicMerge", []):
        path = patch.get("path") if isinstance(patch, dict) else patch
        if path:
            files.append((directory / path).resolve())
    for generator in kustomization.get("configMapGenerator", []) + kustomization.get("secretGenerator", []):
        for entry in generator.get("files", []):
            files.append((directory / entry.split("=", 1)[-1]).resolve())
        for entry in generator.get("envs", []):
            files.append((directory / entry).resolve())
    return files


def parse_env_file(text: str) -> dict[str, str]:
    """A kustomize `envs` file: KEY=VALUE lines, # comments and blank lines."""
    env = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"line {number} is not KEY=VALUE: {line!r}")
        env[key] = value
    return env


# --- Dockerfile -----------------------------------------------------------------------


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def dockerfile_stages(text: str) -> list[Stage]:
    """Instructions per stage, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=words[0], name=name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


# --- processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Polls `condition` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout} s (last: {last!r})")


def redis_command(port: int, *args: str, timeout: float = 1.0) -> str:
    """One RESP command over a fresh connection; returns the reply's first line."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload.encode())
        data = b""
        while not data.endswith(b"\r\n") or data.count(b"\r\n") < _reply_lines(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode()


def _reply_lines(data: bytes) -> int:
    # A bulk array (CONFIG GET) needs its header plus two lines per element.
    if data.startswith(b"*"):
        count = int(data.split(b"\r\n", 1)[0][1:])
        return 1 + 2 * max(count, 0)
    return 1


def config_get(port: int, name: str) -> str:
    reply = redis_command(port, "CONFIG", "GET", name).split("\r\n")
    return reply[4] if len(reply) > 4 else ""


class RedisServer:
    """A redis-server on a free port, as the deploy tests need it: killable and restartable."""

    def __init__(self, workdir: Path, extra_args: list[str] | None = None, port: int | None = None):
        self.port = port or free_port()
        self.workdir = workdir
        self.extra_args = extra_args or ["--save", "", "--appendonly", "no"]
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        args = [
            "redis-server",
            *self.extra_args,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
        ]
        with (self.workdir / f"redis-{self.port}.log").open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._pong, 10, what=f"redis-server on {self.port} answering PING")
        return self

    def _pong(self) -> bool:
        if self.process and self.process.poll() is not None:
            log = (self.workdir / f"redis-{self.port}.log").read_text(errors="replace")
            raise AssertionError(
                f"redis-server exited with {self.process.returncode}: {shlex.join(self.process.args)}\n{log}"
            )
        try:
            return redis_command(self.port, "PING").startswith("+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash would: no goodbye to clients."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, the case that needs timeouts."""
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.kill()  # SIGKILL ends a stopped process too


class Baton:
    """target/debug/baton configured like a pod: the rendered ConfigMap's environment and
    config file, with addresses and the Redis URL given as flags (which beat env)."""

    def __init__(self, workdir: Path, env: dict[str, str], config_toml: str, redis_port: int, extra_args=()):
        self.port = free_port()
        self.log_path = workdir / f"baton-{self.port}.log"
        config_path = workdir / "config.toml"
        config_path.write_text(config_toml)
        process_env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
        process_env.update(env)
        args = [
            str(BATON_BIN),
            "--listen", f"127.0.0.1:{self.port}",
            "--metrics-listen", "127.0.0.1:0",
            "--redis-url", f"redis://127.0.0.1:{redis_port}",
            "--config", str(config_path),
            *extra_args,
        ]  # fmt: skip
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(args, env=process_env, stdout=self._log, stderr=subprocess.STDOUT)
        self.metrics_addr = wait_until(self._serving_metrics_addr, 15, what="baton logging that it serves")

    def _serving_metrics_addr(self) -> str | None:
        if self.process.poll() is not None:
            raise AssertionError(f"baton exited with {self.process.returncode}:\n{self.log()}")
        for line in self.log().splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("message") == "serving":
                    return entry["metrics_addr"]
            elif " serving " in line and "metrics_addr=" in line:
                return re.search(r"metrics_addr\S*?=\S*?([\d.]+:\d+)", line).group(1)
        return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self._log.close()


# grpc-health-probe's exit codes (its README): the kubelet treats only SERVING as success.
PROBE_SERVING, PROBE_CONNECTION_FAILURE, PROBE_RPC_FAILURE, PROBE_UNHEALTHY = 0, 2, 3, 4


def health_probe(address: str, service: str, timeout_seconds: float = 1) -> int:
    """Runs grpc-health-probe as the kubelet's gRPC probe does: a fresh plaintext connection,
    one grpc.health.v1.Health/Check for `service`, bounded by the probe's timeoutSeconds."""
    timeout = f"{timeout_seconds}s"
    result = subprocess.run(
        [
            str(HEALTH_PROBE),
            f"-addr={address}",
            f"-service={service}",
            f"-connect-timeout={timeout}",
            f"-rpc-timeout={timeout}",
        ],
        capture_output=True,
        text=True,
        timeout=timeout_seconds * 2 + 5,
    )
    return result.returncode
