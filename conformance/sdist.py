"""Upstream test suites that ship in a Python project's sdist on PyPI: one download step
for the suites that run them (conformance/django, conformance/starlette)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path


def download_sdist(requirement: str, into: Path) -> Path:
    """Downloads the sdist of ``requirement`` (e.g. ``django==5.2.*``) into ``into``,
    unpacks it there and returns the unpacked source tree."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-binary",
            ":all:",
            "--no-deps",
            requirement,
            "-d",
            str(into),
        ],
        check=True,
    )
    (sdist,) = into.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(into, filter="data")
    return into / sdist.name.removesuffix(".tar.gz")
