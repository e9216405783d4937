"""``Arch``: one architecture, a frozen and hashable point of a search space, and its YAML form.

An Arch says everything the builder needs: the input (channels, size, classes), the stem, per stage the
operator, its parameters, width (the stage's output channels), depth and the stride of its first block,
and the head. Its YAML is what references, ``runs/`` and the export store, and it round-trips exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import operators

from .errors import OpmixError

__all__ = ["Arch", "StageArch", "StemArch", "HeadArch", "load_arch", "dump_arch", "ArchError",
           "stem_stride", "stem_types", "HEAD_TYPES", "downsample_types"]

HEAD_TYPES = ("pool_linear", "norm_pool_linear", "pool_norm_linear")


def stem_stride(kind: str) -> int:
    """The output stride of the registered stem ``kind`` (proxies on small images replace the stem: see
    nas.network)."""
    return operators.get_stem(kind).stride


def stem_types() -> tuple[str, ...]:
    """The stem types an Arch may name: every registered stem (``operators.register_stem``)."""
    return tuple(operators.list_stems())


def downsample_types() -> tuple[str, ...]:
    """How a stage whose first block strides or widens gets there: inside its first op (``op``), or a
    registered downsampler first (``operators.register_downsampler``)."""
    return ("op", *operators.list_downsamplers())

Scalar = int | float | str | bool


class ArchError(OpmixError):
    """An architecture file or mapping that does not describe a valid Arch."""


@dataclass(frozen=True)
class StemArch:
    type: str
    width: int


@dataclass(frozen=True)
class HeadArch:
    type: str = "pool_linear"
    hidden: int = 0  # a pre-logits Linear + activation of this width before the classifier (0: none)


@dataclass(frozen=True)
class StageArch:
    op: str
    width: int
    depth: int
    stride: int = 2
    params: tuple[tuple[str, Scalar], ...] = ()
    downsample: str = "op"

    @property
    def kwargs(self) -> dict[str, Scalar]:
        return dict(self.params)


@dataclass(frozen=True)
class Arch:
    stem: StemArch
    stages: tuple[StageArch, ...]
    head: HeadArch = field(default_factory=HeadArch)
    in_chans: int = 3
    num_classes: int = 1000
    input_size: int = 224

    @property
    def output_strides(self) -> tuple[int, ...]:
        """The output stride of every stage at the target input (stem stride times the stage strides)."""
        strides, total = [], stem_stride(self.stem.type)
        for stage in self.stages:
            total *= stage.stride
            strides.append(total)
        return tuple(strides)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": {"channels": self.in_chans, "size": self.input_size, "classes": self.num_classes},
            "stem": {"type": self.stem.type, "width": self.stem.width},
            "stages": [
                {"op": s.op, "width": s.width, "depth": s.depth, "stride": s.stride,
                 **({"downsample": s.downsample} if s.downsample != "op" else {}),
                 **({"params": dict(s.params)} if s.params else {})}
                for s in self.stages
            ],
            "head": {"type": self.head.type, **({"hidden": self.head.hidden} if self.head.hidden else {})},
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "arch") -> Arch:
        r = _Reader(source)
        top = r.mapping(data, "", {"input", "stem", "stages", "head"}, required={"stem", "stages"})
        frame = r.frame(top)
        stages = []
        for i, raw in enumerate(frame["stages"]):
            key = f"stages[{i}]"
            s = r.mapping(raw, key, {"op", "width", "depth", "stride", "params", "downsample"},
                          required={"op", "width", "depth"})
            params = r.mapping(s.get("params", {}), f"{key}.params", None)
            for name, value in params.items():
                if not isinstance(value, (int, float, str, bool)):
                    raise r.error(f"{key}.params.{name}", f"is {value!r}", "a single number, string or boolean")
            stages.append(StageArch(
                op=r.op_name(s["op"], f"{key}.op"),
                width=r.positive_int(s["width"], f"{key}.width"),
                depth=r.positive_int(s["depth"], f"{key}.depth"),
                stride=r.one_of(s.get("stride", 2), f"{key}.stride", (1, 2)),
                params=tuple(sorted(params.items())),
                downsample=r.one_of(s.get("downsample", "op"), f"{key}.downsample", downsample_types()),
            ))
        return cls(stem=StemArch(frame["stem_type"], r.positive_int(frame["stem"]["width"], "stem.width")),
                   stages=tuple(stages), head=frame["head"], in_chans=frame["in_chans"],
                   num_classes=frame["num_classes"], input_size=frame["input_size"])


def read_yaml(path: Path, what: str, error: type[ValueError] = ValueError) -> Any:
    """The parsed contents of a YAML file (``safe_load`` only), or ``error`` with a one-line message."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror}); give the path of {what}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: is not valid YAML ({str(exc).splitlines()[0]})") from None


def load_arch(path: str | Path) -> Arch:
    """Read an Arch from a YAML file."""
    path = Path(path)
    return Arch.from_dict(read_yaml(path, "an arch YAML file", ArchError), str(path))


def dump_arch(arch: Arch, path: str | Path | None = None) -> str:
    """Write ``arch`` as YAML (to ``path`` when given) and return the text."""
    text = yaml.safe_dump(arch.to_dict(), sort_keys=False, default_flow_style=None)
    if path is not None:
        Path(path).write_text(text)
    return text


class _Reader:
    """Typed access to parsed YAML that names the file and key path in every error."""

    def __init__(self, source: str):
        self.source = source

    def error(self, key: str, problem: str, allowed: str) -> ArchError:
        where = f"{self.source}: {key}" if key else self.source
        return ArchError(f"{where} {problem}; allowed: {allowed}")

    def mapping(self, value: Any, key: str, allowed: set[str] | None, required: set[str] = frozenset()) -> dict:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(key or "the file", f"is {type(value).__name__} {value!r}", "a mapping of keys to values")
        if allowed is not None:
            for k in value:
                if k not in allowed:
                    raise self.error(_join(key, k), "is not a known key (a typo?)", ", ".join(sorted(allowed)))
        for k in sorted(required):
            if k not in value:
                raise self.error(_join(key, k), "is missing", f"add {k}:")
        return value

    def frame(self, top: dict[str, Any]) -> dict[str, Any]:
        """What an architecture file and a space file write alike, read once for both: ``input`` (channels,
        size, classes), the ``stem`` mapping and its type, the ``head``, and the raw ``stages`` list."""
        inp = self.mapping(top.get("input", {}), "input", {"channels", "size", "classes"})
        stem = self.mapping(top["stem"], "stem", {"type", "width"}, required={"type", "width"})
        head = self.mapping(top.get("head", {}), "head", {"type", "hidden"})
        stages = top["stages"]
        if not isinstance(stages, list) or not stages:
            raise self.error("stages", f"is {stages!r}", "a non-empty list of stages")
        return {
            "in_chans": self.positive_int(inp.get("channels", 3), "input.channels"),
            "input_size": self.positive_int(inp.get("size", 224), "input.size"),
            "num_classes": self.positive_int(inp.get("classes", 1000), "input.classes"),
            "stem": stem, "stem_type": self.one_of(stem["type"], "stem.type", stem_types()),
            "head": HeadArch(self.one_of(head.get("type", "pool_linear"), "head.type", HEAD_TYPES),
                             self.non_negative_int(head.get("hidden", 0), "head.hidden")),
            "stages": stages,
        }

    def positive_int(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.error(key, f"is {value!r}", "an integer >= 1")
        return value

    def non_negative_int(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.error(key, f"is {value!r}", "an integer >= 0")
        return value

    def one_of(self, value: Any, key: str, allowed: tuple) -> Any:
        if isinstance(value, bool) or value not in allowed:
            raise self.error(key, f"is {value!r}", ", ".join(map(str, allowed)))
        return value

    def op_name(self, value: Any, key: str) -> str:
        import operators

        known = operators.list_ops()
        if value not in known:
            raise self.error(key, f"is {value!r}, not an operator of the catalog", ", ".join(known))
        return value


def _join(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key else str(sub)
