"""The project's own errors: bad input that the user can fix, as opposed to a bug.

Every ``python -m nas.*`` command turns an ``OpmixError`` into one line on stderr and exit code 2, and lets
anything else (a bug) show its traceback. Each message says what was given, what is allowed and how to fix
it. ``OpmixError`` is a ``ValueError``, so code that validates input with ``except ValueError`` keeps working.

Both classes are the operator catalog's (``operators._errors``), re-exported here: the catalog stands on its
own and cannot import the framework, so the framework builds on the catalog's base class, and one
``except OpmixError`` catches the errors of both.
"""

from __future__ import annotations

from operators._errors import OpmixError, UnknownNameError

__all__ = ["OpmixError", "UnknownNameError"]
