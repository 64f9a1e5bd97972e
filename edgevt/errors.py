"""The one exception family the CLI prints without a traceback.

Raise an ``EdgevtError`` (or a subclass) for anything the user can fix: a wrong path, a
checkpoint for another model, a data folder without images. The message says what is wrong
and how to fix it; the CLI prints it on one line and exits non-zero.
"""


class EdgevtError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class CheckpointError(EdgevtError):
    """A checkpoint that cannot be read or does not fit the requested model."""


class DataError(EdgevtError):
    """A data folder or label file that cannot be used."""


class BackendMissingError(EdgevtError):
    """An optional backend (extra) that is not installed."""


class FusionError(EdgevtError):
    """A fusion rewrite that changed the model's numerics or left BatchNorm behind."""
