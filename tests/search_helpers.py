"""Small data and a small space for tests that run real searches."""

from __future__ import annotations

import gzip
import os
import struct
import textwrap
from importlib import resources
from pathlib import Path

import numpy as np

from nas.data import load_dataset

MINI_SPACE = """
name: mini
input: {channels: 3, size: 224, classes: 1000}
stem: {type: patch4, width: 16}
stages:
- output_stride: 4
  ops: [resnet_basic, convnext, {op: swin, window: [7]}]
  width: [16, 32]
  depth: [1, 2]
- output_stride: 8
  ops: [mbconv, transformer]
  width: [32, 64]
  depth: 1
head: {type: pool_linear}
"""


def write_tiny_fashion(folder: Path, n: int = 400) -> Path:
    """The first ``n`` images of the embedded Fashion-MNIST subset, as gzipped IDX files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    embedded = Path(str(resources.files("nas") / "_data" / "fashion-mnist-subset"))
    data = load_dataset("fashion-mnist", embedded, val_fraction=0.5, seed=0)
    x = np.concatenate([data.train_x.numpy(), data.val_x.numpy()])[:n, 0]
    y = np.concatenate([data.train_y.numpy(), data.val_y.numpy()])[:n].astype(np.uint8)
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + x.astype(np.uint8).tobytes())
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + y.tobytes())
    return folder


def write_space(folder: Path, text: str = MINI_SPACE) -> Path:
    path = folder / "mini.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def clean_env(*, drop: tuple[str, ...] = (), **extra) -> dict:
    """This process's environment without the RAY_* variables that an in-process ray.init leaves behind
    (RAY_AUTH_MODE and the like, which would make a new Ray expect a token it cannot find), without the
    variables named in ``drop``, and with ``extra`` added."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k not in drop}, **extra}
