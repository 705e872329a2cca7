"""Errors that medclf reports to the user as a clear message, never as a traceback.

Every error raised for bad user input (a bad file, a bad config key, a folder that is not
a dataset) is a :class:`MedclfError`; the command line prints its message and exits 2.
"""
from __future__ import annotations


class MedclfError(Exception):
    """Base class of all user-facing errors (bad data, bad configuration, bad run dir)."""


class ConfigError(MedclfError):
    """A configuration key is unknown or its value is not allowed."""


class DataError(MedclfError):
    """The dataset cannot be used as given (layout, classes, unreadable files)."""


class UnreadableImage(DataError):
    """One file cannot be decoded; the message says why (the caller adds the path)."""


class BadFilesError(DataError):
    """One or more image files cannot be read.

    Attributes:
        bad_files: list of ``(path, reason)`` pairs, one per unreadable file.
    """

    def __init__(self, bad_files: list[tuple[str, str]]):
        self.bad_files = list(bad_files)
        lines = [f"{len(self.bad_files)} file(s) cannot be read:"]
        lines += [f"  {path}: {reason}" for path, reason in self.bad_files]
        lines.append("Fix or remove them, or set data.on_bad_file=skip to train without them "
                     "(skipped files are recorded in the run directory).")
        super().__init__("\n".join(lines))


class TrainingDivergedError(MedclfError):
    """The training loss became NaN or infinite."""


class RunDirError(MedclfError):
    """A run directory is missing, incomplete or cannot be written."""
