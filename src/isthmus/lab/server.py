"""The lab's pod server: answers its own name on every given port, over TCP (HTTP when asked in HTTP)
and UDP, in both address families. Run inside a pod's namespace: python -m isthmus.lab.server NAME
PORT/PROTOCOL..."""

from __future__ import annotations

import asyncio
import sys


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, name: bytes) -> None:
        self.name = name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(self.name, addr)  # type: ignore[attr-defined]


async def serve(name: str, ports: list[tuple[int, str]]) -> None:
    answer = name.encode()

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await asyncio.wait_for(reader.read(1024), 0.2)
        except TimeoutError:
            first = b""
        if first.startswith((b"GET ", b"HEAD ")):
            head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(answer)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode())
        writer.write(answer)
        await writer.drain()
        writer.close()

    loop = asyncio.get_running_loop()
    for port, protocol in ports:
        if protocol == "UDP":  # one socket of both families: IPv4 peers come as mapped addresses
            await loop.create_datagram_endpoint(lambda: _Udp(answer), local_addr=("::", port))
        else:
            await asyncio.start_server(tcp, ["0.0.0.0", "::"], port)
    await asyncio.Event().wait()


def main() -> None:
    name, *given = sys.argv[1:]
    ports = [
        (int(port), protocol.upper() or "TCP") for port, _, protocol in (p.partition("/") for p in given)
    ]
    asyncio.run(serve(name, ports))


if __name__ == "__main__":
    main()
