"""`labelloop serve` with a training fault that the e2e tests arm at run time by writing a file.

The backend itself has no fault hooks, so the crash tests start the real CLI through this wrapper, which
wraps two methods of the head every training run goes through. The fault file ($LABELLOOP_E2E_FAULT_FILE)
holds the mode, read at every call:
- "raise": fitting the head raises, i.e. a training run fails inside the backend's process;
- "exit": the process dies (os._exit, no cleanup) right after the new head is written to disk and before the
  version is published, i.e. a crash in the middle of a training run;
- "hang": fitting the head waits until the file says something else (at most HANG_SECONDS), i.e. a long training
  run that a test can kill -9 from outside (tests/backend/test_faults.py);
- "enospc": saving the head raises OSError(ENOSPC), the error a full MODEL_DIR gives, for machines where a small
  tmpfs cannot be mounted.
Anything else (or no file) leaves training alone.
"""
from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path

FAULT_FILE_ENV = "LABELLOOP_E2E_FAULT_FILE"
CRASH_EXIT_CODE = 86
HANG_SECONDS = 120.0  # a hung fit gives up waiting after this long (the tests kill it well before)


def armed_mode() -> str:
    path = os.environ.get(FAULT_FILE_ENV)
    try:
        return Path(path).read_text().strip() if path else ""
    except FileNotFoundError:
        return ""


def install() -> None:
    """Wrap ClassifierHead.fit and ClassifierHead.save with the armed fault."""
    from labelers.head import ClassifierHead

    fit, save = ClassifierHead.fit, ClassifierHead.save

    def faulty_fit(self, *args, **kwargs):
        if armed_mode() == "raise":
            raise RuntimeError("injected training failure (e2e fault file)")
        deadline = time.monotonic() + HANG_SECONDS
        while armed_mode() == "hang" and time.monotonic() < deadline:
            time.sleep(0.05)
        return fit(self, *args, **kwargs)

    def faulty_save(self, *args, **kwargs):
        if armed_mode() == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[0]) if args else None)
        written = save(self, *args, **kwargs)
        if armed_mode() == "exit":
            sys.stderr.write("e2e fault: process exits after writing the head, before publishing it\n")
            sys.stderr.flush()
            os._exit(CRASH_EXIT_CODE)
        return written

    ClassifierHead.fit, ClassifierHead.save = faulty_fit, faulty_save


def create_faulty_app():
    """The app factory of each worker when --workers > 1: arm the fault, then build the backend's app."""
    install()
    from backend.app import create_app

    return create_app()


def arm_spawned_workers() -> None:
    """Make uvicorn's spawned workers build their app through `create_faulty_app`.

    A spawned worker never runs this module as "__main__", so `install()` there would patch the supervisor only
    and no worker would see the fault. Nor may it patch at import: the heavy imports would then run before the
    worker answers uvicorn's health-check pings, and on a loaded machine the supervisor kills it and starts
    another, forever. The factory runs inside the worker's server start-up, after its ping thread is up."""
    import uvicorn

    run = uvicorn.run

    def run_with_faults(app, *args, **kwargs):
        if app == "backend.app:create_app":
            app = f"{__spec__.name}:create_faulty_app"
        return run(app, *args, **kwargs)

    uvicorn.run = run_with_faults


if __name__ == "__main__":
    install()  # one worker: the CLI builds the app in this process
    arm_spawned_workers()
    from labelloop.cli import main

    sys.argv[0] = "labelloop"
    main()
