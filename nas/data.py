"""Image datasets for search: read from disk into uint8 tensors, split into train and validation.

``load_dataset(name, data_dir)`` reads only the *training* set of a dataset and holds out a fixed, seeded
part of it for validation (a ``torch.Generator().manual_seed(seed)`` permutation; its last
``round(val_fraction * N)`` images, at least one). The test set is never read, so search cannot see it.

Formats (all parsed here with numpy/struct; no pickle, no torchvision):

- ``fashion-mnist``: IDX files ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte``, each raw or
  gzipped (``.gz``). An IDX file is a big-endian uint32 magic (0x00000803 for the images, 0x00000801 for the
  labels: type byte 0x08 = uint8, then the number of dimensions), one big-endian uint32 per dimension, then
  the uint8 data. Images are 28x28x1 and stay at 28 (``image_size`` is ignored). The folder is looked for,
  in order, in

  1. ``data_dir`` if given (or ``data_dir/fashion-mnist``); a ``data_dir`` without the files is an error,
     never a silent fallback;
  2. ``$OPMIX_DATA`` (or ``$OPMIX_DATA/fashion-mnist``); set but without the files, it is an error too;
  3. ``SYSTEM_FASHION_MNIST``, /usr/share/datasets/fashion-mnist (Debian/Ubuntu ``dataset-fashion-mnist``);
  4. the embedded subset shipped in ``nas/_data/fashion-mnist-subset`` (10,000 real training images, 1,000
     per class; see its README.md and LICENSE).

- ``cifar10``: the binary distribution (cifar-10-binary.tar.gz, extracted): ``data_batch_1.bin`` ..
  ``data_batch_5.bin`` in ``data_dir/cifar-10-batches-bin`` or in ``data_dir`` itself. Each record is one
  label byte then 3072 pixel bytes: the R, G and B planes of a 32x32 image, row-major.
- ``cifar100``: ``train.bin`` of cifar-100-binary.tar.gz in ``data_dir/cifar-100-binary`` or ``data_dir``;
  records of a coarse and a fine label byte then 3072 pixel bytes. The fine label (100 classes) is used.
  For both CIFARs, ``data_dir`` defaults to ``$OPMIX_DATA``; images stay at 32x32.
- ``imagefolder:PATH``: ``PATH/<class>/<image>`` (.png .jpg .jpeg .bmp .gif .webp, any case), classes in
  sorted name order; each image is converted to RGB and resized to ``image_size`` (PIL's bilinear, which
  averages over the source pixels when it shrinks). ``resize_data`` reads the files again at the size it is
  asked for, so a proxy at ``--image-size 64`` sees 64 px of the source, not a 32-px read blown up.

Every failure is a ``DataError`` whose one-line message names the path, says what is wrong and how to fix it.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import OpmixError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["ImageData", "DataError", "load_dataset", "resize_data", "find_fashion_mnist", "DATASETS",
           "SYSTEM_FASHION_MNIST"]

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagefolder:PATH")
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "OPMIX_DATA"
EMBEDDED = "embedded subset"

IDX_IMAGES, IDX_LABELS = 0x00000803, 0x00000801
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
FASHION_CLASSES = 10
CIFAR_PIXELS = 3 * 32 * 32
CIFAR10_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
REINSTALL = ("re-download it from https://github.com/zalandoresearch/fashion-mnist "
             "or reinstall the package dataset-fashion-mnist")


class DataError(OpmixError):
    """A dataset that cannot be read; the one-line message names the path, the problem and the fix."""


@dataclass(frozen=True)
class ImageData:
    """The training set of a dataset split into train and validation parts, as uint8 (N, C, H, W) tensors."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per channel, of train_x in [0, 1] units
    std: tuple[float, ...]
    source: str
    # (train_x, val_x) read again from the files at another size, for a dataset read at a size of our choosing
    # (an image folder): resizing then starts from the source's pixels, not from the first read's.
    reader: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False,
                                                                               compare=False)

    @property
    def in_chans(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[2]


def load_dataset(name: str, data_dir: str | Path | None = None, *, val_fraction: float = 0.1,
                 seed: int = 0, image_size: int = 32) -> ImageData:
    """The training set of ``name`` (one of ``DATASETS``), split into train and validation parts."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction!r} is outside (0, 1); give the fraction of the training set "
                        "to hold out, e.g. 0.1")
    files = None  # an image folder's files, read again at another size by resize_data
    if name == "fashion-mnist":
        x, y, num_classes, source = _load_fashion_mnist(data_dir)
    elif name in ("cifar10", "cifar100"):
        x, y, num_classes, source = _load_cifar(name, data_dir)
    elif name.startswith("imagefolder:"):
        files, y, num_classes, source = _imagefolder_files(name.removeprefix("imagefolder:"), image_size)
        x = _read_images(files, image_size)
    else:
        raise DataError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
    train, val = _split(len(y), val_fraction, seed, source)
    train_x = x[train]
    mean, std = _channel_stats(train_x)
    reader = None if files is None else functools.partial(_read_split, files, train, val)
    return ImageData(name=name, train_x=train_x, train_y=y[train], val_x=x[val], val_y=y[val],
                     num_classes=num_classes, mean=mean, std=std, source=source, reader=reader)


def resize_data(data: ImageData, image_size: int | None) -> ImageData:
    """``data`` with its images at ``image_size`` px (None: as they are). An image folder is read again from
    its files at that size (see the module docstring); tensors that are the source (the IDX and CIFAR
    formats) are resized bilinearly, with antialiasing when they shrink, and rounded to uint8. Labels, split
    and the normalization stay the dataset's. Resize once per dataset, not per trial."""
    if image_size is None or image_size == data.image_size:
        return data
    if image_size < 1:
        raise DataError(f"image_size={image_size} must be a positive number of pixels")
    if data.reader is not None:
        train_x, val_x = data.reader(image_size)
    else:
        train_x, val_x = _interpolate(data.train_x, image_size), _interpolate(data.val_x, image_size)
    return dataclasses.replace(data, train_x=train_x, val_x=val_x)


def _interpolate(x: torch.Tensor, image_size: int) -> torch.Tensor:
    out = [F.interpolate(x[i:i + 4096].float(), size=(image_size, image_size), mode="bilinear",
                         align_corners=False, antialias=image_size < x.shape[-1])
           for i in range(0, len(x), 4096)]
    return torch.cat(out).round_().clamp_(0, 255).to(torch.uint8)


def find_fashion_mnist(data_dir: str | Path | None = None) -> Path | None:
    """The folder Fashion-MNIST is read from, or None for the embedded subset (see the module docstring)."""
    env = os.environ.get(ENV_VAR)
    for given, what, instead in ((data_dir, "", f"leave data_dir unset to use ${ENV_VAR}"),
                                 (env, f"${ENV_VAR}=", f"unset {ENV_VAR} to use")):
        if given is None or given == "":
            continue
        root = Path(given).expanduser()
        found = _fashion_folder(root)
        if found is None:  # a folder that was named on purpose: never a silent fallback
            raise DataError(f"{what}{root}: no Fashion-MNIST training set (expected {FASHION_FILES[0]}[.gz] and "
                            f"{FASHION_FILES[1]}[.gz] in it or in {root / 'fashion-mnist'}); put the files there "
                            f"or {instead} {SYSTEM_FASHION_MNIST} or the embedded subset")
        return found
    return _fashion_folder(Path(SYSTEM_FASHION_MNIST))


def _fashion_folder(root: Path) -> Path | None:
    for folder in (root, root / "fashion-mnist"):
        if all(_idx_path(folder, stem) is not None for stem in FASHION_FILES):
            return folder
    return None


def _idx_path(folder: Path, stem: str) -> Path | None:
    # The raw file first: it needs no decompression and, when both exist, is the extracted copy of the .gz.
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def _load_fashion_mnist(data_dir: str | Path | None) -> tuple[torch.Tensor, torch.Tensor, int, str]:
    folder = find_fashion_mnist(data_dir)
    if folder is None:
        embedded = resources.files("nas") / "_data" / "fashion-mnist-subset"
        images_file, labels_file = (embedded / f"{stem}.gz" for stem in FASHION_FILES)
        source = EMBEDDED
    else:
        images_file, labels_file = (_idx_path(folder, stem) for stem in FASHION_FILES)
        source = str(folder)
    images = _read_idx(images_file, IDX_IMAGES)
    labels = _read_idx(labels_file, IDX_LABELS)
    n, rows, cols = images.shape
    if len(labels) != n:
        raise DataError(f"{images_file}: {n} images but {labels_file} has {len(labels)} labels; "
                        f"the files belong to different sets, {REINSTALL}")
    if rows != cols:
        raise DataError(f"{images_file}: images are {rows}x{cols}, expected square; {REINSTALL}")
    if n and labels.max() >= FASHION_CLASSES:
        raise DataError(f"{labels_file}: label {labels.max()} is not in 0..{FASHION_CLASSES - 1}; {REINSTALL}")
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # copy: frombuffer arrays are read-only
    return x, torch.from_numpy(labels.astype(np.int64)), FASHION_CLASSES, source


def _read_idx(path: Path | Traversable, magic: int) -> np.ndarray:
    """The uint8 array in an IDX file (raw or gzipped), its magic number and size checked."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # the gzip magic, whatever the file is called
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read ({err}); {REINSTALL}") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header; the file is truncated, {REINSTALL}")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise DataError(f"{path}: IDX magic number {found:#010x}, expected {magic:#010x}; the file is corrupt or "
                        f"not a {ndim}-dimensional uint8 IDX file, {REINSTALL}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(dims)
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{path}: {len(raw)} bytes but its header {'x'.join(map(str, dims))} needs {expected}; "
                        f"the file is {problem}, {REINSTALL}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _load_cifar(name: str, data_dir: str | Path | None) -> tuple[torch.Tensor, torch.Tensor, int, str]:
    """CIFAR-10 or CIFAR-100 training records from the binary distribution."""
    if name == "cifar10":
        sub, files, label_bytes, num_classes = "cifar-10-batches-bin", CIFAR10_BATCHES, 1, 10
        fetch = "the CIFAR-10 binary version, cifar-10-binary.tar.gz,"
    else:
        sub, files, label_bytes, num_classes = "cifar-100-binary", ("train.bin",), 2, 100
        fetch = "the CIFAR-100 binary version, cifar-100-binary.tar.gz,"
    where = f"download {fetch} from https://www.cs.toronto.edu/~kriz/cifar.html and extract it"
    if data_dir is None:
        data_dir = os.environ.get(ENV_VAR) or None
        if data_dir is None:
            raise DataError(f"{name}: no data_dir given and ${ENV_VAR} is unset; {where}, then pass the folder "
                            f"as data_dir or set ${ENV_VAR} to it")
    root = Path(data_dir).expanduser()
    folder = next((d for d in (root / sub, root) if all((d / f).is_file() for f in files)), None)
    if folder is None:
        raise DataError(f"{root}: no {name} training set (expected {sub}/{', '.join(files)}, or those files "
                        f"directly in it); {where} there")
    parts = [_read_cifar_records(folder / f, label_bytes, num_classes) for f in files]
    x = torch.cat([p[0] for p in parts])
    y = torch.cat([p[1] for p in parts])
    return x, y, num_classes, str(folder)


def _read_cifar_records(path: Path, label_bytes: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    record = label_bytes + CIFAR_PIXELS
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err}); download and extract the binary version again") from None
    if not raw or len(raw) % record:
        raise DataError(f"{path}: {len(raw)} bytes is not a positive multiple of the {record}-byte record; the file "
                        "is truncated or not the binary version, download and extract it again")
    records = np.frombuffer(raw, np.uint8).reshape(-1, record)
    labels = records[:, label_bytes - 1].astype(np.int64)  # CIFAR-100: the fine label, the second byte
    if labels.max() >= num_classes:
        raise DataError(f"{path}: label {labels.max()} is not in 0..{num_classes - 1}; the file is corrupt or "
                        "belongs to the other CIFAR, download and extract it again")
    images = records[:, label_bytes:].reshape(-1, 3, 32, 32).copy()  # planes R, G, B; copy: read-only buffer
    return torch.from_numpy(images), torch.from_numpy(labels)


def _imagefolder_files(path: str, image_size: int) -> tuple[tuple[Path, ...], torch.Tensor, int, str]:
    """PATH/<class>/<image>: the image files and their labels, classes in sorted name order."""
    root = Path(path).expanduser()
    if not path or not root.is_dir():
        raise DataError(f"{root}: not a folder; give imagefolder:PATH with PATH/<class_name>/<images>")
    if image_size < 1:
        raise DataError(f"{root}: image_size={image_size} must be a positive number of pixels")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{root}: {len(classes)} class folder(s), need at least 2; put each class's images in "
                        "PATH/<class_name>/")
    files: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(classes):
        found = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"{folder}: class {folder.name!r} has no images ({' '.join(IMAGE_SUFFIXES)}); add "
                            "some or remove the folder")
        files += found
        labels += [label] * len(found)
    return tuple(files), torch.tensor(labels, dtype=torch.int64), len(classes), str(root)


def _read_images(files: tuple[Path, ...], image_size: int) -> torch.Tensor:
    """Every file as RGB at image_size x image_size, uint8 (N, 3, H, W)."""
    images = np.stack([_read_image(f, image_size) for f in files])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def _read_split(files: tuple[Path, ...], train: torch.Tensor, val: torch.Tensor, image_size: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``ImageData.reader`` of an image folder: the train and validation images read again at image_size."""
    x = _read_images(files, image_size)
    return x[train], x[val]


def _read_image(path: Path, image_size: int) -> np.ndarray:
    from PIL import Image  # only this format needs Pillow

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    # PIL raises OSError (UnidentifiedImageError) for most damage, but ValueError or SyntaxError for some.
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        message = str(err).replace("\n", " ")
        raise DataError(f"{path}: cannot read the image ({message}); replace or remove the file") from None


def _split(n: int, val_fraction: float, seed: int, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the train and validation parts: the last round(val_fraction * n) of a seeded permutation."""
    n_val = max(1, round(val_fraction * n))
    if n_val >= n:
        raise DataError(f"{source}: {n} image(s) cannot be split with val_fraction={val_fraction}; add images "
                        "or lower val_fraction")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[: n - n_val], order[n - n_val:]


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, in float64 chunks to bound memory."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in x.split(1024):
        f = chunk.to(torch.float64)
        total += f.sum(dim=(0, 2, 3))
        squares += f.square().sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())
