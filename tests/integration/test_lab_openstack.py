"""Hybrid: an OpenStack VM and a Kubernetes pod on the same network of a 2-node lab. The VM is a port made
with the real `openstack` client and bound to a node (`--host`), which the node's lab nova boots as a
sandbox; its security groups are enforced on the packets."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from isthmus.model.network import eui64
from tests.integration.clouds import HAS_CLIENTS, Cloud, serving
from tests.integration.labs import ask, isthmus, lab, lab_exec, running, until
from tests.integration.test_lab import write

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft") or not HAS_CLIENTS,
    reason="needs root, nftables and python-openstackclient (scripts/bootstrap dev)",
)
TOPOLOGY = {
    "name": "hyb",
    "nodes": [{"name": "node-1"}, {"name": "node-2"}],
    "kube": {  # dual stack: the shared pod network, and so its VMs, have an address of each family
        "podCidrs": ["10.32.0.0/12", "fd00:10:32::/56"],
        "serviceCidrs": ["10.254.0.0/16", "fd00:10:254::/112"],
        "externalPools": ["203.0.113.0/24", "2001:db8:113::/64"],
    },
}
WEB = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "leonardo"},
    "spec": {
        "nodeName": "node-1",
        "containers": [{"name": "web", "image": "web", "ports": [{"containerPort": 80}]}],
    },
}


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Cloud, dict[str, Any]]]:
    base = tmp_path_factory.mktemp("hybrid")
    with running(base, TOPOLOGY, "--timeout", "60") as (work, _):
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "leonardo"}}
        (base / "web.yaml").write_text(yaml.safe_dump_all([namespace, WEB]))
        lab(work, "apply", "-f", str(base / "web.yaml"))
        with serving(work / "state") as cloud:
            cloud.tokens["leonardo"] = cloud.tenant("leonardo")
            port = cloud.vm("leonardo", "pg-1", "pods", "node-2")
            yield work, cloud, port


def test_a_pod_and_a_vm_on_one_network_talk_as_their_security_group_allows(
    hybrid: tuple[Path, Cloud, dict[str, Any]],
) -> None:
    work, cloud, port = hybrid
    vm, address = f"leonardo/{port['id']}", port["fixed_ips"][0]["ip_address"]
    web = json.loads(isthmus(work, "get", "pod", "web", "-n", "leonardo", "-o", "json").output)["status"][
        "podIP"
    ]
    until(lambda: ask(work, vm, web, 80), "leonardo/web")  # the VM is up on node-2; out is allowed
    assert ask(work, "leonardo/web", address, 5432) == "failed: TimeoutError"  # default group: members only
    cloud.cli(
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
    )
    until(lambda: ask(work, "leonardo/web", address, 5432), vm)  # pod -> VM, across nodes
    assert ask(work, "leonardo/web", address, 22) == "failed: TimeoutError"  # only the rule's port
    cloud.cli("leonardo", "port", "delete", port["id"])
    until(lambda: ask(work, "leonardo/web", address, 5432), "failed: TimeoutError")


def test_a_router_joins_two_tenant_networks_for_their_vms(hybrid: tuple[Path, Cloud, dict[str, Any]]) -> None:
    work, cloud, _ = hybrid
    vms = {}
    for name, cidr, node in (("front", "10.40.1.0/24", "node-1"), ("back", "10.40.2.0/24", "node-2")):
        cloud.cli("leonardo", "network", "create", name)
        cloud.cli("leonardo", "subnet", "create", f"{name}-v4", "--network", name, "--subnet-range", cidr)
        port = cloud.vm("leonardo", f"{name}-vm", name, node)
        vms[name] = (f"leonardo/{port['id']}", port["fixed_ips"][0]["ip_address"])
    (front, _), (back, address) = vms["front"], vms["back"]
    until(lambda: ask(work, front, address, 22), "failed: OSError")  # up, but no route to back
    cloud.cli("leonardo", "router", "create", "edge")
    for subnet in ("front-v4", "back-v4"):
        cloud.cli("leonardo", "router", "add", "subnet", "edge", subnet)
    until(lambda: ask(work, front, address, 22), back)  # routed, node-1 to node-2
    cloud.cli("leonardo", "router", "remove", "subnet", "edge", "back-v4")
    until(lambda: ask(work, front, address, 22), "failed: OSError")


def test_an_allowed_address_pair_is_routed_to_its_vm(hybrid: tuple[Path, Cloud, dict[str, Any]]) -> None:
    work, cloud, _ = hybrid
    port = cloud.vm(
        "leonardo", "keepalived", "pods", "node-2", "--disable-port-security", "--no-security-group"
    )
    vm, address = f"leonardo/{port['id']}", port["fixed_ips"][0]["ip_address"]
    extra = address.rsplit(".", 1)[0] + ".250"  # a VIP the VM holds beside its own address
    until(lambda: ask(work, "leonardo/web", address, 22), vm)
    assert lab_exec(work, vm, "ip", "addr", "add", f"{extra}/32", "dev", "eth0").returncode == 0
    assert ask(work, "leonardo/web", extra, 22).startswith("failed")  # not routed to it yet
    cloud.cli("leonardo", "port", "set", port["id"], "--allowed-address", f"ip-address={extra}")
    until(lambda: ask(work, "leonardo/web", extra, 22), vm)  # now it is, across nodes


PING = """
import os, socket, struct, sys
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
body = struct.pack("!BBHHH", 8, 0, 0, os.getpid() & 0xFFFF, 1) + b"isthmus!"
packet = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
    s.settimeout(1)
    s.sendto(packet, (sys.argv[1], 0))
    try:
        while True:
            reply, (source, _) = s.recvfrom(1500)
            if source == sys.argv[1] and reply[20] == 0:
                print("reply")
                break
    except OSError:
        print("no reply")
"""  # one ICMP echo to ADDRESS: "reply" or "no reply"


def test_an_icmp_rule_lets_a_pod_ping_a_vm(hybrid: tuple[Path, Cloud, dict[str, Any]]) -> None:
    work, cloud, _ = hybrid
    port = cloud.vm("leonardo", "pinged", "pods", "node-2")
    vm, address = f"leonardo/{port['id']}", port["fixed_ips"][0]["ip_address"]

    def ping() -> str:
        return lab_exec(work, "leonardo/web", "python3", "-c", PING, address).stdout.strip()

    cloud.cli(
        "leonardo", "security", "group", "rule", "create", "default", "--protocol", "tcp", "--dst-port", "80"
    )
    until(lambda: ask(work, "leonardo/web", address, 80), vm)  # up, and its group programmed
    assert ping() == "no reply"  # TCP 80 only
    cloud.cli("leonardo", "security", "group", "rule", "create", "default", "--protocol", "icmp")
    until(ping, "reply")


def test_a_bare_metal_host_on_the_pod_network_is_reached_like_a_pod(
    hybrid: tuple[Path, Cloud, dict[str, Any]], tmp_path: Path
) -> None:
    work, _, _ = hybrid
    host = {
        "apiVersion": "isthmus.io/v1",
        "kind": "Endpoint",
        "metadata": {"name": "storage-1", "namespace": "leonardo"},
        "spec": {
            "kind": "host",
            "network": "isthmus-system/pods",
            "node": "node-2",
            "ports": [{"port": 3260}],
        },
    }
    (tmp_path / "host.yaml").write_text(yaml.safe_dump(host))
    lab(work, "apply", "-f", str(tmp_path / "host.yaml"))  # settles once its machine is up
    address = json.loads(isthmus(work, "get", "endpoint", "storage-1", "-n", "leonardo", "-o", "json").output)
    assert ask(work, "leonardo/web", address["spec"]["addresses"][0], 3260) == "leonardo/storage-1"


def test_an_ipv6_slaac_subnet_gives_a_vm_its_eui64_address_reached_as_its_security_group_allows(
    hybrid: tuple[Path, Cloud, dict[str, Any]],
) -> None:
    """`openstack subnet create --ip-version 6 --ipv6-address-mode slaac`: a port gets an IPv4 address and
    the EUI-64 of its MAC in the /64 (the lab's agent puts it on the VM's interface, as the VM would form
    it from a router advertisement); an IPv6 rule of the VM's group lets IPv6 in, and only IPv6."""
    work, cloud, _ = hybrid
    cloud.cli("leonardo", "network", "create", "six")
    cloud.cli("leonardo", "subnet", "create", "six-v4", "--network", "six", "--subnet-range", "10.46.0.0/24")
    subnet = cloud.json(
        "leonardo",
        *("subnet", "create", "six-v6", "--network", "six", "--ip-version", "6"),
        *("--ipv6-address-mode", "slaac", "--ipv6-ra-mode", "slaac", "--subnet-range", "2001:db8:46::/64"),
    )
    assert (subnet["ipv6_address_mode"], subnet["ipv6_ra_mode"], subnet["ip_version"]) == (
        "slaac",
        "slaac",
        6,
    )
    cloud.cli("leonardo", "security", "group", "create", "db")
    client = cloud.vm("leonardo", "six-client", "six", "node-1")
    server = cloud.vm("leonardo", "six-db", "six", "node-2", "--security-group", "db")
    addresses = {ipaddress.ip_address(f["ip_address"]).version: f["ip_address"] for f in server["fixed_ips"]}
    mac = server["mac_address"]
    assert addresses[6] == str(eui64(ipaddress.IPv6Network("2001:db8:46::/64"), mac))
    vm, db = f"leonardo/{client['id']}", f"leonardo/{server['id']}"

    def booted() -> bool:
        machines = json.loads(lab(work, "status", "-o", "json").output)["machines"]
        return all(m["up"] for m in machines if m["ref"] in (vm, db)) and len(machines) > 1

    until(booted, True)
    assert ask(work, vm, addresses[6], 5432) == "failed: TimeoutError"  # group db lets nothing in
    cloud.cli(
        "leonardo",
        *("security", "group", "rule", "create", "db", "--ethertype", "IPv6", "--protocol", "tcp"),
        *("--dst-port", "5432"),
    )
    until(lambda: ask(work, vm, addresses[6], 5432), db)  # over IPv6, node-1 to node-2
    assert ask(work, vm, addresses[4], 5432) == "failed: TimeoutError"  # the rule is IPv6's only
    bad = cloud.cli(
        "leonardo",
        *("subnet", "create", "bad", "--network", "six", "--ip-version", "6", "--ipv6-address-mode"),
        *("slaac", "--subnet-range", "2001:db8:47::/80"),
        ok=False,
    )
    assert bad.returncode == 1 and "EUI-64, which needs a /64 prefix" in bad.stderr


def test_a_pod_reaches_a_vm_over_ipv6_only_once_an_ipv6_rule_allows_it(
    hybrid: tuple[Path, Cloud, dict[str, Any]],
) -> None:
    work, cloud, _ = hybrid
    cloud.cli("leonardo", "security", "group", "create", "db6")
    port = cloud.vm("leonardo", "pg-6", "pods", "node-2", "--security-group", "db6")
    addresses = {ipaddress.ip_address(f["ip_address"]).version: f["ip_address"] for f in port["fixed_ips"]}
    assert sorted(addresses) == [4, 6]
    vm = f"leonardo/{port['id']}"
    until(lambda: ask(work, vm, addresses[6], 22), vm)  # up (itself, over IPv6)
    assert ask(work, "leonardo/web", addresses[6], 5432) == "failed: TimeoutError"  # db6 lets nothing in
    cloud.cli(
        "leonardo",
        *("security", "group", "rule", "create", "db6", "--ethertype", "IPv6", "--protocol", "tcp"),
        *("--dst-port", "5432"),
    )
    until(lambda: ask(work, "leonardo/web", addresses[6], 5432), vm)  # pod -> VM over IPv6, across nodes
    assert ask(work, "leonardo/web", addresses[4], 5432) == "failed: TimeoutError"  # IPv4: no rule


def test_a_pod_reaches_a_vm_on_a_neutron_ipv6_subnet_once_a_policy_joins_them_and_a_rule_allows_it(
    hybrid: tuple[Path, Cloud, dict[str, Any]], tmp_path: Path
) -> None:
    """As the seeds join their tiers: tenant `shop` makes network db with the `openstack` client, an IPv4
    and a SLAAC IPv6 subnet, and a VM on it; an Isthmus Policy of the tenant joins db to the network of
    the Kubernetes namespace shop's pods labelled `name: app` (collection isolation). The pod reaches the
    VM's EUI-64 address over IPv6 only once an IPv6 rule of the VM's group allows it too."""
    work, cloud, _ = hybrid
    cloud.tokens["shop"] = cloud.tenant("shop")
    network = cloud.json("shop", "network", "create", "db")
    cloud.cli("shop", "subnet", "create", "db-v4", "--network", "db", "--subnet-range", "10.47.0.0/24")
    cloud.cli(
        "shop",
        *("subnet", "create", "db-v6", "--network", "db", "--ip-version", "6"),
        *("--ipv6-address-mode", "slaac", "--ipv6-ra-mode", "slaac", "--subnet-range", "2001:db8:48::/64"),
    )
    cloud.cli("shop", "security", "group", "create", "pg")
    server = cloud.vm("shop", "pg", "db", "node-2", "--security-group", "pg")
    six = next(f["ip_address"] for f in server["fixed_ips"] if ":" in f["ip_address"])
    assert ipaddress.ip_address(six) == eui64(
        ipaddress.IPv6Network("2001:db8:48::/64"), server["mac_address"]
    )
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "shop", "annotations": {"isthmus.io/isolation": "collection"}},
    }
    app = {**WEB, "metadata": {"name": "app", "namespace": "shop", "labels": {"name": "app"}}}
    lab(work, "apply", "-f", write(tmp_path / "shop.yaml", [namespace, app]), "--timeout", "60")
    vm = f"shop/{server['id']}"
    until(lambda: ask(work, vm, six, 22), vm)  # up (itself, over IPv6)
    assert ask(work, "shop/app", six, 5432).startswith("failed")  # no route: the networks are apart
    rule = {"action": "allow", "source": {"network": "app"}, "destination": {"network": network["id"]}}
    join = {
        "apiVersion": "isthmus.io/v1",
        "kind": "Policy",
        "metadata": {"name": "app-db"},
        "spec": {"rules": [rule]},
    }
    cloud.isthmus("POST", "/namespaces/shop/policies", join)
    until(
        lambda: ask(work, "shop/app", six, 5432), "failed: TimeoutError"
    )  # routed; group pg lets nothing in
    cloud.cli(
        "shop",
        *("security", "group", "rule", "create", "pg", "--ethertype", "IPv6", "--protocol", "tcp"),
        *("--dst-port", "5432"),
    )
    until(lambda: ask(work, "shop/app", six, 5432), vm)  # pod -> VM over IPv6, node-1 to node-2
