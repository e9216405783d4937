"""``opmix``: one console script for every command, beside the ``python -m nas.*`` forms, with the same flags.

    opmix search --budget 4.5GFLOPs      = python -m nas.search --budget 4.5GFLOPs
    opmix pareto runs/NAME               = python -m nas.pareto runs/NAME
    opmix export runs/NAME               = python -m nas.export runs/NAME
    opmix flops arch.yaml                = python -m nas.flops arch.yaml
    opmix space hybrid                   = python -m nas.space hybrid
    opmix calibrate --budget 4.5G ...    = python -m nas.calibrate --budget 4.5G ...
    opmix latency arch.yaml              = python -m nas.latency arch.yaml
"""

from __future__ import annotations

import importlib
import sys

from . import _cli

__all__ = ["main", "COMMANDS"]

# subcommand -> (module whose main() runs it, what it does)
COMMANDS = {
    "search": ("nas.search", "search a space for the most accurate networks for their FLOPs under a budget"),
    "pareto": ("nas.pareto", "print and plot the Pareto front of one or more runs"),
    "export": ("nas.export", "export a run's pick as a standalone, re-parameterizable network"),
    "flops": ("nas.flops", "count the FLOPs and parameters of an architecture file or a reference"),
    "space": ("nas.space", "summarize a search space"),
    "calibrate": ("nas.calibrate", "measure how well proxy settings rank architectures"),
    "latency": ("nas.latency", "measure (and predict) an architecture's latency on a target"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: opmix COMMAND [flags]   (opmix COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        _cli.fail("opmix", f"unknown command {command!r}; use one of {', '.join(COMMANDS)} (see opmix --help)")
    _cli.set_console_name()
    importlib.import_module(COMMANDS[command][0]).main(rest)


if __name__ == "__main__":
    main()
