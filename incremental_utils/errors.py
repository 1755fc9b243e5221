"""One-line errors and the exit statuses every script shares (scripts/sweep.py and scripts/slurm.py read the table to
explain a failed run)."""
import sys
from contextlib import contextmanager

EXIT_CODES = {
    0: "finished",
    1: "crashed (an exception from the environment or a library; traceback in the log; resumable)",
    2: "bad input (a bad flag, environment, checkpoint or log directory)",
    3: "stopped on a non-finite loss, gradient, reward or observation (the last good state is saved)",
    4: "robot error (lost link, protective stop, stalled camera or another fault; the robot was stopped; resumable)",
    130: "interrupted (SIGINT, Ctrl-C; checkpoint saved)",
    143: "terminated (SIGTERM; checkpoint saved)",
}


class RunError(Exception):
    """A problem to report in one line (bad input, missing checkpoint, unusable environment): exit status 2."""


class NonFiniteStop(Exception):
    """A non-finite value with --on-nonfinite stop: the run ends with exit status 3."""


@contextmanager
def one_line_errors(algo):
    """For a script's __main__: bad input is one line and exit 2, a robot fault before training one line and exit 4,
    Ctrl-C before training (while connecting to a robot, say) one line and exit 130."""
    import robots  # a fault of the robot drivers is theirs to name

    try:
        yield
    except RunError as e:
        print(f"{algo}.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except robots.RobotError as e:
        print(f"{algo}.py: robot error: {e}", file=sys.stderr)
        sys.exit(4)
    except KeyboardInterrupt:
        print(f"{algo}.py: interrupted before training started; nothing to resume", file=sys.stderr)
        sys.exit(130)
