"""NFLOG: the packets nftables `log group N` hands to userspace, read from a netlink socket.

pyroute2 parses netfilter's netlink messages but has no NFLOG socket (nor does any maintained Python
library: the others bind libnetfilter_log), so this module defines the NFLOG messages on pyroute2's
`nfgen_msg` and speaks the two requests it needs (bind a group; copy packets, number them) on a plain
netlink socket. The kernel never waits for the reader: when the socket's buffer is full it drops log
messages, and the global sequence numbers it stamps on the rest say how many (`Listener.lost`).
This kernel has no conntrack glue (NETFILTER_NETLINK_GLUE_CT): messages carry no conntrack attributes."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, nla
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_ULOG, nfgen_msg

NETLINK_NETFILTER = 12
PACKET, CONFIG = 0, 1  # NFULNL_MSG_*
BIND = 1  # NFULNL_CFG_CMD_BIND
COPY_PACKET = 2  # NFULNL_COPY_PACKET
SEQ_GLOBAL = 2  # NFULNL_CFG_F_SEQ_GLOBAL
COPY_RANGE = 128  # bytes of each packet: its IPv6 header and the transport ports, with room
BUFFER = 4 << 20  # the socket's receive buffer
BATCH, FLUSH = 64, 2  # the kernel sends 64 messages at once, or what it has after 20 ms (default 100, 1 s)


class _Packet(nfgen_msg):  # type: ignore[misc]
    prefix = "NFULA_"
    nla_map = (
        ("NFULA_UNSPEC", "none"),
        ("NFULA_PACKET_HDR", "PacketHeader"),
        ("NFULA_MARK", "be32"),
        ("NFULA_TIMESTAMP", "none"),
        ("NFULA_IFINDEX_INDEV", "be32"),
        ("NFULA_IFINDEX_OUTDEV", "be32"),
        ("NFULA_IFINDEX_PHYSINDEV", "be32"),
        ("NFULA_IFINDEX_PHYSOUTDEV", "be32"),
        ("NFULA_HWADDR", "none"),
        ("NFULA_PAYLOAD", "cdata"),
        ("NFULA_PREFIX", "asciiz"),
        ("NFULA_UID", "be32"),
        ("NFULA_SEQ", "be32"),
        ("NFULA_SEQ_GLOBAL", "be32"),
    )

    class PacketHeader(nla):  # type: ignore[misc]
        fields = (("hw_protocol", "!H"), ("hook", "B"), ("pad", "B"))


class _Config(nfgen_msg):  # type: ignore[misc]
    prefix = "NFULA_CFG_"
    nla_map = (
        ("NFULA_CFG_UNSPEC", "none"),
        ("NFULA_CFG_CMD", "Command"),
        ("NFULA_CFG_MODE", "Mode"),
        ("NFULA_CFG_NLBUFSIZ", "be32"),
        ("NFULA_CFG_TIMEOUT", "be32"),
        ("NFULA_CFG_QTHRESH", "be32"),
        ("NFULA_CFG_FLAGS", "be16"),
    )

    class Command(nla):  # type: ignore[misc]
        fields = (("command", "B"),)

    class Mode(nla):  # type: ignore[misc]
        fields = (("copy_range", "!I"), ("copy_mode", "B"), ("pad", "B"))


@dataclass(frozen=True)
class Logged:
    """One logged packet: the rule's prefix, the address family (4, 6), the interfaces it came in and
    would go out by (0: none), its mark, and its first bytes from the network header on."""

    prefix: str
    family: int
    indev: int
    outdev: int
    mark: int
    payload: bytes


def messages(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """The type and bytes of each netlink message of one receive (blocking until there is one); nothing
    when the socket's buffer had overflowed (ENOBUFS, after which the kernel goes on sending)."""
    try:
        data = sock.recv(1 << 20)
    except OSError as exc:
        if exc.errno == errno.ENOBUFS:
            raise Overrun from exc
        raise
    offset = 0
    while offset + 16 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "little")
        if length < 16:
            return
        yield int.from_bytes(data[offset + 4 : offset + 6], "little"), data[offset : offset + length]
        offset += (length + 3) & ~3


class Overrun(Exception):
    """The kernel dropped messages: the socket's buffer was full."""


class NflogError(OSError):
    """The kernel refused a request to the NFLOG subsystem."""


class Listener:
    """The messages of one NFLOG group in this network namespace. Invariant: `lost` counts the messages
    the kernel dropped before this listener read them."""

    def __init__(self, group: int) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
        self.sock.bind((0, 0))
        self.lost = 0
        self._next: int | None = None
        self._request(group, [("NFULA_CFG_CMD", {"command": BIND})])
        mode = {"copy_range": COPY_RANGE, "copy_mode": COPY_PACKET, "pad": 0}
        batch = [("NFULA_CFG_QTHRESH", BATCH), ("NFULA_CFG_TIMEOUT", FLUSH)]
        self._request(group, [("NFULA_CFG_MODE", mode), ("NFULA_CFG_FLAGS", SEQ_GLOBAL), *batch])

    def _request(self, group: int, attrs: list[tuple[str, object]]) -> None:
        msg = _Config()
        msg["nfgen_family"], msg["version"], msg["res_id"], msg["attrs"] = socket.AF_UNSPEC, 0, group, attrs
        msg["header"]["type"] = NFNL_SUBSYS_ULOG << 8 | CONFIG
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
        msg.encode()
        self.sock.send(msg.data)
        answer = self.sock.recv(4096)
        code = -int.from_bytes(answer[16:20], "little", signed=True)  # nlmsgerr after the 16-byte header
        if code:
            raise NflogError(code, f"NFLOG group {group}: {errno.errorcode.get(code, code)}")

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> Iterator[Logged]:
        """The packets of one receive (blocking until there is one); a full buffer counts as lost."""
        try:
            for kind, data in messages(self.sock):
                if kind == NFNL_SUBSYS_ULOG << 8 | PACKET:
                    msg = _Packet(data)
                    msg.decode()
                    yield self._logged(msg)
        except Overrun:
            return  # the gap shows in the next sequence number

    def _logged(self, msg: _Packet) -> Logged:
        seq = msg.get_attr("NFULA_SEQ_GLOBAL")
        if seq is not None:
            if self._next is not None and seq > self._next:
                self.lost += seq - self._next
            self._next = seq + 1
        return Logged(
            prefix=msg.get_attr("NFULA_PREFIX") or "",
            family=6 if msg["nfgen_family"] == socket.AF_INET6 else 4,
            indev=msg.get_attr("NFULA_IFINDEX_INDEV") or 0,
            outdev=msg.get_attr("NFULA_IFINDEX_OUTDEV") or 0,
            mark=msg.get_attr("NFULA_MARK") or 0,
            payload=bytes(msg.get_attr("NFULA_PAYLOAD") or b""),
        )

    def close(self) -> None:
        self.sock.close()
