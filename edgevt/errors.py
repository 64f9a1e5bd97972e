"""The one exception family the CLI prints without a traceback.

Raise an ``EdgevtError`` (or a subclass) for anything the user can fix: a wrong path, a
checkpoint for another model, a data folder without images. The message says what is wrong
and how to fix it; the CLI prints it on one line and exits non-zero.
"""

import errno


class EdgevtError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class CheckpointError(EdgevtError):
    """A checkpoint that cannot be read or does not fit the requested model."""


class DataError(EdgevtError):
    """A data folder or label file that cannot be used."""


class BackendMissingError(EdgevtError):
    """An optional backend (extra) that is not installed."""


class RuntimeRefusal(EdgevtError):
    """A runtime's own exception while loading or running a file (its cause)."""


class FusionError(EdgevtError):
    """A fusion rewrite that changed the model's numerics or left BatchNorm behind."""


# errno -> how to fix it, for file-system failures a user can cause (a full disk, a read-only
# folder) but that reach us as OSError from torch, onnx or the standard library.
_OS_FIXES = {
    errno.ENOSPC: "the disk is full; free space or write to another folder (-o)",
    errno.EDQUOT: "the disk quota is used up; free space or write to another folder (-o)",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f); raise the limit",
    errno.EROFS: "the folder is on a read-only file system; write to another folder (-o)",
    errno.EACCES: "permission denied; write to a folder you own (-o) or fix its permissions",
    errno.EPERM: "permission denied; write to a folder you own (-o) or fix its permissions",
    errno.EEXIST: "a file of that name is in the way; remove it or choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "it is a folder where a file was expected; choose a file path",
    errno.ENOENT: "it does not exist; check the path",
    errno.ENAMETOOLONG: "the path is too long; choose a shorter one",
}
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
# torch.save's zip writer reports a failed write as a RuntimeError without an errno
_TORCH_WRITE_FAILURES = ("PytorchStreamWriter", "inline_container", "file write failed")


def describe_os_error(exc: OSError, path: object = None) -> str:
    """One line for a file-system failure: what failed, on which path, and how to fix it."""
    where = path if path is not None else exc.filename if exc.filename is not None else "a file"
    what = exc.strerror or type(exc).__name__
    fix = _OS_FIXES.get(exc.errno, "check the path and the disk")
    verb = "write" if exc.errno in _WRITE_ERRORS else "use"
    return f"cannot {verb} {where}: {what} — {fix}."


def as_edgevt_error(exc: BaseException, path: object = None) -> EdgevtError | None:
    """The user-fixable error an exception from a library stands for, or None (a bug).
    ``path``: the file being written, when the caller knows it better than the exception."""
    if isinstance(exc, EdgevtError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _OS_FIXES:
        return EdgevtError(describe_os_error(exc, path))
    if isinstance(exc, MemoryError):
        return EdgevtError("out of memory; use a smaller --batch-size / --calib-size or --limit.")
    if isinstance(exc, RuntimeError) and any(m in str(exc) for m in _TORCH_WRITE_FAILURES):
        return EdgevtError(
            f"writing {path or 'a PyTorch file'} failed: the disk is full or a file size limit "
            "(ulimit -f) was reached — free space or write to another folder (-o)."
        )
    return None


def path_problem(path: object, what: str, *, folder: bool = False) -> str:
    """Why ``what path`` cannot be used: it does not exist, or it is a folder where a file
    belongs (``folder=False``) or a file where a folder belongs. Callers add the fix."""
    from pathlib import Path

    p = Path(str(path))
    if not p.exists():
        return f"{what} {p} does not exist"
    if folder:
        return f"{what} {p} is a file, not a folder"
    return f"{what} {p} is a folder, not a file"
