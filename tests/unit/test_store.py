"""The ledger contract, on every backend: revisions, CAS commits, ordered watches, compaction."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest

from isthmus.store import Compacted, Conflict, EventType, Ledger, SqliteLedger, transact
from isthmus.store.txn import Txn


def test_revisions_and_key_metadata(ledger: Ledger) -> None:
    base = ledger.revision()  # 0 on memory and SQLite, 1 on etcd
    r1 = ledger.commit({}, [("/a", b"1"), ("/b", b"2")])
    r2 = ledger.commit({}, [("/a", b"3")])
    assert (r1, r2) == (base + 1, base + 2)
    a = ledger.get("/a")
    assert a is not None and (a.value, a.create_revision, a.mod_revision, a.version) == (b"3", r1, r2, 2)
    assert ledger.get("/missing") is None


def test_commit_without_change_keeps_revision(ledger: Ledger) -> None:
    r1 = ledger.commit({}, [("/a", b"1")])
    assert ledger.commit({}, [("/absent", None)]) == r1
    assert ledger.revision() == r1


def test_range_is_ordered_bounded_and_prefix_exact(ledger: Ledger) -> None:
    ledger.commit({}, [(f"/k/{i:02d}", b"x") for i in (5, 1, 3)] + [("/k0", b"y"), ("/j", b"z")])
    items, revision = ledger.list("/k/")
    assert [kv.key for kv in items] == ["/k/01", "/k/03", "/k/05"]
    assert revision == ledger.revision()
    assert [kv.key for kv in ledger.range("/k/02", "/k/99", limit=1)] == ["/k/03"]
    assert [kv.key for kv in ledger.list("")[0]] == ["/j", "/k/01", "/k/03", "/k/05", "/k0"]  # everything


def test_conflicting_commit_changes_nothing(ledger: Ledger) -> None:
    ledger.commit({}, [("/a", b"1")])
    stale = ledger.get("/a")
    assert stale is not None
    ledger.commit({"/a": stale.mod_revision}, [("/a", b"2")])
    with pytest.raises(Conflict) as caught:
        ledger.commit({"/a": stale.mod_revision}, [("/a", b"lost"), ("/b", b"half")])
    assert "conflict on /a" in str(caught.value)
    assert ledger.get("/b") is None
    got = ledger.get("/a")
    assert got is not None and got.value == b"2"
    with pytest.raises(Conflict):
        ledger.commit({"/new": 5}, [("/new", b"x")])  # 0 means "must be absent"; 5 never matches


def test_watch_replays_history_then_follows_live_changes(ledger: Ledger) -> None:
    base = ledger.revision()
    ledger.commit({}, [("/w/a", b"1")])
    ledger.commit({}, [("/other", b"x")])
    ledger.commit({}, [("/w/a", None), ("/w/b", b"2")])
    watch = ledger.watch("/w/", after=base)
    events = watch.poll(timeout=5)
    assert [(e.type, e.key, e.value, e.revision) for e in events] == [
        (EventType.PUT, "/w/a", b"1", base + 1),
        (EventType.DELETE, "/w/a", b"", base + 3),
        (EventType.PUT, "/w/b", b"2", base + 3),
    ]
    assert watch.poll(timeout=0.2) == []

    def later() -> None:
        ledger.commit({}, [("/w/c", b"3")])

    timer = threading.Timer(0.1, later)
    timer.start()
    live = watch.poll(timeout=5)
    timer.join()
    assert [(e.key, e.revision) for e in live] == [("/w/c", base + 4)]
    assert watch.revision == base + 4
    watch.close()


def test_watch_from_a_revision_sees_only_later_changes(ledger: Ledger) -> None:
    revisions = [ledger.commit({}, [(f"/w/{i}", b"x")]) for i in range(5)]
    watch = ledger.watch("/w/", after=revisions[2])
    assert [e.key for e in watch.poll(timeout=5)] == ["/w/3", "/w/4"]
    watch.close()


def test_watch_batches_never_split_a_revision(ledger: Ledger) -> None:
    base = ledger.revision()
    big = ledger.commit({}, [(f"/w/{i:04d}", b"x") for i in range(1500)])
    ledger.commit({}, [("/w/last", b"y")])
    watch = ledger.watch("/w/", after=base)
    polls = [watch.poll(timeout=5)]
    while sum(map(len, polls)) < 1501:
        polls.append(watch.poll(timeout=5))
    assert sum(e.revision == big for e in polls[0]) == 1500  # the whole of the big revision comes at once
    assert [e.key for e in polls[-1]][-1] == "/w/last"
    watch.close()


def test_one_watch_follows_several_prefixes_each_from_its_own_revision(ledger: Ledger) -> None:
    first = ledger.commit({}, [("/a/1", b"x"), ("/b/1", b"x")])
    second = ledger.commit({}, [("/a/2", b"y"), ("/b/2", b"y"), ("/c/2", b"y")])
    watch = ledger.follow({"/a/": first - 1, "/b/": first})  # /b/ was listed at `first`
    seen: list[tuple[str, int]] = []
    while len(seen) < 3:
        seen += [(e.key, e.revision) for e in watch.poll(timeout=5)]
    assert sorted(seen) == [("/a/1", first), ("/a/2", second), ("/b/2", second)]  # nothing of /c/, no /b/1
    third = ledger.commit({}, [("/b/3", b"z")])
    assert [(e.key, e.revision) for e in watch.poll(timeout=5)] == [("/b/3", third)]
    assert watch.positions["/b/"] == third and watch.positions["/a/"] >= second
    watch.close()


def test_read_gives_the_keys_present_and_a_revision_not_before_them(ledger: Ledger) -> None:
    first = ledger.commit({}, [("/r/a", b"1"), ("/r/b", b"2")])
    second = ledger.commit({}, [("/r/b", b"3")])
    found, revision = ledger.read(["/r/a", "/r/b", "/r/absent"])
    assert {k: (kv.value, kv.mod_revision) for k, kv in found.items()} == {
        "/r/a": (b"1", first),
        "/r/b": (b"3", second),
    }
    assert revision == second
    assert ledger.read([]) == ({}, second)


def test_compacted_revision_is_a_clear_error(ledger: Ledger) -> None:
    r = [ledger.commit({}, [("/c", str(i).encode())]) for i in range(10)]
    ledger.compact(r[5])
    with pytest.raises(Compacted, match=rf"revision {r[1]} is compacted.*relist"):
        ledger.watch("/c", after=r[1]).poll(timeout=5)  # at once, or at the first poll
    watch = ledger.watch("/c", after=r[5])
    assert [e.revision for e in watch.poll(timeout=5)] == r[6:]
    old = ledger.watch("/", after=r[6])
    ledger.compact(r[8])
    with contextlib.suppress(Compacted):  # a watch either delivers every change in order or says it cannot
        assert [e.revision for e in old.poll(timeout=5)] == r[7:]
    watch.close()
    old.close()


def test_transact_retries_on_conflict_and_sees_its_own_writes(ledger: Ledger) -> None:
    ledger.commit({}, [("/n", b"0")])
    interfered = False

    def increment(txn: Txn) -> int:
        nonlocal interfered
        value = int(txn.get("/n") or b"0")
        if not interfered:  # a concurrent writer slips in once
            interfered = True
            ledger.commit({}, [("/n", b"10")])
        txn.put("/n", str(value + 1).encode())
        assert txn.get("/n") == str(value + 1).encode()
        return value + 1

    base = ledger.revision()
    result, revision = transact(ledger, increment)
    assert result == 11 and revision == base + 2
    got = ledger.get("/n")
    assert got is not None and got.value == b"11"


def test_txn_range_overlays_pending_writes(ledger: Ledger) -> None:
    ledger.commit({}, [("/r/1", b"a"), ("/r/2", b"b"), ("/r/3", b"c")])
    txn = Txn(ledger)
    txn.delete("/r/1")
    txn.put("/r/25", b"new")
    assert [k for k, _ in txn.range("/r/", "/r0", limit=2)] == ["/r/2", "/r/25"]
    assert [k for k, _ in txn.range("/r/", "/r0")] == ["/r/2", "/r/25", "/r/3"]


def test_sqlite_resumes_watches_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    first = SqliteLedger(path)
    first.commit({}, [("/x/1", b"a")])
    seen = first.watch("/x/", after=0).poll()[-1].revision
    first.commit({}, [("/x/2", b"b")])
    first.close()
    again = SqliteLedger(path)  # as a restarted process would
    assert again.revision() == 2
    assert [e.key for e in again.watch("/x/", after=seen).poll()] == ["/x/2"]
    again.close()


def test_sqlite_watch_sees_commits_of_another_connection(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    reader, writer = SqliteLedger(path, poll=0.01), SqliteLedger(path)
    watch = reader.watch("/p/", after=0)
    threading.Timer(0.05, lambda: writer.commit({}, [("/p/x", b"1")])).start()
    assert [e.key for e in watch.poll(timeout=5)] == ["/p/x"]
    reader.close()
    writer.close()


def test_prefetch_answers_reads_inside_it_from_that_read(ledger: Ledger) -> None:
    ledger.commit({}, [("/p/a", b"1"), ("/p/b", b"2"), ("/q", b"3")])
    txn = Txn(ledger)
    txn.prefetch("/p/", "/p0")
    ledger.commit({}, [("/p/a", b"changed"), ("/p/c", b"new"), ("/q", b"4")])  # after the read
    txn.put("/p/d", b"mine")
    txn.delete("/p/b")
    assert (txn.get("/p/a"), txn.peek("/p/c"), txn.get("/p/d"), txn.get("/q")) == (b"1", None, b"mine", b"4")
    assert txn.range("/p/", "/p0") == [("/p/a", b"1"), ("/p/d", b"mine")]
    assert txn.range("/p/", "/p0", limit=1) == [("/p/a", b"1")]
    assert [k for k, _ in txn.range("/p/", "/r")] == ["/p/a", "/p/c", "/p/d", "/q"]  # not inside: the ledger
    assert txn.checks == {"/p/a": ledger.revision() - 1, "/q": ledger.revision()}


def test_prefetched_ranges_join(ledger: Ledger) -> None:
    ledger.commit({}, [("/j/1", b"a"), ("/j/3", b"c"), ("/j/5", b"e")])
    txn = Txn(ledger)
    txn.prefetch("/j/0", "/j/2")
    txn.prefetch("/j/4", "/j/6")
    txn.prefetch("/j/2", "/j/4")
    ledger.commit({}, [("/j/2", b"b"), ("/j/4", b"d")])
    assert [k for k, _ in txn.range("/j/0", "/j/6")] == ["/j/1", "/j/3", "/j/5"]


@pytest.mark.parametrize("change", ["created", "modified", "deleted"])
def test_a_read_answered_by_a_prefetch_is_checked(ledger: Ledger, change: str) -> None:
    ledger.commit({}, [("/p/old", b"1")])
    key = "/p/new" if change == "created" else "/p/old"
    txn = Txn(ledger)
    txn.prefetch("/p/", "/p0")
    txn.put("/seen", txn.get(key) or b"absent")
    ledger.commit({}, [("/p/unread", b"x")])  # a key the transaction did not get changes: no conflict
    ledger.commit(txn.checks, [])
    ledger.commit({}, [(key, None if change == "deleted" else b"2")])
    with pytest.raises(Conflict, match=f"conflict on {key}"):
        ledger.commit(txn.checks, txn.ops())
    assert ledger.get("/seen") is None
