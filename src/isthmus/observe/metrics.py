"""Prometheus metrics of the long-running components other than the agent (`agent/metrics.py`), through
prometheus_client: each keeps a registry of its own (several share a process in tests) and serves it at
/metrics on `--metrics HOST:PORT` (the API: on its own port, to the admin)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def serve(registry: CollectorRegistry, listen: str) -> None:
    """Serve `registry` at http://HOST:PORT/metrics in a background thread."""
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), host or "127.0.0.1", registry=registry)


class KubeMetrics:
    """The Kubernetes network manager: events heard, batches reconciled and how long they took."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "isthmus_kube_events", "Changes heard from the API server", ["kind"], registry=self.registry
        )
        self.batch_seconds = Histogram(
            "isthmus_kube_reconcile_seconds",
            "A batch's reconcile into the ledger",
            registry=self.registry,
            buckets=SECONDS,
        )
        self.errors = Counter("isthmus_kube_reconcile_errors", "Batches that failed", registry=self.registry)
        self.pending = Gauge(
            "isthmus_kube_pending_objects", "Objects waiting to be reconciled", registry=self.registry
        )


class FederationMetrics:
    """The federation speaker: routes it announces and imports, whether it leads the imports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.exported = Gauge(
            "isthmus_federation_exported_routes", "Routes announced", registry=self.registry
        )
        self.imported = Gauge("isthmus_federation_imported_routes", "Routes imported", registry=self.registry)
        self.leading = Gauge(
            "isthmus_federation_leading", "1 while this replica imports", registry=self.registry
        )
        self.errors = Counter(
            "isthmus_federation_errors", "Passes that failed", ["reason"], registry=self.registry
        )


class ApiMetrics:
    """The API server: requests by method, route and answer, and how long they took."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "isthmus_api_request_seconds",
            "Requests by method, route template and status code",
            ["method", "route", "code"],
            registry=self.registry,
            buckets=SECONDS,
        )
