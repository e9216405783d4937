"""Plug-in operators: a user's module that calls ``operators.register_op`` reaches the whole pipeline.

``--import MODULE`` (repeatable; on ``search``, ``calibrate``, ``flops``, ``space`` and ``export``) imports
``MODULE`` from the current directory (or anywhere on ``sys.path``) before anything else runs, so its
operators can be named in a space file, counted, trained and exported. Installed packages can instead
offer an ``opmix.operators`` entry point (a module to import), loaded the same way by every command.

A search keeps the modules in its ``config.yaml`` (``imports``): the Ray workers import them before they
build a candidate (``nas._trial.trainable``), with the modules' folders put on their ``PYTHONPATH``; a
``--resume`` and ``nas.export`` of the run import them again. The export copies the plug-in operator's own
source into ``model.py`` (``nas._codegen``), so the standalone file still needs only torch.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib import metadata
from pathlib import Path

from .errors import OpmixError

__all__ = ["import_modules", "module_paths", "ENTRY_POINT_GROUP", "add_import_flag"]

ENTRY_POINT_GROUP = "opmix.operators"


def add_import_flag(parser) -> None:
    """The ``--import MODULE`` flag, the same on every command that builds networks."""
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE (from the current directory, or installed) first, so the operators it "
                        "registers with operators.register_op can be used; repeatable")


def import_modules(names: list[str] | tuple[str, ...] = (), entry_points: bool = True) -> list[str]:
    """Import each module of ``names`` (the current directory first on the path), then the ``opmix.operators``
    entry points; an ``OpmixError`` names a module that cannot be imported. Returns the names imported."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    done = []
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                raise OpmixError(f"--import {name}: no such module in {os.getcwd()} or on the Python path; give a "
                                 f"module name (my_ops for my_ops.py in the current directory)") from None
            raise  # the plug-in itself imports something missing: its traceback says what
        done.append(name)
    if entry_points:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            importlib.import_module(ep.value.split(":")[0])
    return done


def module_paths(names: list[str] | tuple[str, ...]) -> list[str]:
    """The folders the imported modules ``names`` were found in (for the Ray workers' ``PYTHONPATH``)."""
    paths = []
    for name in names:
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if file is None:
            continue
        root = Path(file).resolve().parent
        for _ in range(name.count(".") + (Path(file).name == "__init__.py")):
            root = root.parent  # a package's module: the folder that holds the top package
        if str(root) not in paths:
            paths.append(str(root))
    return paths
