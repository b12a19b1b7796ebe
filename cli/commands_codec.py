"""`ddpmcodec encode | decode | info | truncate | calibrate`: the progressive codec on the command line."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import click

from cli.batch_mode import advance, batch_options, batch_output, is_batch, run_batch
from cli.commands_bitsback import DEFAULT_STEPS as BITSBACK_STEPS, DEFAULT_T_END as BITSBACK_T_END
from cli.common import (check_output_folder, check_writable, input_file, input_path,
                        limits_option, load, model_options, parse_stop, quiet_option, read_input, resolve_device,
                        show_progress, write_atomic, write_png)
from ddpmcodec.container.header import DEFAULTS, MAX_BUDGET_BITS, MAX_CANDIDATE_BITS, VERSION, X0_LAYER_CHOICES
from ddpmcodec.errors import InputError
from ddpmcodec.schedule.stop_schedules import SCHEDULE_CHOICES


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False, dynamic_ncols=True)


# Options of `encode` that only the progressive mode uses (bits-back refuses them when given).
_PROGRESSIVE_ONLY = {"budget_bits": "--budget", "margin_bits": "--margin", "prior": "--prior", "windowed": "--windows",
                     "stop_at": "--stop-at", "target_bpp": "--target-bpp", "target_psnr": "--target-psnr",
                     "verbose": "-v/--verbose", "x0_layer": "--x0-layer", "schedule": "--schedule"}


def _explicit(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)


@click.command()
@click.argument("images", metavar="IMAGE...", nargs=-1, required=True)
@click.option("-o", "--output", metavar="FILE|DIR",
              help="Output file [IMAGE with .ddpm]; with several inputs, a folder (created if missing).")
@click.option("-f", "--force", is_flag=True, help="Overwrite the output if it exists.")
@model_options
@batch_options
@click.option("--mode", type=click.Choice(["progressive", "bitsback"]), default="progressive", show_default=True)
@click.option("--steps", "n_steps", type=click.IntRange(1, 1000), default=None,
              help=f"Coded steps between T and --t-end (equal expected KL each) "
                   f"[{DEFAULTS['n_steps']}; {BITSBACK_STEPS} with --mode bitsback].")
@click.option("--t-end", type=click.IntRange(min=1), default=None,
              help=f"Last channel-simulated step; x_0 is then coded exactly from x_{{t_end}} "
                   f"[the t_end of the model's learned x_0 layer (10 for the bundled model), else "
                   f"{DEFAULTS['t_end']}; {BITSBACK_T_END} with --mode bitsback].")
@click.option("--x0-layer", "x0_layer", type=click.Choice(X0_LAYER_CHOICES), default="auto", show_default=True,
              help="Lossless end: the model's learned x_0 layer, the per-file fitted classic layer, or the shorter "
                   "of the two (progressive only).")
@click.option("--budget", "budget_bits", type=click.IntRange(1, MAX_BUDGET_BITS[VERSION]),
              default=DEFAULTS["budget_bits"], show_default=True,
              help="Target KL per PFR chunk, bits (progressive only). Search work grows as 2^budget per chunk, so a "
                   "GPU affords more.")
@click.option("--margin", "margin_bits", type=click.IntRange(0, 12), default=DEFAULTS["margin_bits"],
              show_default=True,
              help=f"Extra candidate bits per chunk (2^(budget+margin) candidates, budget + margin <= "
                   f"{MAX_CANDIDATE_BITS[VERSION]}; progressive only).")
@click.option("--prior", type=click.Choice(["calibrated", "fixedlarge"]), default="calibrated", show_default=True,
              help="Prior variance (progressive only).")
@click.option("--seed", type=click.IntRange(0, 2 ** 32 - 1), default=DEFAULTS["seed"], show_default=True,
              help="Seed of the shared randomness (candidates, x_T; bits-back: noise and initial words).")
@click.option("--windows/--no-windows", "windowed", default=None,
              help="Multi-tile images: the network on overlapping blended windows (no seams in previews) or per tile "
                   "[windows].")
@click.option("--portable", is_flag=True,
              help="Run the U-Net on integer grids (format 8): the lossless file decodes exactly on any machine, "
                   "at about 3x the network time; without it, exact decoding needs the encoder's CPU kernels.")
@click.option("--stop-at", "stop_at",
              help="End the file early: t=N (lossy; at the first coded step at or below N) or lossless [lossless].")
@click.option("--schedule", type=click.Choice(SCHEDULE_CHOICES), default="auto", show_default=True,
              help="Schedule of a lossy file (--stop-at t=N, --target-bpp) with the default --steps and --t-end: "
                   "auto: a few steps of its own down to its stop where that codes better; stop: always; "
                   "progressive: the prefix of the lossless file's steps.")
@click.option("--target-bpp", type=click.FloatRange(min=0, min_open=True), help="Largest prefix within this bpp.")
@click.option("--target-psnr", type=float, help="Stop at the first step whose reconstruction reaches this PSNR.")
@quiet_option()
@click.option("-v", "--verbose", is_flag=True, help="Print the per-step table (progressive only).")
@click.pass_context
def encode(ctx, images, output, force, model_spec, allow_pickle, device, workers, ray, ray_batch, mode, n_steps,
           t_end, x0_layer, budget_bits, margin_bits, prior, seed, windowed, portable, stop_at, schedule, target_bpp,
           target_psnr, quiet, verbose):
    """Encode IMAGE (PNG, JPEG, ...) into a .ddpm file (Algorithm 3).

    Several inputs (image files, folders of images, datasets: .npz, CIFAR-10 archives such as
    cifar-10-python.tar.gz::test) are coded into the folder -o DIR as <name>.ddpm, one image per worker process
    (--workers), or as Ray tasks (--ray); outputs already there and complete are skipped unless -f.

    --mode bitsback codes the image losslessly with bits-back coding (100 steps down to t=1 by default); it takes
    --steps, --t-end, --seed and --portable, and refuses the progressive-only options (--budget, --margin,
    --prior, --x0-layer, --stop-at, --target-bpp, --target-psnr, -v).
    """
    from ddpmcodec.codec.progressive import CodecSettings, encode as run_encode
    from ddpmcodec.codec.stop_points import encode_within_bpp, stop_of
    from ddpmcodec.images import load_image

    if mode == "bitsback":
        given = [flag for name, flag in _PROGRESSIVE_ONLY.items() if _explicit(ctx, name)]
        if given:
            raise InputError(f"{', '.join(given)}: not available with --mode bitsback (a lossless, "
                             "non-progressive mode)")
    many = is_batch(images, ray)
    if not many:
        image = images[0]
        input_file(image)
        out = Path(output) if output else Path(image).with_suffix(".ddpm")
        check_writable(out, force)
    stop_t, stop_bytes = parse_stop(stop_at)
    if stop_bytes is not None:
        raise InputError("encode --stop-at takes t=N or lossless; use --target-bpp for a size limit")
    if sum(x is not None for x in (stop_at, target_bpp, target_psnr)) > 1:
        raise InputError("choose one of --stop-at, --target-bpp, --target-psnr")
    if target_psnr is not None and math.isnan(target_psnr):
        raise InputError("--target-psnr must be a number of dB, got nan")
    if many:
        if verbose:
            raise InputError("-v/--verbose (the per-step table) takes one input image")
        if mode == "bitsback":
            from ddpmcodec.bitsback.codec import BitsBackSettings

            settings = BitsBackSettings(n_steps=n_steps or BITSBACK_STEPS, t_end=t_end or BITSBACK_T_END, seed=seed,
                                        exact_network=portable)
        else:
            settings = CodecSettings(n_steps=n_steps or DEFAULTS["n_steps"], t_end=t_end, budget_bits=budget_bits,
                                     margin_bits=margin_bits, seed=seed, prior=prior, windowed=windowed,
                                     x0_layer=x0_layer, schedule=schedule, exact_network=portable)
        from ddpmcodec.batch import encode_many

        out_dir = batch_output(output)
        return run_batch(encode_many, images, quiet, model_spec, settings, out_dir=out_dir, workers=workers,
                          force=force, stop_at_t=stop_t or 0, target_psnr=target_psnr, target_bpp=target_bpp,
                          allow_pickle=allow_pickle, device=resolve_device(device), ray=ray, ray_batch=ray_batch)
    img = load_image(image)
    model = load(model_spec, allow_pickle, device)
    if mode == "bitsback":
        from cli.commands_bitsback import encode_bitsback

        return encode_bitsback(img, model, out, force, n_steps or BITSBACK_STEPS, quiet,
                               t_end=t_end or BITSBACK_T_END, seed=seed, exact_network=portable)
    n_steps = n_steps or DEFAULTS["n_steps"]
    settings = CodecSettings(n_steps=n_steps, t_end=t_end, budget_bits=budget_bits, margin_bits=margin_bits,
                             seed=seed, prior=prior, windowed=windowed, x0_layer=x0_layer, schedule=schedule,
                             exact_network=portable)
    h, w = img.pixels.shape[:2]
    start = time.perf_counter()
    with _bar(n_steps, "encode", show_progress(quiet)) as bar:
        if target_bpp is not None:
            data, res, final = encode_within_bpp(img.pixels, model, settings, target_bpp,
                                                 source_mode=img.source_mode, progress=advance(bar))
        else:
            res = run_encode(img.pixels, model, settings, source_mode=img.source_mode, stop_at_t=stop_t or 0,
                             target_psnr=target_psnr, progress=advance(bar))
            data, final = res.data, stop_of(res, res.data)
    stats = res.steps
    write_atomic(out, data, force)
    from ddpmcodec.container import header as container

    written = container.unpack(data).header
    if verbose:
        click.echo(f"{'t':>6} {'bytes':>8} {'bpp':>8} {'ideal bits':>11} {'PSNR dB':>8}", err=True)
        for s in stats:
            click.echo(f"{s.t:>6} {s.bytes_if_stopped:>8} {8 * s.bytes_if_stopped / (h * w):>8.4f} "
                       f"{s.ideal_bits:>11.1f} {_db(s.psnr, 8)}", err=True)
    if not quiet:
        if written.lossless:
            kind = "lossless"
            if target_psnr is not None:
                kind += " (target PSNR not reached before the last step)"
        else:
            kind = f"lossy, stops at t={final.t}"
            if stop_t and final.t != stop_t:
                kind += f" (first coded step at or below t={stop_t})"
            if _finite(final.psnr):
                kind += f", PSNR {final.psnr:.2f} dB"
            if target_psnr is not None and not (_finite(final.psnr) and final.psnr >= target_psnr):
                kind += f" (target PSNR {target_psnr:g} dB not reached)"
        note = f" [{img.note}]" if img.note else ""
        click.echo(f"{image} -> {out}: {len(data)} bytes, {8 * len(data) / (h * w):.3f} bpp ({kind}), "
                   f"{time.perf_counter() - start:.1f} s{note}", err=True)


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _db(x, width: int) -> str:
    """PSNR column: inf for exact, '-' where none was measured (never 'nan')."""
    if x is None or math.isnan(x):
        return f"{'-':>{width}}"
    return f"{x:>{width}.2f}"


@click.command()
@click.argument("files", metavar="FILE...", nargs=-1, required=True)
@click.option("-o", "--output", metavar="FILE|DIR",
              help="Output PNG [FILE with .png]; with several inputs, a folder (created if missing).")
@click.option("-f", "--force", is_flag=True, help="Overwrite outputs if they exist.")
@model_options
@batch_options
@click.option("--stop-at", "stop_at",
              help="t=N or bytes=N: decode only that far (lossy preview; t=N stops at the first coded step at or "
                   "below N).")
@click.option("--frames", metavar="DIR",
              help="Also write x^_0 at every coded step into this folder (+ strip, animation).")
@click.option("--allow-partial", is_flag=True,
              help="Exit 0 for a partial file (payload cut off) instead of 3.")
@limits_option
@quiet_option()
def decode(files, output, force, model_spec, allow_pickle, device, workers, ray, ray_batch, stop_at, frames,
           allow_partial, limits, quiet):
    """Decode a .ddpm FILE to PNG, optionally stopping early (Algorithm 4).

    A partial file (shorter than its header says, e.g. a cut-off download) decodes to the last step it holds: the
    image is written, a one-line warning goes to stderr (even with -q) and the exit status is 3. With
    --allow-partial the exit status is 0 and -q silences the warning.

    Several inputs (files, folders of .ddpm files) are decoded into the folder -o DIR as <name>.png on worker
    processes (--workers) or Ray tasks (--ray); PNGs already there are skipped unless -f. There a partial file is
    a failed item (nothing written) unless --allow-partial.
    """
    from ddpmcodec.container import header as container
    from ddpmcodec.codec.decoding import decode_progressive

    if is_batch(files, ray):
        if frames:
            raise InputError("--frames takes one input file")
        from ddpmcodec.batch import decode_many

        stop_t, stop_bytes = parse_stop(stop_at)
        return run_batch(decode_many, files, quiet, model_spec, out_dir=batch_output(output), workers=workers,
                          force=force, stop_at_t=stop_t, stop_at_bytes=stop_bytes, allow_partial=allow_partial,
                          limits=limits, allow_pickle=allow_pickle, device=resolve_device(device), ray=ray,
                          ray_batch=ray_batch)
    file = files[0]
    start = time.perf_counter()
    data = read_input(file)
    out = Path(output) if output else Path(file).with_suffix(".png")
    check_writable(out, force)
    frames_dir = Path(frames) if frames else None
    if frames_dir:
        check_output_folder(frames_dir)
        if frames_dir.exists() and any(frames_dir.iterdir()) and not force:
            raise InputError(f"{frames_dir} is not empty; pass -f/--force to write into it")
    stop_t, stop_bytes = parse_stop(stop_at)
    parsed = container.unpack(data)
    if parsed.header.mode == container.MODE_BITSBACK:
        from cli.commands_bitsback import decode_bitsback

        if frames_dir or stop_at:
            raise InputError("--frames and --stop-at need a progressive file; this one is bits-back (lossless only)")
        return decode_bitsback(data, load(model_spec, allow_pickle, device), out, force, quiet, limits)
    model = load(model_spec, allow_pickle, device)
    mode = container.SOURCE_MODES[parsed.header.source_mode]
    last, shots = None, []
    if frames_dir:
        frames_dir.mkdir(exist_ok=True)
    with _bar(parsed.header.steps_present + 1, "decode", show_progress(quiet)) as bar:
        for step in decode_progressive(data, model, stop_at_t=stop_t, stop_at_bytes=stop_bytes,
                                       every_step=frames_dir is not None, progress=advance(bar), limits=limits):
            last = step
            if frames_dir:
                write_png(step.pixels, frames_dir / f"step{len(shots):04d}_t{step.t:04d}.png", mode, force)
                shots.append(step)
    if last is None:
        raise InputError("nothing to decode")
    if frames_dir and shots:
        _write_strip(shots, frames_dir, force)
    write_png(last.pixels, out, mode, force)
    if not quiet:
        what = "exact image (lossless)" if last.t == 0 else f"x^_0 at t={last.t}"
        if stop_t is not None and last.t != stop_t and parsed.complete:
            what += (f" (first coded step at or below t={stop_t})" if last.t < stop_t
                     else f" (the file holds no step at or below t={stop_t})")
        partial = "" if parsed.complete else " [partial file]"
        click.echo(f"{file} -> {out}: {what} from {last.bytes_read} of {len(data)} bytes{partial}, "
                   f"{time.perf_counter() - start:.1f} s", err=True)
    if not parsed.complete:
        full = _complete_size(parsed)
        if not (allow_partial and quiet):
            click.echo(f"warning: {file} is a partial file: decoded up to t={last.t}, {len(data)} of {full} "
                       f"bytes present{'' if allow_partial else '; exit status 3 (--allow-partial accepts it)'}",
                       err=True)
        if not allow_partial:
            sys.exit(PARTIAL_EXIT)


PARTIAL_EXIT = 3  # decode wrote the image of a partial file without --allow-partial


def _complete_size(parsed) -> int:
    """Bytes of the complete file that a partial file was cut from (header + payload with its block checks)."""
    from ddpmcodec.container.blocks import stored_size

    return parsed.header_bytes + stored_size(parsed.header.payload_bytes)


def _write_strip(shots, frames_dir: Path, force: bool) -> None:
    """An animated PNG of every frame and a strip of up to 10 evenly spaced frames (atomic, no clobbering)."""
    import io

    import numpy as np
    from PIL import Image

    ims = [Image.fromarray(s.pixels) for s in shots]
    buf = io.BytesIO()
    ims[0].save(buf, format="PNG", save_all=True, append_images=ims[1:], duration=80, loop=0)
    write_atomic(frames_dir / "animation.png", buf.getvalue(), force)
    pick = sorted(set(np.linspace(0, len(shots) - 1, min(10, len(shots))).round().astype(int).tolist()))
    strip = np.concatenate([shots[i].pixels for i in pick], axis=1)
    write_png(strip, frames_dir / "strip.png", "RGB", force)


@click.command()
@click.argument("file")
@model_options
@click.option("--no-steps", is_flag=True, help="Header only (no model needed).")
@limits_option
@quiet_option("No warning on stderr (the header and table are the output).")
def info(file, model_spec, allow_pickle, device, no_steps, limits, quiet):
    """Print a .ddpm file's header and its per-step table (t, cumulative bytes, bpp); flags partial files."""
    from ddpmcodec.container import header as container
    from ddpmcodec.codec.stop_points import bitsback_summary_lines, step_table, summary_lines

    data = read_input(file)
    parsed = container.unpack(data)
    if parsed.header.mode == container.MODE_BITSBACK:
        model = None if no_steps else load(model_spec, allow_pickle, "cpu")
        for line in bitsback_summary_lines(data, model, limits):
            click.echo(line)
    else:
        table = None
        if not no_steps and parsed.header.mode == container.MODE_PROGRESSIVE:
            parsed, table = step_table(data, load(model_spec, allow_pickle, "cpu"), limits)
        for line in summary_lines(parsed, table):
            click.echo(line)
    if not parsed.complete and not quiet:
        full = _complete_size(parsed)
        click.echo(f"warning: {file} is a partial file: {len(data)} of {full} bytes present "
                   f"(`ddpmcodec truncate {file} -o FILE` makes a complete file of its whole steps)", err=True)


@click.command(name="truncate")
@click.argument("file")
@click.option("--stop-at", "stop_at", help="t=N or bytes=N [every complete step: repairs a partial download].")
@click.option("-o", "--output", metavar="FILE", help="Output [FILE in place, needs -f].")
@click.option("-f", "--force", is_flag=True, help="Overwrite the output (or FILE itself).")
@model_options
@limits_option
@quiet_option("No summary line.")
def truncate_cmd(file, stop_at, output, force, model_spec, allow_pickle, device, limits, quiet):
    """Cut a progressive .ddpm file at a coded step without running the network; the result is a valid file."""
    from ddpmcodec.codec.stop_points import truncate

    data = read_input(file)
    out = Path(output) if output else Path(file)
    check_writable(out, force)
    stop_t, stop_bytes = parse_stop(stop_at)
    new = truncate(data, load(model_spec, allow_pickle, "cpu"), stop_at_t=stop_t, stop_at_bytes=stop_bytes,
                   limits=limits)
    if stop_at is None and new == data:
        raise InputError("the file is complete, so there is nothing to cut; pass --stop-at t=N or bytes=N")
    write_atomic(out, new, force)
    if not quiet:
        click.echo(f"{file} -> {out}: {len(data)} -> {len(new)} bytes", err=True)


@click.command()
@click.option("-o", "--output", required=True, metavar="FILE", help="Calibrated weights file.")
@click.option("-f", "--force", is_flag=True, help="Overwrite the output if it exists.")
@model_options
@click.option("--data", default=None, help="Images (npz or folder) [shared CIFAR-10 lossless training originals].")
@click.option("--limit", type=click.IntRange(min=1), default=48, show_default=True, help="Images to measure on.")
@click.option("--seed", type=int, default=0, show_default=True)
@quiet_option()
def calibrate(output, force, model_spec, allow_pickle, device, data, limit, seed, quiet):
    """Measure the model's rate/MSE profile on training images and save a copy of the model carrying it."""
    import numpy as np

    from ddpmcodec.schedule.calibrate import measure_profile, write_calibrated_model
    from ddpmcodec.data import load_images, load_npz_images, shared_data_file

    out = Path(output)
    check_writable(out, force)
    if data is None:
        images, name = load_npz_images(shared_data_file("cifar10-train-lossless.npz")), "cifar10-train-lossless"
    else:
        images, name = load_images(input_path(data)), Path(data).name
    rng = np.random.default_rng(seed)
    images = images[rng.choice(len(images), min(limit, len(images)), replace=False)]
    model = load(model_spec, allow_pickle, device)
    profile = measure_profile(model, images, data_name=name, seed=seed, progress=show_progress(quiet))
    write_calibrated_model(model, profile, out)
    if not quiet:
        click.echo(f"wrote {out}: profile from {len(images)} images of {name}, "
                   f"expected rate {profile.rate_bpd.sum():.3f} bits/dim", err=True)


COMMANDS = [encode, decode, info, truncate_cmd, calibrate]
