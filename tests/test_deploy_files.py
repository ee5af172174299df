"""The deployment files, checked without a Docker engine or a cluster (neither runs on the build machines).

Prometheus' own ``promtool`` checks the configuration and unit-tests the alert rules; the Kubernetes
objects are validated against the Kubernetes schemas (``kubernetes-validate``) and the Prometheus
Operator's CRD schemas (``@kubernetes-models/prometheus-operator``, under Node); the Dockerfile,
compose file and dashboard are parsed and checked for what must hold between them and the service.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
KUBERNETES = DEPLOY / "kubernetes"
CRD_CHECK = KUBERNETES / "crd-check"
KUBERNETES_VERSION = "1.30.0"
"""The oldest Kubernetes release the manifests are meant for; newer ones accept them too (checked below)."""


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: install the Debian package prometheus (.ci/run does)")
    return subprocess.run(["promtool", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


# -- Prometheus ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "deploy/prometheus/prometheus.yml"),
        ("check", "rules", "deploy/prometheus/alerts.yml"),
        ("test", "rules", "deploy/prometheus/alerts.test.yml"),
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool(args: tuple[str, ...]) -> None:
    result = promtool(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def alert_rules() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]}


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    cases: dict[str, list[list[Any]]] = {}
    for test in load_yaml(PROMETHEUS / "alerts.test.yml")["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], []).append(case["exp_alerts"])
    rules = alert_rules()
    assert set(cases) == set(rules)
    for name, expectations in cases.items():
        assert any(expectations) and not all(expectations), f"{name}: needs a firing and a silent expectation"
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description"} <= set(rule["annotations"]), name


def test_the_issue_s_alerts_are_all_there() -> None:
    expressions = {name: rule["expr"] for name, rule in alert_rules().items()}
    assert "seen_noisy_requests_total" in expressions["SeenNoisyRequestsHigh"]
    assert 'condition="clean"' in expressions["SeenSeeAboveCleanRange"]
    assert 'status=~"5.."' in expressions["SeenHighErrorRate"]
    assert "seen_queue_capacity_requests" in expressions["SeenQueueSaturated"]
    assert "queue_full" in expressions["SeenRequestsRejected"]
    assert "seen_ready" in expressions["SeenNotReady"]


def test_the_scrape_target_is_the_compose_service() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    [job] = config["scrape_configs"]
    assert job["job_name"] == "seen"  # the SeenDown alert matches job="seen"
    [target] = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    compose = load_yaml(ROOT / "docker-compose.yml")
    for name in ("seen-gpu", "seen-cpu"):
        assert host in compose["services"][name]["networks"]["default"]["aliases"]
    assert int(port) == Settings.model_fields["port"].default
    assert compose["x-seen"]["ports"][0].endswith(f":{port}")


# -- Grafana ---------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return dict(json.loads((DEPLOY / "grafana" / "dashboards" / "seen.json").read_text()))


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def test_the_dashboard_has_the_panels_operators_need() -> None:
    by_title = {panel["title"]: panel for panel in panels()}
    heatmap = by_title["SEE of incoming audio"]
    assert heatmap["type"] == "heatmap"
    assert "seen_input_see_ratio_bucket" in heatmap["targets"][0]["expr"]
    assert heatmap["targets"][0]["format"] == "heatmap"

    def exprs(title: str) -> str:
        return " ".join(target["expr"] for target in by_title[title]["targets"])

    assert "by (profile, le)" in exprs("SEE p50 / p95 by noise profile")
    assert "seen_noisy_requests_total" in exprs("Requests flagged noisy")
    assert "by (noise_type)" in exprs("Dominant noise type of noisy requests")
    assert "seen_residual_see_ratio_bucket" in exprs("Residual SEE after SEEN")
    assert "by (status)" in exprs("Requests by status")
    assert 'status=~"5.."' in exprs("Error rate")
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(seen_request_duration_seconds_bucket" in exprs(
            "End-to-end latency"
        )
    assert "seen_queue_wait_seconds_bucket" in exprs("Queue wait")
    assert "seen_generation_duration_seconds_bucket" in exprs("Generation time per batch")
    assert {"seen_queue_depth_requests", "seen_requests_in_flight"} <= set(
        exprs("Queue depth and requests in flight").replace("(", " ").replace("{", " ").split()
    )


def test_every_dashboard_query_follows_the_model_variable_and_datasource() -> None:
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["model_name"]["definition"] == "label_values(seen_build_info, model_name)"
    assert variables["model_name"]["multi"] and variables["model_name"]["includeAll"]
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel.get("description"), f"{panel['title']}: operators read what a panel means from its description"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            families = target["expr"].count("seen_") + target["expr"].count("vllm:")
            assert families == target["expr"].count('model_name=~"$model_name"'), target["expr"]


def test_the_dashboard_layout_has_unique_ids_and_no_overlapping_panels() -> None:
    every = dashboard()["panels"]
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in every:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        covered = {(x, y) for x in range(box["x"], box["x"] + box["w"]) for y in range(box["y"], box["y"] + box["h"])}
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered


def test_grafana_provisioning_matches_the_compose_stack() -> None:
    compose = load_yaml(ROOT / "docker-compose.yml")["services"]
    [datasource] = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"]
    assert datasource["url"] == "http://prometheus:9090"
    assert "9090" in compose["prometheus"]["ports"][0]
    [provider] = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "seen.yml")["providers"]
    mounts = dict(volume.split(":")[:2][::-1] for volume in compose["grafana"]["volumes"])
    assert ROOT / mounts[provider["options"]["path"]] == DEPLOY / "grafana" / "dashboards"
    home = compose["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/seen.json"


# -- Compose ---------------------------------------------------------------------------------------


def test_compose_runs_the_service_by_profile_with_prometheus_and_grafana() -> None:
    compose = load_yaml(ROOT / "docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"seen-gpu", "seen-cpu", "prometheus", "grafana"}
    assert services["seen-gpu"]["profiles"] == ["gpu"] and services["seen-cpu"]["profiles"] == ["cpu"]
    assert services["seen-gpu"]["build"]["args"]["VARIANT"] == "gpu"
    assert services["seen-cpu"]["build"]["args"]["VARIANT"] == "cpu"
    [device] = services["seen-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "deploy" not in services["seen-cpu"]
    for name, service in services.items():
        assert "healthcheck" in service, name
        assert not service["image"].endswith(":latest") and ":" in service["image"], name
    # Start order: Prometheus with the service (it must see a slow or failing load), Grafana once Prometheus is up.
    assert all(not dep["required"] for dep in services["prometheus"]["depends_on"].values())
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert set(compose["volumes"]) == {"prometheus-data", "grafana-data"}


def test_compose_mounts_exist_and_variables_are_settings() -> None:
    compose = load_yaml(ROOT / "docker-compose.yml")
    for service in ("prometheus", "grafana"):
        for volume in compose["services"][service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), volume
            else:
                assert source in compose["volumes"], volume
    prometheus_files = [v for v in compose["services"]["prometheus"]["volumes"] if v.startswith("./deploy/prometheus")]
    assert prometheus_files == ["./deploy/prometheus:/etc/prometheus:ro"]
    targets = {volume.rsplit(":", 2)[1] for volume in compose["x-seen"]["volumes"]}
    assert targets == {"/models", "/bundles"}
    for variable in compose["x-seen"]["environment"]:
        assert variable.removeprefix("SEEN_").lower() in Settings.model_fields, variable
    grace = float(compose["x-seen"]["environment"]["SEEN_SHUTDOWN_GRACE_SECONDS"])
    assert float(compose["x-seen"]["stop_grace_period"].removesuffix("s")) > grace


# -- Dockerfile ------------------------------------------------------------------------------------


def dockerfile() -> list[dict[str, Any]]:
    return list(DockerfileParser(str(ROOT / "Dockerfile")).structure)


def stage_instructions() -> dict[str, list[dict[str, Any]]]:
    stages: dict[str, list[dict[str, Any]]] = {}
    current = ""
    for instruction in dockerfile():
        if instruction["instruction"] == "FROM":
            current = instruction["value"].split(" AS ")[-1].strip()
            stages[current] = []
        if current:
            stages[current].append(instruction)
    return stages


def test_the_image_is_multi_stage_gpu_by_default_with_a_cpu_variant() -> None:
    arguments = {i["value"].split("=")[0]: i["value"] for i in dockerfile() if i["instruction"] == "ARG"}
    assert arguments["VARIANT"] == "VARIANT=gpu"
    assert arguments["CUDA_IMAGE"].startswith("CUDA_IMAGE=nvidia/cuda:") and "runtime" in arguments["CUDA_IMAGE"]
    stages = stage_instructions()
    assert list(stages) == ["base-gpu", "base-cpu", "build", "runtime"]
    assert stages["build"][0]["value"].startswith("base-${VARIANT}")
    assert stages["runtime"][0]["value"].startswith("base-${VARIANT}")
    torch_indexes = {name: [i["value"] for i in stages[name] if "TORCH_INDEX_URL" in i["value"]] for name in stages}
    assert "whl/cu" in torch_indexes["base-gpu"][0] and "whl/cpu" in torch_indexes["base-cpu"][0]


def test_the_runtime_stage_is_non_root_exposes_the_port_and_checks_health() -> None:
    runtime = stage_instructions()["runtime"]
    by_kind: dict[str, list[str]] = {}
    for instruction in runtime:
        by_kind.setdefault(instruction["instruction"], []).append(instruction["value"])
    user = by_kind["USER"][-1]
    assert user.isdigit() and int(user) != 0
    assert by_kind["EXPOSE"] == [str(Settings.model_fields["port"].default)]
    assert "/health" in by_kind["HEALTHCHECK"][0]
    assert json.loads(by_kind["ENTRYPOINT"][0]) == ["seen"] and json.loads(by_kind["CMD"][0]) == ["serve"]
    assert "COPY --from=build" in " ".join(i["content"] for i in runtime)
    assert not any(i["instruction"] == "RUN" and "pip" in i["value"] for i in runtime), "nothing installed at run"


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    parts = Path(path).parts
    for pattern in dockerignore():
        bare = pattern.removeprefix("**/")
        if fnmatch.fnmatch(path, pattern) or any(fnmatch.fnmatch(part, bare) for part in parts):
            return True
    return False


def test_the_build_copies_every_package_and_the_demo_model_into_the_image() -> None:
    copies = [i["value"].split() for i in stage_instructions()["build"] if i["instruction"] == "COPY"]
    copy_sources = {source for words in copies for source in words[:-1]}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {name.rstrip("*") for name in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copy_sources, "a package of pyproject.toml is not copied into the image"
    assert {"pyproject.toml", "README.md"} <= copy_sources
    for source in copy_sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source), f"{source} is copied but .dockerignore leaves it out of the context"
    for asset in (ROOT / "demo" / "assets").rglob("*"):
        assert not ignored(str(asset.relative_to(ROOT))), asset
    assert ignored(".git") and ignored("tests") and ignored("demo/__pycache__")


# -- Kubernetes ------------------------------------------------------------------------------------


def kustomized() -> list[str]:
    return list(load_yaml(KUBERNETES / "kustomization.yaml")["resources"])


def manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object under deploy/kubernetes, by file name (one object per file)."""
    files = sorted({*kustomized(), "hpa-cpu.yaml"})
    return {name: load_yaml(KUBERNETES / name) for name in files}


def test_kustomization_lists_every_manifest_but_the_alternative_hpa() -> None:
    on_disk = {path.name for path in KUBERNETES.glob("*.yaml")}
    on_disk -= {"kustomization.yaml", "hpa-cpu.yaml", "prometheus-adapter-values.yaml"}
    assert set(kustomized()) == on_disk


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, kubernetes_validate.utils.latest_version()])
def test_core_objects_validate_against_the_kubernetes_schemas(version: str) -> None:
    core = {name: obj for name, obj in manifests().items() if "monitoring.coreos.com" not in obj["apiVersion"]}
    assert {obj["kind"] for obj in core.values()} >= {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "PersistentVolumeClaim",
    }  # fmt: skip
    for name, obj in core.items():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name} does not validate against Kubernetes {version}: {error}")


def test_the_validator_rejects_a_broken_deployment() -> None:
    broken = manifests()["deployment.yaml"]
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    unknown = manifests()["deployment.yaml"]
    unknown["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, KUBERNETES_VERSION, strict=True)


def validate_operator_objects(objects: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None or not (CRD_CHECK / "node_modules").is_dir():
        pytest.fail(f"the CRD check needs Node and `npm ci --prefix {CRD_CHECK.relative_to(ROOT)}` (make install)")
    return subprocess.run(
        [node, "validate.mjs"], input=json.dumps(objects), cwd=CRD_CHECK, capture_output=True, text=True, timeout=60
    )


def test_operator_objects_validate_against_the_prometheus_operator_crds() -> None:
    operator = [obj for obj in manifests().values() if obj["apiVersion"] == "monitoring.coreos.com/v1"]
    assert sorted(obj["kind"] for obj in operator) == ["PrometheusRule", "ServiceMonitor"]
    result = validate_operator_objects(operator)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("OK ") == 2

    broken = manifests()["servicemonitor.yaml"]
    broken["spec"]["endpoints"][0]["interval"] = "every now and then"
    assert validate_operator_objects([broken]).returncode == 1


def test_the_prometheus_rule_is_rendered_from_the_compose_rules() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("render", KUBERNETES / "render_prometheusrule.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (KUBERNETES / "prometheusrule.yaml").read_text() == module.render(), "run make k8s-rules"
    assert (
        load_yaml(KUBERNETES / "prometheusrule.yaml")["spec"]["groups"]
        == load_yaml(PROMETHEUS / "alerts.yml")["groups"]
    )


def container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    [main] = objects["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
    return dict(main)


def test_the_deployment_probes_drains_and_mounts_as_the_service_expects() -> None:
    objects = manifests()
    pod = objects["deployment.yaml"]["spec"]["template"]["spec"]
    main = container(objects)
    assert main["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert main["livenessProbe"]["httpGet"]["path"] == "/health"
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {item["name"]: item["value"] for item in main["env"]}
    for name in env:
        if name.startswith("SEEN_"):
            assert name.removeprefix("SEEN_").lower() in Settings.model_fields, name
    settings = Settings(
        **{name.removeprefix("SEEN_").lower(): value for name, value in env.items() if name.startswith("SEEN_")}
    )
    sleep = main["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(sleep[1]) + settings.shutdown_grace_seconds
    mounts = {mount["name"]: mount for mount in main["volumeMounts"]}
    [claim] = [volume for volume in pod["volumes"] if "persistentVolumeClaim" in volume]
    assert claim["persistentVolumeClaim"]["claimName"] == objects["pvc.yaml"]["metadata"]["name"]
    model_root = mounts[claim["name"]]["mountPath"]
    assert mounts[claim["name"]]["readOnly"]
    assert settings.model.startswith(f"{model_root}/") and settings.bundle.startswith(f"{model_root}/")
    assert pod["securityContext"]["runAsNonRoot"] and main["securityContext"]["readOnlyRootFilesystem"]


def test_service_monitor_pdb_and_autoscalers_select_the_deployment() -> None:
    objects = manifests()
    pod_labels = objects["deployment.yaml"]["spec"]["template"]["metadata"]["labels"]
    service = objects["service.yaml"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    [port] = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in container(objects)["ports"]}
    monitor = objects["servicemonitor.yaml"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] == port["name"] and monitor["endpoints"][0]["path"] == "/metrics"
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "seen"  # SeenDown matches job="seen"
    assert objects["pdb.yaml"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for name in ("hpa.yaml", "hpa-cpu.yaml"):
        target = objects[name]["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", objects["deployment.yaml"]["metadata"]["name"])
