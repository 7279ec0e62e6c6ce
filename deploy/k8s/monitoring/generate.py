"""Writes prometheusrule.yaml: the alert rules of deploy/prometheus/alerts.yml as a prometheus-operator
PrometheusRule, for Kubernetes. The rules are the file's own text (comments included) under
``spec``; a test fails when the checked-in file differs from what this writes.

    uv run python deploy/k8s/monitoring/generate.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parents[1] / "prometheus" / "alerts.yml"
OUTPUT = HERE / "prometheusrule.yaml"

HEADER = """\
# Generated from deploy/prometheus/alerts.yml by deploy/k8s/monitoring/generate.py; do not edit:
# change alerts.yml, then run `uv run python deploy/k8s/monitoring/generate.py`.
# The release label: see podmonitor.yaml.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: dialtone
  labels:
    app.kubernetes.io/part-of: dialtone
    release: kube-prometheus-stack
spec:
"""


def render() -> str:
    lines = ALERTS.read_text().splitlines()
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)  # the file's own header speaks of promtool, not of this object
    return HEADER + "".join(f"  {line}\n" if line.strip() else "\n" for line in lines)


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
