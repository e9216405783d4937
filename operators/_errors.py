"""The catalog's errors, and the project's base class: bad input that the user can fix, as opposed to a bug.

The catalog is the ground floor, so the one base class of the project's errors lives here, and ``nas.errors``
re-exports it: a command line turns any ``OpmixError``, the catalog's or the framework's, into one line and
exit code 2, and lets anything else (a bug) show its traceback. ``OpmixError`` is a ``ValueError``, so code that
validates input with ``except ValueError`` keeps working; an unknown name is also a ``KeyError``.
"""

from __future__ import annotations

class OpmixError(ValueError):
    """Bad input (an operator's arguments, a registration, a flag, a file): the message says how to fix it."""


class UnknownNameError(OpmixError, KeyError):
    """A name that is not registered (an operator, a stem, a reference, a score); also a ``KeyError``."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
