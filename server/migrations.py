"""Numbered upgrades of the server database's schema, tracked in SQLite's `PRAGMA user_version`.

`MIGRATIONS[n - 1]` brings a version n-1 database to version n. To change the schema: append a step,
never edit an old one. Each step runs in one transaction together with the version bump, so a crash
half-way leaves the previous version intact. A database written by a newer genloom (a version above
the known ones) is refused rather than guessed at.

Version 0 with the tables present is a database from before the schema was numbered; step 1 creates
exactly that schema with IF NOT EXISTS, so such a database is adopted as it is, rows included.
"""

from __future__ import annotations

import sqlite3

from .services import PromptStoreError

_V1 = (
    """CREATE TABLE IF NOT EXISTS prompts (
        id TEXT PRIMARY KEY,
        number INTEGER NOT NULL,
        client_id TEXT,
        prompt TEXT NOT NULL,
        extra_data TEXT NOT NULL,
        outputs_to_execute TEXT NOT NULL,
        status TEXT NOT NULL,
        create_time INTEGER NOT NULL,
        start_time INTEGER,
        end_time INTEGER,
        finish_seq INTEGER,
        outputs TEXT NOT NULL DEFAULT '{}',
        meta TEXT NOT NULL DEFAULT '{}',
        messages TEXT NOT NULL DEFAULT '[]',
        error TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS prompts_status ON prompts (status, number)",
    "CREATE INDEX IF NOT EXISTS prompts_finished ON prompts (finish_seq)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1,)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(PromptStoreError):
    """The database was written by a newer genloom than this one."""


def schema_version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def migrate(db: sqlite3.Connection, path: str = "the database",
            migrations: tuple[tuple[str, ...], ...] = MIGRATIONS) -> int:
    """Bring `db` (autocommit mode) to the newest version; returns the version it had before."""
    found = schema_version(db)
    if found > len(migrations):
        raise SchemaTooNew(f"{path} has schema version {found}, newer than this genloom understands "
                           f"({len(migrations)}); upgrade genloom or use another --data-dir")
    for version in range(found + 1, len(migrations) + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in migrations[version - 1]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {version:d}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return found
