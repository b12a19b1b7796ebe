"""How `encode` and `decode` code several inputs (ddpmcodec.batch): options, detection, the run and its summary."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from cli.common import check_creatable_folder, show_progress
from ddpmcodec.errors import InputError


def advance(bar):
    """progress(k, n) callback: the bar shows k of n."""
    def update(k: int, n: int) -> None:
        bar.total = n
        bar.update(k - bar.n)

    return update


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def ray_option(f):
    """--ray ADDRESS (None: run here); shared by the commands that can run as Ray tasks."""
    return click.option("--ray", metavar="ADDRESS", default=None,
                        help="Run on Ray: auto (a running cluster), local (start one here) or an address; "
                             'needs pip install "ddpmcodec[cluster]".')(f)


def batch_options(f):
    """--workers / --ray / --ray-batch: how encode and decode code several inputs."""
    f = click.option("--ray-batch", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Images per Ray task.")(f)
    f = ray_option(f)
    f = click.option("--workers", type=click.IntRange(min=1), default=_cores(),
                     help="Worker processes (one torch thread each) for several inputs [number of cores].")(f)
    return f


def is_batch(inputs, ray) -> bool:
    """Several inputs, a folder or a dataset, or --ray: batch coding into a folder. One file: today's command."""
    from ddpmcodec.cifar10_archive import is_cifar10_python, split_source

    if len(inputs) != 1 or ray is not None:
        return True
    path, split = split_source(inputs[0])
    return path.is_dir() or split is not None or path.suffix.lower() == ".npz" or is_cifar10_python(path)


def batch_output(output) -> Path:
    if not output:
        raise InputError("several inputs: -o/--output must name an output folder")
    out = Path(output)
    check_creatable_folder(out)
    return out


def run_batch(run, inputs, quiet: bool, *args, **kwargs) -> None:
    """Run encode_many / decode_many with one progress bar over images, print each failure as one
    'error: <input>: <reason>' line and the summary line; exit status 1 if any item failed."""
    from tqdm import tqdm

    with tqdm(total=None, desc=run.__name__.split("_")[0], unit="img", disable=not show_progress(quiet),
              leave=False, dynamic_ncols=True) as bar:
        summary = run(list(inputs), *args, progress=advance(bar), **kwargs)
    for source, reason in summary.failures:
        click.echo(f"error: {source}: {reason}", err=True)
    if not quiet:
        click.echo(f"{kwargs['out_dir']}: {summary.line()}", err=True)
    if summary.failed:
        sys.exit(1)
