"""The SQLite implementation of `services.PromptStore`: the queue, history and jobs of a server on
disk, so that a crash loses nothing.

One row per prompt, whatever its state. A prompt found in_progress when the store opens was running
when the server died: it is marked failed with a message saying so, never silently dropped. The
schema is versioned (migrations.py). Arguments are checked with real errors (InvalidStoreCall), not
asserts, so the contract holds under `python -O` too.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from .migrations import migrate
from .services import (FINISHED, JOB_SORTS, STATUSES, DuplicatePromptId, InvalidStoreCall, PromptRecord,
                       PromptStoreError, now_ms)


def _dump(value) -> str:
    """JSON for the database; a stray non-JSON value (a node's odd UI payload) becomes its str()."""
    return json.dumps(value, default=str)


CRASHED_MESSAGE = "the server stopped while this prompt was running"


_COLUMNS = ("id, number, client_id, prompt, extra_data, outputs_to_execute, status, create_time, "
            "start_time, end_time, outputs, meta, messages, error")


def _row(r: tuple) -> PromptRecord:
    return PromptRecord(r[0], r[1], r[2], json.loads(r[3]), json.loads(r[4]), json.loads(r[5]), r[6], r[7],
                        r[8], r[9], json.loads(r[10]), json.loads(r[11]), json.loads(r[12]),
                        json.loads(r[13]) if r[13] else None)


class Store:
    """Thread-safe: the store thread of the routes (services.OffLoopPrompts) and the worker thread
    share one connection (`check_same_thread=False`, autocommit, WAL) and take turns behind a lock;
    every write is one `BEGIN IMMEDIATE` transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lockfile = _lock_exclusively(self.path.with_suffix(".lock"))
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        try:
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                migrate(self._db, str(self.path))
            self.recovered = self._recover()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._lockfile.close()

    def _tx(self, fn):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _next(self, db, name: str) -> int:
        db.execute("INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)", (name,))
        db.execute("UPDATE counters SET value = value + 1 WHERE name = ?", (name,))
        return db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0]

    def _recover(self) -> list[str]:
        def fix(db):
            ids = [r[0] for r in db.execute("SELECT id FROM prompts WHERE status = 'in_progress'")]
            for prompt_id in ids:
                self._finish(db, prompt_id, "failed", None, None, None,
                             {"type": "server_stopped", "message": CRASHED_MESSAGE})
            return ids
        return self._tx(fix)

    # --- the queue ---

    def add(self, prompt_id: str, client_id: str | None, prompt: dict, extra_data: dict,
            outputs_to_execute: list, front: bool = False) -> int:
        """Queue a prompt; returns its number. `front` puts it before every pending prompt."""
        if not isinstance(prompt_id, str) or not prompt_id:
            raise InvalidStoreCall(f"a prompt id is a non-empty string, not {prompt_id!r}")

        def insert(db):
            seq = self._next(db, "number")
            number = -seq if front else seq
            db.execute("INSERT INTO prompts (id, number, client_id, prompt, extra_data, outputs_to_execute,"
                       " status, create_time) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                       (prompt_id, number, client_id, _dump(prompt), _dump(extra_data),
                        _dump(outputs_to_execute), extra_data.get("create_time") or now_ms()))
            return number
        try:
            return self._tx(insert)
        except sqlite3.IntegrityError:  # the primary key: the same id submitted twice at once
            raise DuplicatePromptId(f"prompt_id {prompt_id!r} is already in use") from None

    def exists(self, prompt_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM prompts WHERE id = ?", (prompt_id,)))

    def claim_next(self) -> PromptRecord | None:
        """Move the first pending prompt to in_progress and return it."""
        def claim(db):
            r = db.execute(f"SELECT {_COLUMNS} FROM prompts WHERE status = 'pending' "
                           "ORDER BY number LIMIT 1").fetchone()
            if r is None:
                return None
            start = now_ms()
            db.execute("UPDATE prompts SET status = 'in_progress', start_time = ? WHERE id = ?", (start, r[0]))
            row = _row(r)
            row.status, row.start_time = "in_progress", start
            return row
        return self._tx(claim)

    def finish(self, prompt_id: str, status: str, outputs: dict | None, meta: dict | None,
               messages: list | None, error: dict | None = None) -> None:
        self._tx(lambda db: self._finish(db, prompt_id, status, outputs, meta, messages, error))

    def _finish(self, db, prompt_id, status, outputs, meta, messages, error):
        if status not in FINISHED:
            raise InvalidStoreCall(f"a prompt finishes as one of {', '.join(FINISHED)}, not {status!r}")
        db.execute("UPDATE prompts SET status = ?, end_time = ?, finish_seq = ?, outputs = COALESCE(?, outputs),"
                   " meta = COALESCE(?, meta), messages = COALESCE(?, messages), error = ? WHERE id = ?",
                   (status, now_ms(), self._next(db, "finished"),
                    None if outputs is None else _dump(outputs),
                    None if meta is None else _dump(meta),
                    None if messages is None else _dump(messages),
                    None if error is None else _dump(error), prompt_id))

    def cancel_pending(self, prompt_id: str) -> bool:
        """A pending prompt becomes cancelled (kept, so the jobs list shows it)."""
        def cancel(db):
            if db.execute("SELECT 1 FROM prompts WHERE id = ? AND status = 'pending'", (prompt_id,)).fetchone():
                self._finish(db, prompt_id, "cancelled", None, None, None,
                             {"type": "cancelled", "message": "cancelled before it ran"})
                return True
            return False
        return self._tx(cancel)

    def delete_pending(self, ids: list[str] | None) -> int:
        """POST /queue delete/clear: pending prompts leave the queue without running."""
        if ids is None:
            return self._tx(lambda db: db.execute("DELETE FROM prompts WHERE status = 'pending'").rowcount)
        return self._tx(lambda db: sum(
            db.execute("DELETE FROM prompts WHERE status = 'pending' AND id = ?", (i,)).rowcount for i in ids))

    def queue(self) -> tuple[list[PromptRecord], list[PromptRecord]]:
        rows = [_row(r) for r in self._query(
            f"SELECT {_COLUMNS} FROM prompts WHERE status IN ('pending', 'in_progress') ORDER BY number")]
        return ([r for r in rows if r.status == "in_progress"], [r for r in rows if r.status == "pending"])

    def remaining(self) -> int:
        return self._query("SELECT COUNT(*) FROM prompts WHERE status IN ('pending', 'in_progress')")[0][0]

    # --- history ---

    def history(self, max_items: int | None = None, offset: int = -1) -> list[PromptRecord]:
        """Finished prompts, oldest first. Without an offset, `max_items` takes the newest ones."""
        _check_counts(max_items=max_items)
        total = self._query("SELECT COUNT(*) FROM prompts WHERE finish_seq IS NOT NULL")[0][0]
        if offset < 0:
            offset = max(0, total - max_items) if max_items is not None else 0
        limit = -1 if max_items is None else max_items
        return [_row(r) for r in self._query(
            f"SELECT {_COLUMNS} FROM prompts WHERE finish_seq IS NOT NULL ORDER BY finish_seq "
            "LIMIT ? OFFSET ?", (limit, offset))]

    def get(self, prompt_id: str) -> PromptRecord | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM prompts WHERE id = ?", (prompt_id,))
        return _row(rows[0]) if rows else None

    def delete_history(self, ids: list[str] | None) -> int:
        if ids is None:
            return self._tx(lambda db: db.execute("DELETE FROM prompts WHERE finish_seq IS NOT NULL").rowcount)
        return self._tx(lambda db: sum(
            db.execute("DELETE FROM prompts WHERE finish_seq IS NOT NULL AND id = ?", (i,)).rowcount
            for i in ids))

    # --- jobs ---

    def jobs(self, statuses: list[str] | None, sort_by: str, descending: bool, limit: int | None,
             offset: int) -> tuple[list[PromptRecord], int]:
        """By creation (ties in creation order) or by run time; `sort_by` is one of JOB_SORTS."""
        unknown = [s for s in statuses or () if s not in STATUSES]
        if unknown or sort_by not in JOB_SORTS:
            raise InvalidStoreCall(f"jobs are filtered by {', '.join(STATUSES)} and sorted by "
                                   f"{' or '.join(JOB_SORTS)}, not {unknown or sort_by!r}")
        _check_counts(limit=limit, offset=offset)
        where, args = "", ()
        if statuses:
            where = f"WHERE status IN ({', '.join('?' * len(statuses))})"
            args = tuple(statuses)
        total = self._query(f"SELECT COUNT(*) FROM prompts {where}", args)[0][0]
        key = ("(COALESCE(end_time, 0) - COALESCE(start_time, 0))" if sort_by == "execution_duration"
               else "create_time")
        order = "DESC" if descending else "ASC"
        # ABS(number) is the submission order: a prompt queued in front has a negative number.
        rows = self._query(f"SELECT {_COLUMNS} FROM prompts {where} ORDER BY {key} {order}, ABS(number) {order} "
                           "LIMIT ? OFFSET ?", args + (-1 if limit is None else limit, offset))
        return [_row(r) for r in rows], total


def _check_counts(**counts: int | None) -> None:
    for name, value in counts.items():
        if value is not None and (not isinstance(value, int) or value < 0):
            raise InvalidStoreCall(f"{name} is a count (an integer >= 0), not {value!r}")


class DataDirInUse(PromptStoreError, RuntimeError):
    """Another server already works on this data folder."""


def _lock_exclusively(path: Path):
    """Two servers on one data folder would each take the other's running prompt for a crash."""
    handle = open(path, "a+")
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks, run unguarded
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise DataDirInUse(f"{path.parent} is in use by another genloom server") from None
    return handle

