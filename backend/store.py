"""Per-project state in MODEL_DIR: one SQLite database (WAL) shared by every worker process, plus head folders.

Every read goes to SQLite (cheap) rather than to a per-process cache, so several uvicorn workers never
disagree about a project's current model_version. Writes that must be atomic (a version bump) run in one
transaction.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects(
    id TEXT PRIMARY KEY,
    embedder TEXT NOT NULL,            -- embedder spec recorded when the project first connected
    embedder_id TEXT,                  -- the embedder's cache id, known after its first use
    label_config TEXT,
    extra_params TEXT,                 -- JSON object from /setup
    model_version TEXT NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0,
    requested_seq INTEGER NOT NULL DEFAULT 0,   -- bumped by each event that asks for a retrain
    trained_seq INTEGER NOT NULL DEFAULT 0,     -- requested_seq covered by the last finished run
    requested_at REAL,                          -- when requested_seq was last bumped
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS versions(
    project TEXT NOT NULL,
    revision INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    head_dir TEXT,                     -- NULL for r0 (zero-shot or uniform prior, rebuilt on demand)
    n_annotations INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    fingerprint TEXT,                  -- hash of the training set (tasks, labels, images, label config)
    accuracy TEXT,                     -- JSON: estimated accuracy on the project's annotations (k-fold)
    audit TEXT,                        -- JSON: the suspect labels found after the retrain (backend.suspects)
    head_sha256 TEXT,                  -- digest of the head folder's files at publish (backend.heads.head_digest)
    PRIMARY KEY(project, revision)
);
CREATE TABLE IF NOT EXISTS annotations(
    project TEXT NOT NULL,
    id INTEGER NOT NULL,
    task_id INTEGER NOT NULL,
    result TEXT NOT NULL,              -- the Label Studio result list, JSON
    updated_at REAL NOT NULL,
    PRIMARY KEY(project, id)
);
CREATE TABLE IF NOT EXISTS tasks(
    project TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    media_url TEXT,
    content_key TEXT,                  -- key into the shared embedding cache
    error TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY(project, task_id)
);
-- One counter per project, bumped by the triggers below in the transaction of every task row write: what
-- Store.tasks_stamp reads (one row, whatever the project's size). A trigger, not the writers, so no writer
-- (nor another process, nor a future method) can forget it.
CREATE TABLE IF NOT EXISTS task_stamps(
    project TEXT PRIMARY KEY,
    stamp INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS task_stamp_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO task_stamps(project, stamp) VALUES (new.project, 1)
        ON CONFLICT(project) DO UPDATE SET stamp=stamp+1;
END;
CREATE TRIGGER IF NOT EXISTS task_stamp_update AFTER UPDATE ON tasks BEGIN
    INSERT INTO task_stamps(project, stamp) VALUES (new.project, 1)
        ON CONFLICT(project) DO UPDATE SET stamp=stamp+1;
    INSERT INTO task_stamps(project, stamp) SELECT old.project, 1 WHERE old.project IS NOT new.project
        ON CONFLICT(project) DO UPDATE SET stamp=stamp+1;
END;
CREATE TRIGGER IF NOT EXISTS task_stamp_delete AFTER DELETE ON tasks BEGIN
    INSERT INTO task_stamps(project, stamp) VALUES (old.project, 1)
        ON CONFLICT(project) DO UPDATE SET stamp=stamp+1;
END;
CREATE TABLE IF NOT EXISTS training_runs(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    status TEXT NOT NULL,              -- running | succeeded | failed | skipped
    reason TEXT,
    started_at REAL NOT NULL,
    finished_at REAL,
    model_version TEXT,
    n_annotations INTEGER,
    error TEXT,                        -- why a run failed
    note TEXT,                         -- remarks on a run that succeeded or was skipped
    pid INTEGER,
    host TEXT,                         -- the machine of `pid` (a pid means nothing on another one)
    heartbeat_at REAL,                 -- refreshed while the run goes (TrainingQueue); stale = its process died
    covers_seq INTEGER                 -- the requested_seq this run trains for
);
CREATE TABLE IF NOT EXISTS kv(
    project TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY(project, key)
);
"""


class StoreError(RuntimeError):
    """MODEL_DIR is missing, not writable, or its database cannot be opened; the message says which."""


SPACE_PROBE_BYTES = 64 * 1024  # written (and deleted) to tell whether MODEL_DIR has room again
# A running run refreshes its heartbeat every few seconds (backend.training.HEARTBEAT_SECONDS); one silent for
# this long belongs to a process that is gone, even where its pid cannot be checked (another host, a reused pid).
STALE_RUN_SECONDS = 30.0
HOST = socket.gethostname()


def process_alive(pid: int) -> bool:
    """True when process `pid` of this machine exists and is not a zombie (a killed worker its parent has not
    reaped yet still has a pid, but it holds no lock and trains nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): os.kill said it exists
        return True


def run_alive(run: dict[str, Any], now: float | None = None) -> bool:
    """True when training run `run` (a `training_runs` row marked running) still has a live process: its pid
    exists when it ran on this machine, and its heartbeat is fresher than STALE_RUN_SECONDS."""
    now = time.time() if now is None else now
    if run.get("pid") and run.get("host") in (None, HOST) and not process_alive(int(run["pid"])):
        return False  # rows from before the host column are from this machine: MODEL_DIR is local to it
    beat = run.get("heartbeat_at") or run["started_at"]
    return now - beat <= STALE_RUN_SECONDS


@dataclass(frozen=True)
class TrainingState:
    """A project's training as every worker sees it, read from SQLite (not from the answering worker's memory).

    `state` is "running" (a live run in some worker), "queued" (a retrain requested and not yet covered, or a
    run whose process died, to be resumed) or "idle" (neither). `running` is the live run (its row, plus
    `heartbeat_age`); `interrupted` the runs still marked running whose process is gone (failed and resumed by
    the next worker to take the project's training lock).
    """

    state: str
    requested_seq: int
    trained_seq: int
    running: dict[str, Any] | None
    interrupted: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "requested_seq": self.requested_seq, "trained_seq": self.trained_seq,
                "running": self.running, "interrupted": self.interrupted}


def disk_full(exc: BaseException) -> bool:
    """True for the errors a full (or over-quota) MODEL_DIR gives: OSError ENOSPC/EDQUOT from a file write,
    SQLite's "database or disk is full" from the database or the embedding cache."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc):
        return True
    # Writers that report the OS error only in their message (safetensors: "... (os error 28)").
    return f"os error {errno.ENOSPC})" in str(exc) or os.strerror(errno.ENOSPC) in str(exc)


@dataclass(frozen=True)
class Project:
    """One Label Studio project as the backend knows it."""

    id: str
    embedder: str
    embedder_id: str | None
    label_config: str | None
    extra_params: dict[str, Any]
    model_version: str
    revision: int
    requested_seq: int
    trained_seq: int


@dataclass(frozen=True)
class Version:
    project: str
    revision: int
    model_version: str
    head_dir: str | None
    n_annotations: int
    created_at: float
    fingerprint: str | None = None
    accuracy: dict[str, Any] | None = None  # backend.accuracy.estimate_accuracy's dict, None when not measured
    audit: dict[str, Any] | None = None  # backend.suspects.audit_version's summary, None when not audited
    head_sha256: str | None = None  # the head folder's digest when published; None for r0 and older versions

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Version":
        values = dict(row)
        values["accuracy"] = json.loads(values["accuracy"]) if values.get("accuracy") else None
        values["audit"] = json.loads(values["audit"]) if values.get("audit") else None
        return cls(**values)


@dataclass(frozen=True)
class Annotation:
    id: int
    task_id: int
    result: list[dict[str, Any]]


def prepare_model_dir(model_dir: Path) -> Path:
    """Return MODEL_DIR as an absolute path, creating it if its parent allows; raises StoreError if unusable."""
    model_dir = Path(model_dir).expanduser().absolute()
    if not model_dir.exists():
        try:
            model_dir.mkdir(parents=True)
        except OSError as exc:
            raise StoreError(f"MODEL_DIR {model_dir} does not exist and cannot be created "
                             f"({exc.strerror or exc}); create it or point MODEL_DIR elsewhere") from None
    if not model_dir.is_dir():
        raise StoreError(f"MODEL_DIR {model_dir} is not a directory")
    probe = model_dir / f".write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StoreError(f"MODEL_DIR {model_dir} is not writable ({exc.strerror or exc}); the backend stores "
                         "annotations, versions and head weights there") from None
    return model_dir


class Store:
    """The backend's SQLite database in MODEL_DIR. Thread-safe: one connection per thread."""

    def __init__(self, model_dir: Path):
        self.model_dir = prepare_model_dir(model_dir)
        self.path = self.model_dir / "labelloop.sqlite3"
        self._local = threading.local()
        self._full: str | None = None  # the last disk-full error this process saw, until a write succeeds
        try:
            self._conn().executescript(SCHEMA)  # executescript manages its own transaction
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the database {self.path}: {exc}") from None

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    class _Tx:
        def __init__(self, conn: sqlite3.Connection):
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            # IMMEDIATE takes the write lock up front, so read-modify-write sequences cannot interleave.
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, exc, tb) -> None:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> "Store._Tx":
        return Store._Tx(self._conn())

    def _one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        return self._conn().execute(sql, tuple(params)).fetchone()

    def _migrate(self) -> None:
        """Add columns introduced after a MODEL_DIR was created (older databases keep working)."""
        added = {"training_runs": {"note": "TEXT", "host": "TEXT", "heartbeat_at": "REAL", "covers_seq": "INTEGER"},
                 "versions": dict.fromkeys(("fingerprint", "accuracy", "audit", "head_sha256"), "TEXT"),
                 "projects": {"requested_at": "REAL"}}
        for table, names in added.items():
            columns = {r["name"] for r in self._conn().execute(f"PRAGMA table_info({table})")}
            for name, kind in names.items():
                if name not in columns:
                    with self._tx() as db:
                        # Another worker starting at the same time may have added it first.
                        if name not in {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}:
                            db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    # -- a full MODEL_DIR --------------------------------------------------------------------------------------
    def note_disk_full(self, exc: BaseException, what: str) -> bool:
        """Remember `exc` when it says MODEL_DIR is full (see `space_problem`); returns whether it did."""
        if not disk_full(exc):
            return False
        self._full = f"{what}: {type(exc).__name__}: {exc}"
        return True

    def space_problem(self) -> str | None:
        """Return what /health says while MODEL_DIR is full: set by `note_disk_full`, cleared as soon as a
        SPACE_PROBE_BYTES probe file can be written there again (no restart needed)."""
        if self._full is None:
            return None
        probe = self.model_dir / f".space-probe-{os.getpid()}"
        try:
            with open(probe, "wb") as out:
                out.write(b"\0" * SPACE_PROBE_BYTES)
                out.flush()
                os.fsync(out.fileno())
            self._full = None
        except OSError:
            pass
        finally:
            probe.unlink(missing_ok=True)
        if self._full is None:
            return None
        return (f"MODEL_DIR {self.model_dir} is full ({self._full}): new annotations are not stored and retrains "
                "cannot publish; the served model keeps serving. Free space there: nothing to restart")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- projects ---------------------------------------------------------------------------------------------
    @staticmethod
    def _project(row: sqlite3.Row) -> Project:
        return Project(id=row["id"], embedder=row["embedder"], embedder_id=row["embedder_id"],
                       label_config=row["label_config"], extra_params=json.loads(row["extra_params"] or "{}"),
                       model_version=row["model_version"], revision=row["revision"],
                       requested_seq=row["requested_seq"], trained_seq=row["trained_seq"])

    def get_project(self, project: str) -> Project | None:
        """Return the project, or None if it never connected."""
        row = self._one("SELECT * FROM projects WHERE id=?", (project,))
        return self._project(row) if row else None

    def list_projects(self) -> list[Project]:
        return [self._project(r) for r in self._conn().execute("SELECT * FROM projects ORDER BY created_at")]

    def ensure_project(self, project: str, embedder: str, initial_version: str, label_config: str | None = None,
                       extra_params: dict[str, Any] | None = None) -> tuple[Project, bool]:
        """Return (project, created). A new project records `embedder` and version r0; an existing one keeps
        its embedder and version, and only its label config / extra params are refreshed when given."""
        now = time.time()
        created = False
        row = self._one("SELECT * FROM projects WHERE id=?", (project,))  # the common case: a plain read
        if row is None:
            with self._tx() as db:
                cur = db.execute("INSERT OR IGNORE INTO projects(id, embedder, label_config, extra_params,"
                                 " model_version, revision, created_at, updated_at) VALUES (?,?,?,?,?,0,?,?)",
                                 (project, embedder, label_config, json.dumps(extra_params or {}), initial_version,
                                  now, now))
                created = cur.rowcount == 1  # another worker may have inserted it first
                if created:
                    db.execute("INSERT INTO versions(project, revision, model_version, head_dir, n_annotations,"
                               " created_at) VALUES (?,0,?,NULL,0,?)", (project, initial_version, now))
                row = db.execute("SELECT * FROM projects WHERE id=?", (project,)).fetchone()
        if created:
            return self._project(row), True
        # Label Studio repeats the config on every /predict: write only when something actually changed.
        changes = {}
        if label_config is not None and label_config != row["label_config"]:
            changes["label_config"] = label_config
        if extra_params is not None and json.dumps(extra_params) != (row["extra_params"] or "{}"):
            changes["extra_params"] = json.dumps(extra_params)
        if changes:
            with self._tx() as db:
                sets = ", ".join(f"{k}=?" for k in changes)
                db.execute(f"UPDATE projects SET {sets}, updated_at=? WHERE id=?", (*changes.values(), now, project))
                row = db.execute("SELECT * FROM projects WHERE id=?", (project,)).fetchone()
        return self._project(row), False

    def set_embedder_id(self, project: str, embedder_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE projects SET embedder_id=? WHERE id=? AND embedder_id IS NULL", (embedder_id, project))

    def current_version(self, project: str) -> str | None:
        """Return the project's model_version straight from the database (no process cache)."""
        row = self._one("SELECT model_version FROM projects WHERE id=?", (project,))
        return row["model_version"] if row else None

    # -- versions ---------------------------------------------------------------------------------------------
    def get_version(self, project: str, model_version: str) -> Version | None:
        row = self._one("SELECT * FROM versions WHERE project=? AND model_version=?", (project, model_version))
        return Version.from_row(row) if row else None

    def list_versions(self, project: str | None = None) -> list[Version]:
        """Return versions oldest first, for one project or all."""
        if project is None:
            rows = self._conn().execute("SELECT * FROM versions ORDER BY created_at, project, revision")
        else:
            rows = self._conn().execute("SELECT * FROM versions WHERE project=? ORDER BY revision", (project,))
        return [Version.from_row(r) for r in rows]

    def next_revision(self, project: str) -> int:
        row = self._one("SELECT MAX(revision) AS r FROM versions WHERE project=?", (project,))
        return (row["r"] if row and row["r"] is not None else 0) + 1

    def publish_version(self, project: str, revision: int, model_version: str, head_dir: str,
                        n_annotations: int, fingerprint: str | None = None, head_sha256: str | None = None) -> None:
        """Atomically record a new version (with its training-set fingerprint and its head folder's digest) and
        make it the project's current one; its estimated accuracy follows through set_accuracy."""
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT INTO versions(project, revision, model_version, head_dir, n_annotations, created_at,"
                       " fingerprint, head_sha256) VALUES (?,?,?,?,?,?,?,?)",
                       (project, revision, model_version, head_dir, n_annotations, now, fingerprint, head_sha256))
            db.execute("UPDATE projects SET model_version=?, revision=?, updated_at=? WHERE id=?",
                       (model_version, revision, now, project))

    def set_audit(self, project: str, model_version: str, audit: dict[str, Any]) -> None:
        """Store the label audit (backend.suspects) of a published version; raises StoreError when unknown."""
        self._set_version_detail(project, model_version, "audit", audit)

    def set_accuracy(self, project: str, model_version: str, accuracy: dict[str, Any]) -> None:
        """Store the estimated accuracy (backend.accuracy) of a published version; raises StoreError when unknown."""
        self._set_version_detail(project, model_version, "accuracy", accuracy)

    def _set_version_detail(self, project: str, model_version: str, column: str, value: dict[str, Any]) -> None:
        assert column in ("audit", "accuracy")  # a column name, never user input
        with self._tx() as db:
            changed = db.execute(f"UPDATE versions SET {column}=? WHERE project=? AND model_version=?",
                                 (json.dumps(value), project, model_version)).rowcount
        if not changed:
            raise StoreError(f"project {project} has no version {model_version!r} to attach its {column} to")

    # -- retrain requests (coalesced across processes) ------------------------------------------------------------
    def request_training(self, project: str) -> int:
        """Record that `project` needs a retrain; returns the new request sequence number."""
        with self._tx() as db:
            db.execute("UPDATE projects SET requested_seq=requested_seq+1, requested_at=? WHERE id=?",
                       (time.time(), project))
            row = db.execute("SELECT requested_seq FROM projects WHERE id=?", (project,)).fetchone()
        return row["requested_seq"] if row else 0

    def pending_seq(self, project: str) -> tuple[int, int]:
        """Return (requested_seq, trained_seq)."""
        row = self._one("SELECT requested_seq, trained_seq FROM projects WHERE id=?", (project,))
        return (row["requested_seq"], row["trained_seq"]) if row else (0, 0)

    def mark_trained(self, project: str, seq: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE projects SET trained_seq=MAX(trained_seq, ?) WHERE id=?", (seq, project))

    def training_state(self, project: str, now: float | None = None) -> TrainingState:
        """Return `project`'s TrainingState across every worker: from the request/trained sequence numbers and
        the runs marked running, each judged alive or not by `run_alive`."""
        now = time.time() if now is None else now
        conn = self._conn()
        conn.execute("BEGIN")  # one snapshot: the sequence numbers and the runs as of the same moment
        try:
            requested, trained = self.pending_seq(project)
            marked = [dict(r) for r in conn.execute(
                "SELECT * FROM training_runs WHERE project=? AND status='running' ORDER BY id", (project,))]
        finally:
            conn.execute("COMMIT")
        live = [r for r in marked if run_alive(r, now)]
        running = dict(live[-1], heartbeat_age=round(now - (live[-1]["heartbeat_at"] or live[-1]["started_at"]), 1)) \
            if live else None
        interrupted = [r for r in marked if r not in live]
        state = "running" if running else "queued" if requested > trained or interrupted else "idle"
        return TrainingState(state, requested, trained, running, interrupted)

    def projects_to_resume(self, owed_for: float | None = None, now: float | None = None) -> list[str]:
        """Return the projects with a retrain requested but not finished, or a run still marked `running` (what
        a process starting up resumes). With `owed_for` (seconds), only what a live worker must take over: a
        run marked running whose process died, or requests older than `owed_for` with no live run (the worker
        that received them died before it started their run)."""
        rows = self._conn().execute(
            "SELECT id, requested_seq, trained_seq, requested_at FROM projects WHERE requested_seq > trained_seq"
            " OR id IN (SELECT project FROM training_runs WHERE status='running') ORDER BY created_at").fetchall()
        if owed_for is None:
            return [r["id"] for r in rows]
        now = time.time() if now is None else now
        stalled = []
        for r in rows:
            state = self.training_state(r["id"], now)
            owed_long = state.running is None and r["requested_seq"] > r["trained_seq"] \
                and now - (r["requested_at"] or 0.0) > owed_for
            if state.interrupted or owed_long:
                stalled.append(r["id"])
        return stalled

    # -- annotations ------------------------------------------------------------------------------------------
    def upsert_annotations(self, project: str, annotations: Iterable[Annotation]) -> int:
        """Store annotations (replacing older copies by id); returns how many were written."""
        now = time.time()
        count = 0
        with self._tx() as db:
            for ann in annotations:
                db.execute("INSERT INTO annotations(project, id, task_id, result, updated_at) VALUES (?,?,?,?,?)"
                           " ON CONFLICT(project, id) DO UPDATE SET task_id=excluded.task_id,"
                           " result=excluded.result, updated_at=excluded.updated_at",
                           (project, int(ann.id), int(ann.task_id), json.dumps(ann.result), now))
                count += 1
        return count

    def delete_annotations(self, project: str, ids: Iterable[int]) -> int:
        """Delete annotations by id; returns how many existed."""
        with self._tx() as db:
            cur = db.executemany("DELETE FROM annotations WHERE project=? AND id=?",
                                 [(project, int(i)) for i in ids])
            return cur.rowcount

    def replace_annotations(self, project: str, annotations: Iterable[Annotation]) -> int:
        """Make the stored annotations exactly `annotations` (used after a full fetch from Label Studio)."""
        now = time.time()
        with self._tx() as db:
            db.execute("DELETE FROM annotations WHERE project=?", (project,))
            rows = [(project, int(a.id), int(a.task_id), json.dumps(a.result), now) for a in annotations]
            db.executemany("INSERT OR REPLACE INTO annotations(project, id, task_id, result, updated_at)"
                           " VALUES (?,?,?,?,?)", rows)
        return len(rows)

    def count_annotations(self, project: str) -> int:
        row = self._one("SELECT COUNT(*) AS n FROM annotations WHERE project=?", (project,))
        return int(row["n"]) if row else 0

    def list_annotations(self, project: str) -> list[Annotation]:
        rows = self._conn().execute("SELECT id, task_id, result FROM annotations WHERE project=? ORDER BY id",
                                    (project,))
        return [Annotation(r["id"], r["task_id"], json.loads(r["result"])) for r in rows]

    # -- task -> embedding-cache key --------------------------------------------------------------------------
    def remember_tasks(self, project: str, tasks: Iterable[tuple[int, str | None]]) -> None:
        """Record each task's media URL; a changed URL forgets the old content key."""
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "INSERT INTO tasks(project, task_id, media_url, updated_at) VALUES (?,?,?,?)"
                " ON CONFLICT(project, task_id) DO UPDATE SET"
                " content_key=CASE WHEN tasks.media_url IS excluded.media_url THEN tasks.content_key ELSE NULL END,"
                " error=CASE WHEN tasks.media_url IS excluded.media_url THEN tasks.error ELSE NULL END,"
                " media_url=excluded.media_url, updated_at=excluded.updated_at",
                [(project, int(t), url, now) for t, url in tasks])

    def set_content_keys(self, project: str, keys: dict[int, str]) -> None:
        now = time.time()
        with self._tx() as db:
            db.executemany("UPDATE tasks SET content_key=?, error=NULL, updated_at=? WHERE project=? AND task_id=?",
                           [(key, now, project, int(t)) for t, key in keys.items()])

    def set_task_error(self, project: str, task_id: int, error: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE tasks SET error=?, updated_at=? WHERE project=? AND task_id=?",
                       (error[:500], time.time(), project, int(task_id)))

    def content_keys(self, project: str, task_ids: Iterable[int]) -> dict[int, tuple[str | None, str | None]]:
        """Return task_id -> (media_url, content_key) for the tasks this backend has seen."""
        ids = [int(t) for t in task_ids]
        out: dict[int, tuple[str | None, str | None]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for r in self._conn().execute(f"SELECT task_id, media_url, content_key FROM tasks WHERE project=?"
                                          f" AND task_id IN ({marks})", (project, *chunk)):
                out[r["task_id"]] = (r["media_url"], r["content_key"])
        return out

    def project_content_keys(self, project: str) -> list[str]:
        """Return the content keys of every task of `project` whose image was embedded (the cold-start pool),
        each once, in no particular order."""
        # Deduplicated here, not by SELECT DISTINCT (a temporary B-tree in SQLite): half the time, and this runs
        # on every cold-start /predict over all of the project's tasks.
        return list(dict.fromkeys(r["content_key"] for r in self._conn().execute(
            "SELECT content_key FROM tasks WHERE project=? AND content_key IS NOT NULL", (project,))))

    def tasks_stamp(self, project: str) -> int:
        """Return a number that changes whenever any task row of `project` is inserted, updated or deleted, by
        any connection or process (the task_stamps triggers count the writes in their own transaction): the
        cold-start order re-reads the project's content keys only then. One primary-key read, whatever the
        project's size (the aggregate over its rows it replaces cost ~150 us per 1,000 tasks). 0 before the
        project's first task write."""
        row = self._one("SELECT stamp FROM task_stamps WHERE project=?", (project,))
        return int(row["stamp"]) if row else 0

    def embedded_tasks(self, project: str) -> dict[int, str]:
        """Return task_id -> content key for every task of `project` whose image was embedded."""
        return {r["task_id"]: r["content_key"] for r in self._conn().execute(
            "SELECT task_id, content_key FROM tasks WHERE project=? AND content_key IS NOT NULL ORDER BY task_id",
            (project,))}

    # -- training runs ----------------------------------------------------------------------------------------
    def start_run(self, project: str, reason: str, covers_seq: int | None = None) -> int:
        """Record a run of this process as running (its heartbeat starts now); returns its id."""
        now = time.time()
        with self._tx() as db:
            cur = db.execute("INSERT INTO training_runs(project, status, reason, started_at, pid, host, heartbeat_at,"
                             " covers_seq) VALUES (?, 'running', ?, ?, ?, ?, ?, ?)",
                             (project, reason, now, os.getpid(), HOST, now, covers_seq))
            return int(cur.lastrowid)

    def heartbeat(self, run_id: int) -> None:
        """Tell the other workers that run `run_id` is still going (see `run_alive`)."""
        with self._tx() as db:
            db.execute("UPDATE training_runs SET heartbeat_at=? WHERE id=? AND status='running'",
                       (time.time(), run_id))

    def finish_run(self, run_id: int, status: str, model_version: str | None = None,
                   n_annotations: int | None = None, error: str | None = None, note: str | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE training_runs SET status=?, finished_at=?, model_version=?, n_annotations=?, error=?,"
                       " note=? WHERE id=?", (status, time.time(), model_version, n_annotations,
                                             error[:2000] if error else None, note[:2000] if note else None, run_id))

    def fail_abandoned_runs(self, project: str, error: str) -> list[dict[str, Any]]:
        """Mark every `running` run of `project` as failed with `error`; returns those runs as they were.

        Only for a caller holding the project's training lock: a live run always holds it, so while the caller
        does, any run still `running` belongs to a process that died mid-run.
        """
        with self._tx() as db:
            rows = [dict(r) for r in db.execute("SELECT * FROM training_runs WHERE project=? AND status='running'"
                                                " ORDER BY id", (project,))]
            db.executemany("UPDATE training_runs SET status='failed', finished_at=?, error=? WHERE id=?",
                           [(time.time(), f"{error} (pid {r['pid']})"[:2000], r["id"]) for r in rows])
        return rows

    def remove_unpublished_heads(self, project: str) -> list[Path]:
        """Delete head folders no version points to: staging folders (".r<n>-<tag>") and "r<n>" folders a run
        renamed but never published. Returns what was deleted. Only for a caller holding the training lock
        (runs write head folders while holding it)."""
        heads = self.heads_dir(project)
        if not heads.is_dir():
            return []
        published = {Path(v.head_dir).name for v in self.list_versions(project) if v.head_dir}
        removed = []
        for folder in heads.iterdir():
            name = folder.name
            unpublished = name.startswith(".r") or (name.startswith("r") and name[1:].isdigit()
                                                      and name not in published)
            if unpublished and folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        return removed

    def runs(self, project: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Return the latest training runs, newest first."""
        if project is None:
            rows = self._conn().execute("SELECT * FROM training_runs ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._conn().execute("SELECT * FROM training_runs WHERE project=? ORDER BY id DESC LIMIT ?",
                                        (project, limit))
        return [dict(r) for r in rows]

    def run_counts(self, project: str) -> dict[str, int]:
        rows = self._conn().execute("SELECT status, COUNT(*) AS n FROM training_runs WHERE project=?"
                                    " GROUP BY status", (project,))
        return {r["status"]: r["n"] for r in rows}

    # -- key-value state (upstream LabelStudioMLBase.get/set/has) ---------------------------------------------
    def kv_get(self, project: str, key: str) -> str | None:
        row = self._one("SELECT value FROM kv WHERE project=? AND key=?", (project, key))
        return row["value"] if row else None

    def kv_set(self, project: str, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO kv(project, key, value) VALUES (?,?,?)"
                       " ON CONFLICT(project, key) DO UPDATE SET value=excluded.value", (project, key, str(value)))

    def kv_items(self, project: str, prefix: str) -> dict[str, str]:
        """Return {key: value} of the project's key-value state whose key starts with `prefix`."""
        rows = self._conn().execute("SELECT key, value FROM kv WHERE project=? AND substr(key, 1, ?)=?",
                                    (project, len(prefix), prefix))
        return {r["key"]: r["value"] for r in rows}

    def heads_dir(self, project: str) -> Path:
        return self.model_dir / "projects" / _safe_name(project) / "heads"


def _safe_name(project: str) -> str:
    """Return a filesystem-safe folder name for a project id (ids are digits in Label Studio)."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(project)) or "_"
