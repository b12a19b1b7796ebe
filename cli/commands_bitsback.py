"""`ddpmcodec pack | unpack` and `encode/decode --mode bitsback`: lossless bits-back coding of images and sets."""
from __future__ import annotations

import time
from pathlib import Path

import click

from cli.common import (limits_option, check_output_folder, check_writable, input_folder, load, model_options,
                        quiet_option, read_input, show_progress, write_atomic, write_png)
from ddpmcodec.errors import InputError


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False, dynamic_ncols=True)


def _summary(what: str, out, res, dims: int, seconds: float) -> str:
    return (f"{what}-> {out}: {len(res.data)} bytes, {8 * len(res.data) / dims:.3f} bits/dim lossless bits-back "
            f"(net {res.net_bits / dims:.3f} + initial bits {res.seed_bits / dims:.3f}), {seconds:.1f} s")


def encode_bitsback(img, model, out: Path, force: bool, n_steps: int, quiet: bool, **settings) -> None:
    """`encode --mode bitsback`: one image (a LoadedImage) into a bits-back .ddpm file."""
    from ddpmcodec.bitsback.codec import BitsBackSettings, encode_image

    check_writable(out, force)
    res = encode_image(img.pixels, model, BitsBackSettings(n_steps=n_steps, **settings), source_mode=img.source_mode)
    write_atomic(out, res.data, force)
    if not quiet:
        note = f" [{img.note}]" if img.note else ""
        click.echo(_summary("", out, res, img.pixels.size, res.seconds) + note, err=True)


def decode_bitsback(data: bytes, model, out: Path, force: bool, quiet: bool, limits=None) -> None:
    """`decode` of a bits-back file holding one image: writes it as PNG."""
    from ddpmcodec.bitsback.codec import decode_images, file_info

    start = time.perf_counter()
    n = file_info(data, model, limits)["images"]
    if n != 1:
        raise InputError(f"this file holds a set of {n} images; extract it with `ddpmcodec unpack FILE -o DIR`")
    check_writable(out, force)
    res = decode_images(data, model, limits=limits)
    write_png(res.images[0], out, res.source_modes[0], force)
    if not quiet:
        click.echo(f"-> {out}: exact image (lossless bits-back), {time.perf_counter() - start:.1f} s", err=True)


# Literal copies of ddpmcodec.bitsback's choices and defaults, so that building the CLI does not import torch
# (tests/test_bitsback.py checks that they agree).
ORDERS = ("bitswap", "bbans")
GRID_RANGE = (-4, 11)
DEFAULT_STEPS, DEFAULT_T_END = 100, 1


def _settings_options(f):
    f = click.option("--seed", type=click.IntRange(0, 2 ** 32 - 1), default=0, show_default=True,
                     help="Seed of the shared noise and the initial stack words.")(f)
    f = click.option("--order", type=click.Choice(ORDERS), default=ORDERS[0], show_default=True,
                     help="bitswap: ~two levels of initial bits; bbans: all levels (for measurements).")(f)
    f = click.option("--grid-bits", type=click.IntRange(*GRID_RANGE), default=None,
                     help="Latent grid: 2^N bins per posterior std [by set size: -1 below 16 images, else 0].")(f)
    f = click.option("--t-end", type=click.IntRange(min=1), default=DEFAULT_T_END, show_default=True,
                     help="Last latent; x_0 is coded from x_{t_end}.")(f)
    f = click.option("--steps", "n_steps", type=click.IntRange(1, 1000), default=DEFAULT_STEPS, show_default=True,
                     help="Coded steps between T and --t-end (fewer: faster, higher rate).")(f)
    return f


def _output_names(names: list[str] | None, n: int) -> list[str]:
    """PNG file names for unpacked images: the stored names (base name only) with .png, else 00000.png..."""
    if names is None:
        return [f"{i:05d}.png" for i in range(n)]
    safe = [Path(nm).name if Path(nm).name not in ("", ".", "..") else f"{i:05d}" for i, nm in enumerate(names)]
    out = [nm if nm.lower().endswith(".png") else f"{Path(nm).stem}.png" for nm in safe]
    if len(set(out)) != len(out):  # a.jpg and a.png: keep full names
        out = [nm if nm.lower().endswith(".png") else f"{nm}.png" for nm in safe]
    if len(set(out)) != len(out):
        out = [f"{i:05d}_{nm}" for i, nm in enumerate(out)]
    return out


@click.command()
@click.argument("folder")
@click.option("-o", "--output", required=True, metavar="FILE", help="Output .ddpm file.")
@click.option("-f", "--force", is_flag=True, help="Overwrite the output if it exists.")
@model_options
@_settings_options
@click.option("--no-names", is_flag=True, help="Do not store file names (unpack numbers the images).")
@click.option("--portable", is_flag=True,
              help="Run the U-Net on integer grids (format 8): the set decodes exactly on any machine, at about 3x "
                   "the network time.")
@quiet_option()
def pack(folder, output, force, model_spec, allow_pickle, device, n_steps, t_end, grid_bits, order, seed,
         no_names, portable, quiet):
    """Code every image in FOLDER losslessly into one bits-back .ddpm file (one shared ANS stack)."""
    from ddpmcodec.bitsback.codec import BitsBackSettings, encode_set
    from ddpmcodec.data import list_image_files
    from ddpmcodec.images import load_image

    out = Path(output)
    check_writable(out, force)
    files = list_image_files(input_folder(folder))
    if not files:
        raise InputError(f"{folder}: no image files")
    loaded = [load_image(p) for p in files]
    model = load(model_spec, allow_pickle, device)
    settings = BitsBackSettings(n_steps=n_steps, t_end=t_end, grid_bits=grid_bits, order=order, seed=seed,
                                exact_network=portable)
    with _bar(len(files), "pack", show_progress(quiet)) as bar:
        res = encode_set([im.pixels for im in loaded], model, settings, source_modes=[im.source_mode for im in loaded],
                         names=None if no_names else [p.name for p in files], progress=lambda k, n: bar.update(1))
    write_atomic(out, res.data, force)
    if not quiet:
        dims = sum(im.pixels.size for im in loaded)
        click.echo(_summary(f"{len(files)} images ", out, res, dims, res.seconds), err=True)


@click.command()
@click.argument("file")
@click.option("-o", "--output", required=True, metavar="DIR", help="Output folder.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing files in the output folder.")
@model_options
@limits_option
@quiet_option()
def unpack(file, output, force, model_spec, allow_pickle, device, limits, quiet):
    """Decode a bits-back .ddpm file (pack or encode --mode bitsback) into PNG files in a folder."""
    from ddpmcodec.bitsback.codec import decode_images, file_info

    start = time.perf_counter()
    data = read_input(file)
    model = load(model_spec, allow_pickle, device)
    info = file_info(data, model, limits)
    out_dir = Path(output)
    check_output_folder(out_dir)
    targets = [out_dir / nm for nm in _output_names(info["names"], info["images"])]
    folder = next((p for p in targets if p.is_dir()), None)
    if folder is not None:
        raise InputError(f"{folder} is a directory, expected a file name")
    clash = next((p for p in targets if p.exists()), None)
    if clash is not None and not force:
        raise InputError(f"{clash} exists; pass -f/--force to overwrite")
    with _bar(info["images"], "unpack", show_progress(quiet)) as bar:
        res = decode_images(data, model, progress=lambda k, n: bar.update(1), limits=limits)
    out_dir.mkdir(exist_ok=True)
    for pixels, mode, path in zip(res.images, res.source_modes, targets):
        write_png(pixels, path, mode, force)
    if not quiet:
        click.echo(f"{file} -> {out_dir}: {len(targets)} images, lossless, {time.perf_counter() - start:.1f} s",
                   err=True)


COMMANDS = [pack, unpack]
