"""nas.data: IDX, CIFAR binary and image-folder readers, the seeded split, the Fashion-MNIST search order.

Everything is written into tmp_path; the system folder and $OPMIX_DATA are monkeypatched away for every
test, so nothing here depends on /usr/share/datasets (one test compares the embedded subset with it when
it is installed, and is skipped otherwise).
"""

from __future__ import annotations

import dataclasses
import gzip
import struct
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

import nas.data as data
from nas.data import DATASETS, DataError, ImageData, find_fashion_mnist, load_dataset

IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


@pytest.fixture(autouse=True)
def _no_installed_data(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", tmp_path / "no-system-folder")
    monkeypatch.delenv("OPMIX_DATA", raising=False)


# Writers, independent of the code under test.

def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_fashion(folder: Path, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, blob in ((IMAGES, idx_bytes(images, 0x803)), (LABELS, idx_bytes(labels, 0x801))):
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / stem).write_bytes(blob)
    return folder


def indexed_images(n: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Random images whose first two pixels spell their index, so every image is distinct and traceable."""
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return images, (np.arange(n) % 10).astype(np.uint8)


def unsplit(d: ImageData, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The training set in file order, rebuilt from the split by the documented rule."""
    n = len(d.train_y) + len(d.val_y)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    x = torch.empty((n, *d.train_x.shape[1:]), dtype=torch.uint8)
    y = torch.empty(n, dtype=torch.int64)
    x[order[: len(d.train_y)]], y[order[: len(d.train_y)]] = d.train_x, d.train_y
    x[order[len(d.train_y):]], y[order[len(d.train_y):]] = d.val_x, d.val_y
    return x, y


def assert_one_line_error(excinfo, *needles) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert str(needle) in message


# IDX reading and the split.

@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_is_exact(tmp_path, gz):
    images, labels = indexed_images(40)
    folder = write_fashion(tmp_path / "fm", images, labels, gz=gz)
    d = load_dataset("fashion-mnist", folder, val_fraction=0.1, image_size=64)
    x, y = unsplit(d)
    assert torch.equal(x, torch.from_numpy(images).unsqueeze(1))
    assert torch.equal(y, torch.from_numpy(labels).long())
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert (d.in_chans, d.image_size, d.num_classes) == (1, 28, 10)  # image_size ignored for fashion-mnist
    assert d.name == "fashion-mnist" and d.source == str(folder)


def test_gz_images_with_raw_labels(tmp_path):
    images, labels = indexed_images(12)
    folder = tmp_path / "mixed"
    write_fashion(folder, images, labels, gz=True)
    (folder / f"{LABELS}.gz").unlink()
    (folder / LABELS).write_bytes(idx_bytes(labels, 0x801))
    x, y = unsplit(load_dataset("fashion-mnist", folder))
    assert torch.equal(x[:, 0], torch.from_numpy(images)) and torch.equal(y, torch.from_numpy(labels).long())


def test_test_set_is_never_read(tmp_path):
    folder = write_fashion(tmp_path / "fm", *indexed_images(10))
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip, would fail if read")
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\0")
    assert len(load_dataset("fashion-mnist", folder).train_y) == 9


def test_split_is_disjoint_covering_and_seeded(tmp_path):
    folder = write_fashion(tmp_path / "fm", *indexed_images(300))

    def ids(x: torch.Tensor) -> list[int]:
        return (x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).tolist()

    d = load_dataset("fashion-mnist", folder, val_fraction=0.3, seed=7)
    train, val = ids(d.train_x), ids(d.val_x)
    assert (len(train), len(val)) == (210, 90)
    assert not set(train) & set(val) and sorted(train + val) == list(range(300))
    assert (d.train_y == torch.tensor(train) % 10).all() and (d.val_y == torch.tensor(val) % 10).all()
    again = load_dataset("fashion-mnist", folder, val_fraction=0.3, seed=7)
    assert ids(again.train_x) == train and ids(again.val_x) == val
    other = load_dataset("fashion-mnist", folder, val_fraction=0.3, seed=8)
    assert set(ids(other.val_x)) != set(val)
    assert len(load_dataset("fashion-mnist", folder, val_fraction=1e-6).val_y) == 1  # at least one


def test_mean_std_come_from_train_part(tmp_path):
    d = load_dataset("fashion-mnist", write_fashion(tmp_path / "fm", *indexed_images(50)), val_fraction=0.2)
    pixels = d.train_x.double() / 255
    assert d.mean == pytest.approx((pixels.mean().item(),), abs=1e-12)
    assert d.std == pytest.approx((pixels.std(unbiased=False).item(),), abs=1e-12)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_val_fraction(tmp_path, fraction):
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset("fashion-mnist", write_fashion(tmp_path / "fm", *indexed_images(10)), val_fraction=fraction)


# The Fashion-MNIST search order.

def test_search_order(tmp_path, monkeypatch):
    given = write_fashion(tmp_path / "given", *indexed_images(11))
    env = write_fashion(tmp_path / "env" / "fashion-mnist", *indexed_images(12))  # $OPMIX_DATA/fashion-mnist
    system = write_fashion(tmp_path / "system", *indexed_images(13))
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", system)
    monkeypatch.setenv("OPMIX_DATA", str(tmp_path / "env"))

    def picked(data_dir=None) -> tuple[Path | None, int, str]:
        d = load_dataset("fashion-mnist", data_dir)
        return find_fashion_mnist(data_dir), len(d.train_y) + len(d.val_y), d.source

    assert picked(given) == (given, 11, str(given))
    assert picked(tmp_path / "env") == (env, 12, str(env))  # a data_dir may hold fashion-mnist/ too
    assert picked() == (env, 12, str(env))
    monkeypatch.setenv("OPMIX_DATA", str(env))  # the folder itself
    assert picked() == (env, 12, str(env))
    monkeypatch.setenv("OPMIX_DATA", str(tmp_path / "empty"))  # set but without the files: an error, no fallback
    with pytest.raises(data.DataError) as excinfo:
        picked()
    assert_one_line_error(excinfo, "$OPMIX_DATA=", str(tmp_path / "empty"), "unset OPMIX_DATA")
    assert picked(given) == (given, 11, str(given))  # a data_dir given still wins over it
    monkeypatch.delenv("OPMIX_DATA")
    assert picked() == (system, 13, str(system))
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", tmp_path / "nowhere")
    assert picked() == (None, 10_000, "embedded subset")


def test_data_dir_without_files_does_not_fall_back(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", write_fashion(tmp_path / "system", *indexed_images(13)))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / f"{IMAGES}.gz").write_bytes(gzip.compress(idx_bytes(indexed_images(5)[0], 0x803)))  # labels missing
    for call in (lambda: find_fashion_mnist(empty), lambda: load_dataset("fashion-mnist", empty)):
        with pytest.raises(DataError) as excinfo:
            call()
        assert_one_line_error(excinfo, empty, IMAGES, LABELS)


# Corrupt IDX files.

def test_bad_magic(tmp_path):
    images, labels = indexed_images(10)
    folder = write_fashion(tmp_path / "fm", images, labels, gz=False)
    (folder / IMAGES).write_bytes(idx_bytes(images, 0x801))  # a labels magic on the images
    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist", folder)
    assert_one_line_error(excinfo, folder / IMAGES, "magic", "0x00000803", "dataset-fashion-mnist")


@pytest.mark.parametrize("gz", [True, False])
def test_truncated(tmp_path, gz):
    images, labels = indexed_images(10)
    folder = write_fashion(tmp_path / "fm", images, labels, gz=gz)
    path = folder / (f"{LABELS}.gz" if gz else LABELS)
    path.write_bytes(path.read_bytes()[:-3])  # gz: a cut stream; raw: data shorter than the header says
    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist", folder)
    assert_one_line_error(excinfo, path, "re-download")


@pytest.mark.parametrize("blob", [b"", b"\0\0\x08", idx_bytes(np.zeros((2, 4, 4), np.uint8), 0x803) + b"\0"])
def test_short_or_long_idx(tmp_path, blob):
    folder = write_fashion(tmp_path / "fm", *indexed_images(10), gz=False)
    (folder / IMAGES).write_bytes(blob)
    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist", folder)
    assert_one_line_error(excinfo, folder / IMAGES)


def test_count_mismatch_and_bad_label(tmp_path):
    images, labels = indexed_images(10)
    folder = write_fashion(tmp_path / "fm", images, labels[:9], gz=False)
    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist", folder)
    assert_one_line_error(excinfo, folder / IMAGES, "10 images", "9 labels")
    labels[3] = 10
    write_fashion(folder, images, labels, gz=False)
    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist", folder)
    assert_one_line_error(excinfo, folder / LABELS, "label 10")


# CIFAR binary.

def cifar_records(n: int, label_bytes: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """n records with known labels and pixels; returns the bytes, the images (N, 3, 32, 32) and the labels."""
    pixels = (np.arange(3 * 32 * 32)[None, :] * 7 + 13 * np.arange(n)[:, None]) % 256
    pixels[0, :1024], pixels[0, 1024:2048], pixels[0, 2048:] = 200, 100, 50  # record 0: R, G, B planes
    if label_bytes == 1:  # CIFAR-10: one label, 0..9
        labels = ((np.arange(n) * 3 + 1) % 10)[:, None]
    else:  # CIFAR-100: coarse (0..19), then fine (0..99)
        labels = np.stack([np.arange(n) % 20, (np.arange(n) * 3 + 1) % 100], axis=1)
    records = np.concatenate([labels, pixels], axis=1).astype(np.uint8)
    return records.tobytes(), pixels.reshape(n, 3, 32, 32).astype(np.uint8), labels[:, -1]


@pytest.mark.parametrize("nested", [True, False])
def test_cifar10_records(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-bin" if nested else tmp_path
    folder.mkdir(exist_ok=True)
    blobs = [cifar_records(4 + i, 1) for i in range(5)]
    for i, (blob, _, _) in enumerate(blobs, start=1):
        (folder / f"data_batch_{i}.bin").write_bytes(blob)
    (folder / "test_batch.bin").write_bytes(b"never read")
    d = load_dataset("cifar10", tmp_path, val_fraction=0.2, image_size=64)
    x, y = unsplit(d)
    assert torch.equal(x, torch.from_numpy(np.concatenate([b[1] for b in blobs])))
    assert torch.equal(y, torch.from_numpy(np.concatenate([b[2] for b in blobs])).long())
    assert (x[0, 0] == 200).all() and (x[0, 1] == 100).all() and (x[0, 2] == 50).all()
    assert (d.num_classes, d.in_chans, d.image_size, d.source) == (10, 3, 32, str(folder))
    assert len(d.mean) == len(d.std) == 3


def test_cifar100_uses_fine_label(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    blob, images, fine = cifar_records(9, 2)
    (folder / "train.bin").write_bytes(blob)
    monkeypatch.setenv("OPMIX_DATA", str(tmp_path))  # the data_dir default
    d = load_dataset("cifar100", val_fraction=0.2)
    x, y = unsplit(d)
    assert torch.equal(x, torch.from_numpy(images)) and torch.equal(y, torch.from_numpy(fine).long())
    assert y.tolist() != (np.arange(9) % 20).tolist() and d.num_classes == 100


@pytest.mark.parametrize("name, file, record", [("cifar10", "data_batch_3.bin", 3073), ("cifar100", "train.bin", 3074)])
def test_cifar_bad_size(tmp_path, name, file, record):
    for f in ("train.bin", *(f"data_batch_{i}.bin" for i in range(1, 6))):
        (tmp_path / f).write_bytes(bytes(record * 2))
    (tmp_path / file).write_bytes(bytes(record * 2 + 5))
    with pytest.raises(DataError) as excinfo:
        load_dataset(name, tmp_path)
    assert_one_line_error(excinfo, tmp_path / file, "multiple")


def test_cifar_missing(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", tmp_path)
    assert_one_line_error(excinfo, tmp_path, "cifar-10-binary.tar.gz", "data_batch_1.bin")
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar100", tmp_path / "absent")
    assert_one_line_error(excinfo, tmp_path / "absent", "cifar-100-binary.tar.gz")
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10")
    assert_one_line_error(excinfo, "OPMIX_DATA", "cifar-10-binary.tar.gz")


# Image folders.

def write_png(path: Path, color, mode: str = "RGB", size=(5, 7)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format="PNG")


def test_imagefolder(tmp_path):
    root = tmp_path / "imgs"
    write_png(root / "cat" / "a.png", (10, 20, 30))
    write_png(root / "cat" / "b.PNG", (10, 20, 30))
    write_png(root / "ant" / "x.png", 77, mode="L")  # grayscale becomes RGB
    write_png(root / "ant" / "y.png", 77, mode="L", size=(9, 3))
    write_png(root / "ant" / "z.png", 77, mode="L")
    (root / "ant" / "notes.txt").write_text("not an image, ignored")
    d = load_dataset(f"imagefolder:{root}", val_fraction=0.2, image_size=8)
    x, y = unsplit(d)
    assert (d.name, d.num_classes, d.source) == (f"imagefolder:{root}", 2, str(root))
    assert x.shape == (5, 3, 8, 8) and (d.in_chans, d.image_size) == (3, 8)
    assert y.tolist() == [0, 0, 0, 1, 1]  # classes sorted by name: ant, cat
    assert (x[:3] == 77).all()  # a flat colour stays exact through the bilinear resize
    assert (x[3:, 0] == 10).all() and (x[3:, 1] == 20).all() and (x[3:, 2] == 30).all()


def striped_png(path: Path, k: int) -> np.ndarray:
    """A 64-px image of 1-px stripes (vertical in red, horizontal in blue, green k * 20): stripes that a 32-px
    read averages away. Returns its pixels, (64, 64, 3)."""
    from PIL import Image

    i, j = np.mgrid[:64, :64]
    pixels = np.stack([255 * (j % 2), np.full_like(j, 20 * k), 255 * (i % 2)], axis=-1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")
    return pixels


def test_imagefolder_is_read_again_at_the_size_asked_for(tmp_path):
    """resize_data (what --image-size goes through) reads an image folder's files at the new size: at 64 px
    the source's own pixels, at 48 PIL's bilinear of the 64-px source, never the 32-px first read blown up."""
    from PIL import Image

    from nas.data import resize_data

    root = tmp_path / "imgs"
    sources = [striped_png(root / f"class{k % 2}" / f"{k}.png", k) for k in range(6)]
    order = [0, 2, 4, 1, 3, 5]  # file order: class0's images, then class1's
    d = load_dataset(f"imagefolder:{root}", val_fraction=0.5)  # the default read: 32 px
    assert d.image_size == 32
    at64 = resize_data(d, 64)
    x, y = unsplit(at64)
    assert torch.equal(x, torch.from_numpy(np.stack([sources[k] for k in order])).permute(0, 3, 1, 2))
    assert torch.equal(y, unsplit(d)[1]) and at64.mean == d.mean
    x48, _ = unsplit(resize_data(d, 48))
    expected = [np.asarray(Image.fromarray(sources[k]).resize((48, 48), Image.Resampling.BILINEAR)) for k in order]
    assert torch.equal(x48, torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2))
    assert not torch.equal(x48, unsplit(resize_data(dataclasses.replace(d, reader=None), 48))[0])


def test_imagefolder_errors(tmp_path):
    root = tmp_path / "imgs"
    write_png(root / "only" / "a.png", (1, 2, 3))
    write_png(root / "only" / "b.png", (1, 2, 3))
    with pytest.raises(DataError) as excinfo:
        load_dataset(f"imagefolder:{root}")
    assert_one_line_error(excinfo, root, "1 class")
    (root / "empty").mkdir()
    with pytest.raises(DataError) as excinfo:
        load_dataset(f"imagefolder:{root}")
    assert_one_line_error(excinfo, root / "empty", "no images")
    write_png(root / "empty" / "ok.png", (4, 5, 6))
    (root / "empty" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError) as excinfo:
        load_dataset(f"imagefolder:{root}")
    assert_one_line_error(excinfo, root / "empty" / "broken.png")
    with pytest.raises(DataError) as excinfo:
        load_dataset(f"imagefolder:{tmp_path / 'absent'}")
    assert_one_line_error(excinfo, tmp_path / "absent")


# The embedded subset and names.

def test_embedded_subset():
    assert find_fashion_mnist() is None
    d = load_dataset("fashion-mnist")
    assert d.source == "embedded subset"
    assert (d.num_classes, d.in_chans, d.image_size, len(d.val_y)) == (10, 1, 28, 1000)
    counts = torch.bincount(torch.cat([d.train_y, d.val_y]), minlength=10)
    assert counts.tolist() == [1000] * 10
    assert 0.25 < d.mean[0] < 0.32 and 0.32 < d.std[0] < 0.39  # real Fashion-MNIST: 0.286, 0.353
    license_text = (resources.files("nas") / "_data" / "fashion-mnist-subset" / "LICENSE").read_text()
    assert "Zalando" in license_text and "Permission is hereby granted" in license_text


@pytest.mark.skipif(not (Path("/usr/share/datasets/fashion-mnist") / f"{IMAGES}.gz").is_file(),
                    reason="dataset-fashion-mnist is not installed")
def test_embedded_subset_is_first_thousand_per_class():
    system = Path("/usr/share/datasets/fashion-mnist")
    full_x = data._read_idx(system / f"{IMAGES}.gz", 0x803)
    full_y = data._read_idx(system / f"{LABELS}.gz", 0x801)
    chosen = np.sort(np.concatenate([np.flatnonzero(full_y == c)[:1000] for c in range(10)]))
    x, y = unsplit(load_dataset("fashion-mnist"))
    assert torch.equal(x[:, 0], torch.from_numpy(full_x[chosen]))
    assert torch.equal(y, torch.from_numpy(full_y[chosen]).long())


def test_unknown_name_lists_datasets():
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist")
    assert_one_line_error(excinfo, "mnist", *DATASETS)
