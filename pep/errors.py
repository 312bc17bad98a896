"""The one exception type that reaches the user as a message instead of a traceback."""


class PepError(Exception):
    """A problem the user can fix (bad input, a missing file, a wrong parameter).

    The command line prints the message, without a traceback, and exits with `exit_code`.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
