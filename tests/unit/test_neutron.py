"""The Neutron API and its Keystone slice in process: tokens scoped as Keystone scopes them, Neutron's
shapes and errors, and one project kept from another's resources."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from isthmus.api import create_app
from isthmus.api.auth import SESSION_SECONDS, issue, open_session, revoke, session, tokens_of
from isthmus.store import Ledger, MemoryLedger
from tests.conftest import obj

ADMIN = "admin-secret"


Tokens = dict[str, str]  # tenant -> its Isthmus token


@pytest.fixture
def api() -> tuple[TestClient, Tokens]:
    ledger: Ledger = MemoryLedger()
    client = TestClient(create_app(ledger, ADMIN))
    tokens: Tokens = {}
    for tenant in ("acme", "umbrella"):
        admin = {"Authorization": f"Bearer {ADMIN}"}
        client.post("/apis/isthmus.io/v1/tenants", json=obj("Tenant", tenant), headers=admin)
        made = issue(ledger, tenant)
        assert made is not None
        tokens[tenant] = made[1]
    return client, tokens


def _auth(token: str, project: str | None) -> dict[str, Any]:
    scope = {"scope": {"project": {"name": project}}} if project else {}
    return {"auth": {"identity": {"methods": ["token"], "token": {"id": token}}, **scope}}


def _headers(client: TestClient, token: str, project: str) -> dict[str, str]:
    answer = client.post("/v3/auth/tokens", json=_auth(token, project))
    assert answer.status_code == 201, answer.text
    return {"X-Auth-Token": answer.headers["X-Subject-Token"]}


def test_a_token_is_issued_for_its_own_project_with_the_network_endpoint(
    api: tuple[TestClient, Tokens],
) -> None:
    client, tokens = api
    token = tokens["acme"]
    answer = client.post("/v3/auth/tokens", json=_auth(token, "acme"))
    body = answer.json()["token"]
    assert body["project"]["name"] == "acme" and body["roles"] == [{"id": "member", "name": "member"}]
    network = next(s for s in body["catalog"] if s["type"] == "network")
    assert {e["interface"] for e in network["endpoints"]} == {"public", "internal", "admin"}
    wrong = client.post("/v3/auth/tokens", json=_auth(token, "umbrella"))
    assert (
        wrong.status_code == 401 and "does not scope to project umbrella" in wrong.json()["error"]["message"]
    )
    assert client.post("/v3/auth/tokens", json=_auth("nonsense", "acme")).status_code == 401
    assert client.get("/v2.0/networks", headers={"X-Auth-Token": "acme:nonsense"}).status_code == 401


def test_an_issued_token_is_opaque_expires_dies_with_its_credential_and_can_be_revoked(
    api: tuple[TestClient, Tokens],
) -> None:
    client, tokens = api
    ledger = client.app.state.ledger  # type: ignore[attr-defined]
    answer = client.post("/v3/auth/tokens", json=_auth(tokens["acme"], "acme"))
    issued = answer.headers["X-Subject-Token"]
    assert tokens["acme"] not in issued and "acme" not in issued  # not the credential, nor its project
    expires = datetime.strptime(answer.json()["token"]["expires_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert 3590 < (expires.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds() <= 3600
    acme = {"X-Auth-Token": issued}
    assert client.get("/v2.0/networks", headers=acme).status_code == 200
    again = client.post("/v3/auth/tokens", json=_auth(issued, None))  # rescoped from the issued token
    assert again.status_code == 201 and again.json()["token"]["project"]["name"] == "acme"
    assert client.post("/v3/auth/tokens", json=_auth(issued, "umbrella")).status_code == 401

    made = open_session(ledger, ADMIN, tokens["acme"], "acme", now=time.time() - SESSION_SECONDS - 1)
    assert made is not None
    expired = client.get("/v2.0/networks", headers={"X-Auth-Token": made[0]})
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    client.post("/v3/auth/tokens", json=_auth(tokens["acme"], "acme"))  # drops the expired one
    assert session(ledger, ADMIN, made[0], now=0.0) is None  # gone from the ledger, not only expired

    umbrella = _headers(client, tokens["umbrella"], "umbrella")
    refused = client.delete("/v3/auth/tokens", headers=umbrella | {"X-Subject-Token": issued})
    assert refused.status_code == 401  # another project's
    assert client.get("/v2.0/networks", headers=acme).status_code == 200
    revoked = client.delete("/v3/auth/tokens", headers=acme | {"X-Subject-Token": issued})
    assert revoked.status_code == 204
    assert client.get("/v2.0/networks", headers=acme).status_code == 401

    survivor = _headers(client, tokens["umbrella"], "umbrella")
    for token_id in (t["id"] for t in tokens_of(ledger, "umbrella")):
        revoke(ledger, "umbrella", token_id)  # the credential it was issued from
    assert client.get("/v2.0/networks", headers=survivor).status_code == 401


def test_projects_see_their_own_networks_and_errors_are_neutrons(api: tuple[TestClient, Tokens]) -> None:
    client, tokens = api
    acme, umbrella = (
        _headers(client, tokens["acme"], "acme"),
        _headers(client, tokens["umbrella"], "umbrella"),
    )
    made = client.post("/v2.0/networks", json={"network": {"name": "web"}}, headers=acme)
    assert made.status_code == 201
    network = made.json()["network"]
    assert (network["name"], network["project_id"], network["router:external"]) == ("web", "acme", False)
    assert [n["name"] for n in client.get("/v2.0/networks", headers=umbrella).json()["networks"]] == []
    hidden = client.get(f"/v2.0/networks/{network['id']}", headers=umbrella)
    assert hidden.status_code == 404 and hidden.json()["NeutronError"]["type"] == "NetworkNotFound"
    listed = client.get("/v2.0/networks?name=web&fields=id", headers=acme).json()["networks"]
    assert listed == [{"id": network["id"]}]
    bad = client.post(
        "/v2.0/subnets", json={"subnet": {"network_id": network["id"], "cidr": "nonsense"}}, headers=acme
    )
    assert bad.status_code == 400 and "is not a CIDR" in bad.json()["NeutronError"]["message"]
    assert client.post("/v2.0/networks", json={"nets": {}}, headers=acme).status_code == 400


def test_bodies_without_content_type_bulk_create_extensions_agents_and_network_delete_as_neutron(
    api: tuple[TestClient, Tokens],
) -> None:
    client, tokens = api
    acme = _headers(client, tokens["acme"], "acme")
    made = client.post("/v2.0/networks", json={"networks": [{"name": "a"}, {"name": "b"}]}, headers=acme)
    assert made.status_code == 201 and [n["name"] for n in made.json()["networks"]] == ["a", "b"]
    network = made.json()["networks"][0]["id"]
    overlapping = [
        {"network_id": network, "cidr": cidr, "ip_version": 4} for cidr in ("10.8.0.0/24", "10.8.0.0/16")
    ]  # the second overlaps the first: neither is stored
    refused = client.post("/v2.0/subnets", json={"subnets": overlapping}, headers=acme)
    assert refused.status_code == 400 and "overlaps" in refused.json()["NeutronError"]["message"]
    assert client.get("/v2.0/subnets", headers=acme).json()["subnets"] == []
    renamed = client.put(f"/v2.0/networks/{network}", content=b'{"network": {"name": "a2"}}', headers=acme)
    assert renamed.status_code == 200 and renamed.json()["network"]["name"] == "a2"  # no Content-Type
    subnet = {"network_id": network, "cidr": "10.9.0.0/24", "ip_version": 4}
    assert client.post("/v2.0/subnets", json={"subnet": subnet}, headers=acme).status_code == 201
    assert client.delete(f"/v2.0/networks/{network}", headers=acme).status_code == 204  # its subnet too
    assert client.get("/v2.0/subnets", headers=acme).json()["subnets"] == []

    assert client.get("/v2.0/extensions/router", headers=acme).json()["extension"]["alias"] == "router"
    missing = client.get("/v2.0/extensions/nope", headers=acme)
    assert missing.status_code == 404 and missing.json()["NeutronError"]["type"] == "ExtensionNotFound"
    ledger = client.app.state.ledger  # type: ignore[attr-defined]
    node = obj("Node", "node-1", spec={"address": "192.0.2.1"})
    stored = client.post("/apis/isthmus.io/v1/nodes", json=node, headers={"Authorization": f"Bearer {ADMIN}"})
    assert stored.status_code == 201, stored.text
    ledger.commit({}, [("/status/nodes/node-1", b'{"problems": {}}')])
    admin = _headers(client, ADMIN, "acme")
    (agent,) = client.get("/v2.0/agents", headers=admin).json()["agents"]
    assert (agent["host"], agent["alive"], agent["agent_type"]) == ("node-1", True, "Isthmus agent")
    assert client.get(f"/v2.0/agents/{agent['id']}", headers=admin).json()["agent"]["host"] == "node-1"
    assert client.get("/v2.0/agents", headers=acme).json()["agents"] == []  # the admin's to see


def test_attributes_neutron_keeps_are_kept_shown_and_checked(api: tuple[TestClient, Tokens]) -> None:
    client, tokens = api
    acme = _headers(client, tokens["acme"], "acme")

    def made(plural: str, singular: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = client.post(f"/v2.0/{plural}", json={singular: body}, headers=acme)
        assert answer.status_code == 201, answer.text
        return dict(answer.json()[singular])

    network = made("networks", "network", {"name": "db", "mtu": 1400})
    assert network["mtu"] == 1400 and network["admin_state_up"] is True
    too_big = client.post("/v2.0/networks", json={"network": {"mtu": 9000}}, headers=acme)
    assert too_big.status_code == 400 and "mtu" in too_big.json()["NeutronError"]["message"]
    routes = [{"destination": "10.50.0.0/16", "nexthop": "10.7.0.9"}]
    subnet = made(
        "subnets",
        "subnet",
        {"network_id": network["id"], "cidr": "10.7.0.0/24", "ip_version": 4}
        | {"dns_nameservers": ["10.7.0.2"], "host_routes": routes, "enable_dhcp": False},
    )
    assert (subnet["dns_nameservers"], subnet["host_routes"], subnet["enable_dhcp"]) == (
        ["10.7.0.2"],
        routes,
        False,
    )
    path = f"/v2.0/subnets/{subnet['id']}"
    updated = client.put(path, json={"subnet": {"dns_nameservers": ["10.7.0.3"]}}, headers=acme).json()[
        "subnet"
    ]
    assert (updated["dns_nameservers"], updated["host_routes"]) == (["10.7.0.3"], routes)  # the rest kept
    wrong = client.put(path, json={"subnet": {"dns_nameservers": ["ten"]}}, headers=acme)
    assert wrong.status_code == 400 and "dns_nameservers" in wrong.json()["NeutronError"]["message"]
    assert client.get(path, headers=acme).json()["subnet"]["dns_nameservers"] == ["10.7.0.3"]  # unchanged
    port = made("ports", "port", {"network_id": network["id"], "port_security_enabled": False})
    assert port["port_security_enabled"] is False and port["security_groups"] == []
    router = made("routers", "router", {"name": "edge", "admin_state_up": False})
    assert (
        client.get(f"/v2.0/routers/{router['id']}", headers=acme).json()["router"]["admin_state_up"] is False
    )


def test_a_floating_ip_names_the_router_that_joins_its_port_to_the_outside(
    api: tuple[TestClient, Tokens],
) -> None:
    client, tokens = api
    admin, acme = _headers(client, ADMIN, "admin"), _headers(client, tokens["acme"], "acme")

    def post(headers: dict[str, str], plural: str, singular: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = client.post(f"/v2.0/{plural}", json={singular: body}, headers=headers)
        assert answer.status_code == 201, answer.text
        return dict(answer.json()[singular])

    public = post(admin, "networks", "network", {"name": "public", "router:external": True})
    post(admin, "subnets", "subnet", {"network_id": public["id"], "cidr": "203.0.113.0/24", "ip_version": 4})
    inside = post(acme, "networks", "network", {"name": "inside"})
    subnet = post(
        acme, "subnets", "subnet", {"network_id": inside["id"], "cidr": "10.6.0.0/24", "ip_version": 4}
    )
    port = post(acme, "ports", "port", {"network_id": inside["id"]})
    fip = post(
        acme, "floatingips", "floatingip", {"floating_network_id": public["id"], "port_id": port["id"]}
    )
    assert fip["router_id"] is None  # no router joins them yet
    router = post(
        acme, "routers", "router", {"name": "edge", "external_gateway_info": {"network_id": public["id"]}}
    )
    joined = client.put(
        f"/v2.0/routers/{router['id']}/add_router_interface", json={"subnet_id": subnet["id"]}, headers=acme
    )
    assert joined.status_code == 200, joined.text
    assert (
        client.get(f"/v2.0/floatingips/{fip['id']}", headers=acme).json()["floatingip"]["router_id"]
        == router["id"]
    )


def test_a_subnet_update_applies_its_gateway_and_pools_and_refuses_read_only_attributes(
    api: tuple[TestClient, Tokens],
) -> None:
    client, tokens = api
    acme = _headers(client, tokens["acme"], "acme")
    network = client.post("/v2.0/networks", json={"network": {"name": "n"}}, headers=acme).json()["network"]
    body = {"network_id": network["id"], "cidr": "10.5.0.0/24", "ip_version": 4}
    subnet = client.post("/v2.0/subnets", json={"subnet": body}, headers=acme).json()["subnet"]
    path = f"/v2.0/subnets/{subnet['id']}"
    change = {"gateway_ip": "10.5.0.254", "allocation_pools": [{"start": "10.5.0.100", "end": "10.5.0.109"}]}
    updated = client.put(path, json={"subnet": change}, headers=acme)
    assert updated.status_code == 200, updated.text
    assert (updated.json()["subnet"]["gateway_ip"], updated.json()["subnet"]["allocation_pools"]) == (
        "10.5.0.254",
        change["allocation_pools"],
    )
    port = client.post("/v2.0/ports", json={"port": {"network_id": network["id"]}}, headers=acme).json()[
        "port"
    ]
    assert port["fixed_ips"][0]["ip_address"] == "10.5.0.100"  # from the new pool
    for field, value in (("cidr", "10.6.0.0/24"), ("ip_version", 6)):
        refused = client.put(path, json={"subnet": {field: value}}, headers=acme)
        assert refused.status_code == 400, refused.text
        assert refused.json()["NeutronError"]["message"] == f"Cannot update read-only attribute {field}"
    assert client.get(path, headers=acme).json()["subnet"]["cidr"] == "10.5.0.0/24"
