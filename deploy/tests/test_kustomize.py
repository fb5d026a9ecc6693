"""The kustomizations as files (everything referenced exists and parses, nothing is left
unreferenced) and as kustomize renders them (strictly valid Kubernetes objects)."""

import subprocess
import tomllib

import pytest
import yaml
from deploykit import (
    BASE,
    CRD_KINDS,
    DEV,
    KUBECHECK,
    PROMETHEUS_COMPONENT,
    build_with_prometheus_component,
    kustomization_files,
    kustomize_build,
    parse_env_file,
)

KUSTOMIZATIONS = {"base": BASE, "dev": DEV, "prometheus-operator": PROMETHEUS_COMPONENT}


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_referenced_file_exists_and_parses(name):
    files = kustomization_files(KUSTOMIZATIONS[name])
    assert len(files) > 1
    for path in files:
        assert path.is_file(), f"{name} references {path}, which does not exist"
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            docs = [doc for doc in yaml.safe_load_all(text) if doc]
            assert docs, f"{path} holds no YAML document"
            for doc in docs:
                assert "kind" in doc and "apiVersion" in doc, f"{path}: a document without kind/apiVersion"
        elif path.suffix == ".toml":
            tomllib.loads(text)
        elif path.suffix == ".env":
            assert parse_env_file(text)
        elif path.suffix == ".conf":
            assert text.strip()
        else:
            pytest.fail(f"{path}: no parser for this kind of file")


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_no_file_in_a_kustomization_directory_is_silently_ignored(name):
    # A manifest dropped next to kustomization.yaml but not listed in it is never applied.
    directory = KUSTOMIZATIONS[name]
    referenced = set(kustomization_files(directory))
    on_disk = {path.resolve() for path in directory.rglob("*") if path.is_file()}
    assert on_disk - referenced == set()


@pytest.mark.parametrize("name", ["base", "dev"])
def test_kustomize_renders_objects_the_api_server_would_accept(name):
    docs = kustomize_build(KUSTOMIZATIONS[name])
    stream = yaml.safe_dump_all(docs)
    result = subprocess.run([str(KUBECHECK)], input=stream, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == len(docs)


def test_the_prometheus_component_renders_on_top_of_an_overlay():
    docs = build_with_prometheus_component()
    kinds = {doc["kind"] for doc in docs}
    assert set(CRD_KINDS) <= kinds
    stream = yaml.safe_dump_all(docs)
    result = subprocess.run(
        [str(KUBECHECK), "-skip-kinds", ",".join(CRD_KINDS)], input=stream, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubecheck_rejects_a_misspelt_field():
    # The strict decode is what catches typos such as `readinesProbe`, which kustomize and
    # a YAML parser both accept; make sure it still does.
    deployment = next(doc for doc in kustomize_build(BASE) if doc["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    result = subprocess.run([str(KUBECHECK)], input=yaml.safe_dump(broken), capture_output=True, text=True)
    assert result.returncode == 1
    assert "readinesProbe" in result.stdout


def test_kubecheck_rejects_a_selector_that_misses_its_template():
    deployment = next(doc for doc in kustomize_build(BASE) if doc["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "other"
    result = subprocess.run([str(KUBECHECK)], input=yaml.safe_dump(broken), capture_output=True, text=True)
    assert result.returncode == 1
    assert "selector does not match" in result.stdout
