"""The Grafana dashboard and the Prometheus alert rules: valid PromQL, and only metrics the
server actually exports (a renamed metric silently empties a panel or mutes an alert)."""

import functools
import json
import re

import promql_parser
import pytest
from deploykit import DASHBOARD, REPO, build_with_prometheus_component, one

# Prometheus adds these to every series (target labels); baton's histograms add `le`.
TARGET_LABELS = {"namespace", "pod", "instance", "job", "container", "endpoint", "service", "le"}


@functools.cache
def exported_metrics() -> dict[str, set[str]]:
    """Metric names in the server's source, with the label names used in the files that
    mention each one (a deliberately loose reading: names are exact, labels indicative)."""
    metrics: dict[str, set[str]] = {}
    for path in (REPO / "src").rglob("*.rs"):
        text = path.read_text()
        names = set(re.findall(r'"(baton_[a-z0-9_]+)"', text))
        labels = set(re.findall(r'"([a-z_]+)"\s*=>', text)) | set(re.findall(r'\(\s*"([a-z_]+)",', text))
        for name in names:
            metrics.setdefault(name, set()).update(labels)
    return metrics


def series_name(name: str) -> str:
    """A histogram's series name back to the metric it belongs to."""
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in exported_metrics():
            return name[: -len(suffix)]
    return name


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) for every vector selector in a PromQL query."""
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, {m.name for m in node.matchers.matchers}))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def check_query(expr: str, where: str):
    try:
        used = selectors(expr)
    except Exception as err:  # the parser's own error type is not exported
        pytest.fail(f"{where}: not valid PromQL: {err}\n{expr}")
    assert used, f"{where}: queries no metric"
    for name, labels in used:
        metric = series_name(name)
        assert metric in exported_metrics(), f"{where}: {name} is not exported by the server"
        unknown = labels - exported_metrics()[metric] - TARGET_LABELS
        assert not unknown, f"{where}: {name} has no label {sorted(unknown)}"


def dashboard_queries():
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def grafana_to_promql(expr: str) -> str:
    # Grafana fills these in before Prometheus sees the query.
    return expr.replace("$__rate_interval", "1m").replace("$namespace", ".*")


def test_dashboard_is_importable_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


def test_dashboard_panels_do_not_overlap():
    dashboard = json.loads(DASHBOARD.read_text())
    cells = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_queries_are_valid_and_use_exported_metrics():
    queries = list(dashboard_queries())
    assert len(queries) > 20
    for title, expr in queries:
        check_query(grafana_to_promql(expr), f"panel {title!r}")


def test_dashboard_covers_the_metrics_operators_need():
    used = {
        series_name(name) for _, expr in dashboard_queries() for name, _ in selectors(grafana_to_promql(expr))
    }
    required = set(
        """
        baton_grpc_requests_total baton_grpc_request_duration_seconds
        baton_redis_command_duration_seconds baton_redis_up baton_redis_pool_connections
        baton_redis_used_memory_bytes baton_redis_maxmemory_bytes baton_redis_evicted_keys
        baton_redis_connected_clients baton_ratelimit_checks_total baton_ratelimit_degraded_total
        baton_lock_acquired_total baton_lock_contended_total baton_lock_wait_seconds
        baton_lock_lost_total baton_queue_enqueued_total baton_queue_delivered_total
        baton_queue_acked_total baton_queue_dead_lettered_total baton_queue_redelivered_total
        baton_queue_jobs baton_queue_consumers baton_cache_reads_total baton_cache_fetches_total
        baton_sessions_active baton_sessions_created_total
        """.split()
    )
    assert required - used == set()


def test_alert_rules_are_valid_and_use_exported_metrics():
    rule = one(build_with_prometheus_component(), "PrometheusRule", "baton")
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert len(alerts) >= 5
    for alert in alerts:
        check_query(alert["expr"], f"alert {alert['alert']}")
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert alert["annotations"]["summary"]
    names = {a["alert"] for a in alerts}
    # docs/operations.md promises alerts on these.
    for needed in ("Evicting", "Memory", "Latency", "Queue", "LocksLost"):
        assert any(needed in name for name in names), needed


def test_the_query_check_catches_unknown_metrics_and_bad_syntax():
    with pytest.raises(AssertionError, match="not exported"):
        check_query("rate(baton_lock_lost_totl[5m])", "control")
    with pytest.raises(pytest.fail.Exception):
        check_query("sum(rate(baton_lock_lost_total[5m])", "control")
