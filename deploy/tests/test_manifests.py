"""What the rendered manifests promise about baton: probes, ports, env names against the
real binary's flags, security, shutdown timing, scaling and Redis credentials."""

import re
import tomllib

import pytest
from deploykit import (
    BASE,
    DEV,
    DOCKERFILE,
    PROBE_SERVICE,
    SERVICE_HEALTH_NAMES,
    baton_container,
    baton_env,
    baton_flags,
    build_with_prometheus_component,
    container_port,
    dockerfile_stages,
    generated,
    kustomize_build,
    objects,
    one,
    parse_duration,
    pod_templates,
    port_of,
)

RENDERINGS = {"base": lambda: kustomize_build(BASE), "dev": lambda: kustomize_build(DEV)}


@pytest.fixture(params=RENDERINGS)
def docs(request):
    return RENDERINGS[request.param]()


def test_every_probe_is_grpc_on_the_grpc_port_with_the_served_health_name(docs):
    container = baton_container(docs)
    grpc_port = container_port(container, "grpc")
    for probe_kind, service in PROBE_SERVICE.items():
        probe = container.get(probe_kind)
        assert probe, f"baton has no {probe_kind}"
        handlers = {"exec", "httpGet", "tcpSocket", "grpc"} & probe.keys()
        assert handlers == {"grpc"}, f"{probe_kind} must be a native gRPC probe, has {handlers}"
        assert probe["grpc"]["port"] == grpc_port, f"{probe_kind} must probe the grpc port"
        assert probe["grpc"].get("service", "") == service, (
            f"{probe_kind} must ask for health name {service!r}"
        )


def test_probe_names_are_ones_baton_serves():
    # The live tests ask the real server for these names; this pins the table they use
    # to the names docs/API.md defines.
    served = {"", "liveness", *SERVICE_HEALTH_NAMES}
    assert set(PROBE_SERVICE.values()) <= served
    assert PROBE_SERVICE["livenessProbe"] == "liveness"
    assert PROBE_SERVICE["readinessProbe"] == PROBE_SERVICE["startupProbe"] == ""


def test_every_baton_env_name_is_a_flag_of_the_binary(docs):
    flags = baton_flags()
    names = set()
    for _, pod in pod_templates(docs):
        for container in pod["containers"]:
            names |= {var["name"] for var in container.get("env", [])}
    names |= set(baton_env(docs))
    baton_names = {name for name in names if name.startswith("BATON_")}
    assert baton_names, "the manifests set no BATON_* variable"
    unknown = baton_names - flags.keys()
    assert not unknown, f"not flags of `baton --help`: {sorted(unknown)}"


def test_env_values_are_accepted_by_the_flags_they_feed(docs):
    flags = baton_flags()
    for name, value in baton_env(docs).items():
        flag = flags[name]
        if flag.possible_values:
            assert value in flag.possible_values, f"{name}={value} is not one of {flag.possible_values}"
        if flag.default and re.fullmatch(r"\d+(ms|s|m|h|d)", flag.default):
            parse_duration(value)


def test_ports_agree_everywhere(docs):
    flags = baton_flags()
    env = baton_env(docs)
    container = baton_container(docs)
    grpc = container_port(container, "grpc")
    metrics = container_port(container, "metrics")
    listen = env.get("BATON_LISTEN", flags["BATON_LISTEN"].default)
    metrics_listen = env.get("BATON_METRICS_LISTEN", flags["BATON_METRICS_LISTEN"].default)
    assert port_of(listen) == grpc
    assert port_of(metrics_listen) == metrics
    # Listening on loopback would make every probe and Service fail.
    assert not listen.startswith("127.") and not metrics_listen.startswith("127.")

    exposed = {
        int(p.split("/")[0])
        for s in dockerfile_stages(DOCKERFILE.read_text())[-1:]
        for e in s.all("EXPOSE")
        for p in e.split()
    }
    assert {grpc, metrics} == exposed

    template = one(docs, "Deployment", "baton")["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(metrics)

    service = one(docs, "Service", "baton")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "grpc": "grpc",
        "metrics": "metrics",
    }
    headless = one(docs, "Service", "baton-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["targetPort"] for p in headless["spec"]["ports"]] == ["grpc"]


def test_services_pdb_and_spread_select_the_baton_pods(docs):
    labels = one(docs, "Deployment", "baton")["spec"]["template"]["metadata"]["labels"]

    def selects(selector):
        return selector and all(labels.get(k) == v for k, v in selector.items())

    assert selects(one(docs, "Service", "baton")["spec"]["selector"])
    assert selects(one(docs, "Service", "baton-headless")["spec"]["selector"])
    assert selects(one(docs, "PodDisruptionBudget", "baton")["spec"]["selector"]["matchLabels"])
    spread = one(docs, "Deployment", "baton")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert all(selects(c["labelSelector"]["matchLabels"]) for c in spread)


def test_at_least_two_replicas_and_disruptions_leave_one(docs):
    deployment = one(docs, "Deployment", "baton")
    hpa = one(docs, "HorizontalPodAutoscaler", "baton")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "baton"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    # The autoscaler owns the count; a replicas field would fight it on every apply.
    assert "replicas" not in deployment["spec"]
    pdb = one(docs, "PodDisruptionBudget", "baton")["spec"]
    assert pdb.get("maxUnavailable", 0) < hpa["spec"]["minReplicas"] or pdb.get("minAvailable", 0) >= 1
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0


def test_every_container_is_locked_down(docs):
    dockerfile_user = dockerfile_stages(DOCKERFILE.read_text())[-1].all("USER")[-1]
    for workload, pod in pod_templates(docs):
        where = workload["metadata"]["name"]
        pod_security = pod.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, where
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, where
        for container in pod["containers"]:
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not security.get("capabilities", {}).get("add"), where
            resources = container.get("resources", {})
            assert resources.get("requests", {}).get("memory") and resources.get("requests", {}).get("cpu"), (
                where
            )
            assert resources.get("limits", {}).get("memory"), where
        if workload["metadata"]["name"] == "baton":
            # The image's numeric USER and the pod's runAsUser must be the same non-root user.
            assert f"{pod_security['runAsUser']}:{pod_security['runAsGroup']}" == dockerfile_user
            assert pod_security["runAsUser"] != 0


def test_termination_grace_covers_the_prestop_pause_and_the_drain(docs):
    flags = baton_flags()
    env = baton_env(docs)
    pod = one(docs, "Deployment", "baton")["spec"]["template"]["spec"]
    container = baton_container(docs)
    pre_stop = container["lifecycle"]["preStop"]
    # The image is distroless: no shell and no `sleep` to exec, so only the kubelet's own
    # sleep action can pause before SIGTERM.
    assert set(pre_stop) == {"sleep"}
    pause = pre_stop["sleep"]["seconds"]
    grace = parse_duration(env.get("BATON_SHUTDOWN_GRACE", flags["BATON_SHUTDOWN_GRACE"].default))
    delay = parse_duration(env.get("BATON_SHUTDOWN_DELAY", flags["BATON_SHUTDOWN_DELAY"].default))
    assert pause > 0
    assert 0 < delay < grace
    # The kubelet's countdown includes preStop; SIGKILL must not cut the drain short.
    assert pod["terminationGracePeriodSeconds"] > pause + grace


def test_connection_age_is_set_so_new_replicas_get_traffic(docs):
    env = baton_env(docs)
    assert parse_duration(env["BATON_MAX_CONNECTION_AGE"]) > 0
    # A grace deadline would cut open KeepAlive/Consume streams; baton has none on purpose.
    assert "BATON_MAX_CONNECTION_AGE_GRACE" not in env


def test_redis_urls_come_only_from_a_secret(docs):
    container = baton_container(docs)
    by_name = {var["name"]: var for var in container.get("env", [])}
    for name in ("BATON_REDIS_URL", "BATON_CACHE_REDIS_URL"):
        ref = by_name[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"].startswith("baton-redis")
    assert by_name["BATON_REDIS_URL"]["valueFrom"]["secretKeyRef"].get("optional") is not True
    # A password must never sit in a ConfigMap.
    for config_map in objects(docs, "ConfigMap"):
        for key, value in config_map.get("data", {}).items():
            assert not re.search(r"rediss?://", value) or key == "redis.conf", (
                f"Redis URL in ConfigMap {config_map['metadata']['name']}"
            )


def test_the_config_file_is_mounted_where_baton_config_points(docs):
    env = baton_env(docs)
    config_path = env["BATON_CONFIG"]
    container = baton_container(docs)
    pod = one(docs, "Deployment", "baton")["spec"]["template"]["spec"]
    mount = next(
        m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"].rstrip("/") + "/")
    )
    assert mount.get("readOnly") is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    relative = config_path[len(mount["mountPath"].rstrip("/")) + 1 :]
    item = next(i for i in volume["configMap"]["items"] if i["path"] == relative)
    config_map = one(docs, "ConfigMap", volume["configMap"]["name"])
    config = tomllib.loads(config_map["data"][item["key"]])
    assert set(config) <= {"limits", "policies"}


def test_the_base_holds_no_redis_and_no_secret():
    # Production Redis and credentials are the operator's; only the dev overlay brings them.
    docs = kustomize_build(BASE)
    assert not objects(docs, "StatefulSet")
    assert not objects(docs, "Secret")
    assert not objects(docs, "Namespace")


def test_the_dev_overlay_wires_baton_to_its_own_redis():
    docs = kustomize_build(DEV)
    redis = one(docs, "StatefulSet", "baton-redis")
    assert redis["spec"]["replicas"] == 1
    service = one(docs, "Service", redis["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    secret = generated(docs, "Secret", "baton-redis")
    url = (
        secret.get("stringData", {}).get("url")
        or __import__("base64").b64decode(secret["data"]["url"]).decode()
    )
    assert re.fullmatch(rf"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}", url)
    # kustomize rewrote the Deployment's reference to the hashed Secret name.
    env = {v["name"]: v for v in baton_container(docs)["env"]}
    assert env["BATON_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    assert {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"} == {"baton-dev"}


def test_prometheus_scrapes_each_pod_once():
    base = kustomize_build(BASE)
    annotations = one(base, "Deployment", "baton")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"

    docs = build_with_prometheus_component()
    monitor = one(docs, "ServiceMonitor", "baton")
    selected = [
        s
        for s in objects(docs, "Service")
        if all(
            s["metadata"].get("labels", {}).get(k) == v
            for k, v in monitor["spec"]["selector"]["matchLabels"].items()
        )
    ]
    assert [s["metadata"]["name"] for s in selected] == ["baton"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    # The Operator's scrape replaces annotation-based discovery, not adds to it.
    annotations = one(docs, "Deployment", "baton")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "false"
