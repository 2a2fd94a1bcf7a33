"""What only the etcd ledger has: members that die, quorum, an unreachable store, etcd's limits, store URLs,
compaction under a lagging watch. Real etcd members on 127.0.0.1 (tests/etcdenv.py), no mocks."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from isthmus.cli.main import cli
from isthmus.lab.fabric import DEPLOY
from isthmus.store import (
    BadStore,
    Compacted,
    Credentials,
    EtcdLedger,
    Event,
    Refused,
    Unavailable,
    Watch,
    open_store,
)
from isthmus.store.etcd import EtcdWatch
from isthmus.store.etcd_gateway import Gateway
from tests.conftest import obj, tenant_net
from tests.etcdenv import EtcdCluster, free_port

MiB = 1 << 20


@pytest.fixture
def single(tmp_path: Path) -> Iterator[EtcdCluster]:
    """One member with the project's flags."""
    cluster = EtcdCluster(tmp_path)
    yield cluster
    cluster.stop()


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[EtcdCluster]:
    """Three members with the project's flags and fast elections (100 ms)."""
    cluster = EtcdCluster(tmp_path, size=3)
    yield cluster
    cluster.stop()


def leader(cluster: EtcdCluster) -> str:
    """The member that leads, as the running members report it."""
    for name in cluster.processes:
        gateway = Gateway(name, [cluster.clients[name]], Credentials())
        status = gateway.call("/v3/maintenance/status", {})
        gateway.close()
        if status["leader"] == status["header"]["member_id"]:
            return name
    raise AssertionError("no member leads")


def ledger_on(cluster: EtcdCluster, *names: str, watch_timeout: float = 20.0) -> EtcdLedger:
    """A ledger whose store URL lists these members first (a ledger starts on the first member it lists)."""
    order = [*names, *(n for n in cluster.clients if n not in names)]
    ledger = open_store("etcd://" + ",".join(cluster.clients[n] for n in order), Credentials())
    assert isinstance(ledger, EtcdLedger)
    return EtcdLedger(ledger.gateway, watch_timeout=watch_timeout)


def collect(watch: Watch, count: int, within: float = 10.0) -> list[Event]:
    """Poll until `count` events have come (or the time is up)."""
    events: list[Event] = []
    deadline = time.monotonic() + within
    while len(events) < count and time.monotonic() < deadline:
        events += watch.poll(timeout=0.2)
    return events


def until_compacted(watch: Watch, count: int, within: float = 10.0) -> tuple[list[Event], bool]:
    """The events polled until `count` have come, the time is up or a poll raised Compacted (True)."""
    events: list[Event] = []
    deadline = time.monotonic() + within
    try:
        while len(events) < count and time.monotonic() < deadline:
            events += watch.poll(timeout=0.2)
    except Compacted:
        return events, True
    return events, False


def put(ledger: EtcdLedger, key: str, value: str) -> tuple[str, bytes, int]:
    """Commit one put; the (key, value, revision) a watch should report for it."""
    return key, value.encode(), ledger.commit({}, [(key, value.encode())])


def seen(events: list[Event]) -> list[tuple[str, bytes, int]]:
    return [(e.key, e.value, e.revision) for e in events]


@pytest.mark.parametrize("role", ["follower", "leader"])
def test_watch_moves_to_another_member_when_its_member_is_killed(trio: EtcdCluster, role: str) -> None:
    """The stream's member dies (SIGKILL): commits go on elsewhere, the watch resumes from its last revision
    + 1 on another member and delivers every change once, in order; a killed leader costs an election."""
    chief = leader(trio)
    target = chief if role == "leader" else next(n for n in trio.clients if n != chief)
    ledger = ledger_on(trio, target)
    watch = ledger.watch("/w/", after=ledger.revision())
    assert isinstance(watch, EtcdWatch)
    written = [put(ledger, f"/w/{i}", f"v{i}") for i in range(5)]
    assert seen(collect(watch, 5)) == written
    gateway = ledger.gateway
    assert gateway.members[gateway._current] == trio.clients[target]  # the stream and the commits are there
    stream = watch._stream

    started = time.monotonic()
    trio.kill(target)
    written += [put(ledger, f"/w/{i}", f"v{i}") for i in range(5, 15)]
    moved = time.monotonic() - started
    assert gateway.members[gateway._current] != trio.clients[target]
    assert seen(collect(watch, 10)) == written[5:]
    assert watch._stream is not stream  # a new stream, on a live member
    assert watch.poll(timeout=0.3) == []  # and nothing twice
    assert watch.revision == written[-1][2]
    assert moved < (8.0 if role == "leader" else 2.0)
    watch.close()
    ledger.close()


def test_quorum_lost_commit_is_unavailable_and_writes_nothing(trio: EtcdCluster) -> None:
    """Two of three members killed (the leader among them): a commit fails within 10 s naming the store and
    the cause and writes nothing; once they are back the same ledger commits, and a new watch from the old
    watch's revision gets every change."""
    chief = leader(trio)
    gone = [chief, next(n for n in trio.clients if n != chief)]
    ledger = trio.ledger()
    watch = ledger.watch("/q/", after=ledger.revision())
    before = [put(ledger, "/q/before", "1")]
    assert seen(collect(watch, 1)) == before

    for name in gone:
        trio.kill(name)
    started = time.monotonic()
    with pytest.raises(Unavailable) as lost:
        ledger.commit({}, [("/q/lost", b"x")])
    assert time.monotonic() - started < 10
    message = str(lost.value)
    assert message.startswith(f"store {trio.url}: no leader: the members reachable have lost their quorum")
    started = time.monotonic()
    with pytest.raises(Unavailable, match="no leader"):  # rounds tried for Gateway.PATIENCE, then given up
        ledger.commit({}, [("/q/lost", b"y")])
    assert time.monotonic() - started < 10

    try:  # the old watch keeps waiting or says the store is unavailable; it never invents a change
        assert collect(watch, 1, within=2) == []
    except Unavailable as exc:
        assert str(exc).startswith(f"store {trio.url}: ")

    for name in gone:
        trio.start(name)
    trio.wait_ready()
    assert ledger.get("/q/lost") is None
    after = [put(ledger, "/q/after", "2")]
    again = ledger.watch("/q/", after=watch.revision)
    assert seen(collect(again, 1)) == after
    assert again.poll(timeout=0.3) == []
    watch.close()
    again.close()
    ledger.close()


def test_unreachable_store_is_unavailable_at_once(tmp_path: Path) -> None:
    url = f"etcd://127.0.0.1:{free_port()}"  # nothing listens there
    ledger = open_store(url, Credentials())
    started = time.monotonic()
    for attempt in (ledger.revision, lambda: ledger.commit({}, [("/k", b"v")])):
        with pytest.raises(Unavailable, match="refused") as caught:
            attempt()
        assert str(caught.value).startswith(f"store {url}: ")
    with pytest.raises(Unavailable, match="refused"):
        ledger.watch("/", after=0).poll(timeout=5)
    assert time.monotonic() - started < 3
    ledger.close()


@pytest.fixture(params=[False, True], ids=["etcd-defaults", "project-flags"])
def limited(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EtcdCluster]:
    """One member at etcd's default limits, or with the project's flags."""
    cluster = EtcdCluster(tmp_path, limits=request.param)
    yield cluster
    cluster.stop()


def test_limits_refuse_whole_commits_naming_the_flag(limited: EtcdCluster) -> None:
    """At etcd's defaults (128 operations, 1.5 MiB) a bigger commit is refused with the flag named and nothing
    written; gRPC's own cap refuses 2 MiB before etcd looks. The project's flags take both."""
    ledger = limited.ledger()
    base = ledger.revision()
    many = [(f"/many/{i:03d}", b"x") for i in range(200)]
    sizes = [int(1.6 * MiB), 2 * MiB]  # etcd's check; gRPC's cap (--max-request-bytes + 512 KiB)
    if any(arg.startswith("--max-txn-ops=") for arg in limited.argv["m1"]):  # the project's flags
        assert ledger.commit({}, many) == base + 1
        assert len(ledger.list("/many/")[0]) == 200
        for size in sizes:
            ledger.commit({}, [("/big", b"b" * size)])
            got = ledger.get("/big")
            assert got is not None and len(got.value) == size
    else:
        with pytest.raises(Refused, match=r"etcd flag --max-txn-ops") as caught:
            ledger.commit({}, many)
        assert str(caught.value).startswith(f"store {limited.url} refused the commit")
        for size in sizes:
            with pytest.raises(Refused, match=r"etcd flag --max-request-bytes"):
                ledger.commit({}, [("/small", b"s"), ("/big", b"b" * size)])
        assert ledger.list("/")[0] == []
        assert ledger.revision() == base
    ledger.close()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:2379", "unknown scheme 'http'"),
        ("etcd://127.0.0.1", "member '127.0.0.1' is not HOST:PORT"),
        ("etcd://127.0.0.1:2379,127.0.0.1:", "member '127.0.0.1:' is not HOST:PORT"),
        ("etcd://127.0.0.1:70000", "is not HOST:PORT"),
        ("etcd://[::1:2379", "not a URL"),
        ("etcd://", "no members"),
        ("etcd+unix:///run/a.sock,b.sock", "must be absolute"),
        ("etcd://127.0.0.1:2379?timeout=5", "unknown parameter 'timeout'"),
        ("etcd://127.0.0.1:2379?ca=/nonexistent/ca.pem", "no such file /nonexistent/ca.pem"),
        ("etcd://127.0.0.1:2379?cert={cert}", "a client certificate needs its key"),
        ("etcd://127.0.0.1:2379?user=u&password-file=/nonexistent/pw", "no such password file"),
    ],
)
def test_bad_store_urls_give_one_clear_error(tmp_path: Path, url: str, problem: str) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("not checked before the key is missing")
    url = url.format(cert=cert)
    with pytest.raises(BadStore) as caught:
        open_store(url, Credentials())
    assert str(caught.value).startswith(f"store {url}: ")
    assert problem in str(caught.value)


def test_compaction_past_a_watch_that_stopped_reading(single: EtcdCluster) -> None:
    """Changes the watch has not handed out yet are compacted: the next poll delivers them in order or
    raises Compacted; a relist and a new watch from the listing's revision see later commits."""
    ledger = single.ledger()
    watch = ledger.watch("/c/", after=ledger.revision())
    written = [put(ledger, f"/c/{i}", str(i)) for i in range(3)]
    assert seen(collect(watch, 3)) == written
    written += [put(ledger, f"/c/{i}", str(i)) for i in range(3, 10)]  # not read
    ledger.compact(written[7][2])
    assert watch.revision < written[7][2]
    events, compacted = until_compacted(watch, 7)
    assert seen(events) == written[3 : 3 + len(events)]  # in order from where it was, nothing skipped
    assert compacted or len(events) == 7
    relisted(ledger, [key for key, _, _ in written])
    watch.close()
    ledger.close()


def test_compaction_past_a_watch_whose_member_stalls(trio: EtcdCluster) -> None:
    """The stream's member freezes (SIGSTOP) while commits and a compaction go on elsewhere: the watch gives
    up on the silent stream, resumes on another member from a compacted revision and raises Compacted."""
    chief = leader(trio)
    frozen = next(n for n in trio.clients if n != chief)
    reader = ledger_on(trio, frozen, watch_timeout=1.0)
    writer = ledger_on(trio, chief)
    watch = reader.watch("/s/", after=writer.revision())
    written = [put(writer, "/s/0", "0")]
    assert seen(collect(watch, 1)) == written

    trio.processes[frozen].send_signal(signal.SIGSTOP)
    try:
        written += [put(writer, f"/s/{i}", str(i)) for i in range(1, 6)]
        writer.compact(written[-2][2])
        events, compacted = until_compacted(watch, 5)
        assert compacted  # the changes after the last one delivered are gone: it says so, skipping none
        assert events == []
        with pytest.raises(Compacted, match=rf"revision {written[0][2]} is compacted.*relist"):
            watch.poll()  # and keeps saying so
        relisted(writer, [key for key, _, _ in written])
    finally:
        trio.processes[frozen].send_signal(signal.SIGCONT)
    watch.close()
    reader.close()
    writer.close()


def relisted(ledger: EtcdLedger, keys: list[str]) -> None:
    """A relist holds every key; a watch from its revision sees the next commit and only it."""
    prefix = keys[0][: keys[0].rindex("/") + 1]
    items, at = ledger.list(prefix)
    assert sorted(kv.key for kv in items) == sorted(keys)
    fresh = ledger.watch(prefix, after=at)
    later = [put(ledger, prefix + "later", "new")]
    assert seen(collect(fresh, 1)) == later
    assert fresh.poll(timeout=0.3) == []
    fresh.close()


def test_a_thousand_object_apply_is_one_commit_or_none(limited: EtcdCluster, tmp_path: Path) -> None:
    """`isthmus apply -f` of 1,000 objects: with the project's flags all are stored; at etcd's defaults the
    commit is refused with one line naming --max-txn-ops, and nothing is stored."""
    vm = {"network": "net", "node": "n1", "kind": "vm"}
    docs = [
        obj("Node", "n1", spec={"address": "192.0.2.1"}),
        *tenant_net("big", "net", "10.40.0.0/20"),
        *(obj("Endpoint", f"vm-{i:03d}", "big", vm) for i in range(996)),
    ]
    manifest = tmp_path / "big.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))  # 1,000 objects
    store = ["--store", limited.url]
    done = CliRunner().invoke(cli, [*store, "apply", "-f", str(manifest)])
    listed = CliRunner().invoke(cli, [*store, "get", "endpoints", "-n", "big", "-o", "json"])
    stored = json.loads(listed.output)["items"] if listed.exit_code == 0 and listed.output.strip() else []
    if limited.limits:
        assert done.exit_code == 0, done.output
        assert len(stored) == 996 and len({e["spec"]["addresses"][0] for e in stored}) == 996
    else:
        assert done.exit_code == 1
        assert "--max-txn-ops" in done.output and len(done.output.strip().splitlines()) == 1, done.output
        assert stored == []
        tenants = CliRunner().invoke(cli, [*store, "get", "tenants"])
        assert "big" not in tenants.output


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[EtcdCluster]:
    """One member over TLS that requires client certificates (deploy/isthmus-pki's)."""
    cluster = EtcdCluster(tmp_path, tls=True)
    yield cluster
    cluster.stop()


def test_tls_refusals_are_one_line_naming_the_store_and_the_cause(
    secure: EtcdCluster, tmp_path: Path
) -> None:
    """With the right CA and certificate the store answers; a foreign CA, a certificate of another CA, no
    certificate, and plain HTTP each fail with one line naming the store and what is wrong."""
    assert secure.ledger().revision() >= 1
    other = tmp_path / "other"
    for step in (["ca"], ["client", "admin"]):
        subprocess.run([str(DEPLOY / "isthmus-pki"), str(other), *step], check=True)
    mine = secure.credentials
    cases = {
        "the member's certificate is not signed by the CA given": Credentials(
            str(other / "ca.crt"), mine.cert, mine.key
        ),
        "refused the client certificate": Credentials(
            mine.ca, str(other / "admin.crt"), str(other / "admin.key")
        ),
        "requires a client certificate": Credentials(mine.ca),
        "closed the connection without an answer": Credentials(),
    }
    for cause, credentials in cases.items():
        store = open_store(secure.url, credentials)
        with pytest.raises((Refused, Unavailable)) as failed:
            store.revision()
        message = str(failed.value)
        assert message.startswith(f"store {secure.url}") and cause in message and "\n" not in message, message


class _Replay:
    """STAND-IN for etcd 3.4.23's watch bugs, which a real member shows only by chance (duplicated events,
    #15275; responses going back in time after a snapshot, #15520): a gateway whose one watch stream
    replays the given responses, then ends."""

    name, members = "etcd://stand-in:2379", ["stand-in:2379"]

    def __init__(self, responses: list[dict[str, Any]]) -> None:
        self.responses = responses

    def watch(self, body: dict[str, Any], read_timeout: float) -> Any:
        return _Played(self.responses)


class _Played(list[dict[str, Any]]):
    def close(self) -> None:
        pass


def _events(*revisions: int) -> dict[str, Any]:
    kv = {"key": "L3cvYQ==", "value": "eA==", "create_revision": "1", "version": "1"}
    return {
        "header": {"revision": str(max(revisions))},
        "events": [{"kv": kv | {"mod_revision": str(r)}} for r in revisions],
    }


@pytest.mark.parametrize(
    "second", [_events(5), _events(4), _events(5, 6)], ids=["duplicate", "back", "overlapping"]
)
def test_a_watch_that_goes_back_raises_compacted_so_callers_relist(second: dict[str, Any]) -> None:
    ledger = EtcdLedger(_Replay([{"created": True}, _events(5), second]))  # type: ignore[arg-type]
    watch = ledger.watch("/w/", after=4)
    assert [e.revision for e in watch.poll(timeout=5)] == [5]
    with pytest.raises(Compacted, match="went back from revision 5"):
        watch.poll(timeout=5)
    watch.close()


def test_a_listing_compacted_between_its_pages_is_read_again(single: EtcdCluster) -> None:
    """A listing pages at its first page's revision; compacted past it after the first page, it starts over
    and returns every key at the new revision."""
    ledger = single.ledger()
    ledger.commit({}, [(f"/p/{i:05d}", b"x") for i in range(2500)])
    call, pages = ledger.gateway.call, []

    def compacting(path: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        if path == "/v3/kv/range" and "revision" in body and not pages:
            pages.append(body["revision"])
            ledger.commit({}, [("/other", b"y")])
            ledger.compact(ledger.revision())
        return call(path, body, timeout)

    ledger.gateway.call = compacting  # type: ignore[method-assign]
    items, revision = ledger.list("/p/")
    assert len(items) == 2500 and pages and revision > pages[0]


def test_a_watch_of_many_prefixes_creates_every_watcher_while_the_store_is_busy(single: EtcdCluster) -> None:
    """A stream opened again and again over 40 prefixes while another client commits without pause: every
    time, each watcher is created and the last prefix hears its change (without `Expect: 100-continue`, Go's
    server dropped the unread end of the body once the gateway answered, in 8 of 30 opens here)."""
    ledger, writer = single.ledger(), single.ledger()
    prefixes = [f"/channels/ns/team-{i:05d}/" for i in range(40)]
    stop = threading.Event()

    def busy() -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            writer.commit({}, [(f"/busy/{i % 100}", b"x" * 200)])

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        for attempt in range(20):
            watch = ledger.follow(dict.fromkeys(prefixes, ledger.revision()))
            deadline = time.monotonic() + 2
            while not watch.live and time.monotonic() < deadline:
                watch.poll(timeout=0.01)
            assert watch.live, f"open {attempt}: not every watcher was created"
            key, _, revision = put(ledger, f"{prefixes[-1]}{attempt}", "x")
            assert [(e.key, e.revision) for e in collect(watch, 1, within=2)] == [(key, revision)]
            watch.close()
    finally:
        stop.set()
        thread.join()
    ledger.close()
    writer.close()
