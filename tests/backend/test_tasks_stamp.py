"""Store.tasks_stamp: one counter row per project, bumped by SQLite triggers in the transaction of every
task row write, so the cold-start order's "did the pool change?" costs the same at 100 tasks and at 100k."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from backend.store import Store

ROOT = Path(__file__).resolve().parents[2]


def test_the_stamp_moves_with_every_task_write_from_any_process_and_only_then(tmp_path):
    store, other = Store(tmp_path / "state"), Store(tmp_path / "state")  # two connections, as two workers
    seen = [store.tasks_stamp("1")]

    def moved() -> bool:
        now = store.tasks_stamp("1")
        assert other.tasks_stamp("1") == now  # every connection reads the same value
        changed = now != seen[-1]
        seen.append(now)
        return changed

    assert seen == [0]  # nothing written yet
    store.remember_tasks("1", [(1, "/a.png"), (2, "/b.png")])
    assert moved()
    assert store.project_content_keys("1") == [] and store.embedded_tasks("1") == {} and not moved()  # reads
    other.set_content_keys("1", {1: "key-a"})  # the other connection writes
    assert moved()
    store.set_task_error("1", 2, "unreadable")
    assert moved()
    store.remember_tasks("1", [(1, "/a.png")])  # the same URL again: still a write (updated_at moves)
    assert moved()
    store.remember_tasks("2", [(1, "/z.png")])  # another project's write
    assert not moved() and store.tasks_stamp("2") > 0
    # another process, writing the rows with plain SQL (no Store method, so nothing it could forget to call)
    script = ("import sqlite3, sys; db = sqlite3.connect(sys.argv[1]);"
              " db.execute(\"UPDATE tasks SET content_key='key-b' WHERE project='1' AND task_id=2\"); db.commit();"
              " db.execute(\"DELETE FROM tasks WHERE project='1' AND task_id=1\"); db.commit()")
    subprocess.run([sys.executable, "-c", script, str(store.path)], check=True, cwd=ROOT)
    before = seen[-1]
    assert moved() and seen[-1] >= before + 2  # the update and the delete, each counted
    assert store.project_content_keys("1") == ["key-b"]
    store.close(), other.close()


def test_a_database_made_before_the_stamp_gets_its_triggers_on_open(tmp_path):
    """A MODEL_DIR from before the counter: opening it adds the triggers; its first write moves the stamp."""
    (tmp_path / "state").mkdir()
    db = sqlite3.connect(tmp_path / "state" / "labelloop.sqlite3")
    db.execute("CREATE TABLE tasks(project TEXT NOT NULL, task_id INTEGER NOT NULL, media_url TEXT, content_key"
               " TEXT, error TEXT, updated_at REAL NOT NULL, PRIMARY KEY(project, task_id))")
    db.execute("INSERT INTO tasks VALUES ('1', 1, '/a.png', 'key-a', NULL, 1.0)")
    db.commit(), db.close()
    store = Store(tmp_path / "state")
    first = store.tasks_stamp("1")
    assert store.project_content_keys("1") == ["key-a"]
    store.set_content_keys("1", {1: "key-b"})
    assert store.tasks_stamp("1") != first
    store.close()
