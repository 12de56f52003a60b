"""Errors whose message is meant for the user: the CLI prints it on one line and exits 2."""


class ScratchlmError(Exception):
    """Base class: bad input or settings, reported without a traceback."""


class SettingsError(ScratchlmError, ValueError):
    """A bad recipe or override: names the key, the value given and what is allowed."""


class StageError(ScratchlmError, RuntimeError):
    """A stage cannot do its work with the input it was given (missing file, nothing left...)."""
