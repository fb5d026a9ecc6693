"""deploy/Dockerfile, read rather than built: no container engine runs here."""

import fnmatch
import json
import re
import tomllib

from deploykit import DEPLOY, DOCKERFILE, REPO, baton_flags, dockerfile_stages, port_of

STAGES = dockerfile_stages(DOCKERFILE.read_text())
RUNTIME = STAGES[-1]
BUILDER = STAGES[0]
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"


def test_multi_stage_from_the_documented_images():
    assert len(STAGES) == 2
    assert BUILDER.image == "rust:1.95-slim-bookworm"
    assert RUNTIME.image in {
        "gcr.io/distroless/cc-debian12:nonroot",
        "gcr.io/distroless/cc-debian12",
    } or RUNTIME.image.startswith("debian:bookworm-slim")
    # The binary links the builder's glibc: the runtime must be the same Debian release.
    assert "bookworm" in BUILDER.image and ("debian12" in RUNTIME.image or "bookworm" in RUNTIME.image)


def test_the_release_binary_is_built_locked_and_copied_to_the_entrypoint():
    (build,) = [args for args in BUILDER.all("RUN") if "cargo build" in args]
    assert "--release" in build and "--locked" in build and "--bin baton" in build
    copies = RUNTIME.all("COPY")
    assert any(re.fullmatch(rf"--from={BUILDER.name} \S+ /usr/local/bin/baton", c) for c in copies)


def test_entrypoint_is_baton_itself_in_exec_form():
    (entrypoint,) = RUNTIME.all("ENTRYPOINT")
    # Exec form, no shell: baton is PID 1 and gets SIGTERM itself.
    assert json.loads(entrypoint) == ["/usr/local/bin/baton"]
    assert not RUNTIME.all("CMD")


def test_runs_as_a_numeric_non_root_user():
    user = RUNTIME.all("USER")[-1]
    # Numeric, so the kubelet can verify runAsNonRoot without the image's /etc/passwd.
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)


def test_exposes_baton_default_ports_and_has_no_healthcheck():
    flags = baton_flags()
    exposed = {int(port) for args in RUNTIME.all("EXPOSE") for port in args.split()}
    assert exposed == {port_of(flags["BATON_LISTEN"].default), port_of(flags["BATON_METRICS_LISTEN"].default)}
    assert not any(stage.all("HEALTHCHECK") for stage in STAGES)


def _ignored(path: str, patterns: list[str]) -> bool:
    """The .dockerignore rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        # A pattern matching a directory applies to everything below it.
        if any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts))):
            ignored = not negate
    return ignored


def test_the_build_context_holds_every_source_the_build_reads():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for args in BUILDER.all("COPY"):
        words = [w for w in args.split() if not w.startswith("--")]
        sources += words[:-1]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not _ignored(source.rstrip("/"), patterns), f"COPY {source}: excluded by {DOCKERIGNORE.name}"
    # Every target Cargo.toml names must be in what was copied, or `cargo build` fails.
    manifest = tomllib.loads((REPO / "Cargo.toml").read_text())
    paths = [
        t["path"]
        for kind in ("bin", "bench", "test", "example")
        for t in manifest.get(kind, [])
        if "path" in t
    ]
    paths += [manifest["lib"]["path"]] if "path" in manifest.get("lib", {}) else []
    # Cargo loads every workspace member, so their manifests must be copied too.
    members = [m for m in manifest.get("workspace", {}).get("members", []) if m != "."]
    paths += [f"{member}/Cargo.toml" for member in members] + [f"{member}/src" for member in members]
    copied = [s.rstrip("/") for s in sources]
    for path in paths:
        assert any(path == c or path.startswith(c + "/") for c in copied), (
            f"Cargo.toml target {path} is not copied into the build"
        )


def test_the_build_context_leaves_out_build_output_and_local_state():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        "target/debug/baton",
        ".git/config",
        "clients/node/node_modules/x",
        "deploy/.venv/bin/python",
        "deploy/bin/kustomize",
    ):
        assert _ignored(path, patterns), path
