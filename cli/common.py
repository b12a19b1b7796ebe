"""Helpers shared by the CLI commands: model options, devices, safe output, progress bars."""
from __future__ import annotations

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


def model_options(f):
    """--model / --allow-pickle / --device, in that order on the command line help."""
    f = click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")(f)
    f = click.option("--allow-pickle", is_flag=True, help="Allow pickle-based checkpoints (only if trusted).")(f)
    f = click.option("--model", "model_spec", default="default", show_default=True,
                     help="Bundled model name, weights file, or diffusers folder.")(f)
    return f


def load(model_spec: str, allow_pickle: bool, device: str):
    from ddpmcodec.network.model_io import load_model

    return load_model(model_spec, device=resolve_device(device), allow_pickle=allow_pickle)


def check_writable(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise InputError(f"{path} exists; pass -f/--force to overwrite")
    if path.exists() and path.is_dir():
        raise InputError(f"{path} is a directory")
    if not path.parent.exists():
        raise InputError(f"{path.parent}: no such directory")


def write_atomic(path: Path, data: bytes, force: bool) -> None:
    """Refuse to clobber without force, then write atomically (no partial or clobbered output on failure)."""
    check_writable(path, force)
    atomic_write(path, data)


def write_png(pixels, path: Path, source_mode: str, force: bool) -> None:
    """Save (H, W, 3) uint8 pixels as PNG with the same no-clobber, atomic guarantees as write_atomic."""
    from ddpmcodec.images import png_bytes

    write_atomic(path, png_bytes(pixels, source_mode), force)


def read_input(path: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    return p.read_bytes()


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
