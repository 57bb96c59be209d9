"""Exceptions whose message is shown to the user as is, without a traceback."""


class UserError(Exception):
    """Something the user can fix: the message says what is wrong and how to fix it."""

    exit_code = 2


class RunInterrupted(UserError):
    """Ctrl-C or SIGTERM (a preemption) stopped training after a checkpoint was saved."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number  # the shell's convention for "killed by this signal"
