"""The probes' behaviour against a real baton and redis-server on this machine.

baton runs with the environment and config file the rendered base ConfigMaps give a pod,
and every probe is run as the kubelet runs it: grpc-health-probe, one fresh connection,
the health name and timeoutSeconds taken from the rendered Deployment. Only SERVING (exit
status 0) counts as success, as for the kubelet.
"""

import signal
import threading
import time
import urllib.request

import pytest
from deploykit import (
    BASE,
    DEV,
    PROBE_CONNECTION_FAILURE,
    PROBE_RPC_FAILURE,
    PROBE_SERVING,
    PROBE_UNHEALTHY,
    SERVICE_HEALTH_NAMES,
    Baton,
    RedisServer,
    baton_container,
    baton_env,
    config_get,
    generated,
    health_probe,
    kustomize_build,
    one,
    parse_duration,
    wait_until,
)

# docs/API.md promises 2 s for health names to follow Redis; polls allow 10 s so that a
# busy CI machine cannot make them flaky.
PATIENCE = 10


@pytest.fixture(scope="module")
def pod():
    """What the base gives a baton pod: its env, config file and probes."""
    docs = kustomize_build(BASE)
    container = baton_container(docs)
    volumes = one(docs, "Deployment", "baton")["spec"]["template"]["spec"]["volumes"]
    config_volume = next(v for v in volumes if v["name"] == "config")
    config_map = one(docs, "ConfigMap", config_volume["configMap"]["name"])
    return {
        "env": baton_env(docs),
        "config": config_map["data"]["config.toml"],
        "probes": {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")},
    }


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def start_baton(tmp_path, pod, redis):
    started = []

    def start(*extra_args):
        baton = Baton(tmp_path, pod["env"], pod["config"], redis.port, extra_args)
        started.append(baton)
        return baton

    yield start
    for baton in started:
        baton.stop()


def kubelet(baton, pod, kind):
    """Runs the Deployment's probe of this kind; True when the kubelet would count success."""
    probe = pod["probes"][kind]
    return (
        health_probe(baton.address, probe["grpc"].get("service", ""), probe["timeoutSeconds"])
        == PROBE_SERVING
    )


def service_statuses(baton):
    return {name: health_probe(baton.address, name) for name in SERVICE_HEALTH_NAMES}


def all_services(baton, status):
    return all(code == status for code in service_statuses(baton).values())


def test_a_healthy_pod_passes_every_probe_and_serves_every_name(start_baton, pod):
    baton = start_baton()
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert kubelet(baton, pod, kind), kind
    wait_until(lambda: all_services(baton, PROBE_SERVING), PATIENCE, what="every service name SERVING")
    # A misspelt health name is an error (NOT_FOUND), so a probe with one would never pass.
    assert health_probe(baton.address, "baton.v1.LockServic") == PROBE_RPC_FAILURE
    # The production env (JSON logs, connection age, ...) and config file were accepted.
    age = int(parse_duration(pod["env"]["BATON_MAX_CONNECTION_AGE"]))
    assert f"max_connection_age={age}s" in baton.log()


@pytest.mark.parametrize("outage", ["killed", "frozen"])
def test_a_redis_outage_fails_no_pod_probe_but_flips_the_service_names(start_baton, pod, redis, outage):
    baton = start_baton()
    wait_until(lambda: all_services(baton, PROBE_SERVING), PATIENCE, what="every service name SERVING")

    if outage == "killed":
        redis.kill()
    else:
        redis.freeze()

    def services_down_while_pod_stays_up():
        # Liveness and readiness must pass at every look, not just at the end.
        assert kubelet(baton, pod, "livenessProbe"), "liveness failed during a Redis outage"
        assert kubelet(baton, pod, "readinessProbe"), "readiness failed during a Redis outage"
        return all_services(baton, PROBE_UNHEALTHY)

    wait_until(services_down_while_pod_stays_up, PATIENCE, what="every service name NOT_SERVING")
    assert kubelet(baton, pod, "livenessProbe") and kubelet(baton, pod, "readinessProbe")
    assert kubelet(baton, pod, "startupProbe"), "a restarted pod could not start during the outage"

    if outage == "killed":
        redis.start()  # same port, as a restarted Redis behind the same Service
    else:
        redis.thaw()
    wait_until(lambda: all_services(baton, PROBE_SERVING), PATIENCE, what="every service name SERVING again")
    assert kubelet(baton, pod, "livenessProbe") and kubelet(baton, pod, "readinessProbe")


def test_sigterm_turns_readiness_off_while_liveness_still_answers(start_baton, pod):
    delay = 2.0
    baton = start_baton("--shutdown-delay", f"{delay:g}s")
    assert kubelet(baton, pod, "readinessProbe") and kubelet(baton, pod, "livenessProbe")

    baton.process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    wait_until(
        lambda: not kubelet(baton, pod, "readinessProbe"),
        delay,
        interval=0.05,
        what="readiness failing after SIGTERM",
    )
    readiness_off = time.monotonic()
    assert health_probe(baton.address, "") == PROBE_UNHEALTHY  # NOT_SERVING, not a refused connection
    # Still inside the delay: baton answers, and liveness stays SERVING.
    assert kubelet(baton, pod, "livenessProbe")
    assert time.monotonic() - sent < delay, "the checks above took longer than the shutdown delay"
    assert readiness_off - sent < 1.0

    grace = parse_duration(pod["env"]["BATON_SHUTDOWN_GRACE"])
    assert baton.process.wait(timeout=grace + 5) == 0
    assert time.monotonic() - sent >= delay - 0.1, "baton stopped before its shutdown delay was over"
    assert health_probe(baton.address, "liveness") == PROBE_CONNECTION_FAILURE


def test_metrics_carry_the_labels_the_dashboard_groups_by(start_baton):
    baton = start_baton()
    wait_until(lambda: all_services(baton, PROBE_SERVING), PATIENCE, what="every service name SERVING")

    def scrape():
        text = urllib.request.urlopen(f"http://{baton.metrics_addr}/metrics", timeout=2).read().decode()
        return text if "baton_grpc_requests_total{" in text and "baton_redis_up{" in text else None

    text = wait_until(scrape, PATIENCE, what="gRPC and Redis metrics exported")
    assert 'baton_grpc_requests_total{service="grpc.health.v1.Health",method="Check",code="OK"}' in text
    assert 'baton_redis_up{instance="main"} 1' in text
    assert 'baton_redis_command_duration_seconds_bucket{instance="main",op=' in text


def test_the_dev_redis_config_loads_with_aof_and_noeviction(tmp_path):
    conf = generated(kustomize_build(DEV), "ConfigMap", "baton-redis-conf")["data"]["redis.conf"]
    # The file as shipped, with only its data directory (the pod's volume) and address
    # moved to this machine.
    assert "\ndir /data\n" in conf
    path = tmp_path / "redis.conf"
    path.write_text(conf.replace("\ndir /data\n", f"\ndir {tmp_path}\n"))
    server = RedisServer(tmp_path, extra_args=[str(path)]).start()
    try:
        assert config_get(server.port, "appendonly") == "yes"
        assert config_get(server.port, "appendfsync") == "everysec"
        assert config_get(server.port, "maxmemory-policy") == "noeviction"
        assert int(config_get(server.port, "maxmemory")) > 0
        assert (tmp_path / "appendonlydir").is_dir()
    finally:
        server.stop()


def test_the_dev_redis_mounts_its_config_where_its_command_reads_it():
    docs = kustomize_build(DEV)
    pod = one(docs, "StatefulSet", "baton-redis")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    conf_path = container["command"][1]
    mount = next(m for m in container["volumeMounts"] if conf_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == generated(docs, "ConfigMap", "baton-redis-conf")["metadata"]["name"]
    data_mount = next(m for m in container["volumeMounts"] if m["name"] == "data")
    conf = generated(docs, "ConfigMap", "baton-redis-conf")["data"]["redis.conf"]
    assert f"dir {data_mount['mountPath']}" in conf


def test_a_call_started_after_the_connection_age_goes_to_a_fresh_connection(start_baton):
    grpc = pytest.importorskip("grpc")
    age, grace = 1.0, 2.0
    baton = start_baton("--max-connection-age", f"{age:g}s")
    channel = grpc.insecure_channel(baton.address)
    watch = channel.unary_stream(
        "/grpc.health.v1.Health/Watch", request_serializer=lambda m: m, response_deserializer=lambda m: m
    )
    try:
        first = watch(b"")  # HealthCheckRequest{service: ""}
        assert next(first) == b"\x08\x01"  # SERVING
        time.sleep(age + 0.5)
        # After the age limit, a GOAWAY should have made the client open a new connection
        # for this stream, so the old connection's forced close cannot touch it.
        late = watch(b"")
        assert next(late) == b"\x08\x01"
        failures = []

        def drain():
            try:
                for _ in late:
                    pass
            except grpc.RpcError as err:
                failures.append(err.code())

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        reader.join(timeout=age + grace + 1.0)
        assert not failures, f"the stream opened after the age limit failed: {failures}"
    finally:
        channel.close()
