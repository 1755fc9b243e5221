"""Shared by the tests/test_robots_*.py files."""
import time


def wait_for(condition, timeout=1.0):
    """Polls `condition()` until it is true (returns True) or `timeout` seconds pass (returns False)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True
