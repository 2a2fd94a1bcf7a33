"""The REST API: auth, tenant isolation, CRUD answers, and errors as Status JSON."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from isthmus.api import create_app
from isthmus.kube.config import KubeConfig
from isthmus.kube.sync import reconcile
from isthmus.model import parse_manifests
from isthmus.store import Ledger, MemoryLedger
from tests.conftest import obj
from tests.unit.netpol_model import model_manifests

ADMIN = "admin-secret"
V1 = "/apis/isthmus.io/v1"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def store() -> Ledger:
    return MemoryLedger()


@pytest.fixture
def client(store: Ledger) -> TestClient:
    return TestClient(create_app(store, ADMIN))


def admin_setup(client: TestClient, tenant: str) -> str:
    """Create a tenant with network red and subnet; return a token of that tenant."""
    h = bearer(ADMIN)
    assert client.post(f"{V1}/tenants", json=obj("Tenant", tenant), headers=h).status_code == 201
    assert (
        client.post(
            f"{V1}/namespaces/{tenant}/virtualnetworks", json=obj("VirtualNetwork", "red"), headers=h
        ).status_code
        == 201
    )
    made = client.post(
        f"{V1}/namespaces/{tenant}/subnets",
        json=obj("Subnet", "red-v4", spec={"network": "red", "cidr": "10.1.0.0/24"}),
        headers=h,
    )
    assert made.status_code == 201, made.text
    token = client.post(f"{V1}/tenants/{tenant}/tokens", json={"description": "ci"}, headers=h)
    assert token.status_code == 201
    body: dict[str, str] = token.json()
    return body["token"]


def test_no_or_bad_token_is_401(client: TestClient) -> None:
    assert client.get(f"{V1}/tenants").status_code == 401
    answer = client.get(f"{V1}/tenants", headers=bearer("wrong"))
    assert answer.status_code == 401
    assert answer.json() == {
        "kind": "Status",
        "status": "Failure",
        "code": 401,
        "reason": "Unauthorized",
        "message": "the token is not valid",
    }
    assert client.get("/healthz").json()["status"] == "ok"


def test_tenant_sees_and_changes_only_its_own_objects(client: TestClient) -> None:
    acme, umbrella = admin_setup(client, "acme"), admin_setup(client, "umbrella")
    a = bearer(acme)
    # its own network: readable and changeable
    mine = client.get(f"{V1}/namespaces/acme/virtualnetworks/red", headers=a)
    assert mine.status_code == 200 and mine.json()["spec"]["vni"] == 4096
    # another tenant's network: does not exist for it
    theirs = client.get(f"{V1}/namespaces/umbrella/virtualnetworks/red", headers=a)
    assert theirs.status_code == 404
    assert theirs.json()["message"] == "VirtualNetwork umbrella/red not found"
    # and cannot be changed, listed or deleted
    assert (
        client.put(
            f"{V1}/namespaces/umbrella/virtualnetworks/red", json=obj("VirtualNetwork", "red"), headers=a
        ).status_code
        == 403
    )
    assert client.delete(f"{V1}/namespaces/umbrella/virtualnetworks/red", headers=a).status_code == 403
    listed = client.get(f"{V1}/namespaces/umbrella/virtualnetworks", headers=a)
    assert (
        listed.status_code == 403
        and "tenant acme may not list virtualnetworks in namespace umbrella" in listed.text
    )
    # listing across namespaces shows only its own
    everything = client.get(f"{V1}/virtualnetworks", headers=a).json()["items"]
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in everything] == [("acme", "red")]
    tenants = client.get(f"{V1}/tenants", headers=a).json()["items"]
    assert [t["metadata"]["name"] for t in tenants] == ["acme"]
    assert client.get(f"{V1}/tenants/umbrella", headers=a).status_code == 404
    # nor can it reach in through a reference
    spy = client.post(
        f"{V1}/namespaces/acme/endpoints",
        json=obj("Endpoint", "spy", spec={"network": "umbrella/red"}),
        headers=a,
    )
    assert spy.status_code == 404
    # cluster-scoped administration is the admin's
    assert (
        client.post(
            f"{V1}/nodes", json=obj("Node", "n1", spec={"address": "192.0.2.1"}), headers=a
        ).status_code
        == 403
    )
    assert client.post(f"{V1}/tenants/acme/tokens", json={}, headers=bearer(umbrella)).status_code == 403
    # the admin sees everything
    assert len(client.get(f"{V1}/virtualnetworks", headers=bearer(ADMIN)).json()["items"]) == 2


def test_crud_round_trip_and_errors(client: TestClient) -> None:
    token = admin_setup(client, "acme")
    h = bearer(token)
    base = f"{V1}/namespaces/acme/endpoints"
    made = client.post(base, json=obj("Endpoint", "web", spec={"network": "red"}), headers=h)
    assert made.status_code == 201
    body: dict[str, Any] = made.json()
    assert body["spec"]["addresses"] == ["10.1.0.2"] and body["metadata"]["namespace"] == "acme"
    again = client.post(base, json=obj("Endpoint", "web", spec={"network": "red"}), headers=h)
    assert again.status_code == 409 and again.json()["reason"] == "AlreadyExists"
    version = body["metadata"]["resourceVersion"]
    body["metadata"]["labels"] = {"app": "web"}
    replaced = client.put(f"{base}/web", json=body, headers=h)
    assert replaced.status_code == 200 and replaced.json()["metadata"]["labels"] == {"app": "web"}
    stale = client.put(
        f"{base}/web", json={**body, "metadata": {**body["metadata"], "resourceVersion": version}}, headers=h
    )
    assert stale.status_code == 409 and "has changed since version" in stale.json()["message"]
    bad = client.post(
        base, json=obj("Endpoint", "x", spec={"network": "red", "addresses": ["10.1.0.999"]}), headers=h
    )
    assert bad.status_code == 422 and "spec.addresses.0" in bad.json()["message"]
    wrong_ns = client.post(base, json=obj("Endpoint", "x", "other", {"network": "red"}), headers=h)
    assert wrong_ns.status_code == 400 and "does not match the URL's 'acme'" in wrong_ns.json()["message"]
    in_use = client.delete(f"{V1}/namespaces/acme/virtualnetworks/red", headers=h)
    assert in_use.status_code == 409 and in_use.json()["reason"] == "InUse"
    assert client.delete(f"{base}/web", headers=h).status_code == 200
    assert client.get(f"{base}/web", headers=h).status_code == 404


def test_tokens_are_hashed_revocable_and_die_with_their_tenant(client: TestClient, store: Ledger) -> None:
    token = admin_setup(client, "acme")
    stored = b"".join(kv.value + kv.key.encode() for kv in store.list("/")[0])
    assert token.encode() not in stored
    (listed,) = client.get(f"{V1}/tenants/acme/tokens", headers=bearer(ADMIN)).json()
    assert listed["description"] == "ci" and "token" not in listed
    assert client.delete(f"{V1}/tenants/acme/tokens/{listed['id']}", headers=bearer(ADMIN)).status_code == 200
    assert client.get(f"{V1}/tenants/acme", headers=bearer(token)).status_code == 401
    second = admin_setup(client, "solo")
    admin = bearer(ADMIN)
    for path in ("subnets/red-v4", "virtualnetworks/red"):
        assert client.delete(f"{V1}/namespaces/solo/{path}", headers=admin).status_code == 200
    assert client.delete(f"{V1}/tenants/solo", headers=admin).status_code == 200
    assert client.post(f"{V1}/tenants", json=obj("Tenant", "solo"), headers=admin).status_code == 201
    assert (
        client.get(f"{V1}/tenants/solo", headers=bearer(second)).status_code == 401
    )  # a new tenant, not the old one


def test_openapi_documents_every_kind(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    for kind in (
        "Tenant",
        "Node",
        "VirtualNetwork",
        "Subnet",
        "Endpoint",
        "ServiceVIP",
        "FloatingIP",
        "Policy",
    ):
        assert kind in doc["components"]["schemas"]
    assert f"{V1}/namespaces/{{namespace}}/subnets/{{name}}" in doc["paths"]


RECORDS = [
    {
        "seq": 1,
        "time": 1.0,
        "node": "n1",
        "source": {"namespace": "acme", "name": "web", "address": "10.0.0.1", "port": 40000},
        "destination": {"namespace": "umbrella", "name": "db", "address": "10.0.0.2", "port": 5432},
        "protocol": "TCP",
        "verdict": "dropped",
        "rule": "umbrella/deny-all",
        "service": "umbrella/db",
    },
    {
        "seq": 2,
        "time": 2.0,
        "node": "n1",
        "source": {"namespace": "umbrella", "name": "app", "address": "10.0.0.3", "port": 40001},
        "destination": {"namespace": "umbrella", "name": "db", "address": "10.0.0.2", "port": 5432},
        "protocol": "TCP",
        "verdict": "allowed",
        "rule": "",
    },
]


def test_flows_are_read_from_every_agent_and_a_tenant_sees_only_its_own(
    client: TestClient, store: Ledger
) -> None:
    store.commit({}, [("/status/nodes/n1", b'{"control": "/run/n1.sock"}')])
    asked: list[tuple[str, dict[str, Any]]] = []

    def agent(path: Any, request: dict[str, Any]) -> dict[str, Any]:
        asked.append((str(path), request))
        return {"result": {"records": RECORDS, "seq": 2, "lost": 0, "overwritten": 0}}

    client.app.state.ask_agent = agent  # type: ignore[attr-defined]
    everything = client.get(f"{V1}/flows", headers=bearer(ADMIN)).json()
    assert [r["seq"] for r in everything["items"]] == [1, 2] and everything["problems"] == {}
    assert asked == [("/run/n1.sock", {"command": "FLOWS", "since": 0})]
    dropped = client.get(f"{V1}/flows", params={"verdict": "dropped"}, headers=bearer(ADMIN)).json()
    assert [r["seq"] for r in dropped["items"]] == [1]
    acme = client.get(f"{V1}/flows", headers=bearer(admin_setup(client, "acme"))).json()
    (seen,) = acme["items"]  # not umbrella's own flow
    assert seen["destination"] == {"address": "10.0.0.2", "port": 5432} and "service" not in seen
    assert seen["source"]["name"] == "web" and "problems" not in acme
    assert client.get(f"{V1}/flows").status_code == 401
    assert everything["positions"] == {"n1": 2}
    asked.clear()
    newer = client.get(f"{V1}/flows", params={"since": "n1:2,n2:7"}, headers=bearer(ADMIN))
    assert asked == [("/run/n1.sock", {"command": "FLOWS", "since": 2})] and newer.status_code == 200
    bad = client.get(f"{V1}/flows", params={"since": "n1"}, headers=bearer(ADMIN))
    assert (bad.status_code, bad.json()["message"]) == (400, "since: 'n1' is not NODE:SEQ")


def test_request_metrics_go_to_the_admin_only_by_route_template(client: TestClient) -> None:
    token = admin_setup(client, "acme")
    assert client.get(f"{V1}/namespaces/acme/virtualnetworks/red", headers=bearer(token)).status_code == 200
    assert client.get("/metrics", headers=bearer(token)).status_code == 403
    assert client.get("/metrics").status_code == 401
    shown = client.get("/metrics", headers=bearer(ADMIN))
    assert shown.status_code == 200
    route = f"{V1}/namespaces/{{namespace}}/virtualnetworks/{{name}}"
    line = f'isthmus_api_request_seconds_count{{code="200",method="GET",route="{route}"}}'
    assert line in shown.text and "acme" not in shown.text  # templates, never a tenant's names


@pytest.fixture
def model(store: Ledger) -> Ledger:
    """The upstream NetworkPolicy model (namespaces x, y, z; pods a, b, c) in the ledger."""
    reconcile(store, KubeConfig(), parse_manifests(model_manifests((80, 81), ("TCP",))))
    return store


def test_trace_matrix_and_impact_answer_a_tenant_of_its_own_namespace_only(
    client: TestClient, model: Ledger
) -> None:
    admin = bearer(ADMIN)
    token = client.post(f"{V1}/tenants/x/tokens", json={}, headers=admin).json()["token"]
    traced = client.get(
        f"{V1}/trace", params={"source": "x/a", "destination": "y/b", "port": 80}, headers=admin
    )
    assert traced.status_code == 200 and traced.json()["verdict"] == "allow" and traced.json()["rule"] == ""
    own = {"source": "x/a", "destination": "x/b", "port": 80}
    assert client.get(f"{V1}/trace", params=own, headers=bearer(token)).json()["verdict"] == "allow"
    other = {"source": "x/a", "destination": "y/b", "port": 80}
    assert client.get(f"{V1}/trace", params=other, headers=bearer(token)).status_code == 403
    missing = client.get(f"{V1}/trace", params={**own, "destination": "x/nobody"}, headers=bearer(token))
    assert missing.status_code == 404 and "nobody" in missing.json()["message"]
    grid = client.get(f"{V1}/namespaces/x/matrix", params={"port": 80}, headers=bearer(token)).json()
    assert grid["sources"] == ["x/a", "x/b", "x/c"] and all(all(r.values()) for r in grid["allowed"].values())
    assert (
        client.get(f"{V1}/namespaces/y/matrix", params={"port": 80}, headers=bearer(token)).status_code == 403
    )
    deny = yaml.safe_dump(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }
    )
    revision = model.revision()
    found = client.post(
        f"{V1}/namespaces/x/impact", json={"manifests": deny, "ports": ["80"]}, headers=bearer(token)
    )
    assert found.status_code == 200 and len(found.json()["closes"]) == 24 and found.json()["opens"] == []
    assert model.revision() == revision  # nothing stored
    elsewhere = deny.replace("name: deny", "name: deny\n  namespace: y")
    assert (
        client.post(
            f"{V1}/namespaces/x/impact", json={"manifests": elsewhere}, headers=bearer(token)
        ).status_code
        == 403
    )
    bad = client.post(
        f"{V1}/namespaces/x/impact", json={"manifests": "kind: [", "ports": ["80"]}, headers=bearer(token)
    )
    assert bad.status_code == 400


def test_the_topology_is_whole_for_the_admin_and_a_tenants_own_for_it(
    client: TestClient, model: Ledger
) -> None:
    token = client.post(f"{V1}/tenants/x/tokens", json={}, headers=bearer(ADMIN)).json()["token"]
    whole = client.get(f"{V1}/topology", headers=bearer(ADMIN)).json()
    assert {n["name"] for n in whole["nodes"]} and len(whole["endpoints"]) == 9
    assert {s["name"] for s in whole["services"]} >= {"x/s-x-a", "y/s-y-b"}
    own = client.get(f"{V1}/topology", headers=bearer(token)).json()
    assert own["nodes"] == [] and {e["name"] for e in own["endpoints"]} == {"x/a", "x/b", "x/c"}
    assert all(s["name"].startswith("x/") for s in own["services"])
    assert all(n["name"].startswith("x/") or n["shared"] or n["external"] for n in own["networks"])


def test_the_topology_shows_the_other_clusters_by_their_imported_routes(
    client: TestClient, model: Ledger
) -> None:
    admin = bearer(ADMIN)
    joined = obj("VirtualNetwork", "joined", spec={"importTargets": ["64600:100"]})
    assert client.post(f"{V1}/namespaces/x/virtualnetworks", json=joined, headers=admin).status_code == 201
    for name, prefix, hop, target in (
        ("db-1", "10.80.0.11/32", "192.168.77.14", "64600:100"),
        ("db-2", "10.80.0.12/32", "192.168.77.15", "64600:100"),
        ("other", "10.90.0.5/32", "192.168.77.15", "64600:200"),
    ):
        vni = 5001 if target.endswith("100") else 5002
        spec = {"prefix": prefix, "nextHop": hop, "vni": vni, "routeTargets": [target]}
        route = obj("ImportedRoute", name, spec=spec | {"routeDistinguisher": f"64601:{vni}"})
        assert client.post(f"{V1}/importedroutes", json=route, headers=admin).status_code == 201
    (cluster,) = client.get(f"{V1}/topology", headers=admin).json()["clusters"]
    assert cluster["asn"] == "64601" and cluster["nodes"] == ["192.168.77.14", "192.168.77.15"]
    assert [(n["vni"], n["routeTargets"], n["prefixes"]) for n in cluster["networks"]] == [
        ("5001", ["64600:100"], ["10.80.0.11/32", "10.80.0.12/32"]),
        ("5002", ["64600:200"], ["10.90.0.5/32"]),
    ]
    token = client.post(f"{V1}/tenants/x/tokens", json={}, headers=admin).json()["token"]
    (seen,) = client.get(f"{V1}/topology", headers=bearer(token)).json()["clusters"]
    assert seen["nodes"] == [] and [n["vni"] for n in seen["networks"]] == ["5001"]  # what x imports
