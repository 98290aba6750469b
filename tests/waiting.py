"""Bounded polling for tests that wait on background work (never an unbounded sleep)."""
import time


def eventually(condition, timeout: float = 120.0, every: float = 0.05) -> bool:
    """Return True as soon as condition() is truthy, False once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False
