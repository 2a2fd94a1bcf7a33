"""The SQLite ledger: the embedded default, one WAL-mode file shared safely by several processes.

Writers serialise on BEGIN IMMEDIATE; readers never block. A watch in another process sees commits by polling
the revision (every `poll` seconds); in this process it is woken at once.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from isthmus.store.ledger import Compacted, Conflict, Event, EventType, KeyValue, LoggedLedger, Op

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
  key TEXT PRIMARY KEY, value BLOB NOT NULL,
  create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
  rev INTEGER NOT NULL, seq INTEGER NOT NULL, key TEXT NOT NULL, value BLOB,
  PRIMARY KEY (rev, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compacted', 0);
"""


class SqliteLedger(LoggedLedger):
    def __init__(self, path: str | Path, history: int = 1_000_000, poll: float = 0.05) -> None:
        self.path = str(path)
        self._history, self._poll = history, poll
        self._local = threading.local()
        self._changed = threading.Condition()
        self._connections: list[sqlite3.Connection] = []
        self._db().executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
            with self._changed:
                self._connections.append(db)
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    def _meta(self, db: sqlite3.Connection, name: str) -> int:
        value: int = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0]
        return value

    def revision(self) -> int:
        return self._meta(self._db(), "revision")

    def compacted(self) -> int:
        return self._meta(self._db(), "compacted")

    def get(self, key: str) -> KeyValue | None:
        row = self._db().execute("SELECT * FROM kv WHERE key = ?", (key,)).fetchone()
        return KeyValue(*row) if row else None

    def snapshot(self, start: str, end: str, limit: int | None = None) -> tuple[list[KeyValue], int]:
        with self._read() as db:
            rows = db.execute(
                "SELECT * FROM kv WHERE key >= ? AND key < ? ORDER BY key LIMIT ?", (start, end, limit or -1)
            ).fetchall()
            return [KeyValue(*row) for row in rows], self._meta(db, "revision")

    def commit(self, checks: Mapping[str, int], ops: Sequence[Op]) -> int:
        with self._write() as db:
            for key, expected in checks.items():
                row = db.execute("SELECT mod_rev FROM kv WHERE key = ?", (key,)).fetchone()
                actual = row[0] if row else 0
                if actual != expected:
                    raise Conflict(key, expected, actual)
            current = self._meta(db, "revision")
            revision = current + 1
            log: list[tuple[int, int, str, bytes | None]] = []
            for key, value in ops:
                if value is None:
                    if db.execute("DELETE FROM kv WHERE key = ? RETURNING 1", (key,)).fetchone():
                        log.append((revision, len(log), key, None))
                    continue
                db.execute(
                    "INSERT INTO kv VALUES (?, ?, ?, ?, 1) ON CONFLICT (key) DO UPDATE SET "
                    "value = excluded.value, mod_rev = excluded.mod_rev, version = version + 1",
                    (key, value, revision, revision),
                )
                log.append((revision, len(log), key, value))
            if not log:
                return current
            db.executemany("INSERT INTO log VALUES (?, ?, ?, ?)", log)
            db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
            if revision % 1024 == 0 and revision - self._meta(db, "compacted") > self._history:
                self._compact(db, revision - self._history)
        with self._changed:
            self._changed.notify_all()
        return revision

    def compact(self, revision: int) -> None:
        with self._write() as db:
            self._compact(db, revision)

    def _compact(self, db: sqlite3.Connection, revision: int) -> None:
        revision = min(revision, self._meta(db, "revision"))
        if revision > self._meta(db, "compacted"):
            db.execute("DELETE FROM log WHERE rev <= ?", (revision,))
            db.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (revision,))

    def _events(self, start: str, end: str, after: int, limit: int) -> list[Event]:
        with self._read() as db:
            compacted = self._meta(db, "compacted")
            if after < compacted:
                raise Compacted(after, compacted)
            query = (
                "SELECT rev, key, value FROM log"
                " WHERE rev > ? AND rev <= ? AND key >= ? AND key < ? ORDER BY rev, seq"
            )
            rows = db.execute(query + " LIMIT ?", (after, 2**62, start, end, limit)).fetchall()
            if len(rows) >= limit:  # finish the last revision
                last = rows[-1][0]
                rows = [r for r in rows if r[0] < last]
                rows += db.execute(query, (last - 1, last, start, end)).fetchall()
        return [
            Event(EventType.DELETE if value is None else EventType.PUT, key, value or b"", rev)
            for rev, key, value in rows
        ]

    def _wait(self, after: int, timeout: float) -> None:
        remaining = timeout
        while remaining > 0 and self.revision() <= after:
            step = min(self._poll, remaining)
            with self._changed:
                self._changed.wait(step)
            remaining -= step

    def close(self) -> None:
        with self._changed:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()
