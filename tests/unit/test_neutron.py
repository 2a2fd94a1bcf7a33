"""The Neutron API and its Keystone slice in process: tokens scoped as Keystone scopes them, Neutron's
shapes and errors, and one project kept from another's resources."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from isthmus.api import create_app
from isthmus.api.auth import issue
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
