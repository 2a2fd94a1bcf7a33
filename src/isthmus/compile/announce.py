"""What a node's BGP speaker announces, from its compiled state: the floating IPs (and external IPs) of
services, and where configured their VIPs, while the node hosts a ready backend of them; the egress
addresses it owns; its blocks of routed networks. A pure function."""

from __future__ import annotations

import ipaddress

from isthmus.compile.state import BlockEntry, EgressEntry, NodeEntry, NodeState, ServiceEntry


def announced(state: NodeState) -> set[str]:
    """Host prefixes (a.b.c.d/32, x::y/128) to announce; empty when the node speaks no BGP."""
    me = state.get(("node", state.node))
    kinds = me.announce if isinstance(me, NodeEntry) else ()
    found: set[str] = set()
    for key, entry in state.shared.items():
        if isinstance(entry, EgressEntry) and entry.node == state.node and "egressIPs" in kinds:
            found |= {f"{a}/{a.max_prefixlen}" for a in entry.addresses}
        if isinstance(entry, BlockEntry) and entry.node == state.node and "routedBlocks" in kinds:
            found.add(str(entry.prefix))
        if key[0] != "service" or not isinstance(entry, ServiceEntry):
            continue
        if not any(t.node == state.node for t in entry.targets):
            continue
        address = ipaddress.ip_address(str(key[1]))
        vip = address == entry.vip and key[2] != "any"  # "any": a floating IP of endpoints
        if ("serviceVIPs" if vip else "floatingIPs") in kinds:
            found.add(f"{address}/{address.max_prefixlen}")
    return found
