"""What every opmix command line shares: one-line errors and exit code 2 on bad input, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: 'prog: error: ... (see --help)'."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run(prog: str, main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> NoReturn:
    """Run ``main``; bad input (ValueError, KeyError, OSError) becomes one line on stderr and exit code 2."""
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:  # the reader went away (``| head``): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    except (ValueError, KeyError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        fail(prog, " ".join(str(message).split()))
    raise SystemExit(code or 0)


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """'3x224x224' -> (3, 224, 224)."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"input shape {text!r} is not understood; write CxHxW with positive integers, "
                         f"e.g. 3x224x224")
    c, h, w = (int(p) for p in parts)
    return c, h, w
