"""How Isthmus runs an etcd member: the flags it sets and why, for the lab, the tests and deployments.

- `--max-txn-ops` and `--max-request-bytes`: an `isthmus apply` and the cold translation of a Kubernetes
  cluster are one transaction each, all or nothing; 10,000 pods, 1,000 services and 1,000 NetworkPolicies
  take 77,000 puts and 48,000 compares in a 21.6 MiB request (bench/store.py measures it), far above etcd's
  defaults of 128 operations and 1.5 MiB; these flags leave room for about 25,000 pods in one cold
  translation. A commit beyond them is refused with an error naming the flag, and writes nothing.
- `--quota-backend-bytes`: 8 GiB, etcd's suggested maximum, against the default 2 GiB.
- `--auto-compaction-*`: history older than an hour is compacted; a watcher that falls further behind
  relists, as it must after any compaction.
- `--experimental-watch-progress-notify-interval 1s`: a watch learns the store's revision within 2 s when
  its prefix is quiet (default 10 minutes): its resume revision stays fresh, a silent stream is noticed
  within seconds, and an agent's revision passes the store's other writes (the agents' own status reports)
  at once, so "programmed up to the store's revision" is true within 2 s of the last change. One small
  message per watch stream a second: 5,000 agents cost a member 5,000 messages a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LIMITS = {
    "--max-txn-ops": "200000",
    "--max-request-bytes": str(64 << 20),
    "--quota-backend-bytes": str(8 << 30),
    "--auto-compaction-mode": "periodic",
    "--auto-compaction-retention": "1h",
    "--experimental-watch-progress-notify-interval": "1s",
}


@dataclass(frozen=True)
class MemberTLS:
    """Files of a member: its CA (of clients and peers), its own certificate and key."""

    ca: Path
    cert: Path
    key: Path


def member_argv(
    name: str,
    data_dir: Path,
    client_urls: list[str],
    peer_url: str,
    cluster: dict[str, str],
    tls: MemberTLS | None = None,
    extra: dict[str, str] | None = None,
) -> list[str]:
    """The command line of one member of a new cluster (`cluster`: member name -> peer URL).

    `client_urls`: where clients reach it; the first is advertised. `unix://NAME:0` listens on a socket file
    NAME:0 in the member's working directory.
    """
    flags = {
        "--name": name,
        "--data-dir": str(data_dir),
        "--listen-client-urls": ",".join(client_urls),
        "--advertise-client-urls": client_urls[0],
        "--listen-peer-urls": peer_url,
        "--initial-advertise-peer-urls": peer_url,
        "--initial-cluster": ",".join(f"{n}={u}" for n, u in sorted(cluster.items())),
        "--initial-cluster-state": "new",
        "--initial-cluster-token": "isthmus",
        **LIMITS,
    }
    if tls is not None:
        flags |= {
            "--trusted-ca-file": str(tls.ca),
            "--cert-file": str(tls.cert),
            "--key-file": str(tls.key),
            "--client-cert-auth": "true",
            "--peer-trusted-ca-file": str(tls.ca),
            "--peer-cert-file": str(tls.cert),
            "--peer-key-file": str(tls.key),
            "--peer-client-cert-auth": "true",
        }
    flags |= extra or {}
    return ["etcd", *(f"{flag}={value}" for flag, value in flags.items())]
