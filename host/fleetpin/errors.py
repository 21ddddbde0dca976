"""The few error types the CLI catches once, in `main`, and turns into exit codes."""


class FleetpinError(Exception):
    """A refused operation or failed check: printed without a traceback, exit code 1.

    `hint` says what to do next; it is printed on its own line after the message.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(FleetpinError):
    """Bad input from the user (unreadable file, malformed argument): exit code 2."""

    exit_code = 2
