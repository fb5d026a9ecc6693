"""docs/operations.md against the files and settings it describes."""

import re

from deploykit import BASE, REPO, baton_container, baton_env, kustomize_build, one, parse_duration

OPERATIONS = REPO / "docs" / "operations.md"


def test_every_deploy_path_the_guide_names_exists():
    text = OPERATIONS.read_text()
    paths = set(re.findall(r"`((?:deploy|docs)/[\w./-]+?)`", text))
    assert len(paths) > 5
    for path in paths:
        assert (REPO / path).exists(), f"docs/operations.md names {path}, which does not exist"


def test_the_shutdown_timeline_matches_the_manifests():
    docs = kustomize_build(BASE)
    env = baton_env(docs)
    pause = baton_container(docs)["lifecycle"]["preStop"]["sleep"]["seconds"]
    termination = one(docs, "Deployment", "baton")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    delay = parse_duration(env["BATON_SHUTDOWN_DELAY"])
    grace = parse_duration(env["BATON_SHUTDOWN_GRACE"])
    text = OPERATIONS.read_text()
    assert f"`preStop: sleep {pause}`" in text
    assert f"| {pause} s | SIGTERM." in text
    assert f"`BATON_SHUTDOWN_DELAY` ({delay:g} s)" in text
    assert f"| {pause + delay:g} s | baton stops accepting" in text
    assert f"| ≤ {pause + grace:g} s | exit 0" in text
    assert f"| {termination} s | `terminationGracePeriodSeconds`" in text
