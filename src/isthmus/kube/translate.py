"""Translation: Kubernetes objects to Isthmus intent. Pure functions of a view of the cluster.

Invariants: every object made here carries the annotation isthmus.io/source=kubernetes (so orphans are
found); names and namespaces follow Kubernetes (a namespace is a tenant, a pod is an endpoint of the same
name); addresses are not chosen here but allocated at admission, idempotently by owner.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

from isthmus.kube.config import Isolation, KubeConfig
from isthmus.kube.view import Key, KubeView, host_network, node_name
from isthmus.model import (
    EgressIP,
    Endpoint,
    FloatingIP,
    KubeObject,
    Node,
    Policy,
    Resource,
    ServiceVIP,
    Subnet,
    SubnetPool,
    Tenant,
    VirtualNetwork,
)
from isthmus.model.manifest import describe
from isthmus.model.netpol import parse_network_policy

SOURCE = "isthmus.io/source"
ISOLATION = "isthmus.io/isolation"
EGRESS_IP = "isthmus.io/egress-ip"
NETWORK_MODE = "isthmus.io/network-mode"
NODE_ACCESS = "isthmus.io/node-access"  # "false": the namespace's own networks do not reach the nodes
ROUTE_TARGETS = "isthmus.io/route-targets"  # NETWORK=RT[,RT...][;NETWORK=...]: imported and exported
IP_FAMILIES = "isthmus.io/ip-families"  # IPv4, IPv6 or both (comma): of the namespace's own networks
DECLARED_NETWORK = "isthmus.io/declared-network"  # on an Endpoint whose pod now declares another network
KUBERNETES = "kubernetes"
MODES: tuple[Isolation, ...] = ("cluster", "namespace", "collection")


INFRASTRUCTURE: Key = ("", None, "")


class TranslationError(ValueError):
    """A Kubernetes object that cannot be translated; the message names it and the field."""


def _meta(
    name: str, namespace: str | None = None, labels: dict[str, str] | None = None, uid: str = ""
) -> dict[str, Any]:
    annotations = {SOURCE: KUBERNETES} | ({"isthmus.io/kube-uid": uid} if uid else {})
    meta: dict[str, Any] = {"name": name, "labels": labels or {}, "annotations": annotations}
    return meta | ({"namespace": namespace} if namespace else {})


def _field(obj: KubeObject, path: str, value: Any, kind: type, default: Any = None) -> Any:
    if value is None:
        return default
    if not isinstance(value, kind):
        where = f"{obj.kind} {obj.metadata.namespace}/{obj.metadata.name}"
        raise TranslationError(f"{where}: {path} must be a {kind.__name__}, got {value!r}")
    return value


def infrastructure(config: KubeConfig, view: KubeView) -> list[Resource]:
    """The cluster-wide tenant and networks (pods in cluster mode, services, the public pool), and the
    default node while no node is known or pods still run on it."""
    system = config.system
    made: list[Resource] = [
        Tenant.model_validate(
            {"metadata": _meta(system), "spec": {"description": "Kubernetes cluster networks"}}
        ),
        *(
            SubnetPool.model_validate(
                {
                    "metadata": _meta(family_name("kube-pods", c.version)),
                    "spec": {"cidr": c, "blockPrefixLength": config.block(c.version)},
                }
            )
            for c in config.pod_cidrs
        ),
        VirtualNetwork.model_validate(
            {
                "metadata": _meta("pods", system),
                "spec": {"shared": True, **pod_pools(config), "egress": True},
            }
        ),
        VirtualNetwork.model_validate({"metadata": _meta("services", system), "spec": {"shared": True}}),
        *(
            Subnet.model_validate(
                {
                    "metadata": _meta(family_name("services", c.version), system),
                    "spec": {"network": "services", "cidr": c, "noGateway": True},
                }
            )
            for c in config.service_cidrs
        ),
        VirtualNetwork.model_validate({"metadata": _meta("public", system), "spec": {"external": True}}),
        *(
            Subnet.model_validate(
                {
                    "metadata": _meta(family_name("public", c.version), system),
                    "spec": {"network": "public", "cidr": c},
                }
            )
            for c in config.external_pools
        ),
    ]
    nodes = view.nodes()
    if config.default_node not in nodes and (not nodes or view.pods_on[config.default_node] > 0):
        made.append(
            Node.model_validate(
                {"metadata": _meta(config.default_node), "spec": {"address": config.default_node_address}}
            )
        )
    return made


def family_name(base: str, family: int) -> str:
    """The name of an object of the cluster's infrastructure for one family: IPv6's end in -v6."""
    return base if family == 4 else f"{base}-v6"


def pod_pools(config: KubeConfig, families: list[int] | None = None) -> dict[str, Any]:
    """The SubnetPools pod networks grow by (of `families`, else the cluster's), the primary family's
    first (one as `subnetPool`)."""
    pools = [family_name("kube-pods", f) for f in config.families() if families is None or f in families]
    return {"subnetPools": pools} if len(pools) > 1 else {"subnetPool": pools[0]}


def namespace_families(namespace: str, value: str | None, config: KubeConfig) -> list[int] | None:
    """The families the annotation isthmus.io/ip-families gives the namespace's own networks (None: the
    cluster's)."""
    if value is None:
        return None
    given = [f.strip() for f in value.split(",") if f.strip()]
    cluster = [f"IPv{f}" for f in config.families()]
    if not given or len(set(given)) != len(given) or any(f not in cluster for f in given):
        raise TranslationError(
            f"Namespace {namespace}: annotation {IP_FAMILIES} is {value!r}; give families of this cluster "
            f"({', '.join(cluster)}), comma-separated, each once"
        )
    return [int(f[-1]) for f in given]


def node(kube_node: KubeObject) -> Node:
    """A Kubernetes Node as an Isthmus Node, at its InternalIPs (else its addresses), the first of each
    family: the first of all is its tunnel endpoint."""
    addresses = [a for a in (kube_node.body.get("status") or {}).get("addresses") or [] if a.get("address")]
    internal = [a for a in addresses if a.get("type") == "InternalIP"] or addresses
    if not internal:
        raise TranslationError(f"Node {kube_node.metadata.name}: status.addresses has no address")
    meta = _meta(kube_node.metadata.name, None, kube_node.metadata.labels, kube_node.metadata.uid or "")
    try:
        ips = [ipaddress.ip_address(a["address"]) for a in internal]
    except ValueError as exc:
        raise TranslationError(f"Node {kube_node.metadata.name}: status.addresses: {exc}") from None
    first = [ip for i, ip in enumerate(ips) if ip.version not in {o.version for o in ips[:i]}]
    spec = {"address": str(first[0]), "addresses": [str(ip) for ip in first]}
    return Node.model_validate({"metadata": meta, "spec": spec})


def isolation(view: KubeView, namespace: str, config: KubeConfig) -> Isolation:
    declared = view.get("Namespace", None, namespace)
    mode = declared.metadata.annotations.get(ISOLATION, config.isolation) if declared else config.isolation
    if mode not in MODES:
        raise TranslationError(
            f"Namespace {namespace}: annotation {ISOLATION} is {mode!r}; use one of {', '.join(MODES)}"
        )
    return mode


def _dns_label(value: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in value.lower()).strip("-.") or "pods"


def declared_network(pod: KubeObject, mode: Isolation, config: KubeConfig) -> str:
    """The reference of the virtual network the pod's namespace and labels place it in now."""
    if mode == "cluster":
        return f"{config.system}/pods"
    if mode == "collection" and "name" in pod.metadata.labels:
        return _dns_label(pod.metadata.labels["name"])
    return "pods"


def network_of(view: KubeView, pod: KubeObject, mode: Isolation, config: KubeConfig) -> str:
    """The pod's network, as its endpoint names it: the one it was admitted to, for its UID's life (as
    its IP in Kubernetes), else the one it declares."""
    held = view.held.get(pod.metadata.uid or "")
    return held if held is not None else declared_network(pod, mode, config)


def _terminal(pod: KubeObject) -> bool:
    """No Endpoint: the pod has ended, or it shares its node's network (its address is its node's)."""
    status = pod.body.get("status") or {}
    return status.get("phase") in ("Succeeded", "Failed") or host_network(pod)


def _backend(
    pod: KubeObject, ready: bool, ports: dict[str, int], address: str | None
) -> dict[str, Any] | None:
    """A pod as a service backend: its Endpoint, or a host-network pod's address (its node's); None for
    a pod that has ended or has no address yet."""
    phase = (pod.body.get("status") or {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        return None
    if host_network(pod):
        return {"address": address, "ready": ready, "ports": ports} if address else None
    return {"endpoint": pod.metadata.name, "ready": ready, "ports": ports}


def _container_ports(pod: KubeObject) -> list[dict[str, Any]]:
    ports = []
    for container in (pod.body.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            number = port.get("containerPort")
            if isinstance(number, int):
                ports.append(
                    {"name": port.get("name", ""), "port": number, "protocol": port.get("protocol", "TCP")}
                )
    return ports


def endpoint(view: KubeView, pod: KubeObject, mode: Isolation, config: KubeConfig) -> Endpoint:
    """The pod's Endpoint, annotated with the network the pod declares when that is not the one it holds."""
    meta = pod.metadata
    network, declared = network_of(view, pod, mode, config), declared_network(pod, mode, config)
    spec = {
        "kind": "pod",
        "network": network,
        "node": node_name(pod),
        "owner": {"kind": "Pod", "name": meta.name, "uid": meta.uid or ""},
        "ports": _container_ports(pod),
    }
    metadata = _meta(meta.name, meta.namespace, meta.labels, meta.uid or "")
    if declared != network:
        metadata["annotations"][DECLARED_NETWORK] = declared
    try:
        return Endpoint.model_validate({"metadata": metadata, "spec": spec})
    except ValidationError as exc:
        raise TranslationError(f"Pod {meta.namespace}/{meta.name}: {describe(exc)}") from None


def _ready(pod: KubeObject) -> bool:
    conditions = (pod.body.get("status") or {}).get("conditions") or []
    ready = [c for c in conditions if c.get("type") == "Ready"]
    # declared in a manifest, nothing reports readiness: it is taken as ready
    return all(c.get("status") == "True" for c in ready)


def _service_ports(svc: KubeObject) -> list[dict[str, Any]]:
    ports = []
    for i, port in enumerate(_field(svc, "spec.ports", (svc.body.get("spec") or {}).get("ports"), list, [])):
        number = port.get("port") if isinstance(port, dict) else None
        if not isinstance(number, int):
            where = f"Service {svc.metadata.namespace}/{svc.metadata.name}"
            raise TranslationError(f"{where}: spec.ports[{i}].port must be a number, got {number!r}")
        ports.append(
            {
                "name": port.get("name", ""),
                "protocol": port.get("protocol", "TCP"),
                "port": number,
                "targetPort": port.get("targetPort", number),  # the API server defaults it so
                "nodePort": port.get("nodePort"),
            }
        )
    return ports


def _matches(selector: dict[str, str], pod: KubeObject) -> bool:
    return all(pod.metadata.labels.get(k) == v for k, v in selector.items())


def selects(svc: KubeObject, pod: KubeObject) -> bool:
    selector = (svc.body.get("spec") or {}).get("selector")
    return bool(selector) and isinstance(selector, dict) and _matches(selector, pod)


def _selected_backends(svc: KubeObject, selector: dict[str, str], view: KubeView) -> list[dict[str, Any]]:
    """Backends chosen by the selector, as a controller would list them (manifests)."""
    pods = view.objects.get("Pod", {}).get(svc.metadata.namespace, {}).values()
    made = (
        _backend(
            p,
            _ready(p),
            {q["name"]: q["port"] for q in _container_ports(p) if q["name"]},
            (p.body.get("status") or {}).get("podIP"),
        )
        for p in pods
        if _matches(selector, p)
    )
    return [b for b in made if b is not None]


def _listed_backends(svc: KubeObject, listed: KubeObject, view: KubeView) -> list[dict[str, Any]]:
    """Backends from the service's Endpoints object (the endpoints controller's, of the service's first
    family, or a user's)."""
    backends = []
    for subset in listed.body.get("subsets") or []:
        ports = _named_ports(subset)
        for ready, field in ((True, "addresses"), (False, "notReadyAddresses")):
            for address in subset.get(field) or []:
                made = _listed(svc, view, address.get("targetRef"), address.get("ip"), ready, ports)
                backends += [made] if made is not None else []
    return backends


def _sliced_backends(svc: KubeObject, slices: list[KubeObject], view: KubeView) -> list[dict[str, Any]]:
    """Backends from the service's EndpointSlices (the endpointslice controller's, one or more of each
    family, or a user's): a pod once, with its addresses of both families; a plain address of its slice's
    family. FQDN slices give none (nothing to DNAT to); an endpoint of unknown readiness is ready, as
    the API defines it."""
    backends: dict[str, dict[str, Any]] = {}
    for found in slices:
        if found.body.get("addressType") not in ("IPv4", "IPv6"):
            continue
        ports = _named_ports(found.body)
        for endpoint in found.body.get("endpoints") or []:
            ready = (endpoint.get("conditions") or {}).get("ready") is not False
            for ip in endpoint.get("addresses") or []:
                made = _listed(svc, view, endpoint.get("targetRef"), ip, ready, ports)
                if made is not None:
                    backends.setdefault(made.get("endpoint") or made["address"], made)
    return list(backends.values())


def _named_ports(listing: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["port"] for p in listing.get("ports") or [] if p.get("name") and p.get("port")}


def _listed(
    svc: KubeObject,
    view: KubeView,
    ref: dict[str, Any] | None,
    ip: str | None,
    ready: bool,
    ports: dict[str, int],
) -> dict[str, Any] | None:
    """A listed address as a backend: the pod it names while the pod is known in the service's namespace
    (so no backend outlives its pod), else the plain address."""
    ref = ref or {}
    if ref.get("kind") == "Pod":
        pod = view.get("Pod", ref.get("namespace", svc.metadata.namespace), ref.get("name", ""))
        if pod is None or pod.metadata.namespace != svc.metadata.namespace:
            return None
        return _backend(pod, ready, ports, ip)
    return {"address": ip, "ready": ready, "ports": ports} if ip else None


_POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")


def ip_families(svc: KubeObject, config: KubeConfig) -> list[str]:
    """The families of a Service's ClusterIPs, as the API server chooses them from `ipFamilyPolicy`,
    `ipFamilies` and `clusterIPs`; what it refuses is refused with its messages."""
    spec = svc.body.get("spec") or {}
    policy = spec.get("ipFamilyPolicy") or "SingleStack"
    cluster = [f"IPv{f}" for f in config.families()]

    def refuse(field: str, problem: str) -> TranslationError:
        return TranslationError(
            f"Service {svc.metadata.namespace}/{svc.metadata.name}: spec.{field}: {problem}"
        )

    if policy not in _POLICIES:
        supported = ", ".join(f'"{p}"' for p in sorted(_POLICIES))
        raise refuse("ipFamilyPolicy", f'Unsupported value: "{policy}": supported values: {supported}')
    given = [
        str(ip) for ip in _field(svc, "spec.clusterIPs", spec.get("clusterIPs"), list, []) if ip != "None"
    ]
    try:
        from_ips = [f"IPv{ipaddress.ip_address(ip).version}" for ip in given]
    except ValueError:
        raise refuse("clusterIPs", f"Invalid value: {given}: must be IP addresses") from None
    asked = [str(f) for f in _field(svc, "spec.ipFamilies", spec.get("ipFamilies"), list, [])] or from_ips
    for i, family in enumerate(asked):
        if family not in ("IPv4", "IPv6"):
            raise refuse(
                f"ipFamilies[{i}]", f'Unsupported value: "{family}": supported values: "IPv4", "IPv6"'
            )
        if family not in cluster:
            raise refuse(f"ipFamilies[{i}]", f'Invalid value: "{family}": not configured on this cluster')
    if len(set(asked)) != len(asked):
        raise refuse("ipFamilies", f"Duplicate value: {asked}")
    if policy == "RequireDualStack" and len(cluster) < 2:
        problem = "this cluster is not configured for dual-stack services"
        raise refuse("ipFamilyPolicy", f'Invalid value: "RequireDualStack": {problem}')
    if policy == "SingleStack" and len(asked) > 1:
        problem = "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified"
        raise refuse("ipFamilyPolicy", f'Invalid value: "SingleStack": {problem}')
    if policy == "SingleStack":
        return asked or cluster[:1]
    return asked + [f for f in cluster if f not in asked]


def service_vip(svc: KubeObject, view: KubeView, config: KubeConfig) -> ServiceVIP | None:
    """The VIP of a Service; None for headless and ExternalName services.

    Backends come from the service's EndpointSlices when it has any, else from its Endpoints object when
    there is one, else from its selector.
    """
    spec = svc.body.get("spec") or {}
    kind = spec.get("type", "ClusterIP")
    if spec.get("clusterIP") == "None" or kind == "ExternalName":
        return None
    selector = _field(svc, "spec.selector", spec.get("selector"), dict, {})
    publish = bool(spec.get("publishNotReadyAddresses"))
    listed = view.get("Endpoints", svc.metadata.namespace, svc.metadata.name)
    if slices := view.slices_of(svc.metadata.namespace, svc.metadata.name):
        backends = _sliced_backends(svc, slices, view)
    elif listed is not None:
        backends = _listed_backends(svc, listed, view)
    else:
        backends = _selected_backends(svc, selector, view) if selector else []
    backends.sort(key=lambda b: (b.get("endpoint") or "", b.get("address") or ""))
    timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds", 10800)
    body = {
        "network": f"{config.system}/services",
        "vips": [ip for ip in spec.get("clusterIPs") or [spec.get("clusterIP")] if ip],
        "ipFamilies": ip_families(svc, config),
        "ports": _service_ports(svc),
        "backends": backends,
        "type": kind,
        "externalIPs": spec.get("externalIPs") or [],
        "sessionAffinity": spec.get("sessionAffinity", "None"),
        "affinityTimeout": timeout,
        "publishNotReady": publish,
        "externalTrafficPolicy": spec.get("externalTrafficPolicy") or "Cluster",
    }
    meta = svc.metadata
    try:
        return ServiceVIP.model_validate(
            {"metadata": _meta(meta.name, meta.namespace, meta.labels, meta.uid or ""), "spec": body}
        )
    except ValidationError as exc:
        raise TranslationError(f"Service {meta.namespace}/{meta.name}: {describe(exc)}") from None


def floating_ip(svc: KubeObject, config: KubeConfig) -> FloatingIP | None:
    """A LoadBalancer's ingress: an address of each of its families the public pools have."""
    spec = svc.body.get("spec") or {}
    if spec.get("type") != "LoadBalancer":
        return None
    meta = svc.metadata
    pools = {f"IPv{c.version}" for c in config.external_pools}
    body = {
        "pool": f"{config.system}/public",
        "service": meta.name,
        "address": spec.get("loadBalancerIP") or None,
        "ipFamilies": [f for f in ip_families(svc, config) if f in pools],
    }
    return FloatingIP.model_validate(
        {"metadata": _meta(meta.name, meta.namespace, meta.labels, meta.uid or ""), "spec": body}
    )


def uses_policies(namespace: str, pods: list[KubeObject], services: set[str]) -> list[Policy]:
    """Collection mode: pods labelled uses=SERVICE may reach that service (its VIP, then its backends)."""
    used = sorted({p.metadata.labels["uses"] for p in pods if p.metadata.labels.get("uses") in services})
    return [
        Policy.model_validate(
            {
                "metadata": _meta(f"uses-{_dns_label(name)}", namespace),
                "spec": {
                    "priority": 500,
                    "rules": [
                        {
                            "action": "allow",
                            "source": {"selector": {"matchLabels": {"uses": name}}},
                            "destination": {"service": name},
                        }
                    ],
                },
            }
        )
        for name in used
    ]


def check_network_policy(policy: KubeObject) -> None:
    where = f"NetworkPolicy {policy.metadata.namespace}/{policy.metadata.name}"
    try:
        spec = parse_network_policy(policy.body)
    except ValidationError as exc:
        raise TranslationError(f"{where}: {describe(exc)}") from None
    ports = [p for r in spec.ingress for p in r.ports] + [p for r in spec.egress for p in r.ports]
    if any(port.protocol == "ICMP" for port in ports):
        raise TranslationError(f"{where}: protocol ICMP is not one of TCP, UDP, SCTP")


def units(view: KubeView) -> Iterator[Key]:
    """The parts a translation is made of: each part is a function of the view, named by the object whose
    change makes it change (the infrastructure is ("", None, "")."""
    yield INFRASTRUCTURE
    for kind in ("Node", "Pod", "Service"):
        yield from ((kind, o.metadata.namespace, o.metadata.name) for o in view.of(kind))
    yield from (("Namespace", None, namespace) for namespace in view.namespaces())


def part(view: KubeView, unit: Key, config: KubeConfig) -> list[Resource]:
    """What one part of the cluster means; empty when its object is gone."""
    kind, namespace, name = unit
    if unit == INFRASTRUCTURE:
        return infrastructure(config, view)
    if kind == "Namespace":
        return namespace_part(view, name, config) if view.holds(name) else []
    found = view.get(kind, namespace, name)
    if found is None:
        return []
    if kind == "Node":
        return [node(found)]
    if kind == "Pod":
        assert namespace is not None
        mode = isolation(view, namespace, config)
        scheduled = node_name(found) is not None  # as in Kubernetes, a pod has no address before its node
        return [endpoint(view, found, mode, config)] if scheduled and not _terminal(found) else []
    return [o for o in (service_vip(found, view, config), floating_ip(found, config)) if o is not None]


def egress_ip(view: KubeView, namespace: str, config: KubeConfig) -> list[EgressIP]:
    """The namespace's egress addresses (annotation isthmus.io/egress-ip: one, or one of each family
    separated by a comma), from the public pool."""
    declared = view.get("Namespace", None, namespace)
    value = declared.metadata.annotations.get(EGRESS_IP) if declared else None
    if value is None:
        return []
    addresses = [a.strip() for a in value.split(",")]
    try:
        spec = {"pool": f"{config.system}/public", "addresses": addresses}
        return [EgressIP.model_validate({"metadata": _meta("egress", namespace), "spec": spec})]
    except ValidationError as exc:
        reason = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise TranslationError(
            f"Namespace {namespace}: annotation {EGRESS_IP} is {value!r}, not an IP address (or one of each "
            f"family, comma-separated): {reason}"
        ) from None


def route_targets(namespace: str, value: str) -> dict[str, list[str]]:
    """The annotation isthmus.io/route-targets: each of the namespace's networks and its route targets."""
    found: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in value.split(";"))):
        network, equals, targets = part.partition("=")
        if not equals or not network.strip():
            raise TranslationError(
                f"Namespace {namespace}: annotation {ROUTE_TARGETS} part {part!r} is not NETWORK=RT[,RT...]"
            )
        found[network.strip()] = [t.strip() for t in targets.split(",") if t.strip()]
    return found


def namespace_part(view: KubeView, namespace: str, config: KubeConfig) -> list[Resource]:
    """The namespace's tenant, its egress address, its own pod networks (those its pods declare or still
    hold; routed with the annotation isthmus.io/network-mode: routed; route targets from
    isthmus.io/route-targets; kept from the nodes by isthmus.io/node-access: "false") and, in collection
    mode, its `uses` policies."""
    made: list[Resource] = [Tenant.model_validate({"metadata": _meta(namespace)})]
    made += egress_ip(view, namespace, config)
    mode = isolation(view, namespace, config)
    declared = view.get("Namespace", None, namespace)
    routing = declared.metadata.annotations.get(NETWORK_MODE, "overlay") if declared else "overlay"
    if routing not in ("overlay", "routed") or (routing == "routed" and mode == "cluster"):
        raise TranslationError(
            f"Namespace {namespace}: annotation {NETWORK_MODE} is {routing!r}; overlay or routed, for the "
            f"namespace's own networks (annotation {ISOLATION}: namespace or collection)"
        )
    families = namespace_families(
        namespace, declared.metadata.annotations.get(IP_FAMILIES) if declared else None, config
    )
    access = declared.metadata.annotations.get(NODE_ACCESS, "true") if declared else "true"
    if access not in ("true", "false") or (access == "false" and mode == "cluster"):
        raise TranslationError(
            f"Namespace {namespace}: annotation {NODE_ACCESS} is {access!r}; true or false, for the "
            f"namespace's own networks (annotation {ISOLATION}: namespace or collection)"
        )
    pods = [p for p in view.of("Pod", namespace) if not _terminal(p)]
    local = sorted({n for n in (network_of(view, p, mode, config) for p in pods) if "/" not in n})
    targets = route_targets(
        namespace, declared.metadata.annotations.get(ROUTE_TARGETS, "") if declared else ""
    )
    try:
        made += [
            VirtualNetwork.model_validate(
                {
                    "metadata": _meta(n, namespace),
                    "spec": {
                        **pod_pools(config, families),
                        "egress": True,
                        "mode": routing,
                        "nodeAccess": access == "true",
                        "importTargets": targets.get(n, []),
                        "exportTargets": targets.get(n, []),
                    },
                }
            )
            for n in local
        ]
    except ValidationError as exc:
        raise TranslationError(
            f"Namespace {namespace}: annotation {ROUTE_TARGETS}: {describe(exc)}"
        ) from None
    if mode == "collection":
        services = {s.metadata.name for s in view.of("Service", namespace)}
        made += uses_policies(namespace, pods, services)
    return made


def translate(view: KubeView, config: KubeConfig) -> list[Resource]:
    """Everything the cluster's Kubernetes objects mean, as Isthmus intent."""
    for policy in view.of("NetworkPolicy"):
        check_network_policy(policy)
    return [o for unit in units(view) for o in part(view, unit, config)]
