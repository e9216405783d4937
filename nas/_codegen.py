"""Standalone source for one architecture: the definitions it needs, lifted from the catalog's own files.

``standalone_source(arch, header)`` returns the text of a module that imports only torch and the standard
library. It holds the top-level definitions (classes, functions, constants) of ``operators/``, of the
plug-in modules that define the architecture's other operators (``nas.plugins``), and of ``nas/network.py``
that the architecture's ``build()`` reaches, found by following names through the syntax trees, in the
order of the source files, with their docstrings and comments as written. So the
exported code is the code that was searched and trained, not a second copy that could drift from it, and
a state_dict moves between ``nas.network.build(arch)`` and the exported ``build()``.
"""

from __future__ import annotations

import ast
import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import operators
from operators._registry import get_spec

from .arch import Arch
from .errors import OpmixError
from .network import downsampler, stem_kind

__all__ = ["standalone_source", "needed_definitions"]

_ROOT = Path(operators.__file__).parent
# Shared layers first, then the families other families build on, then the rest, then the network.
_FIRST = ["_layers.py", "_attention.py", "resnet.py", "swin.py"]
_SKIP_FILES = {"__init__.py", "_registry.py"}
_ALLOWED_IMPORTS = {"torch", "math", "typing", "copy", "itertools", "functools", "collections", "dataclasses"}


@dataclass
class _Definition:
    name: str
    file: str
    text: str
    uses: set[str]


def _source_files(plugins: tuple[Path, ...] = ()) -> list[Path]:
    rest = sorted(p.name for p in _ROOT.glob("*.py") if p.name not in _SKIP_FILES and p.name not in _FIRST)
    return ([_ROOT / name for name in _FIRST + rest] + list(plugins)
            + [Path(inspect.getfile(sys.modules["nas.network"]))])


def plugin_files(arch: Arch) -> tuple[Path, ...]:
    """The files of the plug-in modules (``nas.plugins``) that define the arch's operators outside the catalog."""
    files = []
    for stage in arch.stages:
        path = Path(inspect.getfile(get_spec(stage.op).factory)).resolve()
        if path.parent != _ROOT.resolve() and path not in files:
            files.append(path)
    return tuple(files)


def _names_in(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _definitions(plugins: tuple[Path, ...] = ()) -> tuple[dict[str, _Definition], dict[str, str], dict[str, str]]:
    """Every top-level class, function and constant of the source files, the imports that bind names, and
    each file's banner (the first paragraph of its docstring: operator files name their paper there)."""
    defs: dict[str, _Definition] = {}
    imports: dict[str, str] = {}
    banners: dict[str, str] = {}
    for path in _source_files(plugins):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        rel = f"{path.parent.name}/{path.name}"
        tree = ast.parse(text)
        doc = ast.get_docstring(tree) or rel
        banners[rel] = "\n# ".join(doc.split("\n\n")[0].splitlines())
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                _note_import(node, imports)
                continue
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
            else:
                continue  # docstrings, register_op(...) calls
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            while start > 1 and lines[start - 2].startswith("#"):  # a comment block right above belongs to it
                start -= 1
            body = "\n".join(lines[start - 1:node.end_lineno])
            for name in names:
                if name in defs and defs[name].file != rel:
                    raise OpmixError(f"{name} is defined in both {defs[name].file} and {rel}; the standalone "
                                       f"export needs top-level names to be unique: rename one")
                defs[name] = _Definition(name, rel, body, _names_in(node) - {name})
    return defs, imports, banners


def _note_import(node: ast.Import | ast.ImportFrom, imports: dict[str, str]) -> None:
    if isinstance(node, ast.ImportFrom):
        if node.level or (node.module or "").split(".")[0] not in _ALLOWED_IMPORTS or node.module == "__future__":
            return
        for alias in node.names:
            line = f"from {node.module} import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
            imports[alias.asname or alias.name] = line
    else:
        for alias in node.names:
            if alias.name.split(".")[0] in _ALLOWED_IMPORTS:
                bound = alias.asname or alias.name.split(".")[0]
                imports[bound] = f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")


def needed_definitions(roots: set[str], plugins: tuple[Path, ...] = ()) -> tuple[list[_Definition], list[str],
                                                                                dict[str, str]]:
    """The definitions ``roots`` reach (in source order), the import lines they need, and the file banners;
    ``plugins``: files of plug-in operator modules, read after the catalog's own."""
    defs, imports, banners = _definitions(plugins)
    seen: set[str] = set()
    todo = [r for r in roots if r in defs]
    used_names = set(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        used_names |= defs[name].uses
        todo.extend(u for u in defs[name].uses if u in defs and u not in seen)
    order = {name: i for i, name in enumerate(defs)}
    chosen, texts = [], set()
    for name in sorted(seen, key=order.__getitem__):
        if defs[name].text not in texts:  # `a, b = ...` defines two names with one text
            texts.add(defs[name].text)
            chosen.append(defs[name])
    import_lines = sorted({imports[n] for n in used_names if n in imports},
                          key=lambda line: (not line.startswith("import"), line))
    return chosen, import_lines, banners


def build_function(arch: Arch) -> tuple[str, set[str]]:
    """The exported ``build()``: the Arch spelled out as calls, and the names it uses."""
    stem = operators.get_stem(stem_kind(arch)).factory
    uses = {stem.__name__, "stage_layers", "Stage", "OpmixNet", "Head", "reparameterize_model"}
    lines = [
        f"def build(num_classes: int = {arch.num_classes}, in_chans: int = {arch.in_chans}) -> OpmixNet:",
        '    """The network (randomly initialized, training form); ``reparameterize_model`` gives its deploy form."""',
        "    # In nas.network.build's order (stages, head, stem), so that one seed gives both the same weights.",
        "    # stage_layers(block, in_chs, width, depth, stride, alternate, downsample, /, **the operator's keywords)",
        "    stages = [",
    ]
    cin = arch.stem.width
    for s in arch.stages:
        spec = get_spec(s.op)
        factory = spec.factory.__name__
        uses.add(factory)
        args = [factory, str(cin), str(s.width), str(s.depth), str(s.stride)]
        down = downsampler(s.downsample)
        if spec.alternate or down is not None:
            args.append(f"({', '.join(_literal(a) for a in spec.alternate)}{',' if spec.alternate else ''})")
        if down is not None:
            uses.add(down.__name__)
            args.append(down.__name__)
        args += [f"{k}={_literal(v)}" for k, v in s.kwargs.items()]
        lines.append(f"        Stage(*stage_layers({', '.join(args)})),")
        cin = s.width
    hidden = f", hidden={arch.head.hidden}" if arch.head.hidden else ""
    lines += [
        "    ]",
        f"    head = Head({_literal(arch.head.type)}, {cin}, num_classes{hidden})",
        f"    stem = {stem.__name__}(in_chans, {arch.stem.width})",
        "    return OpmixNet(stem, stages, head)",
    ]
    return "\n".join(lines), uses


def _literal(value) -> str:
    """Python source for a plain value (strings in double quotes, as the rest of the file)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _arch_literal(arch: Arch) -> str:
    """The Arch's mapping, one stage per line."""
    data = arch.to_dict()
    lines = ["{"]
    for key, value in data.items():
        if key == "stages":
            lines += ['    "stages": ['] + [f"        {_literal(s)}," for s in value] + ["    ],"]
        else:
            lines.append(f"    {_literal(key)}: {_literal(value)},")
    return "\n".join(lines + ["}"])


def _import_block(lines: list[str]) -> str:
    """Standard-library imports, a blank line, then torch's."""
    def key(line: str) -> tuple[bool, str]:
        return not line.startswith("import"), line

    stdlib = sorted((line for line in lines if line.split()[1].split(".")[0] != "torch"), key=key)
    torch_ = sorted((line for line in lines if line.split()[1].split(".")[0] == "torch"), key=key)
    return "\n\n".join("\n".join(group) for group in (stdlib, torch_) if group)


def standalone_source(arch: Arch, header: str) -> str:
    """The whole module: ``header`` as its docstring, imports, the needed definitions, ``ARCH`` and ``build``."""
    build_text, roots = build_function(arch)
    chosen, import_lines, banners = needed_definitions(roots, plugin_files(arch))
    if "from torch import nn" not in import_lines:
        import_lines.append("from torch import nn")
    top = "\n\n".join([f'"""{header.strip()}\n"""', "from __future__ import annotations",
                        _import_block(import_lines), '__all__ = ["build", "reparameterize_model", "ARCH"]'])
    parts = [top, "# The architecture, as nas.arch.Arch.to_dict() writes it (arch.yaml holds the same).\n"
                  f"ARCH = {_arch_literal(arch)}"]
    current = None
    for d in chosen:
        if d.file != current:
            current = d.file
            parts.append(f"# {'-' * (100 - len(d.file))} {d.file}\n# {banners[d.file]}")
        parts.append(d.text)
    parts.append(build_text)
    return "\n\n\n".join(parts) + "\n"
