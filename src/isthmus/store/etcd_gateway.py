"""A small client of etcd v3's JSON gateway (`/v3/kv/*`, `/v3/watch`, `/v3/auth/*`, `/v3/maintenance/*`).

Written here because no Python client works with etcd 3.4 and today's protobuf while offering require-leader
watches, resumption and authentication (etcd3 does not import, etcd3gw hangs on compacted watches and drops
progress notifications, aetcd has no TLS, etcd-sdk-python has no require-leader). Invariants:
- every request carries `hasleader`, so a member cut from its quorum answers `no leader` at once instead of
  queueing the request; such an answer, a refused connection or a timeout moves on to the next member;
- a request that no member could answer raises `Unavailable` naming the store and each member's cause;
- etcd's refusals for its limits (its own checks, or gRPC's message cap) raise `Refused` naming the limit
  and the flag that sets it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

from isthmus.store.ledger import Compacted, LedgerError, Unavailable

CONNECT_TIMEOUT = 1.0  # seconds: a member is on the same network; waiting longer only delays the next one
REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true", "Content-Type": "application/json"}
# A watch stream's body holds one create request per watcher, which the gateway reads while it already
# answers the first. Go's HTTP/1.1 server discards the unread rest of a body when a handler first writes,
# so under load the later watchers were never created (their prefixes heard nothing until the stream was
# opened again). With `Expect: 100-continue` unanswered it closes the connection after the reply instead
# and leaves the body to the handler. http.client skips the interim 100 response.
KEEP_BODY = {"Expect": "100-continue"}

# etcd's message -> (what was refused, the etcd flag that sets the limit)
_LIMITS = {
    "too many operations in txn request": ("more operations than one transaction may hold", "--max-txn-ops"),
    "request is too large": ("a request larger than the store accepts", "--max-request-bytes"),
    # gRPC's own cap, --max-request-bytes + 512 KiB, refuses bigger requests before etcd sees them
    "received message larger than max": ("a request larger than the store accepts", "--max-request-bytes"),
    "database space exceeded": ("the store's space quota is used up", "--quota-backend-bytes"),
}
_TRY_ANOTHER = ("no leader", "leader changed", "request timed out", "not capable", "too many requests")


# What a TLS failure means, for the one line that reports it: the member's certificate is not of the CA
# given; or the member hung up or alerted on the client's certificate, or on its absence.
_UNSIGNED = "the member's certificate is not signed by the CA given (--store-ca): "
_REFUSED = "the member refused the client certificate (--store-cert: not of its CA?): "
_REQUIRED = "the member requires a client certificate of its CA (--store-cert, --store-key): "
_HUNG_UP = ("BAD_CERTIFICATE", "UNKNOWN_CA", "CERTIFICATE_REQUIRED", "EOF occurred")


Body = dict[str, Any] | list[dict[str, Any]]  # one request, or a stream's requests one a line


class Refused(LedgerError):
    """The store refused the request outright: a limit, a permission, a credential. Nothing was written."""


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


@dataclass(frozen=True)
class Credentials:
    """TLS files (CA to verify members, client certificate and key) and an etcd user."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca)
        if self.cert:
            context.load_cert_chain(self.cert, self.key)
        return context


class _UnixConnection(HTTPConnection):
    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__("localhost", **kwargs)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout if isinstance(self.timeout, int | float) else None)
        sock.connect(self._path)
        self.sock = sock


class _UnixPool(HTTPConnectionPool):
    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__("localhost", **kwargs)
        self._path = path

    def _new_conn(self) -> HTTPConnection:
        self.num_connections += 1
        return _UnixConnection(self._path, timeout=self.timeout.connect_timeout)


class Gateway:
    """The members of one etcd cluster, tried in turn, starting from the last that answered."""

    def __init__(self, name: str, members: list[str], credentials: Credentials, timeout: float = 3.0) -> None:
        """`members`: `host:port` (HTTPS when credentials give a CA or certificate) or a unix socket path."""
        self.name, self.members, self.credentials = name, members, credentials
        self.timeout = timeout
        # Unary requests share kept-alive connections; each watch stream gets a new one, closed when it
        # ends: a stream sent on a connection idle since before a network cut would wait out TCP's
        # retransmission backoff, where a new connection fails within CONNECT_TIMEOUT.
        self._pools = [self._pool(member) for member in members]
        self._watch_pools = [self._pool(member) for member in members]
        self._current = 0
        self._token: str | None = None
        self._lock = threading.Lock()

    def _pool(self, member: str) -> HTTPConnectionPool:
        if member.startswith("/"):
            return _UnixPool(member, maxsize=16, block=False)
        host, port = _host_port(member)
        if self.credentials.ca or self.credentials.cert:
            return urllib3.HTTPSConnectionPool(host, port, maxsize=16, ssl_context=self.credentials.context())
        return urllib3.HTTPConnectionPool(host, port, maxsize=16)

    PATIENCE = 4.0  # seconds more rounds are tried after the first fails: an election takes about one

    def call(self, path: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """POST to `path` on a member that has a leader; the answer as JSON.

        A round no member could serve is tried again for PATIENCE seconds, unless every member refused the
        connection (nothing listens). A request whose answer was lost may have been applied before it is
        sent again: every commit Isthmus makes is checked (a replay meets a Conflict, and `transact` reruns
        the work, which then finds it done) or idempotent.
        """
        deadline, delay = 0.0, 0.1
        while True:
            causes: list[str] = []
            for index in self._order():
                try:
                    answer = self._post(index, path, body, timeout or self.timeout)
                except _TryAnother as exc:
                    causes.append(f"{self.members[index]}: {exc}")
                    continue
                self._current = index
                return answer
            now = time.monotonic()
            deadline = deadline or now + self.PATIENCE
            if now + delay > deadline or all("refused" in c for c in causes):
                raise self._unavailable(causes)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def watch(self, body: Body, read_timeout: float) -> Stream:
        """One watch stream on the first member that takes it (several requests: several watchers on it)."""
        causes: list[str] = []
        for index in self._order():
            try:
                response = self._open(index, "/v3/watch", body, read_timeout, stream=True)
            except _TryAnother as exc:
                causes.append(f"{self.members[index]}: {exc}")
                continue
            self._current = index
            return Stream(self, response)
        raise self._unavailable(causes)

    def _unavailable(self, causes: list[str]) -> Unavailable:
        """Names every member's cause: the last one tried is often merely down while another had no leader."""
        why = "no member could serve the request"
        if any("no leader" in c for c in causes):
            why = "no leader: the members reachable have lost their quorum"
        return Unavailable(f"store {self.name}: {why} ({'; '.join(causes)})")

    def forget_token(self) -> None:
        """Authenticate again at the next request (a member restarted since forgets the tokens it issued)."""
        with self._lock:
            self._token = None

    def close(self) -> None:
        for pool in [*self._pools, *self._watch_pools]:
            pool.close()

    def _order(self) -> list[int]:
        first = self._current
        return [(first + i) % len(self._pools) for i in range(len(self._pools))]

    def _post(self, index: int, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        response = self._open(index, path, body, timeout, stream=False)
        answer: dict[str, Any] = json.loads(response.data)
        return answer

    def _open(
        self, index: int, path: str, body: Body, timeout: float, stream: bool
    ) -> urllib3.BaseHTTPResponse:
        for attempt in range(2):
            headers = REQUIRE_LEADER | (KEEP_BODY if stream else {})
            if self.credentials.user:
                headers["Authorization"] = self._authenticate(index, renew=attempt > 0)
            response = self._request(index, path, body, headers, timeout, stream)
            if response.status == 200:
                return response
            message = _message(response)
            if "invalid auth token" in message or "user name is empty" in message:
                continue
            raise self._error(message)
        raise Refused(f"store {self.name}: authentication as {self.credentials.user} keeps failing")

    def _request(
        self,
        index: int,
        path: str,
        body: Body,
        headers: dict[str, str],
        timeout: float,
        stream: bool,
    ) -> urllib3.BaseHTTPResponse:
        member = self.members[index]
        try:
            pools = self._watch_pools if stream else self._pools
            return pools[index].urlopen(
                "POST",
                path,
                body=json.dumps(body) if isinstance(body, dict) else "\n".join(map(json.dumps, body)),
                headers=headers,
                timeout=urllib3.Timeout(connect=min(CONNECT_TIMEOUT, timeout), read=timeout),
                retries=False,
                preload_content=not stream,
                release_conn=not stream,
            )
        except urllib3.exceptions.SSLError as exc:
            why = _reason(exc)
            hint = ""
            if "CERTIFICATE_VERIFY_FAILED" in why:
                hint = _UNSIGNED
            elif any(text in why for text in _HUNG_UP):
                hint = _REFUSED if self.credentials.cert else _REQUIRED
            raise Refused(f"store {self.name}: TLS with {member} failed: {hint}{why}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            why = _reason(exc)
            if "without response" in why:  # a TLS listener meeting plain HTTP
                why = f"closed the connection without an answer (does it want TLS: --store-ca?): {why}"
            raise _TryAnother(why) from None

    def _authenticate(self, index: int, renew: bool) -> str:
        with self._lock:
            if self._token is None or renew:
                user, password = self.credentials.user, self.credentials.password or ""
                response = self._request(
                    index,
                    "/v3/auth/authenticate",
                    {"name": user, "password": password},
                    dict(REQUIRE_LEADER),
                    self.timeout,
                    stream=False,
                )
                if response.status != 200:
                    raise self._error(_message(response))
                self._token = json.loads(response.data)["token"]
            assert self._token is not None
            return self._token

    def _error(self, message: str) -> LedgerError:
        for text, (what, flag) in _LIMITS.items():
            if text in message:
                return Refused(f"store {self.name} refused the commit: {what} ({message}; etcd flag {flag})")
        if "required revision has been compacted" in message:  # a listing's later page
            return Compacted(0, 0)
        if any(text in message for text in _TRY_ANOTHER):
            return _TryAnother(message)
        if "permission denied" in message:
            return Refused(f"store {self.name}: permission denied to user {self.credentials.user}")
        if "authentication failed" in message:
            return Refused(f"store {self.name}: authentication as {self.credentials.user} failed")
        return LedgerError(f"store {self.name}: {message}")


class _TryAnother(Unavailable):
    """This member cannot serve now (down, cut off, no leader): ask the next one."""


class Stream:
    """The responses of a watch stream, one JSON document per line; `close` may come from another thread."""

    def __init__(self, gateway: Gateway, response: urllib3.BaseHTTPResponse) -> None:
        self._gateway, self._response = gateway, response

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pending: list[bytes] = []  # the pieces of an unfinished line (a response may be tens of MB)
        try:
            for chunk in self._response.stream(1 << 20):
                if b"\n" not in chunk:
                    pending.append(chunk)
                    continue
                *lines, rest = chunk.split(b"\n")
                lines[0] = b"".join([*pending, lines[0]])
                pending = [rest]
                for line in lines:
                    if line.strip():
                        document = json.loads(line)
                        if "error" in document:
                            error = document["error"]
                            raise self._gateway._error(str(error.get("message", error)))
                        yield document["result"]
        except (urllib3.exceptions.HTTPError, OSError, AttributeError) as exc:  # AttributeError: `close`d
            raise _TryAnother(f"store {self._gateway.name}: watch stream lost: {_reason(exc)}") from None
        finally:
            self.close()

    def close(self) -> None:
        """Close the stream's connection; it is never returned to the pool (its reader and `close` race,
        and a connection put back twice would carry two streams at once)."""
        with contextlib.suppress(ValueError, RuntimeError, OSError):
            self._response.shutdown()  # wakes a reader blocked in another thread
        self._response.close()


def _host_port(member: str) -> tuple[str, int]:
    host, _, port = member.rpartition(":")
    return host.strip("[]"), int(port)


def _message(response: urllib3.BaseHTTPResponse) -> str:
    """etcd's message: `{"message": ...}`, or `{"error": {"message": ...}}` from the streaming /v3/watch."""
    try:
        answer = json.loads(response.data)
    except ValueError:
        return f"HTTP {response.status}: {response.data[:200]!r}"
    if isinstance(answer, dict):
        error = answer.get("error")
        message = (error if isinstance(error, dict) else answer).get("message")
        if message:
            return str(message)
    return str(response.data.decode(errors="replace"))


def _reason(exc: BaseException) -> str:
    """The cause without urllib3's `HTTPConnection(host=..., port=...): ` (callers name the member)."""
    text = str(getattr(exc, "reason", None) or exc)
    return text.split("): ", 1)[1] if text.startswith("HTTP") and "): " in text else text
