"""``python -m nas.flops ARCH.yaml [--input 3x224x224] [--json]``: FLOPs and parameters of an Arch."""

from __future__ import annotations

import json

from . import _cli, plugins
from .arch import load_arch
from .flops import count_flops, count_params, format_flops, stage_breakdown
from .errors import OpmixError

PROG = "python -m nas.flops"


def _main(argv: list[str] | None) -> int:
    parser = _cli.Parser(prog=PROG, description="FLOPs (multiply-adds, deploy form) and parameters of an "
                                                "architecture YAML at its target input.")
    parser.add_argument("arch", help="an arch YAML file (a reference, or arch.yaml of a run or export)")
    parser.add_argument("--input", default=None, metavar="CxHxW",
                        help="input shape, e.g. 3x224x224 (default: the arch's own input)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    plugins.add_import_flag(parser)
    args = parser.parse_args(argv)
    plugins.import_modules(args.imports)

    from .network import build

    arch = load_arch(args.arch)
    c, h, w = _cli.parse_input_shape(args.input) if args.input else (arch.in_chans,) + (arch.input_size,) * 2
    if c != arch.in_chans:
        raise OpmixError(f"--input has {c} channels but the arch takes {arch.in_chans}; "
                         f"give {arch.in_chans}x{h}x{w}")
    net = build(arch)
    shape = (1, c, h, w)
    flops, train_flops = count_flops(net, shape), count_flops(net, shape, deploy=False)
    params, train_params = count_params(net), count_params(net, deploy=False)
    stages = stage_breakdown(net, shape)
    if args.json:
        print(json.dumps({"arch": args.arch, "input": [c, h, w], "flops": flops, "params": params,
                          "train_flops": train_flops, "train_params": train_params, "stages": stages}))
        return 0
    print(f"{args.arch} at {c}x{h}x{w} (one multiply-add = one FLOP)")
    print(f"  FLOPs   {format_flops(flops):>9s}  deploy form" +
          (f"   ({format_flops(train_flops)} in training form)" if train_flops != flops else ""))
    print(f"  params  {params / 1e6:8.2f} M deploy form" +
          (f"   ({train_params / 1e6:.2f} M in training form)" if train_params != params else ""))
    for name, part in stages.items():
        label = name if not name.startswith("stages.") else f"stage {int(name.split('.')[1]) + 1}"
        if name.startswith("stages."):
            s = arch.stages[int(name.split(".")[1])]
            label += f" ({s.op} x{s.depth}, {s.width})"
        print(f"    {label:32s} {format_flops(part):>9s}  {100 * part / flops:5.1f} %")
    return 0


def main(argv: list[str] | None = None) -> None:
    _cli.run(PROG, _main, argv)
