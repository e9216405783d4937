"""Search spaces: a YAML file of choices, loaded into frozen dataclasses, sampled into ``Arch`` points.

A space file (see README, "The space language") declares the target input, the stem, the stages — each
with a fixed output stride and its choices of operators (with per-operator parameter choices), widths and
depths — the head, and constraints across stages. ``load_space`` validates everything up front, and every
error names the file, the key path (``stages[2].ops[1].heads``) and what is allowed.

Sampling is define-by-run on an Optuna trial with stable hierarchical names: ``stem.width``, ``s1.op``,
``s1.width`` (or ``s1.<op>.width`` where an operator overrides the stage's widths), ``s1.depth`` and
``s1.<op>.<param>``; a parameter exists only when its operator is chosen, and choices with a single value
are fixed, not sampled.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .arch import (Arch, ArchError, HeadArch, StageArch, StemArch,
                   _Reader, downsample_types, dump_arch, load_arch, read_yaml, stem_stride)
from .errors import UnknownNameError

__all__ = ["Space", "StageSpace", "OpChoice", "Choice", "SpaceError", "load_space", "list_spaces",
           "list_references", "load_reference", "Arch", "load_arch", "dump_arch", "op_frequencies"]

CONSTRAINTS = ("widths_non_decreasing", "max_total_depth")
RESERVED = ("op", "width")  # keys of an ops entry that are not operator parameters


class SpaceError(ArchError):
    """A space file that cannot be used; the message names the file, the key path and what is allowed."""


@dataclass(frozen=True)
class Choice:
    """A finite set of values; ``low``/``high``/``step`` are set when the file gave an integer range."""

    values: tuple
    low: int | None = None
    high: int | None = None
    step: int | None = None

    def suggest(self, trial: Any, name: str) -> Any:
        if len(self.values) == 1:
            return self.values[0]
        if self.low is not None:
            return trial.suggest_int(name, self.low, self.high, step=self.step)
        return trial.suggest_categorical(name, list(self.values))


@dataclass(frozen=True)
class OpChoice:
    name: str
    params: tuple[tuple[str, Choice], ...] = ()
    width: Choice | None = None  # overrides the stage's widths for this operator


@dataclass(frozen=True)
class StageSpace:
    output_stride: int
    ops: tuple[OpChoice, ...]
    width: Choice
    depth: Choice
    downsample: str = "op"

    def widths(self, op: OpChoice) -> Choice:
        return op.width or self.width


@dataclass(frozen=True)
class Space:
    name: str
    source: str
    in_chans: int
    input_size: int
    num_classes: int
    stem_type: str
    stem_width: Choice
    stages: tuple[StageSpace, ...]
    head: HeadArch
    constraints: tuple[tuple[str, Any], ...] = ()

    # ----------------------------------------------------------------------------------------- points
    def violations(self, arch: Arch) -> list[str]:
        """Why ``arch`` is not a point of this space (empty when it is)."""
        out = []
        if (arch.in_chans, arch.input_size, arch.num_classes) != (self.in_chans, self.input_size, self.num_classes):
            out.append("input differs")
        if arch.stem.type != self.stem_type or arch.stem.width not in self.stem_width.values:
            out.append(f"stem {arch.stem.type}/{arch.stem.width} is not offered")
        if arch.head != self.head:
            out.append(f"head {arch.head} is not {self.head}")
        if len(arch.stages) != len(self.stages):
            return out + [f"{len(arch.stages)} stages where the space has {len(self.stages)}"]
        for i, (s, sp) in enumerate(zip(arch.stages, self.stages)):
            if s.stride != self._stage_stride(i) or s.downsample != sp.downsample:
                out.append(f"stage {i + 1}: stride/downsample differ")
            op = next((o for o in sp.ops if o.name == s.op), None)
            if op is None:
                out.append(f"stage {i + 1}: op {s.op} is not offered")
                continue
            if s.width not in sp.widths(op).values or s.depth not in sp.depth.values:
                out.append(f"stage {i + 1}: width {s.width} or depth {s.depth} is not offered")
            choices = dict(op.params)
            given = {**_defaults(s.op, choices), **s.kwargs}  # a parameter left out takes its default
            if not set(s.kwargs) <= set(choices) or any(given[k] not in c.values for k, c in choices.items()):
                out.append(f"stage {i + 1}: params {s.kwargs} are not offered")
        return out + self.constraint_violations(arch)

    def constraint_violations(self, arch: Arch) -> list[str]:
        out = []
        for name, value in self.constraints:
            widths = [s.width for s in arch.stages]
            if name == "widths_non_decreasing" and value and any(b < a for a, b in zip(widths, widths[1:])):
                out.append(f"widths {widths} decrease")
            if name == "max_total_depth" and sum(s.depth for s in arch.stages) > value:
                out.append(f"total depth {sum(s.depth for s in arch.stages)} exceeds {value}")
        return out

    def contains(self, arch: Arch) -> bool:
        return not self.violations(arch)

    def _stage_stride(self, i: int) -> int:
        before = self.stages[i - 1].output_stride if i else stem_stride(self.stem_type)
        return self.stages[i].output_stride // before

    def make_arch(self, stem_width: int, stages: list[tuple[str, int, int, dict[str, Any]]]) -> Arch:
        """The Arch of this space with the given stem width and (op, width, depth, params) per stage."""
        return Arch(
            stem=StemArch(self.stem_type, stem_width),
            stages=tuple(StageArch(op, width, depth, self._stage_stride(i), tuple(sorted(params.items())),
                                   self.stages[i].downsample)
                         for i, (op, width, depth, params) in enumerate(stages)),
            head=self.head, in_chans=self.in_chans, num_classes=self.num_classes, input_size=self.input_size,
        )

    def sample(self, trial: Any) -> Arch:
        """An Arch drawn through ``trial.suggest_*`` (Optuna, define-by-run)."""
        stem_width = self.stem_width.suggest(trial, "stem.width")
        stages = []
        for i, sp in enumerate(self.stages, start=1):
            names = [o.name for o in sp.ops]
            name = names[0] if len(names) == 1 else trial.suggest_categorical(f"s{i}.op", names)
            op = sp.ops[names.index(name)]
            width_key = f"s{i}.{name}.width" if op.width else f"s{i}.width"
            width = sp.widths(op).suggest(trial, width_key)
            depth = sp.depth.suggest(trial, f"s{i}.depth")
            params = {p: c.suggest(trial, f"s{i}.{name}.{p}") for p, c in op.params}
            stages.append((name, width, depth, params))
        return self.make_arch(stem_width, stages)

    def params_of(self, arch: Arch) -> dict[str, Any]:
        """The Optuna parameters under which ``sample`` draws ``arch`` (an Arch this space contains)."""
        out: dict[str, Any] = {}
        if len(self.stem_width.values) > 1:
            out["stem.width"] = arch.stem.width
        for i, (s, sp) in enumerate(zip(arch.stages, self.stages), start=1):
            if len(sp.ops) > 1:
                out[f"s{i}.op"] = s.op
            op = next(o for o in sp.ops if o.name == s.op)
            if len(sp.widths(op).values) > 1:
                out[f"s{i}.{s.op}.width" if op.width else f"s{i}.width"] = s.width
            if len(sp.depth.values) > 1:
                out[f"s{i}.depth"] = s.depth
            given = {**_defaults(s.op, dict(op.params)), **s.kwargs}
            for p, c in op.params:
                if len(c.values) > 1:
                    out[f"s{i}.{s.op}.{p}"] = given[p]
        return out

    def random(self, rng: random.Random | int | None = None, max_tries: int = 1000) -> Arch:
        """A uniformly drawn Arch that meets the constraints."""
        rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        trial = _RandomTrial(rng)
        for _ in range(max_tries):
            arch = self.sample(trial)
            if not self.constraint_violations(arch):
                return arch
        raise SpaceError(f"{self.source}: no architecture met the constraints in {max_tries} draws; "
                         f"loosen the constraints or the ranges")

    def size(self) -> int:
        """How many architectures the space holds, before constraints."""
        total = len(self.stem_width.values)
        for sp in self.stages:
            total *= sum(len(sp.widths(o).values) * len(sp.depth.values)
                         * math.prod(len(c.values) for _, c in o.params) for o in sp.ops)
        return total

    def stage_options(self, i: int, pick) -> list[tuple[str, int, int, dict[str, Any]]]:
        """Every (op, width, depth, params) of stage i at the width and depth that ``pick`` (min/max) chooses."""
        sp = self.stages[i]
        out = []
        for op in sp.ops:
            for combo in itertools.product(*(c.values for _, c in op.params)):
                params = dict(zip((p for p, _ in op.params), combo))
                out.append((op.name, pick(sp.widths(op).values), pick(sp.depth.values), params))
        return out


def _defaults(op: str, names) -> dict[str, Any]:
    import inspect

    import operators

    params = inspect.signature(operators.get_spec(op).factory).parameters
    return {n: params[n].default for n in names if params[n].default is not inspect.Parameter.empty}


class _RandomTrial:
    """The ``suggest_*`` surface of an Optuna trial, drawing uniformly (for spaces used without Optuna)."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def suggest_int(self, name: str, low: int, high: int, step: int = 1) -> int:
        return self.rng.randrange(low, high + 1, step)

    def suggest_categorical(self, name: str, choices: list) -> Any:
        return self.rng.choice(choices)


# --------------------------------------------------------------------------------------------- loading
def _builtin(kind: str) -> Path:
    return Path(str(resources.files("search_spaces"))) / kind


def list_spaces() -> list[str]:
    return sorted(p.stem for p in _builtin("").glob("*.yaml"))


def list_references() -> list[str]:
    return sorted(p.stem for p in _builtin("references").glob("*.yaml"))


def load_reference(name: str) -> Arch:
    path = _builtin("references") / f"{name}.yaml"
    if not path.is_file():
        raise UnknownNameError(f"unknown reference {name!r}; known references: {', '.join(list_references())}")
    return load_arch(path)


def resolve_space_path(path_or_name: str | Path) -> Path:
    path = Path(path_or_name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    builtin = _builtin("") / f"{path_or_name}.yaml"
    if builtin.is_file():
        return builtin
    raise SpaceError(f"space {str(path_or_name)!r} is neither a file nor a built-in space; "
                     f"built-in spaces: {', '.join(list_spaces())}; or give the path of a YAML file")


def load_space(path_or_name: str | Path) -> Space:
    """Load and validate a space from a YAML path or a built-in name (``hybrid``)."""
    path = resolve_space_path(path_or_name)
    data = read_yaml(path, "a space YAML file", SpaceError)
    try:
        return _parse_space(data, str(path), path.stem)
    except SpaceError:
        raise
    except ArchError as exc:
        raise SpaceError(str(exc)) from None


def _parse_space(data: Any, source: str, default_name: str) -> Space:
    r = _SpaceReader(source)
    top = r.mapping(data, "", {"name", "input", "stem", "stages", "head", "constraints"},
                    required={"stem", "stages"})
    frame = r.frame(top)
    stem_type = frame["stem_type"]
    stages, prev = [], stem_stride(stem_type)
    for i, raw in enumerate(frame["stages"]):
        key = f"stages[{i}]"
        s = r.mapping(raw, key, {"output_stride", "ops", "width", "depth", "downsample"},
                      required={"output_stride", "ops", "width", "depth"})
        stride = r.positive_int(s["output_stride"], f"{key}.output_stride")
        if stride not in (prev, 2 * prev):
            raise r.error(f"{key}.output_stride", f"is {stride} after {prev}",
                          f"{prev} or {2 * prev} (each stage keeps or halves the resolution)")
        prev = stride
        width = r.int_choice(s["width"], f"{key}.width")
        ops = _parse_ops(r, s["ops"], f"{key}.ops", width)
        stages.append(StageSpace(stride, ops, width, r.int_choice(s["depth"], f"{key}.depth"),
                                 r.one_of(s.get("downsample", "op"), f"{key}.downsample", downsample_types())))

    constraints = r.mapping(top.get("constraints", {}), "constraints", set(CONSTRAINTS))
    if "widths_non_decreasing" in constraints and not isinstance(constraints["widths_non_decreasing"], bool):
        raise r.error("constraints.widths_non_decreasing", f"is {constraints['widths_non_decreasing']!r}",
                      "true or false")
    if "max_total_depth" in constraints:
        r.positive_int(constraints["max_total_depth"], "constraints.max_total_depth")
    name = top.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise r.error("name", f"is {name!r}", "a non-empty string")
    return Space(
        name=name, source=source, in_chans=frame["in_chans"], input_size=frame["input_size"],
        num_classes=frame["num_classes"], stem_type=stem_type,
        stem_width=r.int_choice(frame["stem"]["width"], "stem.width"), stages=tuple(stages), head=frame["head"],
        constraints=tuple(sorted(constraints.items())),
    )


def _parse_ops(r: _SpaceReader, raw: Any, key: str, stage_width: Choice) -> tuple[OpChoice, ...]:
    import operators

    if not isinstance(raw, list) or not raw:
        raise r.error(key, f"is {raw!r}", "a non-empty list of entries like {op: swin, window: [7]}")
    ops, seen = [], set()
    for j, entry in enumerate(raw):
        ekey = f"{key}[{j}]"
        if isinstance(entry, str):
            entry = {"op": entry}
        e = r.mapping(entry, ekey, None, required={"op"})
        name = r.op_name(e["op"], f"{ekey}.op")
        if name in seen:
            raise r.error(f"{ekey}.op", f"repeats {name!r}", "each operator once per stage (merge the entries)")
        seen.add(name)
        accepted = operators.get_spec(name).keywords()
        params = []
        for p, value in e.items():
            if p in RESERVED:
                continue
            if p not in accepted:
                raise r.error(f"{ekey}.{p}", f"is not a parameter of {name}", ", ".join(accepted))
            params.append((p, r.value_choice(value, f"{ekey}.{p}")))
        width = r.int_choice(e["width"], f"{ekey}.width") if "width" in e else None
        op = OpChoice(name, tuple(sorted(params)), width)
        _check_buildable(r, op, width or stage_width, ekey)
        ops.append(op)
    return tuple(ops)


def _check_buildable(r: _SpaceReader, op: OpChoice, widths: Choice, key: str) -> None:
    """Build every (width, parameters) combination on the meta device (``nas.network.build_error``), so
    impossible values (heads that do not divide the width, ...) are refused at load time with the key that
    holds them."""
    from .network import build_error

    names = [p for p, _ in op.params]
    for width in widths.values:
        for combo in itertools.product(*(c.values for _, c in op.params)):
            error = build_error(op.name, width, dict(zip(names, combo)))
            if error is not None:
                culprit = next((n for n in names if n in error), "width")
                raise r.error(f"{key}.{culprit}", f"cannot be built at width {width} with "
                              f"{dict(zip(names, combo))}: {error}", "values every width of the stage can use")


class _SpaceReader(_Reader):
    def error(self, key: str, problem: str, allowed: str) -> SpaceError:
        return SpaceError(str(super().error(key, problem, allowed)))

    def int_choice(self, value: Any, key: str) -> Choice:
        if isinstance(value, dict):
            m = self.mapping(value, key, {"min", "max", "step"}, required={"min", "max"})
            low, high = self.positive_int(m["min"], f"{key}.min"), self.positive_int(m["max"], f"{key}.max")
            step = self.positive_int(m.get("step", 1), f"{key}.step")
            if high < low or (high - low) % step:
                raise self.error(key, f"is min {low}, max {high}, step {step}",
                                 "min <= max with max - min a multiple of step")
            return Choice(tuple(range(low, high + 1, step)), low, high, step)
        values = value if isinstance(value, list) else [value]
        if not values:
            raise self.error(key, "is an empty list", "one value or more, or {min: .., max: .., step: ..}")
        for k, v in enumerate(values):
            self.positive_int(v, f"{key}[{k}]" if isinstance(value, list) else key)
        return self._distinct(values, key)

    def value_choice(self, value: Any, key: str) -> Choice:
        values = value if isinstance(value, list) else [value]
        if not values:
            raise self.error(key, "is an empty list", "one value or more")
        for v in values:
            if not isinstance(v, (int, float, str, bool)):
                raise self.error(key, f"holds {v!r}", "numbers, strings or booleans")
        return self._distinct(values, key)

    def _distinct(self, values: list, key: str) -> Choice:
        if len(set(values)) != len(values):
            raise self.error(key, f"repeats a value in {values}", "each value once")
        return Choice(tuple(values))


def op_frequencies(space: Space, samples: int, seed: int = 0) -> list[dict[str, int]]:
    """Per stage, how many of ``samples`` random Archs (``space.random``, constraints met) use each operator the
    stage offers, zeros included: an operator that the constraints or the widths keep out of a stage shows as 0."""
    rng = random.Random(seed)
    counts = [{o.name: 0 for o in st.ops} for st in space.stages]
    for _ in range(samples):
        for i, stage in enumerate(space.random(rng).stages):
            counts[i][stage.op] += 1
    return counts


def sample_flops(space: Space, samples: int, seed: int = 0) -> list[int]:
    """Deploy-form FLOPs (``nas.flops.count_arch``) of the ``samples`` random Archs that ``op_frequencies``
    draws with the same seed, in drawing order: the space's cost distribution as a sampler starts from it."""
    from .flops import count_arch

    rng = random.Random(seed)
    return [count_arch(space.random(rng))[0] for _ in range(samples)]


def quantiles(values: list[int], qs: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)) -> list[float]:
    """The ``qs`` quantiles of ``values`` (``nas.stats.quantile``: numpy's linear interpolation)."""
    from .stats import quantile

    return [quantile(values, q) for q in qs]


# ------------------------------------------------------------------------------------------ command line
def summarize(space: Space) -> dict[str, Any]:
    """Size, the FLOPs of the smallest and largest architectures, and the references the space contains.

    The smallest (largest) network takes every stage at its smallest (largest) width and depth, with the
    stage's cheapest (dearest) operator and parameters. Stages are costed one at a time (a stage's input is
    fixed by the previous stage's width, whatever its operator), and a stage's blocks after the first are
    identical in cost, so two blocks are counted per option.
    """
    import torch

    from .flops import count_flops
    from .network import build_uninitialized, stage_blocks

    out: dict[str, Any] = {"name": space.name, "file": space.source, "architectures": space.size(),
                           "stages": len(space.stages)}
    for label, pick in (("smallest", min), ("largest", max)):
        stem = pick(space.stem_width.values)
        chosen, in_chs, side = [], stem, -(-space.input_size // stem_stride(space.stem_type))
        for i in range(len(space.stages)):
            costs = []
            for option in space.stage_options(i, pick):
                stage = space.make_arch(stem, [option] * len(space.stages)).stages[i]
                with torch.device("meta"):
                    blocks = [b.to_empty(device="cpu")
                              for b in stage_blocks(stage, in_chs, option[1], depth=min(stage.depth, 2))]
                side_out = -(-side // stage.stride)
                shapes = [(1, in_chs, side, side)] + [(1, option[1], side_out, side_out)] * (len(blocks) - 1)
                counts = [count_flops(b, shape) for b, shape in zip(blocks, shapes)]
                costs.append((sum(counts) + (stage.depth - min(stage.depth, 2)) * counts[-1], option))
            chosen.append(pick(costs, key=lambda c: c[0])[1])
            in_chs, side = chosen[-1][1], -(-side // space.make_arch(stem, [chosen[-1]] * len(space.stages))
                                             .stages[i].stride)
        arch = space.make_arch(stem, chosen)
        out[f"{label}_flops"] = count_flops(build_uninitialized(arch))
        out[label] = dump_arch(arch)
    out["references"] = [name for name in list_references() if space.contains(load_reference(name))]
    return out


def _main(argv: list[str] | None) -> int:
    from . import _cli, plugins
    from .flops import format_flops

    parser = _cli.Parser(prog="python -m nas.space", description="Summarize a search space: how many "
                         "architectures, the FLOPs of the smallest and largest, which references it contains.")
    parser.add_argument("space", help=f"a space YAML file or a built-in name ({', '.join(list_spaces())})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--samples", type=int, default=0, metavar="N",
                        help="also draw N random architectures (seed 0) and print how often each stage uses each "
                             "of its operators, and their FLOPs' quantiles")
    parser.add_argument("--budget", default=None, help="with --samples, also print the share of the samples "
                        "within this FLOP budget (e.g. 4.5GFLOPs)")
    plugins.add_import_flag(parser)
    args = parser.parse_args(argv)
    plugins.import_modules(args.imports)
    if args.samples < 0:
        parser.error(f"--samples {args.samples}: give a number of architectures >= 0")
    from .flops import parse_budget

    budget = parse_budget(args.budget) if args.budget is not None else None
    space = load_space(args.space)
    if args.json:
        import json

        print(json.dumps({k: v for k, v in summarize(space).items() if k not in ("smallest", "largest")}))
        return 0
    print(f"space {space.name} ({space.source}): input {space.in_chans}x{space.input_size}x{space.input_size}, "
          f"{space.num_classes} classes, stem {space.stem_type}, head {space.head.type}")
    for i, st in enumerate(space.stages, start=1):
        ops = ", ".join(o.name + ("(" + ", ".join(f"{p}={list(c.values)}" for p, c in o.params) + ")"
                                  if o.params else "") for o in st.ops)
        print(f"  s{i}: stride {st.output_stride:>2}, width {st.width.values[0]}..{st.width.values[-1]} "
              f"({len(st.width.values)}), depth {st.depth.values[0]}..{st.depth.values[-1]}: {ops}")
    if space.constraints:
        print(f"  constraints: {', '.join(f'{k}={v}' for k, v in space.constraints)}")
    summary = summarize(space)
    print(f"architectures: {summary['architectures']:,} (before constraints)")
    print(f"FLOPs: smallest {format_flops(summary['smallest_flops'])}, largest "
          f"{format_flops(summary['largest_flops'])} (multiply-adds at "
          f"{space.in_chans}x{space.input_size}x{space.input_size}, deploy form)")
    print(f"references in this space: {', '.join(summary['references']) or 'none'}")
    if args.samples:
        print(f"operators in {args.samples} random architectures (seed 0), per stage:")
        for i, counts in enumerate(op_frequencies(space, args.samples), start=1):
            never = [name for name, n in counts.items() if not n]
            print(f"  s{i}: " + ", ".join(f"{name} {n}" for name, n in counts.items())
                  + (f"; never sampled: {', '.join(never)}" if never else ""))
        flops = sample_flops(space, args.samples)
        q = quantiles(flops)
        line = (f"FLOPs of those architectures: 5 % {format_flops(q[0])}, 25 % {format_flops(q[1])}, median "
                f"{format_flops(q[2])}, 75 % {format_flops(q[3])}, 95 % {format_flops(q[4])}")
        if budget is not None:
            line += (f"; within {format_flops(budget)}: {sum(f <= budget for f in flops) / len(flops):.0%}")
        print(line)
    return 0


def main(argv: list[str] | None = None) -> None:
    from ._cli import run

    run("python -m nas.space", _main, argv)


if __name__ == "__main__":
    main()
