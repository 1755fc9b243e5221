"""Shared by the tests/test_robots_*.py files."""
import signal
import threading
import time

import pytest


def wait_for(condition, timeout=1.0):
    """Polls `condition()` until it is true (returns True) or `timeout` seconds pass (returns False)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def step_through_ctrl_c(env, action):
    """Calls env.step(action) with a SIGINT raised 10 ms into it (a Ctrl-C mid-command), checks the step lets the
    KeyboardInterrupt through, and returns time.monotonic() just after it."""
    timer = threading.Timer(0.01, signal.raise_signal, (signal.SIGINT,))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        env.step(action)
    interrupted = time.monotonic()
    timer.join()
    return interrupted
