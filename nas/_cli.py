"""What every opmix command line shares: one-line errors and exit code 2 on bad input, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, NoReturn

from .errors import OpmixError


_console = False  # True under the ``opmix`` console script (``nas.cli``): commands are named 'opmix X'


def set_console_name() -> None:
    """Name the commands as the ``opmix`` console script does ('opmix search', not 'python -m nas.search')."""
    global _console
    _console = True


def prog_name(prog: str) -> str:
    """'python -m nas.search' -> 'opmix search' under the console script; unchanged otherwise."""
    if _console and prog.startswith("python -m nas."):
        return "opmix " + prog.removeprefix("python -m nas.").removeprefix("_").removesuffix("_cli")
    return prog


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: 'prog: error: ... (see --help)'."""

    def __init__(self, *args, prog: str | None = None, **kwargs):
        super().__init__(*args, prog=prog_name(prog) if prog else None, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run(prog: str, main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> NoReturn:
    """Run ``main``; the project's own errors (``OpmixError``: bad input) become one line on stderr and exit
    code 2. Anything else is a bug and shows its traceback."""
    prog = prog_name(prog)
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:  # the reader went away (``| head``): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    except OpmixError as exc:
        fail(prog, " ".join(str(exc).split()))
    raise SystemExit(code or 0)


def writable_dir(path: Path, flag: str) -> None:
    """Create ``path`` if needed and check that files can be written in it, before any work starts; an
    ``OpmixError`` naming ``flag`` otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".opmix-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OpmixError(f"{flag} {path}: cannot be written ({exc.strerror}); pick a folder you can write to") \
            from None


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """'3x224x224' -> (3, 224, 224)."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise OpmixError(f"input shape {text!r} is not understood; write CxHxW with positive integers, "
                         f"e.g. 3x224x224")
    c, h, w = (int(p) for p in parts)
    return c, h, w
