"""The one base of every error a user can cause and fix (bad input, missing files, conflicts).

The entry points (``experiments.train``, ``experiments.sweep``, the analysis CLIs) turn a
:class:`LoraReproError` into one line on stderr and a non-zero exit code; any other exception is
a bug and keeps its traceback. Each subclass also derives from the built-in exception that fits
it (``ValueError`` for a bad value, ``OSError`` for a write that failed), so callers that catch
those keep working.
"""

from __future__ import annotations


class LoraReproError(Exception):
    """An error with a one-line message that says what was wrong and what to do."""


class ResultsWriteError(LoraReproError, OSError):
    """A results file could not be written (permission, disk full, a read-only folder)."""


class DamagedFile(LoraReproError, ValueError):
    """A file in a results tree is unreadable, torn, not UTF-8 or of the wrong shape.

    Attributes:
        path: the file.
        why: what is wrong with it, in a few words.
    """

    def __init__(self, path, why: str):
        self.path, self.why = path, why
        super().__init__(f"{path}: {why}")
