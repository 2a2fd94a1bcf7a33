"""Conntrack events: a recorded connection becoming established and closing, read from ctnetlink.

The kernel sends events only for the connections whose event mask asks for them: the ruleset clears the
mask of every new connection it forwards or takes in from a pod and sets it (`ruleset.EVENTS`) where it
records the connection (`ruleset.recorded`), so the listener hears the flows that have a record, and a
flood of connections costs no messages. pyroute2 parses the messages (`nfct_msg`); like NFLOG, the
subscription itself is a plain netlink socket bound to the groups. The kernel never waits for the
reader: a full buffer drops events, and each such overrun is counted (`Listener.overruns`; ctnetlink
events carry no sequence numbers to count them one by one)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from isthmus.dataplane.kernel.nflog import BUFFER, NETLINK_NETFILTER, Overrun, messages

UPDATE, DESTROY = 1 << 1, 1 << 2  # NFNLGRP_CONNTRACK_UPDATE and _DESTROY, as bind()'s group bits
DELETE = 2  # IPCTNL_MSG_CT_DELETE: a destroy event
ASSURED = 1 << 2  # IPS_ASSURED: traffic seen both ways (TCP: the handshake completed)
TCP_CLOSING = frozenset(range(4, 9))  # FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE
TRANSPORT = {6: "TCP", 17: "UDP", 132: "SCTP"}


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


def _ends(tuple_: nfct_msg) -> tuple[str, int, int] | None:
    """The source address and port of a tuple, and its transport protocol number."""
    ip, proto = tuple_.get_attr("CTA_TUPLE_IP"), tuple_.get_attr("CTA_TUPLE_PROTO")
    if ip is None or proto is None:
        return None
    address = ip.get_attr("CTA_IP_V4_SRC") or ip.get_attr("CTA_IP_V6_SRC")
    number, port = proto.get_attr("CTA_PROTO_NUM"), proto.get_attr("CTA_PROTO_SRC_PORT")
    if address is None or number not in TRANSPORT or port is None:
        return None
    return str(address), int(port), int(number)


def event(msg: nfct_msg) -> Event | None:
    """What a ctnetlink message says happened to a TCP, UDP or SCTP connection: None when it is neither
    an establishment nor a close (a TCP state change on the way)."""
    original, reply = msg.get_attr("CTA_TUPLE_ORIG"), msg.get_attr("CTA_TUPLE_REPLY")
    if original is None or reply is None:
        return None
    source, backend = _ends(original), _ends(reply)
    if source is None or backend is None:
        return None
    if msg["header"]["type"] & 0xFF == DELETE:
        state = "closed"
    else:
        info = msg.get_attr("CTA_PROTOINFO")
        tcp = info.get_attr("CTA_PROTOINFO_TCP") if info is not None else None
        phase = tcp.get_attr("CTA_PROTOINFO_TCP_STATE") if tcp is not None else None
        if phase in TCP_CLOSING:
            state = "closed"
        elif (msg.get_attr("CTA_STATUS") or 0) & ASSURED:
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
                if kind >> 8 == NFNL_SUBSYS_CTNETLINK:
                    msg = nfct_msg(data)
                    msg.decode()
                    found = event(msg)
                    if found is not None:
                        yield found
        except Overrun:
            self.overruns += 1

    def close(self) -> None:
        self.sock.close()
