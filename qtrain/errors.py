"""The one exception type that the CLI turns into a one-line message."""


class QTrainError(Exception):
    """A user-facing error: its message says what went wrong and how to fix it."""
