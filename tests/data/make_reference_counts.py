"""Regenerate tests/data/reference_counts.json: FLOPs and parameters of every reference architecture.

    python tests/data/make_reference_counts.py

Counts are fvcore multiply-adds at each reference's own input (3x224x224), deploy and training forms.
tests/test_references.py compares a fresh count with this file exactly, so a change to an operator that
moves any count shows up as a diff of this file, to be reviewed and committed on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path

from nas.flops import count_flops, count_params
from nas.network import build_uninitialized
from nas.space import list_references, load_reference

OUT = Path(__file__).with_name("reference_counts.json")


def reference_counts() -> dict[str, dict[str, int]]:
    counts = {}
    for name in list_references():
        arch = load_reference(name)
        net = build_uninitialized(arch)
        shape = (1, arch.in_chans, arch.input_size, arch.input_size)
        counts[name] = {
            "flops": count_flops(net, shape),
            "params": count_params(net),
            "train_flops": count_flops(net, shape, deploy=False),
            "train_params": count_params(net, deploy=False),
        }
    return counts


if __name__ == "__main__":
    OUT.write_text(json.dumps(reference_counts(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {OUT}")
