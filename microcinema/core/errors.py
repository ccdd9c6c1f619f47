"""User-facing errors.

Everything a user can get wrong (a bad flag, an unreadable file, a size the model cannot do) raises
:class:`MicroCinemaError` with a one-line message that names the problem and what is allowed. The CLI
prints that line and exits with status 2; it never shows a traceback for these.
"""

from __future__ import annotations


class MicroCinemaError(ValueError):
    """A problem with the user's input or environment, explained in one line."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`MicroCinemaError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise MicroCinemaError(message)


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when the message is empty): what a one-line error
    quotes from a library's exception."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
