"""Small data, a small space and the ways to run a command for tests that run real searches."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
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


def small_args(workdir: Path, *extra, confirm: int | None = 0) -> list[str]:
    """A tiny search's flags over ``workdir``'s ``mini.yaml``, ``data`` and ``runs``; ``confirm=None`` leaves
    --confirm out (a resume keeps the run's own)."""
    return ["--budget", "80M", "--space", str(workdir / "mini.yaml"), "--epochs", "2", "--max-train", "128",
            "--data-dir", str(workdir / "data"), "--runs-dir", str(workdir / "runs"), *extra,
            *([] if confirm is None else ["--confirm", str(confirm)])]


def clean_env(*, drop: tuple[str, ...] = (), **extra) -> dict:
    """This process's environment without the RAY_* variables that an in-process ray.init leaves behind
    (RAY_AUTH_MODE and the like, which would make a new Ray expect a token it cannot find), without the
    variables named in ``drop``, and with ``extra`` added."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k not in drop}, **extra}


def run_search(*args, cwd: Path, env_extra: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m nas.search ARGS`` in a fresh interpreter with its own Ray: for what only a real process shows
    (the console's exit code, a signal, a driver killed with its Ray). Anything else runs in-process
    (``run_cli``), which saves the interpreter, the imports and the start of Ray."""
    return subprocess.run([sys.executable, "-m", "nas.search", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=clean_env(**(env_extra or {})))


def run_cli(main: Callable[[list[str] | None], None], *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """A command's ``main(argv)`` (``nas.search.main``, ``nas.export.main``, ...) run in this process (in the
    folder ``cwd``, if given), its exit code and printed text returned as ``subprocess.run`` returns a child's:
    the same one-line errors and exit codes, read without starting a Python. A bug (any exception but
    ``SystemExit``) propagates as its traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd or os.getcwd()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return subprocess.CompletedProcess([main.__module__, *map(str, args)], code, out.getvalue(), err.getvalue())


def search_cli(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m nas.search ARGS`` run in this process (``run_cli``); a search joins the Ray already running
    here (the ``local_ray`` fixture's)."""
    import nas.search

    return run_cli(nas.search.main, *args, cwd=cwd)
