"""The Neutron API with the real OpenStack clients (python-openstackclient's `openstack` command and
openstacksdk), authenticated by Keystone tokens as they do it, against `isthmus api serve`."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from openstack import exceptions

from isthmus.lab.fabric import DEPLOY
from tests.integration.clouds import HAS_CLIENTS, Cloud, serving

pytestmark = pytest.mark.skipif(
    not HAS_CLIENTS, reason="needs python-openstackclient (pip install -e .[dev])"
)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    with serving(tmp_path_factory.mktemp("neutron")) as made:
        made.isthmus("POST", "/nodes", {"metadata": {"name": "node-1"}, "spec": {"address": "192.0.2.1"}})
        for tenant in ("leonardo", "umbrella"):
            made.tokens[tenant] = made.tenant(tenant)
        made.cli("admin", "network", "create", "public", "--external")
        made.cli(
            "admin",
            "subnet",
            "create",
            "public-v4",
            "--network",
            "public",
            "--subnet-range",
            "203.0.113.0/24",
        )
        yield made


def test_the_openstack_client_builds_a_tenant_network_and_reads_it_back(cloud: Cloud) -> None:
    network = cloud.json("leonardo", "network", "create", "leonardodb")
    assert (network["name"], network["project_id"], network["status"]) == ("leonardodb", "leonardo", "ACTIVE")
    subnet = cloud.json(
        "leonardo",
        "subnet",
        "create",
        "leonardodb-v4",
        "--network",
        "leonardodb",
        "--subnet-range",
        "10.10.0.0/24",
    )
    assert (subnet["cidr"], subnet["gateway_ip"], subnet["network_id"]) == (
        "10.10.0.0/24",
        "10.10.0.1",
        network["id"],
    )
    port = cloud.vm("leonardo", "pg-1", "leonardodb", "node-1", "--fixed-ip", "ip-address=10.10.0.11")
    assert port["fixed_ips"] == [{"subnet_id": subnet["id"], "ip_address": "10.10.0.11"}]
    assert (port["binding_host_id"], port["device_owner"], port["status"]) == (
        "node-1",
        "compute:nova",
        "ACTIVE",
    )
    assert port["security_group_ids"] == ["default"]  # the project's default group, made on first use
    rule = cloud.json(
        "leonardo",
        "security",
        "group",
        "rule",
        "create",
        "default",
        "--protocol",
        "tcp",
        "--dst-port",
        "5432",
        "--remote-ip",
        "10.10.0.0/24",
    )
    assert (rule["protocol"], rule["port_range_min"], rule["remote_ip_prefix"]) == (
        "tcp",
        5432,
        "10.10.0.0/24",
    )
    fip = cloud.json("leonardo", "floating", "ip", "create", "public", "--port", "pg-1")
    assert fip["floating_ip_address"].startswith("203.0.113.") and fip["fixed_ip_address"] == "10.10.0.11"
    shown = cloud.json("leonardo", "port", "show", "pg-1")
    assert shown["id"] == port["id"] and shown["mac_address"] == port["mac_address"]
    rules = cloud.json("leonardo", "security", "group", "rule", "list", "default")
    assert any(r["ID"] == rule["id"] for r in rules)
    listed = cloud.json("leonardo", "floating", "ip", "list")
    assert [(f["Floating IP Address"], f["Port"]) for f in listed] == [
        (fip["floating_ip_address"], port["id"])
    ]
    # the same objects, as Isthmus holds them
    endpoint = cloud.isthmus("GET", f"/namespaces/leonardo/endpoints/{port['id']}")
    assert endpoint["spec"]["addresses"] == ["10.10.0.11"] and endpoint["spec"]["node"] == "node-1"
    assert endpoint["metadata"]["labels"] == {"security-group.isthmus.io/default": ""}


def test_a_project_cannot_see_another_projects_network(cloud: Cloud) -> None:
    secret = cloud.sdk("umbrella").network.create_network(name="secret")
    leonardo = cloud.sdk("leonardo")
    assert "secret" not in [n.name for n in leonardo.network.networks()]
    assert "public" in [n.name for n in leonardo.network.networks()]  # external networks are everyone's
    with pytest.raises(exceptions.NotFoundException):
        leonardo.network.get_network(secret.id)
    with pytest.raises(exceptions.NotFoundException):
        leonardo.network.delete_network(secret.id, ignore_missing=False)
    stolen = Cloud(cloud.url, {"umbrella": cloud.tokens["leonardo"]})  # leonardo's token, umbrella's project
    assert stolen.cli("umbrella", "network", "list", ok=False).returncode != 0
    assert cloud.sdk("umbrella").network.get_network(secret.id).name == "secret"


def _neutron(
    cloud: Cloud, project: str, method: str, path: str, body: dict[str, Any] | None = None
) -> httpx2.Response:
    token = httpx2.post(
        f"{cloud.url}/v3/auth/tokens",
        json={
            "auth": {
                "identity": {"methods": ["token"], "token": {"id": cloud.tokens[project]}},
                "scope": {"project": {"name": project}},
            }
        },
    ).headers["X-Subject-Token"]
    return httpx2.request(method, f"{cloud.url}/v2.0{path}", json=body, headers={"X-Auth-Token": token})


@pytest.mark.parametrize(
    ("method", "path", "body", "code", "kind"),
    [
        (
            "POST",
            "/subnets",
            {"subnet": {"network_id": "NET", "cidr": "10.20.0.0/33", "ip_version": 4}},
            400,
            "HTTPBadRequest",
        ),
        (
            "POST",
            "/subnets",
            {"subnet": {"network_id": "NET", "cidr": "10.20.0.128/25", "ip_version": 4}},
            400,
            "BadRequest",
        ),
        ("POST", "/ports", {"port": {"network_id": "no-such-network"}}, 404, "NetworkNotFound"),
        (
            "POST",
            "/ports",
            {"port": {"network_id": "NET", "fixed_ips": [{"ip_address": "10.99.0.5"}]}},
            400,
            "BadRequest",
        ),
        ("POST", "/networks", {"net": {}}, 400, "HTTPBadRequest"),
        ("DELETE", "/networks/NET", None, 409, "NetworkInUse"),
        ("GET", "/ports/no-such-port", None, 404, "PortNotFound"),
        (
            "POST",
            "/security-group-rules",
            {
                "security_group_rule": {
                    "security_group_id": "default",
                    "direction": "ingress",
                    "protocol": "gre",
                }
            },
            400,
            "HTTPBadRequest",
        ),
    ],
)
def test_invalid_requests_get_neutron_errors_and_change_nothing(
    cloud: Cloud, method: str, path: str, body: dict[str, Any] | None, code: int, kind: str
) -> None:
    network = _neutron(cloud, "umbrella", "POST", "/networks", {"network": {"name": "errors"}}).json()[
        "network"
    ]
    subnet = {"subnet": {"network_id": network["id"], "cidr": "10.20.0.0/24", "ip_version": 4}}
    assert _neutron(cloud, "umbrella", "POST", "/subnets", subnet).status_code == 201
    port = {"port": {"network_id": network["id"]}}  # in use: deleting the network is refused
    assert _neutron(cloud, "umbrella", "POST", "/ports", port).status_code == 201
    before = (
        cloud.isthmus("GET", "/namespaces/umbrella/virtualnetworks"),
        cloud.isthmus("GET", "/namespaces/umbrella/endpoints"),
    )
    text = json.dumps(body).replace("NET", network["id"]) if body else None
    answer = _neutron(
        cloud, "umbrella", method, path.replace("NET", network["id"]), json.loads(text) if text else None
    )
    assert answer.status_code == code, answer.text
    error = answer.json()["NeutronError"]
    assert error["type"] == kind and error["message"]
    after = (
        cloud.isthmus("GET", "/namespaces/umbrella/virtualnetworks"),
        cloud.isthmus("GET", "/namespaces/umbrella/endpoints"),
    )
    assert [i["metadata"]["name"] for i in after[0]["items"]] == [
        i["metadata"]["name"] for i in before[0]["items"]
    ]
    assert after[1]["items"] == before[1]["items"]


def test_a_router_joins_its_networks_and_its_gateway_lets_them_out(cloud: Cloud) -> None:
    def network(name: str, cidr: str) -> str:
        made = cloud.json("leonardo", "network", "create", name)["id"]
        cloud.cli("leonardo", "subnet", "create", f"{name}-v4", "--network", name, "--subnet-range", cidr)
        return str(made)

    front, back = network("front", "10.30.1.0/24"), network("back", "10.30.2.0/24")
    router = cloud.json("leonardo", "router", "create", "edge")
    for subnet in ("front-v4", "back-v4"):
        cloud.cli("leonardo", "router", "add", "subnet", "edge", subnet)
    policy = cloud.isthmus("GET", f"/namespaces/leonardo/policies/{router['id']}")
    joined = sorted((r["source"]["network"], r["destination"]["network"]) for r in policy["spec"]["rules"])
    assert joined == sorted([(front, back), (back, front)])  # each way, as routed

    def egress() -> dict[str, bool]:
        return {
            n: cloud.isthmus("GET", f"/namespaces/leonardo/virtualnetworks/{n}")["spec"].get("egress", False)
            for n in (front, back)
        }

    assert egress() == {front: False, back: False}  # no gateway: no way out
    cloud.cli("leonardo", "router", "set", "edge", "--external-gateway", "public")
    assert egress() == {front: True, back: True}
    shown = cloud.json("leonardo", "router", "show", "edge")
    assert (
        shown["external_gateway_info"]["network_id"]
        == cloud.json("leonardo", "network", "show", "public")["id"]
    )
    assert cloud.cli("leonardo", "router", "delete", "edge", ok=False).returncode != 0  # interfaces: in use
    assert cloud.cli("leonardo", "network", "delete", "front", ok=False).returncode != 0  # routed: in use
    cloud.cli("leonardo", "router", "remove", "subnet", "edge", "front-v4")
    assert egress() == {front: False, back: True}
    cloud.cli("leonardo", "router", "remove", "subnet", "edge", "back-v4")
    cloud.cli("leonardo", "router", "delete", "edge")
    assert egress() == {front: False, back: False}


def test_the_api_serves_https_with_a_certificate(tmp_path: Path) -> None:
    """Given --tls-cert and --tls-key (made by deploy/isthmus-pki), the openstack client talks HTTPS,
    verifying the server against the CA; plain HTTP gets no answer."""
    pki = tmp_path / "pki"
    for step in (["ca"], ["member", "api", "127.0.0.1"]):
        subprocess.run([str(DEPLOY / "isthmus-pki"), str(pki), *step], check=True)
    with serving(tmp_path / "state", pki) as secure:
        assert secure.url.startswith("https://")
        secure.cli("admin", "network", "create", "over-tls")
        assert [n["Name"] for n in secure.json("admin", "network", "list")] == ["over-tls"]
        with pytest.raises(httpx2.TransportError):
            httpx2.get(secure.url.replace("https://", "http://") + "/healthz")


def test_ipv6_subnets_ports_floating_ips_and_router_interfaces(cloud: Cloud) -> None:
    """A network with an IPv4 and a stateful-DHCPv6 subnet gives a port an address of each; an IPv6
    floating IP comes from the public network's IPv6 subnet (`--subnet`); a router joins IPv6 subnets; the
    IPv6 modes are refused on an IPv4 subnet and when they disagree, and nothing is stored."""
    cloud.cli(
        "admin",
        *("subnet", "create", "public-v6", "--network", "public", "--ip-version", "6"),
        *("--subnet-range", "2001:db8:113::/64"),
    )
    cloud.cli("leonardo", "network", "create", "dual")
    cloud.cli(
        "leonardo", "subnet", "create", "dual-v4", "--network", "dual", "--subnet-range", "10.31.0.0/24"
    )
    stateful = cloud.json(
        "leonardo",
        *("subnet", "create", "dual-v6", "--network", "dual", "--ip-version", "6", "--ipv6-address-mode"),
        *("dhcpv6-stateful", "--ipv6-ra-mode", "dhcpv6-stateful", "--subnet-range", "fd00:31::/64"),
    )
    assert stateful["ipv6_address_mode"] == "dhcpv6-stateful" and stateful["gateway_ip"] == "fd00:31::1"
    port = cloud.json("leonardo", "port", "create", "vm", "--network", "dual")
    fixed = [f["ip_address"] for f in port["fixed_ips"]]
    assert fixed == ["10.31.0.2", "fd00:31::2"], fixed  # stateful: from the pool, after the gateway
    public = cloud.json("admin", "network", "show", "public")["id"]
    public6 = cloud.json("admin", "subnet", "show", "public-v6")["id"]
    made = cloud.sdk("leonardo").network.create_ip(  # the client looks the admin's subnet up: not visible
        floating_network_id=public, subnet_id=public6, port_id=port["id"]
    )
    assert ipaddress.ip_address(made.floating_ip_address) in ipaddress.ip_network("2001:db8:113::/64")
    given = cloud.json(
        "leonardo", "floating", "ip", "create", "public", "--floating-ip-address", "2001:db8:113::50"
    )
    assert given["floating_ip_address"] == "2001:db8:113::50"
    cloud.cli("leonardo", "network", "create", "other6")
    cloud.cli(
        "leonardo",
        *("subnet", "create", "other6-v6", "--network", "other6", "--ip-version", "6"),
        *("--subnet-range", "fd00:32::/64"),
    )
    cloud.cli("leonardo", "router", "create", "edge6")
    for subnet in ("dual-v6", "other6-v6"):
        cloud.cli("leonardo", "router", "add", "subnet", "edge6", subnet)
    router = cloud.json("leonardo", "router", "show", "edge6")["id"]
    policy = cloud.isthmus("GET", f"/namespaces/leonardo/policies/{router}")
    joined = {(r["source"]["network"], r["destination"]["network"]) for r in policy["spec"]["rules"]}
    dual, other = (cloud.json("leonardo", "network", "show", n)["id"] for n in ("dual", "other6"))
    assert joined == {(dual, other), (other, dual)}  # routed each way
    for bad, message in (
        (["--subnet-range", "10.33.0.0/24", "--ipv6-address-mode", "slaac"], "are for IPv6 subnets"),
        (
            [
                *("--ip-version", "6", "--subnet-range", "fd00:33::/64"),
                *("--ipv6-address-mode", "slaac", "--ipv6-ra-mode", "dhcpv6-stateful"),
            ],
            "when both are set, they are the same",
        ),
    ):
        refused = cloud.cli("leonardo", "subnet", "create", "bad", "--network", "dual", *bad, ok=False)
        assert refused.returncode == 1 and message in refused.stderr, refused.stderr
    assert "bad" not in cloud.cli("leonardo", "subnet", "list").stdout
