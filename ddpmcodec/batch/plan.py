"""Batch coding: many images (or .ddpm files) in one call, on worker processes or on Ray (ddpmcodec.cluster).

Every item is coded by the same single-image functions as `ddpmcodec encode|decode IMAGE`, one image per network
call, so each output is byte-identical to a single-image run whatever the worker count (the U-Net's CPU results
depend on batch size, so tiles of different images are never batched together). Workers are processes, each with
one torch thread, that load the model themselves from `model_spec`.

- Outputs go into `out_dir` as <input stem>.ddpm (encode) or <stem>.png (decode), each written atomically; two
  inputs that would write the same name are refused before anything runs.
- A rerun skips items whose output is already there and complete (a .ddpm that parses and is complete; for a PNG,
  that it exists) unless `force`.
- An item that fails is recorded with a one-line reason; the others go on.

Sources for encode: image files, folders (the image files directly inside, sorted by name) and datasets (.npz,
CIFAR-10 python archives or folders, `archive.tar.gz::test`), whose images are named <dataset>_<index:05d>.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ddpmcodec.errors import CodecError, InputError

Progress = Callable[[int, int], None]  # progress(items finished, items in all), called in the calling process


# ---- what is coded ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One image to encode (a file, or pixels taken from a dataset) or one .ddpm file to decode."""

    source: str  # what the user named: a path, or 'dataset[index]'
    output: str  # the output file in out_dir
    path: str | None = None  # file to read (None: `pixels` holds the image)
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class EncodeJob:
    """Everything a worker needs besides the item: the model to load and the single-image options."""

    model_spec: str
    settings: object  # CodecSettings (progressive) or ddpmcodec.bitsback.codec.BitsBackSettings
    stop_at_t: int = 0
    target_psnr: float | None = None
    target_bpp: float | None = None
    force: bool = False
    allow_pickle: bool = False
    device: str = "cpu"
    kind: str = "encode"


@dataclass(frozen=True)
class DecodeJob:
    model_spec: str
    stop_at_t: int | None = None
    stop_at_bytes: int | None = None
    allow_partial: bool = False  # write what a partial file holds (else the item fails and nothing is written)
    limits: object = None  # ddpmcodec.container.limits.DecodeLimits
    force: bool = False
    allow_pickle: bool = False
    device: str = "cpu"
    kind: str = "decode"


# ---- what came out ---------------------------------------------------------------------------------------------
@dataclass
class ItemResult:
    source: str
    output: str
    status: str  # "done", "skipped" (output already complete) or "failed"
    reason: str = ""  # one line: why it failed, or a note (conversion, lossy stop, partial file)
    bytes: int = 0  # size of the .ddpm file written (encode) or read (decode)
    pixels: int = 0  # H * W of the image
    seconds: float = 0.0


@dataclass
class BatchSummary:
    """Per-item results in input order; totals count the items coded in this run ('done')."""

    results: list[ItemResult]
    seconds: float
    workers: int = 1

    def _with(self, status: str) -> list[ItemResult]:
        return [r for r in self.results if r.status == status]

    @property
    def done(self) -> int:
        return len(self._with("done"))

    @property
    def skipped(self) -> int:
        return len(self._with("skipped"))

    @property
    def failures(self) -> list[tuple[str, str]]:
        """(source, one-line reason) of every failed item."""
        return [(r.source, r.reason) for r in self._with("failed")]

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def total_bytes(self) -> int:
        return sum(r.bytes for r in self._with("done"))

    @property
    def mean_bpp(self) -> float:
        """Bits per pixel over every image coded in this run (total bits / total pixels); nan if none."""
        pixels = sum(r.pixels for r in self._with("done"))
        return 8 * self.total_bytes / pixels if pixels else float("nan")

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        bpp = f"{self.mean_bpp:.3f}" if self.done else "-"
        return (f"{len(self.results)} images: {self.done} coded, {self.skipped} skipped, {self.failed} failed; "
                f"{self.total_bytes} bytes, mean {bpp} bpp; {self.seconds:.1f} s, {self.images_per_s:.2f} images/s "
                f"({self.workers} worker{'s' if self.workers != 1 else ''})")


# ---- planning --------------------------------------------------------------------------------------------------
def _dataset_name(path: Path, split: str | None) -> str:
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".tar", ".npz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return f"{name}_{split}" if split else name


def expand_sources(sources: Sequence[str | Path], out_dir: Path) -> list[Item]:
    """Image files, folders and datasets -> items to encode (InputError for a missing source or an empty folder)."""
    from ddpmcodec.cifar10_archive import is_cifar10_python, split_source
    from ddpmcodec.data import list_image_files, load_images

    items: list[Item] = []
    for src in sources:
        path, split = split_source(src)
        if is_cifar10_python(path) or path.suffix.lower() == ".npz" or split is not None:
            images = load_images(src)
            stem = _dataset_name(path, split)
            items += [Item(f"{src}[{i}]", str(out_dir / f"{stem}_{i:05d}.ddpm"), pixels=im)
                      for i, im in enumerate(images)]
        elif path.is_dir():
            files = list_image_files(path)
            if not files:
                raise InputError(f"{path}: no image files")
            items += [Item(str(f), str(out_dir / f"{f.stem}.ddpm"), path=str(f)) for f in files]
        elif path.exists():
            items.append(Item(str(src), str(out_dir / f"{path.stem}.ddpm"), path=str(src)))
        else:
            raise InputError(f"{src}: no such file or folder")
    return items


def expand_ddpm_files(files: Sequence[str | Path], out_dir: Path) -> list[Item]:
    """.ddpm files and folders (their *.ddpm files) -> items to decode."""
    items: list[Item] = []
    for f in files:
        path = Path(f)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".ddpm")
            if not found:
                raise InputError(f"{path}: no .ddpm files")
            items += [Item(str(p), str(out_dir / f"{p.stem}.png"), path=str(p)) for p in found]
        elif path.exists():
            items.append(Item(str(f), str(out_dir / f"{path.stem}.png"), path=str(f)))
        else:
            raise InputError(f"{f}: no such file or folder")
    return items


def check_names(items: list[Item]) -> None:
    """Refuse two items that would write the same output (a/x.png and b/x.jpg -> x.ddpm)."""
    seen: dict[str, str] = {}
    for it in items:
        if it.output in seen:
            raise InputError(f"{seen[it.output]} and {it.source} would both write {it.output}; "
                             "code them into separate output folders")
        seen[it.output] = it.source
        if Path(it.output).is_dir():
            raise InputError(f"{it.output} is a directory, expected a file name")


def output_complete(kind: str, output: str | Path) -> bool:
    """What a rerun skips: a .ddpm that parses and is complete; a PNG that exists."""
    p = Path(output)
    if not p.is_file():
        return False
    if kind == "decode":
        return True
    from ddpmcodec.container import header as container

    try:
        return container.unpack(p.read_bytes()).complete
    except (CodecError, OSError, ValueError):
        return False


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise InputError(f"{out_dir}: cannot write (permission denied)")


