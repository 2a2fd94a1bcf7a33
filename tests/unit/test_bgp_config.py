"""The node speaker's BIRD configuration (checked by BIRD's own parser where it is installed) and the
parsing of BIRD's answers, from output of a real BIRD 2.0.12."""

from __future__ import annotations

import ipaddress
import random
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from isthmus.bgp.config import Prefix, Settings, peer_name, render
from isthmus.bgp.control import PeerState, parse_protocols, parse_static
from isthmus.model.network import BgpPeer

LOG = Path("/run/isthmus/bgp/bird.log")


def settings(address: str = "10.0.0.10", asn: int = 65001, *peers: tuple[str, int]) -> Settings:
    given = peers or (("10.0.0.1", 65000),)
    return Settings(ipaddress.ip_address(address), asn, tuple(BgpPeer(address=a, asn=n) for a, n in given))


def nets(*texts: str) -> list[Prefix]:
    return [ipaddress.ip_network(t) for t in texts]


def bird_accepts(text: str, tmp_path: Path) -> None:
    """BIRD's parser takes the configuration (where BIRD is installed)."""
    if not shutil.which("bird"):
        return
    path = tmp_path / "bird.conf"
    path.write_text(text)
    checked = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr


def test_a_typical_node_announces_its_prefixes_to_one_router(tmp_path: Path) -> None:
    text = render(settings(), nets("203.0.113.7/32", "198.51.100.0/24", "203.0.113.5/32"), LOG)
    assert text == (
        "# Rendered by isthmus (isthmus.bgp): the node's BGP speaker. Rewritten on every change.\n"
        "router id 10.0.0.10;\n"
        'log "/run/isthmus/bgp/bird.log" 1000000 "/run/isthmus/bgp/bird.log.1" all;\n'
        'timeformat protocol "%s.%3f";\n'
        "\n"
        "protocol device { }\n"
        "\n"
        "protocol static announce4 {\n"
        "  ipv4;\n"
        "  route 198.51.100.0/24 blackhole;\n"
        "  route 203.0.113.5/32 blackhole;\n"
        "  route 203.0.113.7/32 blackhole;\n"
        "}\n"
        "\n"
        "protocol static announce6 {\n"
        "  ipv6;\n"
        "}\n"
        "\n"
        "template bgp isthmus_peer {\n"
        "  local as 65001;\n"
        "  hold time 9;\n"
        "  keepalive time 3;\n"
        "  connect delay time 1;\n"
        "  connect retry time 5;\n"
        "  error wait time 5, 60;\n"
        "  graceful restart off;\n"
        "}\n"
        "\n"
        "protocol bgp peer_10_0_0_1 from isthmus_peer {\n"
        "  neighbor 10.0.0.1 as 65000;\n"
        '  ipv4 { import none; export where proto = "announce4"; next hop self; };\n'
        "}\n"
    )
    assert "kernel" not in text
    bird_accepts(text, tmp_path)


def test_each_peer_is_offered_the_prefixes_of_its_family(tmp_path: Path) -> None:
    both = settings("10.0.0.10", 65001, ("2001:db8::1", 65000), ("10.0.0.1", 65000), ("10.0.0.2", 65001))
    text = render(both, nets("2001:db8:ff::7/128", "203.0.113.7/32", "2001:db8:ff::/64"), LOG)
    static4, static6 = text.split("protocol static announce4")[1].split("protocol static announce6")
    assert "route 203.0.113.7/32 blackhole;" in static4 and "2001" not in static4
    assert static6.index("2001:db8:ff::/64 blackhole") < static6.index("2001:db8:ff::7/128 blackhole")
    assert "protocol bgp peer_2001_db8__1 from isthmus_peer {\n  neighbor 2001:db8::1 as 65000;\n" in text
    assert 'ipv6 { import none; export where proto = "announce6"; next hop self; }' in text
    assert "neighbor 10.0.0.2 as 65001;" in text  # iBGP: the same template
    assert text.index("peer_10_0_0_1") < text.index("peer_10_0_0_2") < text.index("peer_2001_db8__1")
    bird_accepts(text, tmp_path)


def test_an_ipv6_node_takes_its_router_id_from_its_low_32_bits(tmp_path: Path) -> None:
    node = settings("2001:db8::a:b0c", 65001, ("2001:db8::1", 65000))
    assert node.router_id == ipaddress.IPv4Address("0.10.11.12")
    text = render(node, [], LOG)
    assert "router id 0.10.11.12;" in text
    bird_accepts(text, tmp_path)


def test_nothing_to_announce_keeps_the_sessions_with_empty_static_protocols(tmp_path: Path) -> None:
    text = render(settings(), [], LOG)
    assert "protocol static announce4 {\n  ipv4;\n}" in text
    assert "protocol static announce6 {\n  ipv6;\n}" in text
    assert "route" not in text.replace("router id", "")
    bird_accepts(text, tmp_path)


def test_prefixes_change_only_the_static_protocols_and_order_does_not_matter() -> None:
    node = settings("10.0.0.10", 65001, ("10.0.0.1", 65000), ("10.0.0.2", 65000), ("2001:db8::1", 65000))
    prefixes = nets("203.0.113.7/32", "203.0.113.8/32", "2001:db8:ff::7/128", "10.1.0.0/16")
    shuffled = random.Random(7).sample(prefixes, len(prefixes))
    reordered = Settings(node.address, node.asn, node.peers[::-1])
    assert render(node, prefixes, LOG) == render(reordered, shuffled, LOG)
    sessions = render(node, prefixes, LOG).partition("template bgp")[2]
    assert sessions == render(node, [], LOG).partition("template bgp")[2]


def test_the_hold_time_sets_the_keepalive() -> None:
    text = render(Settings(ipaddress.ip_address("10.0.0.10"), 1, settings().peers, hold_time=30), [], LOG)
    assert "hold time 30;\n  keepalive time 10;" in text


@pytest.mark.parametrize(
    ("address", "asn", "peers", "message"),
    [
        ("10.0.0.10", 65001, (), "at least one peer"),
        ("10.0.0.10", 65001, (("10.0.0.1", 1), ("10.0.0.1", 2)), "repeat an address: 10.0.0.1, 10.0.0.1"),
        ("10.0.0.10", 0, (("10.0.0.1", 1),), "local AS 0 is out of range"),
        ("10.0.0.10", 2**32, (("10.0.0.1", 1),), "out of range"),
        ("10.0.0.10", 65001, (("fe80::1", 1),), "peer fe80::1: not a usable"),
        ("10.0.0.10", 65001, (("224.0.0.5", 1),), "peer 224.0.0.5: not a usable"),
        ("10.0.0.10", 65001, (("10.0.0.10", 1),), "peer 10.0.0.10: not a usable"),
        ("2001:db8::", 65001, (("2001:db8::1", 1),), "gives router id 0.0.0.0"),
    ],
)
def test_settings_that_cannot_make_a_speaker_are_refused(
    address: str, asn: int, peers: tuple[tuple[str, int], ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(ipaddress.ip_address(address), asn, tuple(BgpPeer(address=a, asn=n) for a, n in peers))


def test_a_hold_time_bird_would_refuse_is_refused() -> None:
    with pytest.raises(ValueError, match="hold time 2 is out of range"):
        Settings(ipaddress.ip_address("10.0.0.10"), 1, settings().peers, hold_time=2)


def test_a_log_path_that_would_break_the_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="double quote"):
        render(settings(), [], Path('/tmp/a"b/bird.log'))


def test_peer_names_are_bird_symbols_one_per_address() -> None:
    assert peer_name(ipaddress.ip_address("10.0.0.1")) == "peer_10_0_0_1"
    assert peer_name(ipaddress.ip_address("2001:db8::1")) == "peer_2001_db8__1"
    assert peer_name(ipaddress.ip_address("1:2:3:4:5:6:7:8")) == "peer_1_2_3_4_5_6_7_8"


# `birdc show protocols all` of a node speaker with four peers: the router over IPv4 (Established), an
# absent neighbour on the link (Active, its error), one off the node's networks (Idle), and the router
# over IPv6 (Established). Trimmed of the static protocols' route statistics.
SHOW_PROTOCOLS_ALL = """\
BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     1795251225.683

announce4  Static     master4    up     1795251225.683
  Channel ipv4
    State:          UP
    Table:          master4
    Preference:     200
    Input filter:   ACCEPT
    Output filter:  REJECT
    Routes:         1 imported, 0 exported, 1 preferred

peer_10_9_1_1 BGP        ---        up     1795251229.920  Established
  BGP state:          Established
    Neighbor address: 10.9.1.1
    Neighbor AS:      65000
    Local AS:         65001
    Neighbor ID:      10.9.1.1
    Local capabilities
      Multiprotocol
        AF announced: ipv4
      Route refresh
      4-octet AS numbers
      Enhanced refresh
    Neighbor capabilities
      Multiprotocol
        AF announced: ipv4
      Route refresh
      Graceful restart
      4-octet AS numbers
      Enhanced refresh
      Long-lived graceful restart
    Session:          external AS4
    Source address:   10.9.1.2
    Hold timer:       6.438/9
    Keepalive timer:  0.929/3
  Channel ipv4
    State:          UP
    Table:          master4
    Preference:     100
    Input filter:   REJECT
    Output filter:  (unnamed)
    Routes:         0 imported, 1 exported, 0 preferred
    Route change stats:     received   rejected   filtered    ignored   accepted
      Import updates:              0          0          0          0          0
      Import withdraws:            0          0        ---          0          0
      Export updates:              1          0          0        ---          1
      Export withdraws:            0        ---        ---        ---          0
    BGP Next hop:   10.9.1.2

peer_10_9_1_9 BGP        ---        start  1795251225.683  Active        Socket: No route to host
  BGP state:          Active
    Neighbor address: 10.9.1.9
    Neighbor AS:      65000
    Local AS:         65001
    Connect delay:    3.163/5
    Last error:       Socket: No route to host
  Channel ipv4
    State:          DOWN
    Table:          master4
    Preference:     100
    Input filter:   REJECT
    Output filter:  (unnamed)

peer_10_99_0_1 BGP        ---        start  1795251225.683  Idle
  BGP state:          Idle
    Neighbor address: 10.99.0.1
    Neighbor AS:      65000
    Local AS:         65001
  Channel ipv4
    State:          DOWN
    Table:          master4
    Preference:     100
    Input filter:   REJECT
    Output filter:  (unnamed)

peer_2001_db8_9__1 BGP        ---        up     1795251230.319  Established
  BGP state:          Established
    Neighbor address: 2001:db8:9::1
    Neighbor AS:      65000
    Local AS:         65001
    Neighbor ID:      10.9.1.1
    Session:          external AS4
    Source address:   2001:db8:9::2
  Channel ipv6
    State:          UP
    Table:          master6
    Preference:     100
    Input filter:   REJECT
    Output filter:  (unnamed)
    Routes:         0 imported, 2 exported, 0 preferred
    BGP Next hop:   2001:db8:9::2 fe80::6cae:1aff:feb9:f674

"""


def at(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, UTC)


def test_the_sessions_are_read_from_show_protocols_all() -> None:
    assert parse_protocols(SHOW_PROTOCOLS_ALL) == [
        PeerState(ipaddress.ip_address("10.9.1.1"), 65000, "Established", at(1795251229.920), None, 1),
        PeerState(
            ipaddress.ip_address("10.9.1.9"),
            65000,
            "Active",
            at(1795251225.683),
            "Socket: No route to host",
            0,
        ),
        PeerState(ipaddress.ip_address("10.99.0.1"), 65000, "Idle", at(1795251225.683), None, 0),
        PeerState(ipaddress.ip_address("2001:db8:9::1"), 65000, "Established", at(1795251230.319), None, 2),
    ]


def test_no_bgp_protocols_read_as_no_sessions() -> None:
    assert parse_protocols(SHOW_PROTOCOLS_ALL.partition("peer_10_9_1_1")[0]) == []
    assert parse_protocols("") == []


def test_the_announced_prefixes_are_read_from_show_static() -> None:
    assert parse_static("203.0.113.5/32\tblackhole\n198.51.100.0/24\tblackhole\n") == frozenset(
        nets("203.0.113.5/32", "198.51.100.0/24")
    )
    assert parse_static("2001:db8:ff::7/128\tblackhole\n") == frozenset(nets("2001:db8:ff::7/128"))
    assert parse_static("") == frozenset()
