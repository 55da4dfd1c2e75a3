"""Errors a user can fix. The CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations

from pathlib import Path


class GenrecError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class DataFormatError(GenrecError):
    """Malformed input data, located by file, line (or row) and column."""

    def __init__(self, path: str | Path, message: str, line: int | None = None,
                 column: str | None = None, unit: str = "line"):
        self.path, self.line, self.column = str(path), line, column
        where = [self.path]
        if line is not None:
            where.append(f"{unit} {line}")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{', '.join(where)}: {message}")
