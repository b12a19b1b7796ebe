"""`ddpmcodec encode | decode | info | truncate | calibrate`: the progressive codec on the command line."""
from __future__ import annotations

import time
from pathlib import Path

import click

from cli.common import load, model_options, parse_stop, read_input, show_progress, write_atomic, write_png
from ddpmcodec.container.header import DEFAULTS
from ddpmcodec.errors import InputError


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False, dynamic_ncols=True)


@click.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output file [IMAGE with .ddpm].")
@click.option("-f", "--force", is_flag=True, help="Overwrite the output if it exists.")
@model_options
@click.option("--mode", type=click.Choice(["progressive", "bitsback"]), default="progressive", show_default=True)
@click.option("--steps", "n_steps", type=click.IntRange(1, 1000), default=DEFAULTS["n_steps"], show_default=True,
              help="Coded steps between T and --t-end (equal expected KL each).")
@click.option("--t-end", type=click.IntRange(min=1), default=DEFAULTS["t_end"], show_default=True,
              help="Last channel-simulated step; x_0 is then coded exactly from x_{t_end}.")
@click.option("--budget", "budget_bits", type=click.IntRange(1, 15), default=DEFAULTS["budget_bits"], show_default=True,
              help="Target KL per PFR chunk, bits.")
@click.option("--margin", "margin_bits", type=click.IntRange(0, 12), default=DEFAULTS["margin_bits"],
              show_default=True,
              help="Extra candidate bits per chunk (2^(budget+margin) candidates).")
@click.option("--prior", type=click.Choice(["calibrated", "fixedlarge"]), default="calibrated", show_default=True)
@click.option("--seed", type=click.IntRange(0, 2 ** 32 - 1), default=DEFAULTS["seed"], show_default=True,
              help="Seed of the shared randomness (candidates, x_T).")
@click.option("--stop-at", "stop_at", help="End the file early: t=N (lossy) or lossless [lossless].")
@click.option("--target-bpp", type=click.FloatRange(min=0, min_open=True), help="Largest prefix within this bpp.")
@click.option("--target-psnr", type=float, help="Stop at the first step whose reconstruction reaches this PSNR.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
@click.option("-v", "--verbose", is_flag=True, help="Print the per-step table.")
def encode(image, output, force, model_spec, allow_pickle, device, mode, n_steps, t_end, budget_bits, margin_bits,
           prior, seed, stop_at, target_bpp, target_psnr, quiet, verbose):
    """Encode IMAGE (PNG, JPEG, ...) into a .ddpm file (Algorithm 3)."""
    from ddpmcodec.codec.progressive import CodecSettings, encode as run_encode
    from ddpmcodec.codec.stop_points import truncate
    from ddpmcodec.images import load_image
    from cli.common import check_writable

    out = Path(output) if output else Path(image).with_suffix(".ddpm")
    check_writable(out, force)
    stop_t, stop_bytes = parse_stop(stop_at)
    if stop_bytes is not None:
        raise InputError("encode --stop-at takes t=N or lossless; use --target-bpp for a size limit")
    if sum(x is not None for x in (stop_at, target_bpp, target_psnr)) > 1:
        raise InputError("choose one of --stop-at, --target-bpp, --target-psnr")
    img = load_image(image)
    model = load(model_spec, allow_pickle, device)
    if mode == "bitsback":
        from cli.commands_bitsback import encode_bitsback

        return encode_bitsback(img, model, out, force, n_steps, quiet)
    settings = CodecSettings(n_steps=n_steps, t_end=t_end, budget_bits=budget_bits, margin_bits=margin_bits,
                             seed=seed, prior=prior)
    h, w = img.pixels.shape[:2]
    with _bar(n_steps, "encode", show_progress(quiet)) as bar:
        res = run_encode(img.pixels, model, settings, source_mode=img.source_mode, stop_at_t=stop_t or 0,
                         target_psnr=target_psnr, progress=lambda k, n: (setattr(bar, "total", n), bar.update(1)))
    data, stats = res.data, res.steps
    if target_bpp is not None:
        budget = int(target_bpp * h * w / 8)
        fitting = [s for s in stats if s.bytes_if_stopped <= budget]
        if not fitting:
            raise InputError(f"--target-bpp {target_bpp} is below the smallest possible file "
                             f"({8 * stats[0].bytes_if_stopped / (h * w):.3f} bpp)")
        if fitting[-1] is not stats[-1]:
            data = truncate(data, model, stop_at_bytes=budget)
    write_atomic(out, data, force)
    from ddpmcodec.container import header as container

    written = container.unpack(data).header
    final = stats[-1] if written.lossless else stats[written.steps_present]
    if verbose:
        click.echo(f"{'t':>6} {'bytes':>8} {'bpp':>8} {'ideal bits':>11} {'PSNR dB':>8}", err=True)
        for s in stats:
            click.echo(f"{s.t:>6} {s.bytes_if_stopped:>8} {8 * s.bytes_if_stopped / (h * w):>8.4f} "
                       f"{s.ideal_bits:>11.1f} {s.psnr:>8.2f}", err=True)
    if not quiet:
        kind = "lossless" if final.t == 0 else f"lossy, stops at t={final.t}, PSNR {final.psnr:.2f} dB"
        note = f" [{img.note}]" if img.note else ""
        click.echo(f"{image} -> {out}: {len(data)} bytes, {8 * len(data) / (h * w):.3f} bpp ({kind}), "
                   f"{res.seconds:.1f} s{note}", err=True)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output PNG [FILE with .png].")
@click.option("-f", "--force", is_flag=True, help="Overwrite outputs if they exist.")
@model_options
@click.option("--stop-at", "stop_at", help="t=N or bytes=N: decode only that far (lossy preview).")
@click.option("--frames", type=click.Path(file_okay=False), help="Also write x^_0 at every coded step here (+ strip).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def decode(file, output, force, model_spec, allow_pickle, device, stop_at, frames, quiet):
    """Decode a .ddpm FILE to PNG, optionally stopping early (Algorithm 4)."""
    from ddpmcodec.container import header as container
    from ddpmcodec.codec.progressive import decode_progressive
    from ddpmcodec.images import save_image
    from cli.common import check_writable

    start = time.perf_counter()
    data = read_input(file)
    out = Path(output) if output else Path(file).with_suffix(".png")
    check_writable(out, force)
    parsed = container.unpack(data)
    if parsed.header.mode == container.MODE_BITSBACK:
        from cli.commands_bitsback import decode_bitsback

        return decode_bitsback(data, load(model_spec, allow_pickle, device), out, force, quiet)
    frames_dir = Path(frames) if frames else None
    if frames_dir:
        if frames_dir.exists() and any(frames_dir.iterdir()) and not force:
            raise InputError(f"{frames_dir} is not empty; pass -f/--force to write into it")
        frames_dir.mkdir(parents=True, exist_ok=True)
    stop_t, stop_bytes = parse_stop(stop_at)
    model = load(model_spec, allow_pickle, device)
    mode = container.SOURCE_MODES[parsed.header.source_mode]
    last, shots = None, []
    with _bar(parsed.header.steps_present + 1, "decode", show_progress(quiet)) as bar:
        for step in decode_progressive(data, model, stop_at_t=stop_t, stop_at_bytes=stop_bytes,
                                       every_step=frames_dir is not None):
            last = step
            bar.update(1)
            if frames_dir:
                save_image(step.pixels, frames_dir / f"step{len(shots):04d}_t{step.t:04d}.png", mode)
                shots.append(step)
    if last is None:
        raise InputError("nothing to decode")
    if frames_dir and shots:
        _write_strip(shots, frames_dir)
    write_png(last.pixels, out, mode, force)
    if not quiet:
        what = "exact image (lossless)" if last.t == 0 else f"x^_0 at t={last.t}"
        partial = "" if parsed.complete else " [partial file]"
        click.echo(f"{file} -> {out}: {what} from {last.bytes_read} of {len(data)} bytes{partial}, "
                   f"{time.perf_counter() - start:.1f} s", err=True)


def _write_strip(shots, frames_dir: Path) -> None:
    """An animated PNG of every frame and a strip of up to 10 evenly spaced frames."""
    import numpy as np
    from PIL import Image

    ims = [Image.fromarray(s.pixels) for s in shots]
    ims[0].save(frames_dir / "animation.png", save_all=True, append_images=ims[1:], duration=80, loop=0)
    pick = sorted(set(np.linspace(0, len(shots) - 1, min(10, len(shots))).round().astype(int).tolist()))
    strip = np.concatenate([shots[i].pixels for i in pick], axis=1)
    Image.fromarray(strip).save(frames_dir / "strip.png")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@model_options
@click.option("--no-steps", is_flag=True, help="Header only (no model needed).")
def info(file, model_spec, allow_pickle, device, no_steps):
    """Print a .ddpm file's header and its per-step table (t, cumulative bytes, bpp)."""
    from ddpmcodec.container import header as container
    from ddpmcodec.codec.stop_points import bitsback_summary_lines, step_table, summary_lines

    data = read_input(file)
    parsed = container.unpack(data)
    if parsed.header.mode == container.MODE_BITSBACK:
        for line in bitsback_summary_lines(data):
            click.echo(line)
        return
    table = None
    if not no_steps and parsed.header.mode == container.MODE_PROGRESSIVE:
        parsed, table = step_table(data, load(model_spec, allow_pickle, "cpu"))
    for line in summary_lines(parsed, table):
        click.echo(line)


@click.command(name="truncate")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--stop-at", "stop_at", help="t=N or bytes=N [every complete step: repairs a partial download].")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output [FILE in place, needs -f].")
@click.option("-f", "--force", is_flag=True, help="Overwrite the output (or FILE itself).")
@model_options
def truncate_cmd(file, stop_at, output, force, model_spec, allow_pickle, device):
    """Cut a progressive .ddpm file at a coded step without running the network; the result is a valid file."""
    from ddpmcodec.codec.stop_points import truncate

    data = read_input(file)
    stop_t, stop_bytes = parse_stop(stop_at)
    new = truncate(data, load(model_spec, allow_pickle, "cpu"), stop_at_t=stop_t, stop_at_bytes=stop_bytes)
    if stop_at is None and new == data:
        raise InputError("the file is complete, so there is nothing to cut; pass --stop-at t=N or bytes=N")
    out = Path(output) if output else Path(file)
    write_atomic(out, new, force)
    click.echo(f"{file} -> {out}: {len(data)} -> {len(new)} bytes", err=True)


@click.command()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Calibrated weights file.")
@click.option("-f", "--force", is_flag=True)
@model_options
@click.option("--data", default=None, help="Images (npz or folder) [shared CIFAR-10 lossless training originals].")
@click.option("--limit", type=click.IntRange(min=1), default=48, show_default=True, help="Images to measure on.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-q", "--quiet", is_flag=True)
def calibrate(output, force, model_spec, allow_pickle, device, data, limit, seed, quiet):
    """Measure the model's rate/MSE profile on training images and save a copy of the model carrying it."""
    import numpy as np

    from ddpmcodec.schedule.calibrate import measure_profile, write_calibrated_model
    from ddpmcodec.data import load_images, load_npz_images, shared_data_file
    from cli.common import check_writable

    out = Path(output)
    check_writable(out, force)
    if data is None:
        images, name = load_npz_images(shared_data_file("cifar10-train-lossless.npz")), "cifar10-train-lossless"
    else:
        images, name = load_images(data), Path(data).name
    rng = np.random.default_rng(seed)
    images = images[rng.choice(len(images), min(limit, len(images)), replace=False)]
    model = load(model_spec, allow_pickle, device)
    profile = measure_profile(model, images, data_name=name, seed=seed, progress=show_progress(quiet))
    write_calibrated_model(model, profile, out)
    if not quiet:
        click.echo(f"wrote {out}: profile from {len(images)} images of {name}, "
                   f"expected rate {profile.rate_bpd.sum():.3f} bits/dim", err=True)


COMMANDS = [encode, decode, info, truncate_cmd, calibrate]
