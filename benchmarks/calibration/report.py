"""Print a stored calibration's report again with today's analysis, from its folder alone (no training, no
data): ``python benchmarks/calibration/report.py benchmarks/results/calibration/cifar10-catalog [--write]``.
``--write`` also rewrites the folder's ``report.json`` and ``calibration.png``. For folders written before a
change to the statistics (the pooled seed sd, the paired target check, -inf ranked last)."""

from __future__ import annotations

import argparse
import dataclasses
import json

from nas.calibrate import CalibrationDir, Setup, analyze, plot_report, print_report
from nas.rundir import atomic_write


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a calibration folder (nas.calibrate --out)")
    p.add_argument("--write", action="store_true", help="rewrite its report.json and calibration.png")
    args = p.parse_args()
    out = CalibrationDir(args.folder)
    stored = out.read_setup()
    if stored is None:
        p.exit(2, f"report.py: {out.setup_file} is missing; pass a folder that nas.calibrate --out wrote\n")
    names = {f.name for f in dataclasses.fields(Setup)}
    setup = Setup(**{k: v for k, v in stored.items() if k in names})
    archs, results = out.read_archs(), out.read_results()
    report = analyze(setup, archs, results)
    print_report(report)
    if args.write:
        old = json.loads((out.path / "report.json").read_text()) if (out.path / "report.json").is_file() else {}
        report = {**{k: old[k] for k in ("jobs_left", "jobs_failed") if k in old}, **report}
        atomic_write(out.path / "report.json", json.dumps(report, indent=1) + "\n")
        plot_report(report, archs, results, setup, out.path / "calibration.png")


if __name__ == "__main__":
    main()
