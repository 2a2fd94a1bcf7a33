"""Where a ledger lives: a store URL, or a state directory that holds one (or the SQLite default).

Store URLs:
- `etcd://HOST:PORT[,HOST:PORT...]` an etcd cluster; HTTPS when a CA or client certificate is given;
- `etcd+unix:///PATH[,/PATH...]` the same over the members' unix sockets;
- `sqlite:///PATH` or a plain path: a SQLite ledger file; `memory:` a throw-away ledger.
etcd URLs take the credentials as query parameters `ca`, `cert`, `key`, `user` and `password-file`
(paths relative to the file the URL was read from, if any); explicit options override them.

A state directory DIR leads to its store through the file DIR/store (one URL, written by the lab or the
installer); without it the ledger is DIR/ledger.sqlite.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from isthmus.store.etcd import EtcdLedger
from isthmus.store.etcd_gateway import Credentials, Gateway
from isthmus.store.ledger import Ledger, LedgerError
from isthmus.store.memory import MemoryLedger
from isthmus.store.sqlite import SqliteLedger

STORE_FILE = "store"
_PARAMETERS = {"ca", "cert", "key", "user", "password-file"}


class BadStore(LedgerError):
    """A store URL or its credentials cannot be used."""


def open_ledger(
    state: str | Path, store: str | None = None, credentials: Credentials | None = None
) -> Ledger:
    """The ledger at `store` if given, else the one the state directory leads to."""
    if store:
        return open_store(store, credentials or Credentials())
    if str(state) == "memory:":
        return MemoryLedger()
    directory = Path(state)
    pointer = directory / STORE_FILE
    if pointer.is_file():
        return open_store(pointer.read_text().strip(), credentials or Credentials(), base=directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return SqliteLedger(directory / "ledger.sqlite")


def open_store(url: str, credentials: Credentials, base: Path | None = None) -> Ledger:
    """The ledger a store URL names; `credentials` fields that are set override the URL's."""
    if url == "memory:":
        return MemoryLedger()
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unbalanced [ of an IPv6 address
        raise BadStore(f"store {url}: not a URL ({exc})") from None
    if parts.scheme in ("", "sqlite"):
        path = Path(parts.path if parts.scheme else url)
        if not path.parent.is_dir():
            raise BadStore(f"store {url}: directory {path.parent} does not exist")
        return SqliteLedger(path)
    if parts.scheme not in ("etcd", "etcd+unix"):
        raise BadStore(f"store {url}: unknown scheme {parts.scheme!r} (etcd://, etcd+unix://, sqlite://)")
    if parts.scheme == "etcd":
        members = [m for m in parts.netloc.split(",") if m]
        for member in members:
            host, _, port = member.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise BadStore(f"store {url}: member {member!r} is not HOST:PORT")
    else:
        members = [m for m in parts.path.split(",") if m]
        if not all(m.startswith("/") for m in members):
            raise BadStore(f"store {url}: unix socket paths must be absolute")
    if not members:
        raise BadStore(f"store {url}: no members")
    given = _from_query(url, parts.query, base)
    chosen = {k: v for k, v in vars(credentials).items() if v is not None}
    merged = replace(given, **chosen)
    for file in (merged.ca, merged.cert, merged.key):
        if file and not Path(file).is_file():
            raise BadStore(f"store {url}: no such file {file}")
    if bool(merged.cert) != bool(merged.key):
        raise BadStore(f"store {url}: a client certificate needs its key (cert and key together)")
    name = f"{parts.scheme}://{parts.netloc}{parts.path}"
    try:
        return EtcdLedger(Gateway(name, members, merged))
    except OSError as exc:  # unreadable or mismatched certificate files
        raise BadStore(f"store {name}: TLS credentials: {exc}") from None


def _from_query(url: str, query: str, base: Path | None) -> Credentials:
    values = {k: v[-1] for k, v in parse_qs(query, strict_parsing=False).items()}
    unknown = set(values) - _PARAMETERS
    if unknown:
        known = ", ".join(sorted(_PARAMETERS))
        raise BadStore(f"store {url}: unknown parameter {sorted(unknown)[0]!r} (known: {known})")

    def path(name: str) -> str | None:
        value = values.get(name)
        return str(base / value) if value and base is not None else value

    password = None
    if "password-file" in values:
        secret = Path(path("password-file") or "")
        if not secret.is_file():
            raise BadStore(f"store {url}: no such password file {secret}")
        password = secret.read_text().strip()
    return Credentials(path("ca"), path("cert"), path("key"), values.get("user"), password)
