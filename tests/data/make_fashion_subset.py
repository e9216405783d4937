"""Regenerate nas/_data/fashion-mnist-subset/: a class-balanced subset of the real Fashion-MNIST training set.

    python tests/data/make_fashion_subset.py [SOURCE_DIR]

SOURCE_DIR holds the full training set as IDX files (``train-images-idx3-ubyte[.gz]``,
``train-labels-idx1-ubyte[.gz]``); default /usr/share/datasets/fashion-mnist (Debian/Ubuntu package
``dataset-fashion-mnist``). The subset is the first ``PER_CLASS`` images of each class in file order, kept in
file order, written as IDX (magic 0x803 / 0x801, big-endian sizes) and gzipped at level 9 with mtime 0, so
the same source always gives byte-identical files. The test set (t10k-*) is never read.
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np

PER_CLASS = 1000
NUM_CLASSES = 10
DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
OUT = Path(__file__).resolve().parents[2] / "nas" / "_data" / "fashion-mnist-subset"


def read_idx(folder: Path, stem: str, magic: int) -> np.ndarray:
    """The IDX array in ``folder/stem`` or ``folder/stem.gz``, its magic and size checked."""
    path = folder / stem if (folder / stem).is_file() else folder / f"{stem}.gz"
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise SystemExit(f"{path}: magic {found:#010x}, expected {magic:#010x}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) != header + int(np.prod(dims)):
        raise SystemExit(f"{path}: {len(raw)} bytes, expected {header + int(np.prod(dims))} for dims {dims}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """``array`` (uint8) as an IDX file: magic, one big-endian uint32 per dimension, then the raw bytes."""
    assert array.dtype == np.uint8 and array.ndim == magic & 0xFF
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


def write_gz(path: Path, data: bytes) -> None:
    # GzipFile with mtime=0 and no file name in the header: reruns give byte-identical output.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as gz:
        gz.write(data)


def make_subset(source: Path, out: Path = OUT) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(source, "train-images-idx3-ubyte", 0x00000803)
    labels = read_idx(source, "train-labels-idx1-ubyte", 0x00000801)
    if len(images) != len(labels):
        raise SystemExit(f"{source}: {len(images)} images but {len(labels)} labels")
    # First PER_CLASS of each class, then merged back into file order (sorting the chosen indices).
    chosen = np.sort(np.concatenate([np.flatnonzero(labels == c)[:PER_CLASS] for c in range(NUM_CLASSES)]))
    counts = np.bincount(labels[chosen], minlength=NUM_CLASSES)
    if counts.tolist() != [PER_CLASS] * NUM_CLASSES:
        raise SystemExit(f"{source}: not enough images per class for the subset: {counts.tolist()}")
    out.mkdir(parents=True, exist_ok=True)
    write_gz(out / "train-images-idx3-ubyte.gz", idx_bytes(np.ascontiguousarray(images[chosen]), 0x00000803))
    write_gz(out / "train-labels-idx1-ubyte.gz", idx_bytes(np.ascontiguousarray(labels[chosen]), 0x00000801))
    return images[chosen], labels[chosen]


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE
    x, y = make_subset(src)
    for f in sorted(OUT.glob("*.gz")):
        print(f"wrote {f} ({f.stat().st_size} bytes)")
    print(f"{len(y)} images, {x.shape[1]}x{x.shape[2]}, per class {np.bincount(y).tolist()}")
