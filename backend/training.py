"""The background retraining queue: webhooks enqueue, one worker thread trains, bursts become one run.

- `request(project)` returns at once (the webhook must answer within Label Studio's 1 s timeout).
- Requests for a project arriving within `debounce` seconds, or while it trains, coalesce into one more run.
- Across uvicorn workers, a per-project file lock lets only one process train a project at a time, and the
  request/trained sequence numbers in SQLite let a process skip a run that another process already covered.
- A run that raises is recorded as failed (log + /metrics); the served version does not change.
- A run whose process died (crash, OOM kill, power loss) is found by the next holder of the project's lock:
  at start-up every process queues each project with an unfinished request or a run still marked `running`,
  and every STALL_CHECK_SECONDS each live process queues the projects whose run died meanwhile (its pid gone,
  or its heartbeat, refreshed every HEARTBEAT_SECONDS while it runs, stale) or whose requests stayed owed
  with no run (the worker that received them died first). Whoever gets the lock marks those runs failed,
  deletes the head folders they left unpublished, and trains if the requests are still not covered; the
  others then find nothing to do. So a worker killed with kill -9 is resumed by the other workers, whether or
  not its supervisor replaces it.
- What /metrics says about training comes from SQLite (Store.training_state), never from this process's
  queue: "idle" means no run is going and none is owed, in any worker.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from filelock import FileLock, Timeout

from backend.store import Store, _safe_name

log = logging.getLogger(__name__)

BUSY_RETRY_SECONDS = 0.5
DISK_FULL_RETRY_SECONDS = 5.0  # a run that found MODEL_DIR full is tried again this often, until space is back
RESUME = "RESUME_AFTER_RESTART"  # the reason of a run queued at start-up for work a dead process left
DIED = "process died during training"
# Resume automatically unless this many runs in a row died: a run that kills its process every time (say an
# out-of-memory kill) would otherwise restart-loop forever. A new event or START_TRAINING still trains.
MAX_DEAD_RUNS_IN_A_ROW = 2
HEARTBEAT_SECONDS = 2.0  # a running run refreshes its heartbeat this often (store.STALE_RUN_SECONDS: when dead)
STALL_CHECK_SECONDS = 2.0  # how often each process looks for runs that died and requests nobody took
# Requests owed this long past the debounce window with no run anywhere: their worker died before running them.
OWED_GRACE_SECONDS = 30.0


@dataclass
class _Pending:
    due: float
    reasons: set[str]
    full_sync: bool
    first: float = 0.0  # when the oldest coalesced request arrived (caps how long debouncing may defer)


# train_fn(project, full_sync, reasons) -> (model_version or None if skipped, n_annotations, note)
TrainFn = Callable[[str, bool, set], tuple]


class TrainingQueue:
    """One worker thread per process; see the module docstring for the guarantees."""

    def __init__(self, store: Store, train_fn: TrainFn, debounce: float = 1.0,
                 describe_error: Callable[[BaseException], str] | None = None):
        self.store = store
        self.train_fn = train_fn
        # A failure is stored in SQLite and shown by /metrics: say it without secrets (backend.logs.Redactor).
        self.describe_error = describe_error or (lambda exc: f"{type(exc).__name__}: {exc}")
        self.debounce = max(0.0, float(debounce))
        self._pending: dict[str, _Pending] = {}
        self._running: str | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._unrecorded: dict[int, dict] = {}  # run id -> finish_run arguments a full disk kept from SQLite
        self.locks_dir = store.model_dir / "locks"
        self.locks_dir.mkdir(exist_ok=True)
        self.heartbeat_seconds, self.stall_check_seconds = HEARTBEAT_SECONDS, STALL_CHECK_SECONDS
        # The longest a live worker may hold a request before running it: the debounce cap (10 windows), plus slack.
        self.owed_grace = 10 * self.debounce + OWED_GRACE_SECONDS
        self._next_stall_check = 0.0

    # -- control ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread, first queueing the work a process that died left unfinished."""
        if self._thread is None:
            self._stop = False
            self._queue_unfinished()
            self._thread = threading.Thread(target=self._loop, name="labelloop-training", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _queue_unfinished(self, owed_for: float | None = None) -> None:
        """Queue (without a new request) every project a previous process left mid-run or with requests not
        yet covered (with `owed_for`: only those whose run died or whose requests waited longer than that,
        see Store.projects_to_resume). Re-reading annotations from Label Studio (full_sync, when configured)
        also picks up the webhooks sent while no backend was listening."""
        projects = self.store.projects_to_resume(owed_for)
        now = time.monotonic()
        with self._cond:
            for project in projects:
                if owed_for is not None and (project in self._pending or self._running == project):
                    continue  # this process has it in hand already
                if owed_for is not None:
                    log.warning("project %s: its training run died or its retrain request was left by a worker "
                                "that is gone; resuming it here", project)
                entry = self._pending.setdefault(project, _Pending(now, set(), True, now))
                entry.reasons.add(RESUME)
                entry.full_sync = True
            self._cond.notify_all()

    def _check_stalled(self) -> None:
        """Every `stall_check_seconds`, queue what dead workers left (see the module docstring); a failing
        read (a locked or full database) is logged and tried again at the next check."""
        now = time.monotonic()
        if now < self._next_stall_check:
            return
        self._next_stall_check = now + self.stall_check_seconds
        try:
            self._queue_unfinished(owed_for=self.owed_grace)
        except Exception as exc:  # the worker thread must survive it
            log.warning("could not look for training runs of dead workers (%s: %s)", type(exc).__name__, exc)

    def request(self, project: str, reason: str, full_sync: bool = False) -> None:
        """Ask for a retrain of `project`; returns immediately."""
        self.store.request_training(project)
        with self._cond:
            entry = self._pending.get(project)
            now = time.monotonic()
            if entry is None:
                self._pending[project] = _Pending(now + self.debounce, {reason}, full_sync, now)
            else:
                entry.reasons.add(reason)
                entry.full_sync = entry.full_sync or full_sync
                # Trailing debounce, but a steady stream of submits still trains at least every 10 windows.
                entry.due = min(max(entry.due, now + self.debounce), entry.first + 10 * self.debounce)
            self._cond.notify_all()

    def status(self, project: str) -> str:
        """Return "running", "queued" or "idle" for this process's view of `project` (only its own queue: what
        every worker does is Store.training_state)."""
        with self._cond:
            if self._running == project:
                return "running"
            return "queued" if project in self._pending else "idle"

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until nothing is queued or running in this process; returns False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    # -- worker -----------------------------------------------------------------------------------------------
    def _next(self) -> tuple[str, _Pending] | None:
        while not self._stop:
            self._check_stalled()  # outside the condition: it reads SQLite
            item = self._take_due()
            if item is not None:
                return item
        return None

    def _take_due(self) -> tuple[str, _Pending] | None:
        """Return the next project due to train, waiting at most until the next stall check; None if none."""
        with self._cond:
            if not self._stop:
                now = time.monotonic()
                ready = [(e.due, p) for p, e in self._pending.items() if e.due <= now]
                if ready:
                    _, project = min(ready)
                    self._running = project
                    return project, self._pending.pop(project)
                wait = min((e.due for e in self._pending.values()), default=now + 1.0) - now
                self._cond.wait(max(0.01, min(wait, 1.0, self._next_stall_check - now)))
        return None

    def _loop(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            project, entry = item
            try:
                self._run(project, entry)
            except Exception as exc:  # the worker must survive anything a run does
                if self.store.note_disk_full(exc, f"training project {project}"):
                    # Its requests stay owed (not marked trained): it trains once space is back, no new event.
                    log.error("project %s: MODEL_DIR is full (%s); the previous model keeps serving; training "
                              "again in %gs", project, exc, DISK_FULL_RETRY_SECONDS)
                    self._again(project, entry, DISK_FULL_RETRY_SECONDS)
                else:
                    log.exception("training worker: unexpected error for project %s", project)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def _run(self, project: str, entry: _Pending) -> None:
        lock = FileLock(str(self.locks_dir / f"train-{_safe_name(project)}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            # Another worker process trains this project right now: try again shortly, keeping our reasons.
            self._again(project, entry, BUSY_RETRY_SECONDS)
            return
        try:
            self._record_unrecorded()
            self._clear_dead_runs(project)
            requested, trained = self.store.pending_seq(project)
            if requested <= trained:
                if entry.reasons != {RESUME}:
                    log.info("project %s: retrain already covered by another worker", project)
                return
            if entry.reasons == {RESUME} and self._keeps_dying(project):
                log.error("project %s: not resuming training: the last %d runs died with their process; send "
                          "START_TRAINING (or annotate) to try again", project, MAX_DEAD_RUNS_IN_A_ROW)
                self.store.mark_trained(project, requested)
                return
            reason = ",".join(sorted(entry.reasons))
            run_id = self.store.start_run(project, reason, covers_seq=requested)
            started = time.monotonic()
            try:
                with _Heartbeat(self.store, run_id, self.heartbeat_seconds):
                    version, n_annotations, note = self.train_fn(project, entry.full_sync, entry.reasons)
            except Exception as exc:
                error = self.describe_error(exc)
                log.error("project %s: training failed (%s); the previous model keeps serving", project, error)
                self._finish(run_id, "failed", error=error)
                if self.store.note_disk_full(exc, f"training project {project}"):
                    raise  # _loop queues it again: the requests it covers are not consumed
            else:
                status = "succeeded" if version else "skipped"
                self._finish(run_id, status, model_version=version, n_annotations=n_annotations, note=note)
                log.info("project %s: training %s in %.2fs -> %s (%s annotations)%s", project, status,
                         time.monotonic() - started, version, n_annotations, f"; {note}" if note else "")
            # Failed or not, this run consumed every request up to `requested`; newer ones run again.
            self.store.mark_trained(project, requested)
        finally:
            lock.release()

    def _again(self, project: str, entry: _Pending, delay: float) -> None:
        """Queue `project` again in `delay` seconds, keeping `entry`'s reasons."""
        with self._cond:
            again = self._pending.setdefault(project, _Pending(0, set(), False, time.monotonic()))
            again.due = time.monotonic() + delay
            again.reasons |= entry.reasons
            again.full_sync = again.full_sync or entry.full_sync
            self._cond.notify_all()

    def _finish(self, run_id: int, status: str, **details) -> None:
        """Record how run `run_id` ended; when SQLite refuses (a full disk), keep it for `_record_unrecorded`
        and re-raise."""
        try:
            self.store.finish_run(run_id, status, **details)
        except Exception:
            self._unrecorded[run_id] = dict(status=status, **details)
            raise

    def _record_unrecorded(self) -> None:
        """Record the run ends a full disk kept out of SQLite (else they would look like runs still going)."""
        for run_id, finish in list(self._unrecorded.items()):
            self.store.finish_run(run_id, **finish)
            del self._unrecorded[run_id]

    def _clear_dead_runs(self, project: str) -> None:
        """With the project's lock held: fail the runs of dead processes and delete their unpublished heads."""
        for run in self.store.fail_abandoned_runs(project, DIED):
            log.error("project %s: training run %d (pid %s, %s) died with its process; marked failed, the "
                      "previous model keeps serving", project, run["id"], run["pid"], run["reason"])
        for folder in self.store.remove_unpublished_heads(project):
            log.info("project %s: deleted %s, left unpublished by a run that died", project, folder)

    def _keeps_dying(self, project: str) -> bool:
        recent = self.store.runs(project, limit=MAX_DEAD_RUNS_IN_A_ROW)
        return len(recent) == MAX_DEAD_RUNS_IN_A_ROW and all((r["error"] or "").startswith(DIED) for r in recent)


class _Heartbeat:
    """`with _Heartbeat(store, run_id, every):` refreshes the run's heartbeat from a side thread while the block
    runs (the fit holds the training thread), so other workers can tell a long run from a dead one."""

    def __init__(self, store: Store, run_id: int, every: float):
        self.store, self.run_id, self.every = store, run_id, every
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"labelloop-heartbeat-{run_id}", daemon=True)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._done.wait(self.every):
            try:
                self.store.heartbeat(self.run_id)
            except Exception as exc:  # a full or locked database: the next beat tries again; the pid still counts
                log.warning("training run %d: heartbeat not recorded (%s: %s)", self.run_id, type(exc).__name__, exc)
