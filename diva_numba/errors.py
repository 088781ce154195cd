"""Exceptions that carry a message meant for the user.

The CLI turns every :class:`DivaError` into one line on stderr and a non-zero
exit status; anything else is a bug and keeps its traceback.
"""

import errno


class DivaError(Exception):
    """An error caused by the user's input or environment, with a one-line message."""

    exit_code = 1


class InputError(DivaError):
    """A file given by the user is missing, unreadable or of the wrong kind."""

    exit_code = 2


class ModelError(DivaError):
    """The VGG-19 model could not be fetched, converted, verified or loaded."""

    exit_code = 3


class DeviceError(DivaError):
    """The requested compute device is not usable (no GPU, out of GPU memory, ...)."""

    exit_code = 4


class OutputError(DivaError):
    """An output cannot be written (exists, unwritable directory, disk full)."""

    exit_code = 5


class Interrupted(DivaError):
    """The user stopped the run (Ctrl-C, SIGTERM); what was finished is kept."""

    exit_code = 130


def os_reason(exc: OSError) -> str:
    """The short reason of a failed file operation, as a user line ends with it."""
    if exc.errno == errno.ENOSPC:
        return "disk full"
    return exc.strerror or str(exc)
