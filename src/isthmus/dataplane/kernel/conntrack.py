"""Conntrack events: a recorded connection becoming established and closing, read from ctnetlink.

The kernel sends events only for the connections whose event mask asks for them: the ruleset clears the
mask of every new connection it forwards or takes in from a pod and sets it (`ruleset.EVENTS`) where it
records the connection (`ruleset.recorded`), so the listener hears the flows that have a record, and a
flood of connections costs no messages. The subscription is a plain netlink socket bound to the groups.
A TCP connection makes five or six events (each TCP state change, then its end), and pyroute2's parser
(`nfct_msg`) takes about 190 µs a message here, so the few attributes needed are read directly (`event`:
about 9 µs; the unit tests give it messages pyroute2 encoded).
The kernel never waits for the reader: a full buffer drops events, and each such overrun is counted
(`Listener.overruns`; ctnetlink events carry no sequence numbers to count them one by one)."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from isthmus.dataplane.kernel.nflog import BUFFER, NETLINK_NETFILTER, Overrun, messages

UPDATE, DESTROY = 1 << 1, 1 << 2  # NFNLGRP_CONNTRACK_UPDATE and _DESTROY, as bind()'s group bits
CTNETLINK = 1  # NFNL_SUBSYS_CTNETLINK
DELETE = 2  # IPCTNL_MSG_CT_DELETE: a destroy event
TUPLE_ORIG, TUPLE_REPLY, STATUS, PROTOINFO = 1, 2, 3, 4  # CTA_*
TUPLE_IP, TUPLE_PROTO = 1, 2  # CTA_TUPLE_*
V4_SRC, V6_SRC = 1, 3  # CTA_IP_*
PROTO_NUM, PROTO_SRC_PORT = 1, 2  # CTA_PROTO_*
PROTOINFO_TCP, TCP_STATE = 1, 1  # CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE
ASSURED = 1 << 2  # IPS_ASSURED: traffic seen both ways (TCP: the handshake completed)
TCP_CLOSING = frozenset(range(4, 9))  # FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE
TRANSPORT = {6: "TCP", 17: "UDP", 132: "SCTP"}
HEADERS = 20  # nlmsghdr (16 bytes) and nfgenmsg (4)


@dataclass(frozen=True)
class Event:
    """A connection's change: `state` established or closed; the ends as the original direction's
    source and the reply direction's source (after DNAT: the backend), with their ports."""

    state: str
    protocol: str
    source: str
    sport: int
    destination: str
    dport: int


Span = tuple[int, int]  # an attribute's payload: where it starts and ends in the message


def _attributes(data: bytes, span: Span) -> dict[int, Span]:
    """The netlink attributes within `span`, by type (without the nested and byte-order flags)."""
    found, at, end = {}, span[0], span[1]
    while at + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, at)
        if length < 4:
            break
        found[kind & 0x3FFF] = (at + 4, at + length)
        at += (length + 3) & ~3
    return found


def _source(data: bytes, span: Span) -> tuple[str, int, int] | None:
    """A tuple's source address and port, and its transport protocol number."""
    tuple_ = _attributes(data, span)
    if TUPLE_IP not in tuple_ or TUPLE_PROTO not in tuple_:
        return None
    ip, proto = _attributes(data, tuple_[TUPLE_IP]), _attributes(data, tuple_[TUPLE_PROTO])
    where = ip.get(V4_SRC) or ip.get(V6_SRC)
    if where is None or PROTO_NUM not in proto or PROTO_SRC_PORT not in proto:
        return None
    number = data[proto[PROTO_NUM][0]]
    (port,) = struct.unpack_from("!H", data, proto[PROTO_SRC_PORT][0])
    return str(ipaddress.ip_address(data[where[0] : where[1]])), port, number


def event(data: bytes) -> Event | None:
    """What a ctnetlink message says happened to a TCP, UDP or SCTP connection: None when it is neither
    an establishment nor a close (a TCP state change on the way)."""
    top = _attributes(data, (HEADERS, len(data)))
    if TUPLE_ORIG not in top or TUPLE_REPLY not in top:
        return None
    source, backend = _source(data, top[TUPLE_ORIG]), _source(data, top[TUPLE_REPLY])
    if source is None or backend is None or source[2] not in TRANSPORT:
        return None
    if data[4] == DELETE:  # the message type's low byte
        state = "closed"
    else:
        info = _attributes(data, top.get(PROTOINFO, (0, 0)))  # TCP's state, when it is TCP
        tcp = _attributes(data, info.get(PROTOINFO_TCP, (0, 0)))
        phase = data[tcp[TCP_STATE][0]] if TCP_STATE in tcp else None
        status = struct.unpack_from("!I", data, top[STATUS][0])[0] if STATUS in top else 0
        if phase in TCP_CLOSING:
            state = "closed"
        elif status & ASSURED:
            state = "established"
        else:
            return None
    return Event(state, TRANSPORT[source[2]], source[0], source[1], backend[0], backend[1])


class Listener:
    """The update and destroy events of the connections of this network namespace."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
        self.sock.bind((0, UPDATE | DESTROY))
        self.overruns = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> Iterator[Event]:
        """The events of one receive (blocking until there is one)."""
        try:
            for kind, data in messages(self.sock):
                if kind >> 8 == CTNETLINK:
                    found = event(data)
                    if found is not None:
                        yield found
        except Overrun:
            self.overruns += 1

    def close(self) -> None:
        self.sock.close()
