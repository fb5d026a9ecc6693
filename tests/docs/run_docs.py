#!/usr/bin/env python3
"""Runs the shell commands of Baton's documentation, in order, against a real baton.

The convention (docs/testing.md, "Docs that run"):

- A fence tagged `sh` is executed. Its commands run in file order in one bash session per
  file (so `LEASE=$(…)` in one block is `$LEASE` in the next), with `set -u -o pipefail`,
  in a fresh temporary directory, against a baton the test starts on free ports with
  docs/examples/config.toml. `localhost:50051`, `localhost:9090` and `localhost:8080` in a
  command are replaced by that baton's gRPC, metrics and dashboard addresses; Redis is
  flushed before each file.
- Every command must exit 0, unless a comment line right above it says
  `# fails: CODE REASON` (gRPC code and ErrorInfo reason, as in docs/errors.md): then it
  must exit with grpcurl's status for CODE and print that reason. `# prints: TEXT` above a
  command asserts that TEXT is in its output.
- A fence tagged `console` is shown, not run, and must follow an HTML comment
  `<!-- not run: why -->`. Fences tagged `bash`, `shell`, `zsh` or not tagged at all are
  refused, so a command cannot escape the test by its spelling. Other tags (toml, yaml,
  sql, text, …) are data.
- Relative links and their #anchors must resolve, and every path the README's Layout
  section names must exist in the repository.
- The reason table of docs/errors.md lists exactly the values of baton.v1.ErrorReason
  (proto/baton/v1/errors.proto) but ERROR_REASON_UNSPECIFIED, and a `# fails:` marker names
  no reason the enum lacks.

Stdlib only. Exit status 0 when every check passed; the summary names each failure.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The documents whose `sh` blocks run, in this order. The client READMEs (clients/*/README.md)
# can join the list once their shell blocks follow the convention.
DOCUMENTS = ["README.md", "docs/*.md"]

RUN_TAG = "sh"
SHOWN_TAG = "console"
REFUSED_TAGS = {"", "bash", "shell", "zsh", "shell-session", "sh-session"}
NOT_RUN_MARKER = re.compile(r"<!--\s*not run:\s*\S.*-->")
CONFIG_MARKER = re.compile(r"<!--\s*docs-test:\s*config\s+(\S+)\s*-->")
FAILS_MARKER = re.compile(r"^#\s*fails:\s*([A-Z_]+)(?:\s+([A-Z][A-Z0-9_]+))?\s*$")
PRINTS_MARKER = re.compile(r"^#\s*prints:\s*(.+?)\s*$")
HEREDOC = re.compile(r"<<(-?)\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")

# grpcurl exits with 64 + the status code and prints the code in grpc-go's spelling.
GRPC_CODES = {
    "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}  # fmt: skip
GRPCURL_EXIT_OFFSET = 64

# The reasons' source, and the document whose table must list each of them.
ERROR_REASON_PROTO = "proto/baton/v1/errors.proto"
ERRORS_DOC = "docs/errors.md"
UNSPECIFIED_REASON = "ERROR_REASON_UNSPECIFIED"

STARTUP_TIMEOUT = 60.0
COMMAND_TIMEOUT = float(os.environ.get("DOCS_TEST_COMMAND_TIMEOUT", "30"))


@dataclass
class Command:
    path: str
    line: int
    text: str
    fails: tuple[str, str | None] | None = None
    prints: list[str] = field(default_factory=list)
    config: str | None = None  # None: the default config


@dataclass
class Document:
    path: str
    commands: list[Command] = field(default_factory=list)
    run_blocks: int = 0
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# Reading the documents


def documents(patterns: list[str]) -> list[str]:
    found: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, root_dir=REPO)) if any(c in pattern for c in "*?[") else [pattern]
        for match in matches:
            if match not in found and (REPO / match).is_file():
                found.append(match)
    return found


def fences(text: str) -> list[tuple[int, str, list[str], str]]:
    """(line of the opening fence, tag, body lines, the last non-blank line before it)."""
    lines = text.split("\n")
    found = []
    index = 0
    previous = ""
    while index < len(lines):
        line = lines[index]
        opening = re.match(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)", line)
        if opening:
            marker = opening.group(2)
            tag = opening.group(3).lower()
            start = index + 1
            body = []
            index += 1
            while index < len(lines) and not lines[index].strip().startswith(marker):
                body.append(lines[index])
                index += 1
            found.append((start, tag, body, previous))
            previous = ""
        elif line.strip():
            previous = line.strip()
        index += 1
    return found


def split_commands(path: str, first_line: int, body: list[str]) -> list[Command]:
    """Cuts a shell block into commands: a command ends at a line that closes every quote,
    continuation and here-document it opened. Comment lines between commands carry the
    `# fails:` / `# prints:` markers of the command after them."""
    commands: list[Command] = []
    current: list[str] = []
    start = 0
    fails = None
    prints: list[str] = []
    single = double = False
    depth = 0  # open `$(` … `)`
    heredocs: list[tuple[str, bool]] = []

    def finish() -> None:
        nonlocal current, fails, prints
        commands.append(Command(path, start, "\n".join(current), fails, prints))
        current, fails, prints = [], None, []

    for offset, line in enumerate(body):
        number = first_line + offset + 1
        if heredocs:
            current.append(line)
            terminator, strip_tabs = heredocs[0]
            if (line.lstrip("\t") if strip_tabs else line) == terminator:
                heredocs.pop(0)
                if not heredocs and depth == 0:
                    finish()
            continue
        if not current:
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                if match := FAILS_MARKER.match(stripped):
                    fails = (match.group(1), match.group(2))
                elif match := PRINTS_MARKER.match(stripped):
                    prints.append(match.group(1))
                continue
            start = number
        current.append(line)
        position = 0
        while position < len(line):
            char = line[position]
            if single:
                single = char != "'"
            elif char == "\\":
                position += 1
            elif line.startswith("$(", position):
                depth += 1
                position += 1
            elif char == ")" and depth:
                depth -= 1
            elif double:
                double = char != '"'
            elif char == "'":
                single = True
            elif char == '"':
                double = True
            elif char == "#" and (position == 0 or line[position - 1].isspace()):
                break
            elif char == "(" and depth:
                depth += 1
            elif line.startswith("<<", position) and not line.startswith("<<<", position):
                if match := HEREDOC.match(line, position):
                    heredocs.append((match.group(3), match.group(1) == "-"))
                    position = match.end() - 1
            position += 1
        if single or double or depth or line.endswith("\\") or heredocs:
            continue
        finish()
    if current:
        commands.append(Command(path, start, "\n".join(current), fails, prints))
    return commands


def read_document(path: str) -> Document:
    document = Document(path)
    text = (REPO / path).read_text()
    for line, tag, body, previous in fences(text):
        where = f"{path}:{line}"
        if tag in REFUSED_TAGS:
            document.problems.append(
                f"{where}: a fence tagged {tag or '(nothing)'!r}: tag shell commands `sh` (run by this "
                f"test) or `console` after `<!-- not run: why -->`, and data by its language"
            )
        elif tag == SHOWN_TAG:
            if not NOT_RUN_MARKER.search(previous):
                document.problems.append(f"{where}: a `console` block must follow `<!-- not run: why -->`")
        elif tag == RUN_TAG:
            document.run_blocks += 1
            commands = split_commands(path, line, body)
            if match := CONFIG_MARKER.search(previous):
                if not (REPO / match.group(1)).is_file():
                    document.problems.append(f"{where}: docs-test config {match.group(1)} does not exist")
                for command in commands:
                    command.config = match.group(1)
            document.commands.extend(commands)
    return document


# ---------------------------------------------------------------------------------------
# Links and the Layout section


def github_anchor(heading: str) -> str:
    text = re.sub(r"`|\*\*|\[|\]\([^)]*\)", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    in_fence = False
    for line in path.read_text().split("\n"):
        if re.match(r"^\s*(`{3,}|~{3,})", line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if match := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            anchor = github_anchor(match.group(1))
            seen = counts.get(anchor, 0)
            counts[anchor] = seen + 1
            anchors.add(anchor if seen == 0 else f"{anchor}-{seen}")
    return anchors


def check_links(path: str) -> list[str]:
    problems = []
    source = REPO / path
    text = source.read_text()
    text = re.sub(r"(?ms)^\s*(`{3,}|~{3,}).*?^\s*\1", "", text)  # no links inside code blocks
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        file_part, _, anchor = target.partition("#")
        resolved = (source.parent / file_part).resolve() if file_part else source
        if not resolved.exists():
            problems.append(f"{path}: link to {target}: {file_part} does not exist")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in anchors_of(resolved):
            problems.append(f"{path}: link to {target}: no heading #{anchor} in {file_part or path}")
    return problems


def check_layout(path: str) -> list[str]:
    """Every path in the README's `## Layout` block exists, and every top-level directory
    in git is named there."""
    text = (REPO / path).read_text()
    section = re.search(r"(?ms)^## Layout\s*$(.*?)(?=^## |\Z)", text)
    if not section:
        return [f"{path}: no `## Layout` section"]
    block = re.search(r"(?ms)^```text\s*$(.*?)^```", section.group(1))
    if not block:
        return [f"{path}: the Layout section has no ```text block"]
    problems = []
    named: set[str] = set()
    for line in block.group(1).strip("\n").split("\n"):
        if not line.strip() or line[0].isspace():
            continue  # a description carried over from the line above
        for token in re.split(r"\s{2,}", line.strip())[0].split():
            token = token.rstrip(",")
            if "/" not in token and "." not in token:
                continue
            named.add(token.split("/")[0])
            if not glob.glob(token.rstrip("/"), root_dir=REPO):
                problems.append(f"{path}: Layout names {token}, which does not exist")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=False)
    if tracked.returncode == 0:
        top = {name.split("/")[0] for name in tracked.stdout.split() if "/" in name and not name.startswith(".")}
        for directory in sorted(top - named):
            problems.append(f"{path}: Layout does not mention the top-level directory {directory}/")
    return problems


# ---------------------------------------------------------------------------------------
# Error reasons


def error_reasons() -> list[str]:
    """The value names of `enum ErrorReason`, read from the proto (stdlib only, so no protoc:
    the names are what the server sends as ErrorInfo.reason)."""
    text = (REPO / ERROR_REASON_PROTO).read_text()
    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.DOTALL)  # a comment may hold braces
    body = re.search(r"\benum\s+ErrorReason\s*\{(.*?)\}", text, re.DOTALL)
    if not body:
        return []
    return re.findall(r"^\s*([A-Z][A-Z0-9_]*)\s*=\s*\d+\s*(?:\[[^\]]*\])?\s*;", body.group(1), re.MULTILINE)


def reason_table(path: str) -> list[tuple[int, str]] | None:
    """(line, reason) for each reason named in the document's table with a `reason` column;
    None when there is no such table. A row whose reason cell is `—` names none."""
    lines = (REPO / path).read_text().split("\n")
    for index, line in enumerate(lines):
        cells = [cell.strip().lower() for cell in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or "reason" not in cells:
            continue
        column = cells.index("reason")
        found: list[tuple[int, str]] = []
        for number, row in enumerate(lines[index + 2 :], start=index + 3):  # past the |---| row
            if not row.lstrip().startswith("|"):
                break
            row_cells = row.strip().strip("|").split("|")
            if column < len(row_cells):
                found.extend((number, name) for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row_cells[column]))
        return found
    return None


def check_reasons(docs: list[Document], reasons: list[str]) -> list[str]:
    """docs/errors.md's table against the enum, both ways, and every `# fails:` reason."""
    if not reasons:
        return [f"{ERROR_REASON_PROTO}: no `enum ErrorReason` with values"]
    known = set(reasons)
    problems = []
    for document in docs:
        for command in document.commands:
            if command.fails and command.fails[1] and command.fails[1] not in known:
                problems.append(
                    f"{command.path}:{command.line}: `# fails:` names the reason {command.fails[1]}, "
                    f"which {ERROR_REASON_PROTO} does not define"
                )
        if document.path != ERRORS_DOC:
            continue
        table = reason_table(ERRORS_DOC)
        if table is None:
            problems.append(f"{ERRORS_DOC}: no table with a `reason` column")
            continue
        listed = {name for _, name in table}
        for line, name in table:
            if name == UNSPECIFIED_REASON:
                problems.append(f"{ERRORS_DOC}:{line}: {name} is never sent: it has no row")
            elif name not in known:
                problems.append(
                    f"{ERRORS_DOC}:{line}: the reason table names {name}, which {ERROR_REASON_PROTO} does not define"
                )
        for name in reasons:
            if name != UNSPECIFIED_REASON and name not in listed:
                problems.append(f"{ERRORS_DOC}: the reason table has no row for {name} ({ERROR_REASON_PROTO})")
    return problems


# ---------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in (6379, 50051, 9090, 8080):
            return port


def redis_command(port: int, *args: str) -> bytes:
    request = f"*{len(args)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(request)
        return sock.recv(256)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class Redis:
    """A private redis-server on a free 127.0.0.1 port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "redis.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(workdir)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                if redis_command(self.port, "PING").startswith(b"+PONG"):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server did not start: {self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    def flush(self) -> None:
        redis_command(self.port, "FLUSHALL")

    def stop(self) -> None:
        stop(self.process)


class Baton:
    """One baton on free 127.0.0.1 ports, with one config file."""

    def __init__(self, workdir: Path, baton_bin: Path, config: Path, redis: Redis) -> None:
        self.log = workdir / f"baton-{config.stem}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(baton_bin), "--config", str(config), "--listen", "127.0.0.1:0",
                 "--metrics-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--redis-url", f"redis://127.0.0.1:{redis.port}",
                 "--log-format", "json", "--shutdown-delay", "0s", "--shutdown-grace", "5s"],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.grpc_addr, self.metrics_addr, self.admin_addr = self._addresses()

    def _addresses(self) -> tuple[str, str, str]:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            found: dict[str, str] = {}
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    fields = json.loads(line)
                    found.update(fields.get("fields", fields))
            if "grpc_addr" in found and "admin_addr" in found:
                return found["grpc_addr"], found["metrics_addr"], found["admin_addr"]
            if self.process.poll() is not None:
                raise RuntimeError(f"baton exited with {self.process.returncode}:\n{self.tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"baton logged no grpc_addr within {STARTUP_TIMEOUT} s:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def localise(self, text: str) -> str:
        """The docs' addresses become this baton's."""
        return (
            text.replace("localhost:50051", self.grpc_addr)
            .replace("localhost:9090", self.metrics_addr)
            .replace("localhost:8080", self.admin_addr)
        )

    def stop(self) -> None:
        stop(self.process)


class Shell:
    """One bash session per document: state carries from command to command."""

    def __init__(self, workdir: Path, tools: list[Path]) -> None:
        self.workdir = workdir
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(t) for t in tools] + [env.get("PATH", "")])
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.count = 0
        self._send("set -u -o pipefail\n")

    def _send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode())
        self.process.stdin.flush()

    def run(self, text: str, timeout: float) -> tuple[int | None, str]:
        """(exit status or None when it timed out or the shell died, output)."""
        self.count += 1
        script = self.workdir / f".docs-test-{self.count}.sh"
        output = self.workdir / f".docs-test-{self.count}.out"
        script.write_text(text + "\n")
        self._send(f"source {script} > {output} 2>&1 < /dev/null; echo \"::docs-test:: $?\"\n")
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        buffered = b""
        status: int | None = None
        while status is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([self.process.stdout], [], [], remaining)
            if not ready:
                break
            chunk = os.read(self.process.stdout.fileno(), 4096)
            if not chunk:
                break
            buffered += chunk
            if match := re.search(rb"::docs-test:: (\d+)\n", buffered):
                status = int(match.group(1))
        printed = output.read_text(errors="replace") if output.exists() else ""
        extra = re.sub(rb"::docs-test:: \d+\n", b"", buffered).decode(errors="replace")
        return status, printed + extra

    def close(self) -> None:
        """Ends the session and everything it started (background streams included)."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


# ---------------------------------------------------------------------------------------
# Running


def verdict(command: Command, status: int | None, output: str) -> str | None:
    """None when the command did what the document says, else why not."""
    if status is None:
        return f"no answer within {COMMAND_TIMEOUT:g} s (a stream left in the foreground?), or the shell died"
    if command.fails:
        code, reason = command.fails
        if code not in GRPC_CODES:
            return f"`# fails: {code}` names no gRPC code"
        spelled = "".join(part.capitalize() for part in code.split("_"))
        expected = GRPCURL_EXIT_OFFSET + GRPC_CODES[code]
        if status != expected:
            return f"expected to fail with {code} (exit {expected}), exited {status}"
        if f"Code: {spelled}" not in output:
            return f"expected `Code: {spelled}` in the output"
        if reason and f'"reason": "{reason}"' not in output:
            return f'expected ErrorInfo reason "{reason}" in the output'
    elif status != 0:
        return f"exited {status}"
    for text in command.prints:
        if text not in output:
            return f"expected {text!r} in the output"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baton", type=Path, default=REPO / "target" / "debug" / "baton")
    parser.add_argument("--config", type=Path, default=REPO / "docs" / "examples" / "config.toml")
    parser.add_argument("--tools", type=Path, action="append", default=[], help="directories put first on PATH")
    parser.add_argument("--verbose", "-v", action="store_true", help="print every command and its output")
    parser.add_argument("documents", nargs="*", help=f"default: {' '.join(DOCUMENTS)}")
    args = parser.parse_args()

    started = time.monotonic()
    paths = documents(args.documents or DOCUMENTS)
    docs = [read_document(path) for path in paths]
    problems = [problem for document in docs for problem in document.problems]
    for path in paths:
        problems.extend(check_links(path))
    if "README.md" in paths:
        problems.extend(check_layout("README.md"))
    problems.extend(check_reasons(docs, error_reasons()))

    for problem in problems:
        print(f"FAIL {problem}")

    tools = [tool.resolve() for tool in args.tools]
    missing = []
    for program in ("grpcurl", "jq", "curl", "redis-server", "bash"):
        on_path = os.pathsep.join([str(t) for t in tools] + [os.environ.get("PATH", "")])
        if not shutil.which(program, path=on_path):
            missing.append(f"{program} is not installed (make docs-test installs it)")
    if not args.baton.exists():
        missing.append(f"{args.baton} is missing: cargo build --locked --bin baton")
    if missing:
        print("\n".join(f"FAIL {problem}" for problem in missing))
        return 1

    ran = 0
    with tempfile.TemporaryDirectory(prefix="baton-docs-test-") as scratch:
        scratch_dir = Path(scratch)
        redis = Redis(scratch_dir)
        batons: dict[str | None, Baton] = {}

        def baton_for(config: str | None) -> Baton:
            if config not in batons:
                path = REPO / config if config else args.config
                batons[config] = Baton(scratch_dir, args.baton, path, redis)
            return batons[config]

        try:
            for document in docs:
                if not document.commands:
                    continue
                redis.flush()
                workdir = scratch_dir / document.path.replace("/", "_")
                workdir.mkdir()
                shell = Shell(workdir, tools)
                try:
                    for command in document.commands:
                        baton = baton_for(command.config)
                        status, output = shell.run(baton.localise(command.text), COMMAND_TIMEOUT)
                        ran += 1
                        why = verdict(command, status, output)
                        if args.verbose or why:
                            print(f"$ {command.path}:{command.line}\n{command.text}\n{output.rstrip()}\n")
                        if why:
                            problems.append(f"{command.path}:{command.line}: {why}")
                            print(f"FAIL {command.path}:{command.line}: {why}")
                            print(f"  (baton's last log lines)\n{baton.tail()}\n")
                            break  # the commands after it may depend on it
                finally:
                    shell.close()
            for baton in batons.values():
                if baton.process.poll() is not None:
                    problems.append(f"baton exited with {baton.process.returncode} during the run:\n{baton.tail()}")
        finally:
            for baton in batons.values():
                baton.stop()
            redis.stop()

    expected = sum(len(document.commands) for document in docs)
    blocks = sum(document.run_blocks for document in docs)
    if ran != expected and not problems:
        problems.append(f"ran {ran} of {expected} commands")
    elapsed = time.monotonic() - started
    per_file = ", ".join(f"{d.path} {len(d.commands)}" for d in docs if d.commands)
    print(
        f"docs-test: {ran} of {expected} commands from {blocks} sh blocks in {len(paths)} documents "
        f"({per_file}) in {elapsed:.1f} s"
    )
    if problems:
        print(f"docs-test: {len(problems)} failure(s)")
        for problem in problems:
            print(f"  {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
