"""Each client installs the way its README's "Install" section says, outside the repository.

For each client, the ```sh blocks of that section run verbatim in a new project in a temporary
directory, with /path/to/baton meaning a fresh copy of this checkout (its tracked and
not-ignored files: what a clone holds, without node_modules, dist/ or .venv). A small program
in that project (consumers/) then makes one real rate-limit check against the redis-server and
baton processes this module starts (the Python client tests' harness), and says where it loaded
the client from. Everything the installs fetch comes from the package registries.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONSUMERS = HERE / "consumers"
PLACEHOLDER = "/path/to/baton"
# Cold package caches (grpcio, the Go module graph, npm's tree) take minutes, not hours.
COMMAND_PATIENCE = 900

sys.path.insert(0, str(REPO / "clients" / "python" / "tests"))
from harness import Baton, Redis  # noqa: E402


@pytest.fixture(scope="module")
def baton_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis = Redis()
    try:
        server = Baton(redis, tmp_path_factory.mktemp("baton-log"))
        try:
            yield server.addr
        finally:
            server.kill()
    finally:
        redis.stop()


def install_blocks(client: str) -> list[str]:
    """The ```sh blocks of clients/<client>/README.md's "## Install" section, in order."""
    lines = (REPO / "clients" / client / "README.md").read_text().splitlines()
    start = lines.index("## Install") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    blocks: list[str] = []
    current: list[str] | None = None
    for line in lines[start:end]:
        if current is None and line == "```sh":
            current = []
        elif current is not None and line == "```":
            blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    assert blocks, f"clients/{client}/README.md has no ```sh block under ## Install"
    return blocks


def fresh_checkout(client: str, root: Path) -> Path:
    """Copies clients/<client> as a clone would have it to <root>/clients/<client>."""
    # Tracked files and new ones not ignored: the work tree as it would be committed.
    ls_files = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    listed = subprocess.run(
        [*ls_files, "--", f"clients/{client}"], cwd=REPO, check=True, capture_output=True
    )
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the work tree is not in a clone
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    return root / "clients" / client


def tree(directory: Path) -> set[str]:
    return {str(path.relative_to(directory)) for path in directory.rglob("*")}


def environment(**extra: str) -> dict[str, str]:
    """The caller's environment without the repository's Python venv, npm quiet."""
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    env.update(
        npm_config_fund="false", npm_config_audit="false", npm_config_update_notifier="false"
    )
    env.update(extra)
    return env


def run(command: list[str] | str, cwd: Path, env: Mapping[str, str]) -> str:
    """Runs a command (a string: a bash script, -e), failing with its output."""
    argv = ["bash", "-euo", "pipefail", "-c", command] if isinstance(command, str) else command
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_PATIENCE,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{command!r} in {cwd} exited {done.returncode}:\n{output}"
    return output


def run_install(block: str, root: Path, cwd: Path, env: Mapping[str, str]) -> None:
    print(f"$ # in {cwd}\n{block}")
    run(block.replace(PLACEHOLDER, str(root)), cwd, env)


def loaded_from(output: str) -> Path:
    line = next(line for line in output.splitlines() if line.startswith("loaded from "))
    return Path(line.removeprefix("loaded from "))


def test_go(baton_target: str, tmp_path: Path) -> None:
    root = tmp_path / "baton"
    checkout = fresh_checkout("go", root)
    before = tree(checkout)
    project = tmp_path / "app"
    project.mkdir()
    env = environment(BATON_TARGET=baton_target)
    run(["go", "mod", "init", "example.com/app"], project, env)
    shutil.copy(CONSUMERS / "main.go", project / "main.go")

    for block in install_blocks("go"):
        run_install(block, root, project, env)

    run(["go", "vet", "."], project, env)
    assert "allowed, then limited" in run(["go", "run", "."], project, env)
    replacement = run(
        ["go", "list", "-m", "-f", "{{.Replace.Dir}}", "github.com/baton-dev/baton/clients/go"],
        project,
        env,
    )
    assert Path(replacement.strip()) == checkout
    assert tree(checkout) == before, "the install wrote into the checkout"


def test_python(baton_target: str, tmp_path: Path) -> None:
    root = tmp_path / "baton"
    checkout = fresh_checkout("python", root)
    before = tree(checkout)
    project = tmp_path / "app"
    project.mkdir()
    env = environment(BATON_TARGET=baton_target)

    for block in install_blocks("python"):
        run_install(block, root, project, env)

    shutil.copy(CONSUMERS / "ratelimit.py", project / "ratelimit.py")
    output = run([str(project / ".venv" / "bin" / "python"), "ratelimit.py"], project, env)
    assert "allowed, then limited" in output
    assert loaded_from(output).is_relative_to(project / ".venv"), output
    # setuptools used to leave build/ and src/baton_client.egg-info here.
    assert tree(checkout) == before, "the install wrote into the checkout"


def node_project(directory: Path) -> Path:
    directory.mkdir()
    (directory / "package.json").write_text(json.dumps({"name": directory.name, "private": True}))
    for name in ("ratelimit.mjs", "ratelimit.cjs"):
        shutil.copy(CONSUMERS / name, directory / name)
    return directory


def run_node_consumers(project: Path, env: Mapping[str, str]) -> list[Path]:
    """Runs the ES module and CommonJS programs; where each loaded the client from."""
    loaded = []
    for program in ("ratelimit.mjs", "ratelimit.cjs"):
        output = run(["node", program], project, env)
        assert "allowed, then limited" in output, output
        loaded.append(loaded_from(output))
    return loaded


def test_node(baton_target: str, tmp_path: Path) -> None:
    root = tmp_path / "baton"
    checkout = fresh_checkout("node", root)
    env = environment(BATON_TARGET=baton_target)
    blocks = install_blocks("node")
    assert len(blocks) == 3, "expected: build and pack in the checkout; install the tarball; link"
    build, install_tarball, install_link = blocks

    run_install(build, root, tmp_path, env)
    tarballs = list(checkout.glob("*.tgz"))
    assert [tarball.name for tarball in tarballs] == ["baton-dev-baton-client-0.1.0.tgz"]
    with tarfile.open(tarballs[0]) as packed:
        shipped = {name.removeprefix("package/") for name in packed.getnames()}
    for module in ("index", "express-session"):
        for build_dir in ("esm", "cjs"):
            assert {f"dist/{build_dir}/{module}.js", f"dist/{build_dir}/{module}.d.ts"} <= shipped
    assert "dist/cjs/package.json" in shipped
    assert not {name for name in shipped if name.startswith(("test/", "dist/dev/"))}

    # The tarball: a copy with its own dependencies, as a published package installs.
    copied = node_project(tmp_path / "app-tarball")
    run_install(install_tarball, root, copied, env)
    manifest = json.loads((checkout / "package.json").read_text())
    dev = manifest["devDependencies"]
    # The optional peer for the /express-session entry point, and a TypeScript consumer's
    # tools, at the ranges the client itself is built and tested with.
    run(["npm", "install", f"express-session@{dev['express-session']}"], copied, env)
    run(
        [
            "npm",
            "install",
            "--save-dev",
            f"typescript@{dev['typescript']}",
            f"@types/node@{dev['@types/node']}",
            f"@types/express-session@{dev['@types/express-session']}",
        ],
        copied,
        env,
    )
    installed = copied / "node_modules" / "@baton-dev" / "baton-client"
    assert not installed.is_symlink()
    assert run_node_consumers(copied, env) == [
        installed / "dist" / "esm" / "index.js",
        installed / "dist" / "cjs" / "index.js",
    ]
    for name in ("typed.mts", "typed.cts", "tsconfig.json", "tsconfig.bundler.json"):
        shutil.copy(CONSUMERS / name, copied / name)
    run(["npx", "tsc", "-p", "tsconfig.json"], copied, env)
    run(["npx", "tsc", "-p", "tsconfig.bundler.json"], copied, env)

    # A link to the checkout: its dependencies are the checkout's own (npm ci above).
    linked = node_project(tmp_path / "app-link")
    run_install(install_link, root, linked, env)
    assert (linked / "node_modules" / "@baton-dev" / "baton-client").is_symlink()
    assert run_node_consumers(linked, env) == [
        checkout / "dist" / "esm" / "index.js",
        checkout / "dist" / "cjs" / "index.js",
    ]
