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
