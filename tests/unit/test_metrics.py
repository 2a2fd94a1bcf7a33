"""The agent's metrics through prometheus_client, and the Grafana dashboard in deploy/ asking only for
series the agent exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from isthmus.agent.metrics import AgentMetrics, BgpCollector, FlowCollector

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "isthmus.json"


def exported() -> str:
    metrics = AgentMetrics("node-1")
    metrics.reconcile_seconds.observe(0.02)
    metrics.programming_seconds.observe(0.05)
    metrics.store_up.set(1)
    report = {"peers": [{"address": "192.0.2.1", "state": "Established"}], "announced": ["203.0.113.5/32"]}
    metrics.watch(BgpCollector("node-1", lambda: report))
    metrics.watch(FlowCollector("node-1", lambda: ({("dropped", "x/deny"): 3}, 2)))
    return metrics.text()


def test_the_agent_exports_histograms_flows_and_bgp_for_its_node() -> None:
    text = exported()
    assert 'isthmus_agent_reconcile_seconds_bucket{le="0.025",node="node-1"} 1.0' in text
    assert 'isthmus_flows_total{node="node-1",rule="x/deny",verdict="dropped"} 3.0' in text
    assert 'isthmus_flows_lost_total{node="node-1"} 2.0' in text
    assert 'isthmus_bgp_session_established{node="node-1",peer="192.0.2.1"} 1.0' in text
    assert "_created" not in text


def test_the_dashboard_asks_only_for_exported_series() -> None:
    text = exported()
    names = {line.split("{")[0].split()[0] for line in text.splitlines() if line and not line.startswith("#")}
    dashboard = json.loads(DASHBOARD.read_text())
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bisthmus_[a-z_]+", target["expr"])
    }
    assert asked and asked <= names, asked - names
