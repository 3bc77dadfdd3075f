"""User-facing errors: each carries a one-line message that names the problem.

The CLI prints ``fond: error: <message>`` for these and exits with status 2; anything else is a bug.
"""


class FondError(Exception):
    """Base class of every error a user can cause (bad input, bad config, bad file)."""


class DataError(FondError, ValueError):
    """Input data is missing, malformed, non-finite or of the wrong shape."""


class ConfigError(FondError, ValueError):
    """A configuration value or key is invalid."""


class CheckpointError(FondError):
    """A checkpoint directory is missing, truncated, tampered with or belongs to another model."""


class StorageError(FondError):
    """A file could not be written (full disk, read-only folder, permissions...): the message names the file
    and the cause; the file's previous content is left as it was."""


class RunInUseError(FondError):
    """Another process holds the lock of a run folder (it is training or writing into it)."""


def read_bytes(path, error: type[FondError]) -> bytes:
    """The contents of ``path``; a missing or unreadable file raises ``error`` with a one-line message."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from None
