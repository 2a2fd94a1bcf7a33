"""The agent's Prometheus metrics, through prometheus_client, in a registry of the agent's own (several
agents share a process in tests). Every series carries the node's name. What changes at a scrape, not in
the agent's loop (the BGP sessions, the flow records), is read by a collector when scraped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from isthmus.observe.metrics import SECONDS

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series: when the process started


class AgentMetrics:
    def __init__(self, node: str) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        labels, registry = ["node"], self.registry

        def counter(name: str, doc: str) -> Any:
            return Counter(f"isthmus_agent_{name}", doc, labels, registry=registry).labels(node)

        def gauge(name: str, doc: str) -> Any:
            return Gauge(f"isthmus_agent_{name}", doc, labels, registry=registry).labels(node)

        def histogram(name: str, doc: str) -> Any:
            return Histogram(f"isthmus_agent_{name}", doc, labels, registry=registry, buckets=SECONDS).labels(
                node
            )

        self.reconciles = counter(
            "reconciles", "Reconciles: a batch of ledger changes, or a CNI request, applied"
        )
        self.lists = counter("lists", "Listings of the node's slice of the ledger (start, compaction)")
        self.errors = counter("reconcile_errors", "Reconciles that left kernel objects pending")
        self.reconcile_seconds = histogram("reconcile_seconds", "Time from a change's arrival to programmed")
        self.kernel_seconds = histogram("kernel_seconds", "Time spent programming the kernel in a reconcile")
        self.programming_seconds = histogram(
            "network_programming_seconds",
            "From the ledger taking a change of an object to this node having programmed it",
        )
        self.watch_lag_seconds = histogram(
            "watch_lag_seconds", "From the ledger taking a change of an object to this node's watch having it"
        )
        self.objects = gauge("objects_programmed", "Kernel objects the agent holds programmed")
        self.store_up = gauge("store_up", "1 while the ledger's store answers")
        self.store_errors = counter("store_errors", "Failures to reach the ledger's store")

    def value(self, sample: str) -> float:
        """A sample's value now, by its name after the prefix (`lists_total`, `kernel_seconds_sum`)."""
        return self.registry.get_sample_value(f"isthmus_agent_{sample}", {"node": self.node}) or 0.0

    def watch(self, collector: Collector) -> None:
        self.registry.register(collector)

    def text(self) -> str:
        """The Prometheus exposition format."""
        return generate_latest(self.registry).decode()


class BgpCollector(Collector):
    """The speaker's sessions (1 when Established) and announced prefixes, as its report says."""

    def __init__(self, node: str, report: Callable[[], dict[str, object] | None]) -> None:
        self.node, self.report = node, report

    def collect(self) -> Iterator[GaugeMetricFamily]:
        report = self.report() or {}
        sessions = GaugeMetricFamily(
            "isthmus_bgp_session_established", "BGP sessions, 1 when Established", labels=["node", "peer"]
        )
        peers = report.get("peers")
        for peer in peers if isinstance(peers, list) else []:
            sessions.add_metric([self.node, str(peer["address"])], 1 if peer["state"] == "Established" else 0)
        announced = report.get("announced")
        prefixes = GaugeMetricFamily("isthmus_bgp_announced_prefixes", "Prefixes announced", labels=["node"])
        prefixes.add_metric([self.node], len(announced) if isinstance(announced, list) else 0)
        yield from (sessions, prefixes)


class FlowCollector(Collector):
    """Flow records by verdict and deciding rule, and those the kernel or the ring lost."""

    def __init__(self, node: str, tally: Callable[[], tuple[dict[tuple[str, str], int], int]]) -> None:
        self.node, self.tally = node, tally

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts, dropped = self.tally()
        flows = CounterMetricFamily(
            "isthmus_flows",
            "Flow records by verdict and the rule that decided",
            labels=["node", "verdict", "rule"],
        )
        for (verdict, rule), count in sorted(counts.items()):
            flows.add_metric([self.node, verdict, rule], count)
        lost = CounterMetricFamily(
            "isthmus_flows_lost", "Flow records the kernel dropped unread", labels=["node"]
        )
        lost.add_metric([self.node], dropped)
        yield from (flows, lost)
