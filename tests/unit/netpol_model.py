"""The upstream NetworkPolicy e2e model (kubernetes test/e2e/network/netpol) as data, for acceptance tests.

Two things live here, both restated from upstream rather than from anything Isthmus prints:

* `Reachability`, the expectation algebra of reachability.go: a truth table over the pods x/a..z/c that
  starts all-allowed (`NewReachability(pods, true)`) and is edited by `expect`, `expect_all_ingress`
  (a whole column), `expect_all_egress` (a whole row) and `expect_peer` (every cell whose namespace/pod
  match, None matching anything). Later calls overwrite earlier ones. Cells from a pod to itself are never
  compared (upstream `ignoreLoopback = true`, kubernetes#95879).
* `model_manifests`, the cluster of model.go as manifests: namespaces x, y, z; pods a, b, c in each with
  one container per (port, protocol) of the case; one ClusterIP Service per pod.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Self

import yaml

NAMESPACES: tuple[str, ...] = ("x", "y", "z")
POD_NAMES: tuple[str, ...] = ("a", "b", "c")
ALL_PODS: tuple[str, ...] = tuple(f"{ns}/{pod}" for ns in NAMESPACES for pod in POD_NAMES)
PROTOCOLS: tuple[str, ...] = ("TCP", "UDP", "SCTP")

NODES: tuple[tuple[str, str], ...] = (("node-1", "192.0.2.11"), ("node-2", "192.0.2.12"))
AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.53"


def split(pod: str) -> tuple[str, str]:
    namespace, _, name = pod.partition("/")
    if not namespace or not name or "/" in name:
        raise ValueError(f"expected namespace/pod, got {pod!r}")
    return namespace, name


def service_name(pod: str) -> str:
    """The Service upstream puts in front of each model pod: s-<namespace>-<pod>."""
    namespace, name = split(pod)
    return f"s-{namespace}-{name}"


class Reachability:
    """Expected connectivity between model pods: rows are sources, columns are destinations."""

    def __init__(self, pods: Sequence[str] = ALL_PODS, default: bool = True) -> None:
        for pod in pods:
            split(pod)
        self.pods: tuple[str, ...] = tuple(pods)
        self.cells: dict[str, dict[str, bool]] = {f: dict.fromkeys(self.pods, default) for f in self.pods}

    def _check(self, *pods: str) -> None:
        for pod in pods:
            if pod not in self.cells:
                raise KeyError(f"{pod} is not a pod of this model ({', '.join(self.pods)})")

    def expect(self, source: str, destination: str, allowed: bool) -> Self:
        """One cell (upstream Expect)."""
        self._check(source, destination)
        self.cells[source][destination] = allowed
        return self

    def expect_all_ingress(self, pod: str, allowed: bool) -> Self:
        """Everything into `pod`: its whole column (upstream ExpectAllIngress)."""
        self._check(pod)
        for source in self.pods:
            self.cells[source][pod] = allowed
        return self

    def expect_all_egress(self, pod: str, allowed: bool) -> Self:
        """Everything out of `pod`: its whole row (upstream ExpectAllEgress)."""
        self._check(pod)
        for destination in self.pods:
            self.cells[pod][destination] = allowed
        return self

    def expect_peer(
        self,
        from_ns: str | None,
        from_pod: str | None,
        to_ns: str | None,
        to_pod: str | None,
        allowed: bool,
    ) -> Self:
        """Every cell whose source matches Peer{from_ns, from_pod} and destination Peer{to_ns, to_pod};
        None (upstream: the empty string) matches anything (upstream ExpectPeer)."""

        def matches(pod: str, namespace: str | None, name: str | None) -> bool:
            ns, pod_name = split(pod)
            return (namespace is None or namespace == ns) and (name is None or name == pod_name)

        for source in self.pods:
            if matches(source, from_ns, from_pod):
                for destination in self.pods:
                    if matches(destination, to_ns, to_pod):
                        self.cells[source][destination] = allowed
        return self

    def allowed(self, source: str, destination: str) -> bool:
        return self.cells[source][destination]

    def wrong_cells(
        self, observed: Mapping[str, Mapping[str, bool]], ignore_loopback: bool = True
    ) -> list[tuple[str, str]]:
        """The (source, destination) cells where `observed` differs from what is expected. A cell missing
        from `observed` counts as wrong."""
        wrong = []
        for source in self.pods:
            for destination in self.pods:
                if ignore_loopback and source == destination:
                    continue
                seen = observed.get(source, {}).get(destination)
                if seen is None or seen != self.cells[source][destination]:
                    wrong.append((source, destination))
        return wrong

    def grid(self) -> str:
        """The expected table, upstream style: `.` allowed, `X` denied."""
        return render(self.pods, lambda s, d: "." if self.cells[s][d] else "X")


def render(pods: Sequence[str], cell: Any) -> str:
    """A truth table as upstream's PrettyPrint draws it: rows are sources, columns destinations."""
    width = max([len(p) for p in pods] + [1])
    lines = ["-".ljust(width) + " " + " ".join(p.ljust(width) for p in pods)]
    for source in pods:
        lines.append(source.ljust(width) + " " + " ".join(cell(source, d).ljust(width) for d in pods))
    return "\n".join(line.rstrip() for line in lines)


def grid_diff(
    expected: Reachability, observed: Mapping[str, Mapping[str, bool]], ignore_loopback: bool = True
) -> str:
    """Expected, observed and a comparison table (`.` right, `X` wrong, `-` not compared, `?` missing)."""
    pods = expected.pods
    wrong = set(expected.wrong_cells(observed, ignore_loopback))

    def seen(source: str, destination: str) -> str:
        value = observed.get(source, {}).get(destination)
        return "?" if value is None else "." if value else "X"

    def compared(source: str, destination: str) -> str:
        if ignore_loopback and source == destination:
            return "-"
        return "X" if (source, destination) in wrong else "."

    def marked(source: str, destination: str) -> str:
        return seen(source, destination) + ("!" if (source, destination) in wrong else "")

    return (
        f"expected:\n{expected.grid()}\n\n"
        f"observed ('!' marks a wrong cell):\n{render(pods, marked)}\n\n"
        f"comparison ('X' wrong, '-' loopback, not compared):\n{render(pods, compared)}\n\n"
        f"wrong cells: "
        + ", ".join(
            f"{s} -> {d} (expected {'allowed' if expected.allowed(s, d) else 'denied'}, "
            f"observed {seen(s, d)})"
            for s, d in sorted(wrong)
        )
    )


def _container(port: int, protocol: str) -> dict[str, Any]:
    proto = protocol.lower()
    if protocol == "SCTP":
        command = ["/agnhost", "porter"]
        env = [{"name": f"SERVE_SCTP_PORT_{port}", "value": "foo"}]
    else:
        command = ["/agnhost", "serve-hostname", f"--{proto}", "--http=false", "--port", str(port)]
        env = []
    container: dict[str, Any] = {
        "name": f"cont-{port}-{proto}",
        "image": AGNHOST,
        "command": command,
        "ports": [{"containerPort": port, "name": f"serve-{port}-{proto}", "protocol": protocol}],
    }
    if env:
        container["env"] = env
    return container


def model_objects(
    ports: Iterable[int],
    protocols: Iterable[str],
    *,
    pod_labels: Mapping[str, Mapping[str, str]] | None = None,
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """The model cluster as Kubernetes objects.

    `pod_labels` replaces the labels of the named pods ("x/b": {}) -- upstream relabels pods in place;
    the Service selectors stay `pod: <name>`. `namespace_labels` adds labels to namespaces.
    """
    ports = list(ports)
    protocols = list(protocols)
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is not one of {PROTOCOLS}")
    relabelled = dict(pod_labels or {})
    extra_ns = dict(namespace_labels or {})
    for pod in relabelled:
        if pod not in ALL_PODS:
            raise KeyError(f"{pod} is not a model pod")

    docs: list[dict[str, Any]] = [
        {"apiVersion": "isthmus.io/v1", "kind": "Node", "metadata": {"name": name}, "spec": {"address": addr}}
        for name, addr in NODES
    ]
    for namespace in NAMESPACES:
        labels = {"ns": namespace, "kubernetes.io/metadata.name": namespace, **extra_ns.get(namespace, {})}
        docs.append(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}}
        )
    containers = [(port, protocol) for port in ports for protocol in protocols]
    for index, pod in enumerate(ALL_PODS):
        namespace, name = split(pod)
        labels = dict(relabelled.get(pod, {"pod": name}))
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {
                    "nodeName": NODES[index % len(NODES)][0],
                    "terminationGracePeriodSeconds": 0,
                    "containers": [_container(port, protocol) for port, protocol in containers],
                },
            }
        )
    for pod in ALL_PODS:
        namespace, name = split(pod)
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": service_name(pod), "namespace": namespace},
                "spec": {
                    "type": "ClusterIP",
                    "selector": {"pod": name},
                    "ports": [
                        {
                            # upstream model.go names ServicePorts service-port-<proto>-<port>, unlike the
                            # container ports (serve-<port>-<proto>): a named policy port must resolve
                            # against the backend pod's container ports, never against the Service.
                            "name": f"service-port-{protocol.lower()}-{port}",
                            "protocol": protocol,
                            "port": port,
                            "targetPort": port,
                        }
                        for port, protocol in containers
                    ],
                },
            }
        )
    return docs


def model_manifests(
    ports: Iterable[int],
    protocols: Iterable[str],
    *,
    pod_labels: Mapping[str, Mapping[str, str]] | None = None,
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """`model_objects` as one multi-document YAML text."""
    objects = model_objects(ports, protocols, pod_labels=pod_labels, namespace_labels=namespace_labels)
    return yaml.safe_dump_all(objects, sort_keys=False)
