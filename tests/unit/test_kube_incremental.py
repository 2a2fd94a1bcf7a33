"""Incremental translation: any sequence of changes leaves the ledger as a cold translation would."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isthmus.intent import IntentError
from isthmus.kube.config import KubeConfig
from isthmus.kube.sync import Reconciler, load_view
from isthmus.kube.translate import TranslationError, translate
from isthmus.model import Endpoint, KubeObject, lookup_kind
from isthmus.store import MemoryLedger, objects

NAMESPACES = ("red", "blue")
PODS = ("p0", "p1", "p2", "p3")
SERVICES = ("s0", "s1")
SLICES = ("e0", "e1")


def _kube(kind: str, name: str, namespace: str | None, body: dict[str, Any], **meta: Any) -> KubeObject:
    api = "discovery.k8s.io/v1" if kind == "EndpointSlice" else "v1"
    metadata = {"name": name, **meta} | ({"namespace": namespace} if namespace else {})
    return KubeObject.model_validate({"apiVersion": api, "kind": kind, "metadata": metadata, **body})


pods = st.builds(
    lambda ns, name, app, uses, node, phase: _kube(
        "Pod",
        name,
        ns,
        {
            "spec": {
                "nodeName": node,
                "containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 80}]}],
            },
            "status": {"phase": phase},
        },
        labels={"name": app} | ({"uses": uses} if uses else {}),
    ),
    st.sampled_from(NAMESPACES),
    st.sampled_from(PODS),
    st.sampled_from(("x", "y")),
    st.sampled_from((None, *SERVICES)),
    st.sampled_from(("node-1", "n2", "n3")),
    st.sampled_from(("Running", "Succeeded")),
)
services = st.builds(
    lambda ns, name, app, kind, headless: _kube(
        "Service",
        name,
        ns,
        {
            "spec": {"selector": {"name": app}, "type": kind, "ports": [{"port": 80, "targetPort": "web"}]}
            | ({"clusterIP": "None"} if headless else {})
        },
    ),
    st.sampled_from(NAMESPACES),
    st.sampled_from(SERVICES),
    st.sampled_from(("x", "y")),
    st.sampled_from(("ClusterIP", "LoadBalancer")),
    st.booleans(),
)
namespaces = st.builds(
    lambda name, mode: _kube("Namespace", name, None, {}, annotations={"isthmus.io/isolation": mode}),
    st.sampled_from(NAMESPACES),
    st.sampled_from(("cluster", "namespace", "collection")),
)
listings = st.builds(
    lambda ns, name, ready, unready: _kube(
        "Endpoints",
        name,
        ns,
        {
            "subsets": [
                {
                    "addresses": [
                        {"ip": "10.32.9.9", "targetRef": {"kind": "Pod", "name": p}} for p in ready
                    ],
                    "notReadyAddresses": [{"ip": "192.0.2.50"}] if unready else [],
                    "ports": [{"name": "web", "port": 80}],
                }
            ]
        },
    ),
    st.sampled_from(NAMESPACES),
    st.sampled_from(SERVICES),
    st.lists(st.sampled_from(PODS), unique=True, max_size=3),
    st.booleans(),
)
endpoint_slices = st.builds(  # a slice may move from one service to another
    lambda ns, name, service, family, ready: _kube(
        "EndpointSlice",
        name,
        ns,
        {
            "addressType": family,
            "endpoints": [
                {
                    "addresses": ["10.32.9.9"],
                    "targetRef": {"kind": "Pod", "name": p},
                    "conditions": {"ready": r},
                }
                for p, r in ready
            ]
            + [{"addresses": ["192.0.2.51" if family == "IPv4" else "2001:db8::51"]}],
            "ports": [{"name": "web", "port": 80}],
        },
        labels={"kubernetes.io/service-name": service},
    ),
    st.sampled_from(NAMESPACES),
    st.sampled_from(SLICES),
    st.sampled_from(SERVICES),
    st.sampled_from(("IPv4", "IPv6")),
    st.lists(st.tuples(st.sampled_from(PODS), st.booleans()), unique_by=lambda t: t[0], max_size=3),
)
nodes = st.builds(
    lambda name: _kube(
        "Node", name, None, {"status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.7"}]}}
    ),
    st.sampled_from(("n2", "n3")),
)
puts = st.one_of(pods, services, namespaces, listings, endpoint_slices, nodes).map(lambda o: ("put", o))
deletes = st.tuples(
    st.sampled_from(("Pod", "Service", "Namespace", "Endpoints", "EndpointSlice", "Node")),
    st.sampled_from(NAMESPACES),
    st.sampled_from((*PODS, *SERVICES, *SLICES)),
).map(lambda t: ("delete", t))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(puts, deletes), min_size=1, max_size=25))
def test_any_sequence_of_changes_matches_a_cold_translation(steps: list[tuple[str, Any]]) -> None:
    ledger = MemoryLedger()
    config = KubeConfig()
    warm = Reconciler(ledger, config)
    committed = False
    held: dict[str, tuple[str, list[str]]] = {}  # pod uid -> its Endpoint's network and addresses
    for op, what in steps:
        if op == "put":
            change: dict[str, Any] = {"incoming": [what]}
        else:
            kind, namespace, name = what
            namespaced = kind not in ("Namespace", "Node")
            group = "discovery.k8s.io" if kind == "EndpointSlice" else "core"
            target = (lookup_kind(f"{kind}.{group}"), namespace if namespaced else None, name)
            change = {"removed": [target]}
        before = ledger.revision()
        try:
            warm.apply(**change)
            committed = True
        except (IntentError, TranslationError):  # e.g. a pod on an unknown node, a missing object
            assert ledger.revision() == before
        # the warm state is the pure translation of its view, and its view is the ledger's
        warm.view  # noqa: B018 (a failed cold start loads again)
        assert warm.translator is not None
        made = {objects.object_key(o): o for part in warm.translator.parts.values() for o in part}
        assert made == {objects.object_key(o): o for o in translate(warm.view, config)}
        stored = load_view(ledger)
        assert sorted(map(objects.object_key, stored)) == sorted(map(objects.object_key, warm.view))
        assert stored.held == warm.view.held
        # a pod keeps its network and addresses for its UID's life, whatever its labels or namespace say
        for endpoint in objects.list_objects(ledger, lookup_kind("Endpoint"))[0]:
            assert isinstance(endpoint, Endpoint) and endpoint.spec.owner is not None
            now = (endpoint.spec.network, [str(a) for a in endpoint.spec.addresses])
            assert held.setdefault(endpoint.spec.owner.uid, now) == now
    if not committed:
        return
    # a cold reconciler on the same ledger finds nothing to change
    revision = ledger.revision()
    again = Reconciler(ledger, config).apply()
    assert [a for a in again if a.action != "unchanged"] == []
    assert ledger.revision() == revision
