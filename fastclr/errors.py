"""The errors fastclr raises for a user's mistake: the CLI prints their message as one line."""


class FastclrError(Exception):
    """Base class: anything the user can fix (a bad option, a missing file)."""


class ConfigError(FastclrError):
    """An option or config file value that is unknown, mistyped or out of range."""


class DataError(FastclrError):
    """A data set that is missing, empty or unreadable."""


class CheckpointError(FastclrError):
    """A checkpoint that cannot be written, read, or resumed with this config."""


class RunFolderError(FastclrError):
    """A run folder in use by another process, or made with other training options."""


class StudyError(FastclrError):
    """A study whose runs did not all finish (each failed run's own error is shown first)."""


class ExportError(FastclrError):
    """An encoder that a format cannot hold, or an export that cannot be written."""


def error_text(e: BaseException) -> str:
    """'ExceptionType: first line of its message': why a file could not be read, in one line
    (for an error message, a log line or run.json)."""
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
