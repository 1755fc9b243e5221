"""Robot tasks of the AVG paper as gymnasium environments (placeholder; see issue 5)."""
ENV_IDS = ("UR5Reacher-v0", "Create2Mover-v0")


class RobotError(RuntimeError):
    """A robot fault reported to the user in one line (lost link, protective stop, safety limit)."""
