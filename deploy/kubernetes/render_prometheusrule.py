"""Write prometheusrule.yaml from ../prometheus/alerts.yml, so the compose stack and the Prometheus
Operator load the same rules: ``python deploy/kubernetes/render_prometheusrule.py`` (``make k8s-rules``).
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parent / "prometheus" / "alerts.yml"
OUTPUT = HERE / "prometheusrule.yaml"
HEADER = "# Generated from deploy/prometheus/alerts.yml by render_prometheusrule.py: edit the rules there.\n"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the PromQL expressions) as literal blocks, as in alerts.yml."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _string)


def prometheus_rule(groups: list[dict[str, object]]) -> dict[str, object]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "seen", "labels": {"app.kubernetes.io/name": "seen", "release": "prometheus"}},
        "spec": {"groups": groups},
    }


def render() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return HEADER + yaml.dump(prometheus_rule(groups), Dumper=_Dumper, sort_keys=False, width=120)


if __name__ == "__main__":
    OUTPUT.write_text(render())
