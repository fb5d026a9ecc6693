"""Runs Django 5.2's own session tests against Baton's engine and prints the pass count.

Downloads Django's sdist from PyPI (its tests ship there, not in the wheel), copies
baton_sessions_tests/ and baton_settings.py beside its tests/sessions_tests, starts a
redis-server and $BATON_BIN (the Python client's test harness), and runs Django's
tests/runtests.py on:

- ``SessionTestsMixin`` with ``baton_client.django_sessions.SessionStore`` as the backend,
  as Django runs it for each of its own engines;
- ``SessionMiddlewareTests`` with ``SESSION_ENGINE = "baton_client.django_sessions"``.

The sdist's own ``django`` package runs, so the tests always meet the code they were
written for. Exits non-zero when a test fails that is not listed in NOT_APPLICABLE.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "clients" / "python" / "tests"))
sys.path.insert(0, str(HERE.parent))

from harness import Baton, Redis
from sdist import download_sdist

DJANGO = "django==5.2.*"

NOT_APPLICABLE = {
    "test_empty_session_saved": (
        "reads django.contrib.sessions' database table (Session.objects.get), which only "
        "Django's database engines write"
    ),
}
"""Upstream tests that check one of Django's own engines rather than the engine in use."""

# unittest's summary: "Ran 77 tests", "FAILED (failures=2, skipped=1)", and one
# "FAIL: test_x (module.Class.test_x)" header per failing test.
_RAN = re.compile(r"^Ran (\d+) tests? in ", re.MULTILINE)
_SKIPPED = re.compile(r"^(?:OK|FAILED) \(.*?\bskipped=(\d+)", re.MULTILINE)
_FAILED = re.compile(
    r"^(FAIL|ERROR|UNEXPECTED SUCCESS): (test\w+) \(([\w.]+)\)", re.MULTILINE
)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="conformance-django-") as scratch:
        root = download_sdist(DJANGO, Path(scratch))
        tests = root / "tests"
        shutil.copytree(HERE / "baton_sessions_tests", tests / "baton_sessions_tests")
        shutil.copy(HERE / "baton_settings.py", tests / "baton_settings.py")
        redis = Redis()
        baton = None
        try:
            baton = Baton(redis, Path(scratch))
            path = os.pathsep.join(
                filter(None, [str(root), os.environ.get("PYTHONPATH")])
            )
            env = {**os.environ, "PYTHONPATH": path, "BATON_TARGET": baton.addr}
            run = subprocess.run(
                [
                    sys.executable,
                    "runtests.py",
                    "--settings=baton_settings",
                    "--parallel=1",
                    "--verbosity=2",
                    "--noinput",
                    "baton_sessions_tests",
                    "sessions_tests.tests.SessionMiddlewareTests",
                ],
                cwd=tests,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            if baton is not None:
                baton.kill()
            redis.stop()
    output = run.stdout + run.stderr
    ran = _RAN.search(output)
    if ran is None:
        print(output)
        print(f"{root.name}: the tests did not run")
        return 1
    total = int(ran.group(1))
    skipped = sum(int(n) for n in _SKIPPED.findall(output))
    failed = _FAILED.findall(output)
    unexpected = [
        (kind, test, name) for kind, test, name in failed if test not in NOT_APPLICABLE
    ]
    if unexpected:
        print(output)
    for kind, test, name in failed:
        why = NOT_APPLICABLE.get(test)
        print(f"{kind:>5} {name}" + (f"  (not applicable: {why})" if why else ""))
    passed = total - skipped - len(failed)
    print(
        f"{root.name} sessions_tests on Baton's engine: {passed}/{total} passed"
        + (f", {skipped} skipped" if skipped else "")
        + (
            f", {len(failed) - len(unexpected)} not applicable"
            if len(failed) > len(unexpected)
            else ""
        )
    )
    return 1 if unexpected or run.returncode not in (0, 1) else 0


if __name__ == "__main__":
    sys.exit(main())
