"""The deployment files against a running server: every metric the dashboard, the alert rules and the
autoscaler read is one the service really exports, and the container health checks pass against it.

The server is ``seen serve`` with no model option (the embedded demo model), as the image runs it.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from prometheus_client.parser import text_string_to_metric_families

from tests.service_helpers import HOST, ROOT, Server, environment, free_port

DEPLOY = ROOT / "deploy"
EXAMPLES = ROOT / "demo" / "assets" / "examples"
PROMETHEUS_OWN = {"up"}
VLLM_PREFIX = "vllm:"
"""Series Prometheus writes itself for every target."""
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}
GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"


def metric_names(expression: str) -> set[str]:
    """Metric names a PromQL expression (or Grafana query) reads: identifiers that are not functions,
    keywords, label names or Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(GROUPING, "", text)
    text = re.sub(r"\$\w+", "", text)
    found = {m.group(1) for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text) if not m.group(2)}
    return found - PROMQL_WORDS


def test_metric_names_are_read_from_expressions() -> None:
    expression = (
        'histogram_quantile(0.95, sum by (model_name, le) (rate(seen_a_bucket{model_name=~"$model_name", le!="1"}'
        '[$__rate_interval]))) > on (model_name) group_left max by (model_name) (seen_b) and up{job="x"} == 0'
    )
    assert metric_names(expression) == {"seen_a_bucket", "seen_b", "up"}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "seen.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    # Grafana's label_values(metric, label) reads the metric; its second argument is a label name.
    queries = [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    expressions += [re.sub(r"label_values\((.+),\s*\w+\)", r"\1", query) for query in queries]
    return expressions


def rule_expressions() -> list[str]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def autoscaling_metric_names() -> set[str]:
    hpa = yaml.safe_load((DEPLOY / "kubernetes" / "hpa.yaml").read_text())
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    adapter = yaml.safe_load((DEPLOY / "kubernetes" / "prometheus-adapter-values.yaml").read_text())
    for rule in adapter["rules"]["custom"]:
        names |= metric_names(rule["seriesQuery"]) | {rule["name"]["as"]}
    return names


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("demo-server") / "server.log"
    command = ["seen", "serve", "--host", HOST, "--port", str(port), "--device", "cpu"]
    running = Server.start(command, port, log)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def _transcribe(client: httpx.Client, path: Path) -> dict[str, Any]:
    files = {"file": (path.name, path.read_bytes(), "audio/wav")}
    response = client.post("/v1/audio/transcriptions", files=files, data={"model": "qwen2-audio-demo"})
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture(scope="module")
def exported(demo_server: Server) -> set[str]:
    """Sample names of a scrape taken after clean, noisy and refused requests went through the server."""
    with httpx.Client(base_url=demo_server.url, timeout=60.0) as client:
        _transcribe(client, EXAMPLES / "request.wav")
        _transcribe(client, EXAMPLES / "request-white-0db.wav")
        refused = client.post(
            "/v1/audio/transcriptions",
            files={"file": ("note.txt", b"not audio", "text/plain")},
            data={"model": "qwen2-audio-demo"},
        )
        assert refused.status_code == 415, refused.text
        scrape = client.get("/metrics").text
    return {sample.name for family in text_string_to_metric_families(scrape) for sample in family.samples}


def test_the_dashboard_reads_only_exported_metrics(exported: set[str]) -> None:
    used = set().union(*map(metric_names, dashboard_expressions()))
    assert used, "no metric found in the dashboard"
    # vLLM's own families (its row) exist only on the vLLM engine: tests/test_vllm_engine.py checks them there
    assert {name for name in used - exported - PROMETHEUS_OWN if not name.startswith(VLLM_PREFIX)} == set()


def test_the_alert_rules_read_only_exported_metrics(exported: set[str]) -> None:
    used = set().union(*map(metric_names, rule_expressions()))
    assert {"seen_noisy_requests_total", "seen_calibrated_see_ratio", "seen_ready"} <= used
    assert used - exported - PROMETHEUS_OWN == set()


def test_the_autoscaler_scales_on_an_exported_metric(exported: set[str]) -> None:
    assert autoscaling_metric_names() <= exported


def test_calibrated_ranges_and_readiness_are_exported(demo_server: Server) -> None:
    scrape = httpx.get(f"{demo_server.url}/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(scrape)}
    ready = families["seen_ready"].samples
    assert [s.value for s in ready] == [1.0]
    capacity = families["seen_queue_capacity_requests"].samples
    assert [s.value for s in capacity] == [64.0]  # the default max_queue_size
    clean_p99 = {
        s.labels["profile"]: s.value
        for s in families["seen_calibrated_see_ratio"].samples
        if s.labels["condition"] == "clean" and s.labels["percentile"] == "p99"
    }
    thresholds = {s.labels["profile"]: s.value for s in families["seen_noisy_threshold_ratio"].samples}
    assert set(clean_p99) == set(thresholds) and "merged" in clean_p99
    assert all(0 < value < 1 for value in clean_p99.values())


def _run_health_command(argv: list[str], port: int) -> subprocess.CompletedProcess[bytes]:
    argv = [arg.replace(":8000/", f":{port}/") for arg in argv]
    return subprocess.run(argv, env=environment(SEEN_PORT=str(port)), capture_output=True, timeout=30, cwd=ROOT)


def test_the_image_healthcheck_passes_against_the_server(demo_server: Server) -> None:
    parser = DockerfileParser(str(ROOT / "Dockerfile"))
    healthcheck = next(i["value"] for i in parser.structure if i["instruction"] == "HEALTHCHECK")
    argv = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert "/health" in " ".join(argv)
    assert _run_health_command(argv, demo_server.port).returncode == 0
    assert _run_health_command(argv, free_port()).returncode != 0, "the check passes with nothing listening"


def test_the_compose_healthcheck_waits_for_readiness(demo_server: Server) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    argv = compose["x-seen"]["healthcheck"]["test"]
    assert argv[0] == "CMD" and "/ready" in " ".join(argv)
    assert _run_health_command(argv[1:], demo_server.port).returncode == 0
    assert _run_health_command(argv[1:], free_port()).returncode != 0
