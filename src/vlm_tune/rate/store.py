"""The ratings store: one SQLite file a team's ratings live in (WAL journal, synchronous=FULL).

Tables:
    meta        key/value: schema version, mode (response|image), the current task file's hash, token salt
    task_files  every task file served: sha256, path, full content, first/last served
    items       every item ever served, never deleted: removed_at is set when the task file drops it
    ratings     one row per (rater, item, response): the current score
    history     every score ever given (re-rating updates `ratings` and appends here)
    skips       items a rater skipped (first and last time)

Durability: a rating is written in one transaction (current score + history) and the call returns only
after COMMIT; with WAL + synchronous=FULL the commit is fsynced, so a rating acknowledged with a 200
survives `kill -9` of the server (or a power cut). Concurrency: every call opens its own connection and
writes under BEGIN IMMEDIATE (SQLite's single writer lock, waited for up to `BUSY_TIMEOUT_S`), so
simultaneous raters neither lose nor duplicate a rating.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from vlm_tune.core.errors import UserError
from vlm_tune.rate.tasks import TaskFile, TaskItem

SCHEMA_VERSION = "1"
BUSY_TIMEOUT_S = 30.0
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS task_files (
    sha256 TEXT PRIMARY KEY, path TEXT NOT NULL, content BLOB NOT NULL,
    first_served TEXT NOT NULL, last_served TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY, line INTEGER NOT NULL, image TEXT NOT NULL, image_path TEXT NOT NULL,
    prompt TEXT NOT NULL, responses TEXT NOT NULL, grp TEXT,
    added_at TEXT NOT NULL, removed_at TEXT);
CREATE TABLE IF NOT EXISTS ratings (
    rater TEXT NOT NULL, item_id TEXT NOT NULL REFERENCES items(item_id), response_id TEXT NOT NULL,
    score INTEGER NOT NULL CHECK (score BETWEEN 1 AND 5), rated_at TEXT NOT NULL,
    PRIMARY KEY (rater, item_id, response_id));
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, rater TEXT NOT NULL, item_id TEXT NOT NULL, response_id TEXT NOT NULL,
    score INTEGER NOT NULL, rated_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS history_rater ON history (rater, item_id);
CREATE TABLE IF NOT EXISTS skips (
    rater TEXT NOT NULL, item_id TEXT NOT NULL, first_at TEXT NOT NULL, last_at TEXT NOT NULL,
    PRIMARY KEY (rater, item_id));
"""


class StoreError(UserError):
    """A database that cannot be used as asked (missing, another mode, another schema)."""


@dataclass(frozen=True)
class SyncResult:
    changed: bool  # the task file differs from the one served last time (False on first use)
    first_use: bool
    added: list[str]  # item ids new to the database, or back after being removed
    removed: list[str]  # item ids the task file no longer lists (their ratings are kept)
    removed_total: int  # all removed items, this time and earlier


@dataclass(frozen=True)
class Rating:
    rater: str
    item_id: str
    response_id: str
    score: int
    rated_at: str


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _item_from_row(row) -> TaskItem:
    item_id, line, image, image_path, prompt, responses, group = row
    return TaskItem(item_id, line, image, Path(image_path), prompt,
                    tuple(tuple(pair) for pair in json.loads(responses)), group)


class RatingsStore:
    """A SQLite ratings database. Safe to share between threads: each call opens its own connection."""

    def __init__(self, path, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StoreError(f"{self.path}: no such ratings database (start one with `vlm-tune rate serve`)")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.connect() as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(SCHEMA)
                con.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
                con.execute("INSERT OR IGNORE INTO meta VALUES ('token_salt', ?)", (secrets.token_hex(16),))
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable ratings database ({exc})") from None
        schema = self.meta("schema")
        if schema != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: ratings database schema {schema}, this vlm-tune reads {SCHEMA_VERSION}")

    # --- connections ---

    @contextmanager
    def connect(self):
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            con.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit: acknowledged = on disk
            con.execute("PRAGMA foreign_keys=ON")
            yield con
        finally:
            con.close()

    @contextmanager
    def transaction(self):
        """One write transaction; COMMIT has returned (and fsynced) when the block exits normally."""
        with self.connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def meta(self, key: str) -> str | None:
        with self.connect() as con:
            row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # --- task file ---

    def sync(self, tasks: TaskFile) -> SyncResult:
        """Make the items table match the task file: new items are added (and offered to raters), items
        no longer listed are marked removed (never deleted, nor their ratings); paths and lines refresh."""
        stamp = now()
        with self.transaction() as con:
            mode = con.execute("SELECT value FROM meta WHERE key = 'mode'").fetchone()
            if mode and mode[0] != tasks.mode:
                raise StoreError(f"{self.path} holds {mode[0]}-mode items and {tasks.path} is {tasks.mode} mode; "
                                 "use another --db")
            previous = con.execute("SELECT value FROM meta WHERE key = 'task_sha256'").fetchone()
            known = dict(con.execute("SELECT item_id, removed_at FROM items").fetchall())
            listed = {item.item_id for item in tasks.items}
            added = [i.item_id for i in tasks.items if i.item_id not in known or known[i.item_id] is not None]
            removed = [item_id for item_id, gone in known.items() if gone is None and item_id not in listed]
            for item in tasks.items:
                con.execute(
                    "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL) ON CONFLICT (item_id) DO UPDATE SET "
                    "line = excluded.line, image = excluded.image, image_path = excluded.image_path, "
                    "grp = excluded.grp, removed_at = NULL",
                    (item.item_id, item.line, item.image, str(item.image_path), item.prompt,
                     json.dumps(item.responses, ensure_ascii=False), item.group, stamp))
            con.executemany("UPDATE items SET removed_at = ? WHERE item_id = ?", [(stamp, i) for i in removed])
            con.execute("INSERT INTO task_files VALUES (?, ?, ?, ?, ?) ON CONFLICT (sha256) DO UPDATE SET "
                        "path = excluded.path, last_served = excluded.last_served",
                        (tasks.sha256, str(tasks.path), tasks.content, stamp, stamp))
            con.execute("INSERT OR REPLACE INTO meta VALUES ('mode', ?)", (tasks.mode,))
            con.execute("INSERT OR REPLACE INTO meta VALUES ('task_sha256', ?)", (tasks.sha256,))
            removed_total = con.execute("SELECT COUNT(*) FROM items WHERE removed_at IS NOT NULL").fetchone()[0]
        return SyncResult(changed=bool(previous) and previous[0] != tasks.sha256, first_use=previous is None,
                          added=added, removed=removed, removed_total=removed_total)

    def items(self, removed: bool = False) -> list[TaskItem]:
        """Items in task-file order: the current ones, or (removed=True) the ones the task file dropped."""
        where = "removed_at IS NOT NULL" if removed else "removed_at IS NULL"
        with self.connect() as con:
            rows = con.execute("SELECT item_id, line, image, image_path, prompt, responses, grp FROM items "
                               f"WHERE {where} ORDER BY line, item_id").fetchall()
        return [_item_from_row(row) for row in rows]

    # --- ratings ---

    def record(self, rater: str, item_id: str, scores: dict[str, int]) -> None:
        """Set the rater's scores of one item (one transaction: current scores + history)."""
        stamp = now()
        with self.transaction() as con:
            for response_id, score in scores.items():
                con.execute("INSERT INTO ratings VALUES (?, ?, ?, ?, ?) ON CONFLICT (rater, item_id, response_id) "
                            "DO UPDATE SET score = excluded.score, rated_at = excluded.rated_at",
                            (rater, item_id, response_id, score, stamp))
                con.execute("INSERT INTO history (rater, item_id, response_id, score, rated_at) VALUES (?, ?, ?, ?, ?)",
                            (rater, item_id, response_id, score, stamp))

    def skip(self, rater: str, item_id: str) -> None:
        stamp = now()
        with self.transaction() as con:
            con.execute("INSERT INTO skips VALUES (?, ?, ?, ?) ON CONFLICT (rater, item_id) DO UPDATE SET "
                        "last_at = excluded.last_at", (rater, item_id, stamp, stamp))

    def ratings(self, include_removed: bool = False) -> list[Rating]:
        """Current scores, by item line, rater, response."""
        where = "" if include_removed else "WHERE i.removed_at IS NULL"
        with self.connect() as con:
            rows = con.execute("SELECT r.rater, r.item_id, r.response_id, r.score, r.rated_at FROM ratings r "
                               f"JOIN items i USING (item_id) {where} ORDER BY i.line, r.item_id, r.rater, r.response_id"
                               ).fetchall()
        return [Rating(*row) for row in rows]

    def scores_of(self, rater: str, item_id: str) -> dict[str, int]:
        with self.connect() as con:
            rows = con.execute("SELECT response_id, score FROM ratings WHERE rater = ? AND item_id = ?",
                               (rater, item_id)).fetchall()
        return dict(rows)

    def rater_activity(self, rater: str) -> tuple[set[str], dict[str, str], dict[str, str]]:
        """(items rated, item -> last skip time, item -> when the rater first rated it, or first skipped it
        if it is not rated yet): the last is the order `back` walks."""
        with self.connect() as con:
            rated = {row[0] for row in con.execute("SELECT DISTINCT item_id FROM ratings WHERE rater = ?", (rater,))}
            skips = con.execute("SELECT item_id, first_at, last_at FROM skips WHERE rater = ?", (rater,)).fetchall()
            first_rated = dict(con.execute("SELECT item_id, MIN(rated_at) FROM history WHERE rater = ? GROUP BY item_id",
                                           (rater,)).fetchall())
        first = dict(first_rated)
        for item_id, first_at, _ in skips:
            first.setdefault(item_id, first_at)
        return rated, {item_id: last_at for item_id, _, last_at in skips}, first

    def rater_totals(self) -> dict[str, tuple[int, int]]:
        """rater -> (current items rated, current items skipped and not rated), raters by name."""
        with self.connect() as con:
            done = dict(con.execute(
                "SELECT r.rater, COUNT(DISTINCT r.item_id) FROM ratings r JOIN items i USING (item_id) "
                "WHERE i.removed_at IS NULL GROUP BY r.rater").fetchall())
            skipped = dict(con.execute(
                "SELECT s.rater, COUNT(*) FROM skips s JOIN items i USING (item_id) WHERE i.removed_at IS NULL "
                "AND NOT EXISTS (SELECT 1 FROM ratings r WHERE r.rater = s.rater AND r.item_id = s.item_id) "
                "GROUP BY s.rater").fetchall())
        return {rater: (done.get(rater, 0), skipped.get(rater, 0)) for rater in sorted(set(done) | set(skipped))}

    def version(self) -> tuple[int, int]:
        """Changes when ratings or items change (history size, item count): a cache key for alpha."""
        with self.connect() as con:
            history = con.execute("SELECT COALESCE(MAX(id), 0) FROM history").fetchone()[0]
            items = con.execute("SELECT COUNT(*) FROM items WHERE removed_at IS NULL").fetchone()[0]
        return int(history), int(items)
