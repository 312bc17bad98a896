"""The one exception type that reaches the user as a message instead of a traceback."""

from __future__ import annotations

import re

# How torch's DataLoader re-raises an exception of a worker process in the main one: the class
# is rebuilt from one string, "Caught <Class> in DataLoader worker process <n>.\nOriginal
# Traceback ...", which ends with the original "<module>.<Class>: <message>".
_WORKER_WRAPPED = re.compile(r"\ACaught (?P<cls>\w+) in (?P<where>DataLoader worker process \d+)\.\n"
                             r"Original Traceback \(most recent call last\):\n")


class PepError(Exception):
    """A problem the user can fix (bad input, a missing file, a wrong parameter).

    The command line prints the message, without a traceback, and exits with `exit_code`.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(_unwrap_worker_traceback(message))
        if exit_code is not None:
            self.exit_code = exit_code


def _unwrap_worker_traceback(message: str) -> str:
    """The original message of a PepError raised in a data loader worker, without the worker's
    traceback that torch pastes in front of it (the user needs the file it names, not the
    stack); any other message unchanged."""
    if not isinstance(message, str):
        return message
    wrapped = _WORKER_WRAPPED.match(message)
    if not wrapped:
        return message
    marker = f"{wrapped['cls']}: "
    # the traceback's last entry is "pep.errors.PepError: <message>", which may span lines
    start = max((m.end() for m in re.finditer(rf"^[\w.]*{re.escape(marker)}", message, re.M)), default=-1)
    if start < 0:
        return message
    return f"{message[start:].rstrip()} (in {wrapped['where']})"
