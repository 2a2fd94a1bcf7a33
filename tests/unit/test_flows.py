"""Flow records from logged packets: ends named from the node's state, a service's DNAT joined to the
packet's verdict, a later rule on the same packet deciding, the ring bounded, filters; conntrack's events
following a recorded connection to established and closed."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import replace
from typing import Any

from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from isthmus.agent.flows import Named, Names, Recorder, parse
from isthmus.dataplane.kernel.conntrack import Event, event
from isthmus.dataplane.kernel.nflog import Logged
from isthmus.dataplane.kernel.ruleset import via_key
from isthmus.observe.flows import Filter

NAMES = Names(
    {"10.0.0.1": Named("x", "a", "x/pods"), "10.0.0.2": Named("y", "b", "y/pods")},
    {"10.254.0.9": "y/web", "10.254.0.10": "y/empty"},
)
WORDS = {
    "dabc": "y/deny-all",
    "aabc": "y/allow-a ingress[0]",
    "aegr": "x/out egress[0]",
    "sweb": "ServiceVIP y/web",
    via_key(4099, "10.0.0.2"): "y/uses-web rules[0]",
}


def tcp(source: str, destination: str, sport: int, dport: int) -> bytes:
    header = bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0])
    addresses = ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address(destination).packed
    return header + addresses + sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + bytes(16)


def logged(prefix: str, payload: bytes) -> Logged:
    return Logged(prefix, 4, 3, 4, 0, payload)


def recorder(size: int = 100) -> Recorder:
    return Recorder("node-1", lambda: NAMES, WORDS.get, size)


def test_a_packet_is_parsed_in_both_families() -> None:
    assert parse(tcp("10.0.0.1", "10.0.0.2", 40000, 80), 4) == parse(
        tcp("10.0.0.1", "10.0.0.2", 40000, 80), 4
    )
    packet = parse(tcp("10.0.0.1", "10.0.0.2", 40000, 80), 4)
    assert packet is not None and (packet.protocol, packet.sport, packet.dport) == ("TCP", 40000, 80)
    six = bytes([0x60, 0, 0, 0, 0, 20, 17, 64]) + ipaddress.IPv6Address("fd00::1").packed
    six += ipaddress.IPv6Address("fd00::2").packed + (53000).to_bytes(2, "big") + (53).to_bytes(2, "big")
    assert parse(six, 6) is not None and parse(six, 6).protocol == "UDP"  # type: ignore[union-attr]
    assert parse(b"\x45\x00", 4) is None  # too short: no record


def test_a_drop_names_its_policy_and_its_ends() -> None:
    flows = recorder()
    flows.add(logged("dabc", tcp("10.0.0.1", "10.0.0.2", 40000, 81)), 100.0)
    (record,) = flows.since(0)["records"]
    assert (record["verdict"], record["rule"]) == ("dropped", "y/deny-all")
    assert record["source"] == {
        "namespace": "x",
        "name": "a",
        "kind": "pod",
        "network": "x/pods",
        "address": "10.0.0.1",
        "port": 40000,
    }
    assert record["destination"]["name"] == "b" and "service" not in record


def test_a_later_rule_on_the_same_packet_decides_and_a_new_packet_is_a_new_record() -> None:
    flows = recorder()
    packet = tcp("10.0.0.1", "10.0.0.2", 40000, 80)
    flows.add(logged("aegr", packet), 100.0)  # allowed out of x/a
    flows.add(logged("dabc", packet), 100.001)  # then dropped into y/b, on the same node
    assert [(r["verdict"], r["rule"]) for r in flows.since(0)["records"]] == [("dropped", "y/deny-all")]
    flows.add(logged("aabc", packet), 101.5)  # the SYN again, a second later
    assert len(flows.since(0)["records"]) == 2


def test_a_service_dnat_joins_the_packets_verdict_and_a_refusal_names_the_service() -> None:
    flows = recorder()
    flows.add(logged("sweb", tcp("10.0.0.1", "10.254.0.9", 40000, 80)), 100.0)
    flows.add(logged("o", tcp("10.0.0.1", "10.0.0.2", 40000, 8080)), 100.0)
    flows.add(logged("r", tcp("10.0.0.1", "10.254.0.10", 40001, 80)), 100.1)
    allowed, refused = flows.since(0)["records"]
    assert (allowed["verdict"], allowed["rule"], allowed["service"]) == ("allowed", "", "y/web")
    assert allowed["vip"] == {"address": "10.254.0.9", "port": 80}
    assert (refused["verdict"], refused["rule"], refused["service"]) == (
        "dropped",
        "ServiceVIP y/empty",
        "y/empty",
    )


def test_the_ring_keeps_the_newest_and_says_how_many_were_overwritten() -> None:
    flows = recorder(size=3)
    for port in range(5):
        flows.add(logged("dabc", tcp("10.0.0.1", "10.0.0.2", 40000 + port, 80)), 100.0 + port)
    read = flows.since(0)
    assert [r["seq"] for r in read["records"]] == [3, 4, 5] and read["overwritten"] == 2
    assert flows.since(4)["records"][0]["seq"] == 5 and flows.since(5)["records"] == []


def test_filters_match_either_end() -> None:
    flows = recorder()
    flows.add(logged("dabc", tcp("10.0.0.1", "10.0.0.2", 40000, 81)), 100.0)
    (record,) = flows.since(0)["records"]
    assert Filter(pod="y/b").matches(record) and Filter(pod="a", namespace="x").matches(record)
    assert Filter(namespace="x", verdict="dropped", protocol="tcp", port=81, node="node-1").matches(record)
    assert not Filter(verdict="allowed").matches(record) and not Filter(pod="y/a").matches(record)
    assert not Filter(namespace="z").matches(record) and not Filter(service="y/web").matches(record)


def ctnetlink(kind: int, status: int, tcp_state: int | None, six: bool = False) -> bytes:
    """A conntrack event as the kernel sends it (pyroute2 encodes it): x/a:40000 to the VIP, DNATed to
    y/b:8080 (in IPv6: fd00::1, fd00:254::9, fd00::2)."""
    family = "V6" if six else "V4"

    def ends(source: str, destination: str, sport: int, dport: int) -> dict[str, Any]:
        if six:
            source, destination = (
                a.replace("10.0.0.", "fd00::").replace("10.254.0.", "fd00:254::")
                for a in (source, destination)
            )
        ip = {"attrs": [(f"CTA_IP_{family}_SRC", source), (f"CTA_IP_{family}_DST", destination)]}
        proto = {
            "attrs": [("CTA_PROTO_NUM", 6), ("CTA_PROTO_SRC_PORT", sport), ("CTA_PROTO_DST_PORT", dport)]
        }
        return {"attrs": [("CTA_TUPLE_IP", ip), ("CTA_TUPLE_PROTO", proto)]}

    attrs: list[tuple[str, Any]] = [
        ("CTA_TUPLE_ORIG", ends("10.0.0.1", "10.254.0.9", 40000, 80)),
        ("CTA_TUPLE_REPLY", ends("10.0.0.2", "10.0.0.1", 8080, 40000)),
        ("CTA_STATUS", status),
    ]
    if tcp_state is not None:
        tcp = {"attrs": [("CTA_PROTOINFO_TCP_STATE", tcp_state)]}
        attrs.append(("CTA_PROTOINFO", {"attrs": [("CTA_PROTOINFO_TCP", tcp)]}))
    msg = nfct_msg()
    msg["header"]["type"] = NFNL_SUBSYS_CTNETLINK << 8 | kind
    msg["nfgen_family"], msg["attrs"] = socket.AF_INET6 if six else socket.AF_INET, attrs
    msg.encode()
    return bytes(msg.data)


def test_conntrack_events_say_established_and_closed() -> None:
    syn_recv, established, fin_wait = (
        event(ctnetlink(0, 0x8, 2)),
        event(ctnetlink(0, 0xE, 3)),
        event(ctnetlink(0, 0xE, 4)),
    )
    assert syn_recv is None  # on the way: not a state a record shows
    assert established == Event("established", "TCP", "10.0.0.1", 40000, "10.0.0.2", 8080)
    assert fin_wait is not None and fin_wait.state == "closed"
    assert event(ctnetlink(2, 0xE, None)) == Event("closed", "TCP", "10.0.0.1", 40000, "10.0.0.2", 8080)
    assert event(ctnetlink(0, 0xE, None)) is not None  # no TCP state (UDP's): ASSURED decides
    assert event(ctnetlink(0, 0xA, None)) is None
    assert event(ctnetlink(0, 0xE, 3, six=True)) == Event(
        "established", "TCP", "fd00::1", 40000, "fd00::2", 8080
    )


def test_a_recorded_connection_is_followed_once_to_established_and_closed() -> None:
    flows = recorder()
    flows.add(logged("sweb", tcp("10.0.0.1", "10.254.0.9", 40000, 80)), 100.0)
    flows.add(logged("aabc", tcp("10.0.0.1", "10.0.0.2", 40000, 8080)), 100.0)
    flows.add(logged("dabc", tcp("10.0.0.1", "10.0.0.2", 40001, 8080)), 100.0)
    up = Event("established", "TCP", "10.0.0.1", 40000, "10.0.0.2", 8080)
    for e in (up, up, replace(up, state="closed"), replace(up, state="closed")):
        flows.follow(e, 101.0)
    flows.follow(replace(up, sport=40001), 101.0)  # dropped: never followed
    flows.follow(replace(up, sport=40002), 101.0)  # no record of its first packet
    new, _, established, closed = flows.since(0)["records"]
    assert [r["state"] for r in (new, established, closed)] == ["new", "established", "closed"]
    for later in (established, closed):
        assert {k: v for k, v in later.items() if k not in ("seq", "time", "state")} == {
            k: v for k, v in new.items() if k not in ("seq", "time", "state")
        }
    assert (closed["service"], closed["rule"], closed["seq"]) == ("y/web", "y/allow-a ingress[0]", 4)
    assert not flows.open and flows.tally()[0] == {
        ("allowed", "y/allow-a ingress[0]"): 1,
        ("dropped", "y/deny-all"): 1,
    }  # connections counted once, by their first packet


def test_an_event_before_its_connections_first_record_waits_for_it() -> None:
    flows = recorder()
    up = Event("established", "TCP", "10.0.0.1", 40000, "10.0.0.2", 8080)
    flows.follow(replace(up, sport=40009), 98.0)  # too long ago: forgotten when the next comes
    flows.follow(up, 100.0)  # conntrack at once, NFLOG's batch 20 ms later
    flows.follow(replace(up, state="closed"), 100.01)
    flows.add(logged("aabc", tcp("10.0.0.1", "10.0.0.2", 40000, 8080)), 100.02)
    flows.add(logged("aabc", tcp("10.0.0.1", "10.0.0.2", 40009, 8080)), 100.02)
    records = flows.since(0)["records"]
    assert [(r["source"]["port"], r["state"]) for r in records] == [
        (40000, "new"),
        (40000, "established"),
        (40000, "closed"),
        (40009, "new"),
    ]
    assert [r["time"] for r in records[:3]] == [100.02] * 3  # never before the first packet's


def test_a_drop_of_traffic_allowed_only_via_a_service_names_the_policy_that_leaked_the_route() -> None:
    flows = recorder()
    direct = tcp("10.0.0.1", "10.0.0.2", 40000, 8080)
    flows.add(Logged("v", 4, 3, 4, 0x40000000 | 4099, direct), 100.0)  # network 4099's packet
    flows.add(Logged("v", 4, 3, 4, 4100, direct), 100.5)  # another network's: no policy known
    assert [r["rule"] for r in flows.since(0)["records"]] == ["y/uses-web rules[0]", "only via a service"]
