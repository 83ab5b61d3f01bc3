"""The one exception type for bad input.

Anything the user can fix (a missing column, an unknown label, a corrupt image, a typo in a YAML key) is raised
as :class:`UserError` with one line that names the file, row or key and says what to do. The CLI prints it and
exits with code 2, without a traceback (``--debug`` shows one).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message is shown to the user as one line, exit code 2."""


def where(path: object, row: int | None = None, column: str | None = None) -> str:
    """Format a location such as ``meta.csv row 12 column 'dx'`` for error messages.

    ``row`` is the 1-based line number of the CSV file (the header is line 1), as a text editor shows it.
    """
    text = str(path)
    if row is not None:
        text += f" line {row}"
    if column is not None:
        text += f" column {column!r}"
    return text
