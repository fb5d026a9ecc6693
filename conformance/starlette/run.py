"""Runs Starlette's own SessionMiddleware tests against Baton's middleware and prints the
pass count.

Downloads, from PyPI, the sdist of the Starlette release installed beside the Python client
(its tests ship there), starts a redis-server and $BATON_BIN (the Python client's test
harness), and runs its tests/middleware/test_session.py with baton_starlette_shim loaded
first, so that ``starlette.middleware.sessions.SessionMiddleware`` and ``Session`` are
Baton's. The sdist's own ``starlette`` package runs, under its own pytest settings
(warnings are errors).
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from xml.etree import ElementTree

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "clients" / "python" / "tests"))
sys.path.insert(0, str(HERE.parent))

from harness import Baton, Redis
from sdist import download_sdist

STARLETTE = f"starlette=={importlib.metadata.version('starlette')}"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="conformance-starlette-") as scratch:
        root = download_sdist(STARLETTE, Path(scratch))
        report = Path(scratch) / "report.xml"
        redis = Redis()
        baton = None
        try:
            baton = Baton(redis, Path(scratch))
            path = os.pathsep.join(
                filter(None, [str(HERE), os.environ.get("PYTHONPATH")])
            )
            env = {**os.environ, "PYTHONPATH": path, "BATON_TARGET": baton.addr}
            run = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-p",
                    "no:asyncio",
                    "-p",
                    "baton_starlette_shim",
                    "-q",
                    f"--junitxml={report}",
                    "tests/middleware/test_session.py",
                ],
                cwd=root,
                env=env,
                check=False,
            )
        finally:
            if baton is not None:
                baton.kill()
            redis.stop()
        if not report.exists():
            print(f"{root.name}: the tests did not run")
            return 1
        suite = ElementTree.parse(report).getroot().find("testsuite")
    assert suite is not None
    total, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    print(
        f"{root.name} tests/middleware/test_session.py on Baton's middleware: "
        f"{total - skipped - failed}/{total} passed"
        + (f", {skipped} skipped" if skipped else "")
    )
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
