"""The SQLite prompt store on its own: numbered schema migrations (fresh, upgraded in place, refused when
newer), argument checks that hold under `python -O`, and the order of jobs created in the same
millisecond."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from genloom.server.migrations import SCHEMA_VERSION, SchemaTooNew, migrate, schema_version
from genloom.server.services import DuplicatePromptId, InvalidStoreCall, PromptStoreError
from genloom.server.store import Store

# The schema genloom wrote before it was numbered (user_version 0), as that code created it.
UNNUMBERED_SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
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
);
CREATE INDEX IF NOT EXISTS prompts_status ON prompts (status, number);
CREATE INDEX IF NOT EXISTS prompts_finished ON prompts (finish_seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
GRAPH = {"1": {"class_type": "TestSleep", "inputs": {"value": 1}}}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "genloom.db")
    yield s
    s.close()


def _version(path) -> int:
    with sqlite3.connect(path) as db:
        return schema_version(db)


def test_a_fresh_database_gets_the_newest_schema(tmp_path):
    Store(tmp_path / "genloom.db").close()
    assert _version(tmp_path / "genloom.db") == SCHEMA_VERSION >= 1
    with sqlite3.connect(tmp_path / "genloom.db") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"prompts", "counters"} <= tables


def test_an_unnumbered_database_is_upgraded_in_place_keeping_its_rows(tmp_path):
    path = tmp_path / "genloom.db"
    with sqlite3.connect(path) as db:
        db.executescript(UNNUMBERED_SCHEMA)
        db.execute("INSERT INTO prompts (id, number, prompt, extra_data, outputs_to_execute, status, create_time,"
                   " end_time, finish_seq, outputs) VALUES ('done', 1, ?, '{}', '[\"1\"]', 'completed', 5, 9, 1, ?)",
                   (json.dumps(GRAPH), json.dumps({"1": {"images": [{"filename": "a.png"}]}})))
        db.execute("INSERT INTO prompts (id, number, prompt, extra_data, outputs_to_execute, status, create_time)"
                   " VALUES ('waiting', 2, ?, '{}', '[]', 'pending', 6)", (json.dumps(GRAPH),))
        db.execute("INSERT INTO counters VALUES ('number', 2), ('finished', 1)")
    assert _version(path) == 0

    store = Store(path)
    try:
        assert _version(path) == SCHEMA_VERSION
        done = store.get("done")
        assert done.status == "completed" and done.outputs == {"1": {"images": [{"filename": "a.png"}]}}
        assert [r.id for r in store.history()] == ["done"]
        assert [r.id for r in store.queue()[1]] == ["waiting"]
        assert store.add("next", None, GRAPH, {}, ["1"]) == 3  # the counters carried over
    finally:
        store.close()


def test_a_database_from_a_newer_genloom_is_refused(tmp_path):
    path = tmp_path / "genloom.db"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 1}, newer than this genloom"):
        Store(path)
    assert issubclass(SchemaTooNew, PromptStoreError)
    with sqlite3.connect(path) as db:  # untouched, and the data folder is not left locked
        assert schema_version(db) == SCHEMA_VERSION + 1
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    Store(path).close()


def test_a_failing_migration_step_leaves_the_previous_version(tmp_path):
    db = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    steps = (("CREATE TABLE a (x)",), ("CREATE TABLE b (x)", "INSERT INTO nowhere VALUES (1)"))
    with pytest.raises(sqlite3.OperationalError):
        migrate(db, "m.db", steps)
    assert schema_version(db) == 1
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["a"]
    db.close()


def test_store_arguments_are_checked_with_errors_not_asserts(store):
    store.add("p", None, GRAPH, {}, ["1"])
    with pytest.raises(InvalidStoreCall, match="not 'done'"):
        store.finish("p", "done", None, None, None)
    assert store.get("p").status == "pending"  # nothing written
    with pytest.raises(InvalidStoreCall):
        store.jobs(["bogus"], "created_at", True, None, 0)
    with pytest.raises(InvalidStoreCall):
        store.jobs(None, "name; DROP TABLE prompts", True, None, 0)
    with pytest.raises(InvalidStoreCall):
        store.history(max_items=-1)
    with pytest.raises(InvalidStoreCall):
        store.add("", None, GRAPH, {}, [])
    with pytest.raises(DuplicatePromptId, match="already in use"):
        store.add("p", None, GRAPH, {}, ["1"])


def test_the_status_check_holds_under_python_dash_O(tmp_path):
    code = f"""
from genloom.server.services import InvalidStoreCall
from genloom.server.store import Store
store = Store({str(tmp_path / "genloom.db")!r})
store.add("p", None, {{}}, {{}}, [])
try:
    store.finish("p", "bogus", None, None, None)
except InvalidStoreCall:
    print("refused", store.get("p").status)
"""
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "refused pending", out.stderr


def test_jobs_created_in_the_same_millisecond_keep_their_submission_order(store):
    """A prompt queued in front has a negative number; it must not jump ahead of older prompts in the
    jobs list when their creation times tie."""
    for prompt_id, front in (("a", False), ("b", False), ("c", True)):
        store.add(prompt_id, None, GRAPH, {"create_time": 1000}, [], front=front)
    oldest_first, total = store.jobs(None, "created_at", False, None, 0)
    assert [r.id for r in oldest_first] == ["a", "b", "c"] and total == 3
    assert [r.id for r in store.jobs(None, "created_at", True, None, 0)[0]] == ["c", "b", "a"]
    assert [r.id for r in store.queue()[1]] == ["c", "a", "b"]  # the queue still runs c first
