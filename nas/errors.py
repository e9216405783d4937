"""The project's own errors: bad input that the user can fix, as opposed to a bug.

Every ``python -m nas.*`` command turns an ``OpmixError`` into one line on stderr and exit code 2, and lets
anything else (a bug) show its traceback. Each message says what was given, what is allowed and how to fix
it. ``OpmixError`` is a ``ValueError``, so code that validates input with ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["OpmixError", "UnknownNameError"]


class OpmixError(ValueError):
    """Bad input (a flag, a file, a space, an architecture, a dataset): the message says how to fix it."""


class UnknownNameError(OpmixError, KeyError):
    """A name that is not registered (an operator, a reference, a score); also a ``KeyError``."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
