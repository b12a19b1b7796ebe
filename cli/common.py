"""Helpers shared by the CLI commands: model options, devices, input/output checks, safe output, progress bars."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ddpmcodec.errors import InputError
from ddpmcodec.atomic_write import atomic_write


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device} requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return device


def show_progress(quiet: bool) -> bool:
    """Progress bars go to stderr, only when it is a terminal and not --quiet."""
    return not quiet and sys.stderr.isatty()


def quiet_option(help: str = "No progress bar or summary."):
    """-q/--quiet, which every command takes."""
    return click.option("-q", "--quiet", is_flag=True, help=help)


def model_options(f):
    """--model / --allow-pickle / --device, in that order on the command line help."""
    f = click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")(f)
    f = click.option("--allow-pickle", is_flag=True, help="Allow pickle-based checkpoints (only if trusted).")(f)
    f = click.option("--model", "model_spec", default="default", show_default=True,
                     help="Bundled model name, weights file, or diffusers folder.")(f)
    return f


def limits_option(f):
    """--max-pixels: raise the decoder's limits for a genuinely large image (passes `limits` to the command)."""
    def to_limits(ctx, param, value):
        from ddpmcodec.container.limits import DecodeLimits

        return DecodeLimits() if value is None else DecodeLimits.raised(value)

    return click.option("--max-pixels", "limits", type=click.IntRange(min=1), default=None, callback=to_limits,
                        help="Decode images of up to this many pixels (default 16,777,216) and lift the work-per-byte "
                             "limit: only for genuinely large images from a trusted source.")(f)


def load(model_spec: str, allow_pickle: bool, device: str):
    from ddpmcodec.network.model_io import load_model

    return load_model(model_spec, device=resolve_device(device), allow_pickle=allow_pickle)


def input_file(path: str | Path) -> Path:
    """An existing, readable regular file, else a one-line InputError."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p} is a directory, expected a file")
    if not p.exists():
        raise InputError(f"{p}: no such file")
    try:
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc.__class__.__name__})") from None
    return p


def input_folder(path: str | Path) -> Path:
    """An existing, listable directory, else a one-line InputError."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such folder")
    if not p.is_dir():
        raise InputError(f"{p} is not a folder")
    if not os.access(p, os.R_OK | os.X_OK):
        raise InputError(f"{p}: cannot read (permission denied)")
    return p


def input_path(path: str | Path) -> Path:
    """An existing file or folder (data sources that take either)."""
    p = Path(path)
    return input_folder(p) if p.is_dir() else input_file(p)


def check_writable(path: Path, force: bool) -> None:
    """An output file: not a directory, not an existing file without force, in an existing folder."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory, expected a file name")
    if path.exists() and not force:
        raise InputError(f"{path} exists; pass -f/--force to overwrite")
    check_parent(path)


def check_parent(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        raise InputError(f"{parent}: no such directory")
    if not parent.is_dir():
        raise InputError(f"{parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{parent}: cannot write (permission denied)")


def check_output_folder(path: Path) -> None:
    """An output folder: an existing folder, or a new one whose parent exists."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} exists and is not a folder")
    if not path.exists():
        check_parent(path)


def check_creatable_folder(path: Path) -> None:
    """A folder the command creates with its parents: it, or its nearest existing ancestor, must be a folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} exists and is not a folder")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"{probe} is not a directory")


def write_atomic(path: Path, data: bytes, force: bool) -> None:
    """Refuse to clobber without force, then write atomically (no partial or clobbered output on failure)."""
    check_writable(path, force)
    atomic_write(path, data)


def write_png(pixels, path: Path, source_mode: str, force: bool) -> None:
    """Save (H, W, 3) uint8 pixels as PNG with the same no-clobber, atomic guarantees as write_atomic."""
    from ddpmcodec.images import png_bytes

    write_atomic(path, png_bytes(pixels, source_mode), force)


def read_input(path: str) -> bytes:
    p = input_file(path)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc.__class__.__name__})") from None


def parse_stop(value: str | None) -> tuple[int | None, int | None]:
    """'t=200' -> (200, None); 'bytes=1500' -> (None, 1500); 'lossless' -> (0, None)."""
    if value is None:
        return None, None
    v = value.strip().lower()
    if v == "lossless":
        return 0, None
    key, _, num = v.partition("=")
    if key not in ("t", "bytes") or not num.isdigit():
        raise InputError(f"--stop-at must be t=N, bytes=N or lossless, got {value!r}")
    return (int(num), None) if key == "t" else (None, int(num))
