"""The report's command line, defined once: ``python -m eval.report`` and ``ddpmcodec report`` are both built by
:func:`make_command` from :data:`OPTIONS` (click). Light to import (no torch): ``ddpmcodec --help`` stays fast.

Every error (a bad option, missing images, a failed run) is one line ``error: ...`` on stderr and exit status 1.
"""
from __future__ import annotations

import shlex
import sys
from types import SimpleNamespace

import click

from ddpmcodec.container.header import DEFAULTS

PROG = "python -m eval.report"
BITSBACK_JSON = "eval/out/bitsback/bitsback_bench.json"  # where eval.bitsback_bench writes its results
SUMMARY = ("Regenerate the codec report: ideal vs coded progressive curves, classic codecs, lossless points, the "
           "1.78/1.97 split.")
HELP = f"""{SUMMARY}

\b
    python -m eval.report                          # bundled model, dev images (defaults sized for a 2-core CPU)
    python -m eval.report --limit 8 --bound-limit 2 --out /tmp/report     # quick look
    python -m eval.report --limit 500 --bound-limit 500 --device cuda     # the full report (GPU)

`ddpmcodec report` takes the same options. Writes into --out (default docs/report): README.md, fig5.png, rd.png,
strip.png, results/*.json (CompressAI style, each with bpp, psnr-rgb and ms-ssim-rgb), lossless.json, summary.json.
Expensive parts (bound, codec runs, classic sweeps, strip) are cached under --cache (default eval/out/cache), keyed by
model identity, settings and the exact pixels, so a re-run only redraws. --ray runs the missing bound and codec chunks
as Ray tasks (one torch thread each: the numbers of a local run with --threads 1); a rerun computes only what is
still missing.
"""

_N = click.IntRange(min=0)
_P = click.IntRange(min=1)
# (param decls, click.option keyword arguments), in --help order
OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    (("--model",), dict(default="default", show_default=True, help="Weights spec for load_model (bundled model).")),
    (("--images",), dict(default=None, help="Folder or .npz of images (default: the 500 dev test images).")),
    (("--offset",), dict(type=_N, default=0, show_default=True, help="First image used.")),
    (("--limit",), dict(type=_N, default=100, show_default=True,
                        help="Images for the codec, classic codecs and lossless.")),
    (("--bound-limit",), dict(type=_N, default=16, show_default=True,
                              help="Images for the exact bound (ideal curve); 0 skips.")),
    (("--split-limit",), dict(type=_N, default=500, show_default=True,
                              help="Images for the Monte-Carlo rate/distortion split; 0 skips.")),
    (("--split-t-samples",), dict(type=_P, default=10, show_default=True,
                                  help="Importance-sampled t per image for the split.")),
    (("--strip-images",), dict(type=_N, default=4, show_default=True,
                               help="Images in the progressive strip; 0 skips.")),
    (("--strip-t",), dict(default="1000,600,400,250,150,100,60,30,15,4", show_default=True,
                          help="t values shown in the strip (nearest coded steps), comma-separated.")),
    (("--targets",), dict(default="0.25,0.5,1,2,4", show_default=True,
                          help="Target bpp of the per-target series (the file `encode --target-bpp` writes for each, "
                               "on the codec's images), comma-separated; empty skips.")),
    (("--steps",), dict(type=_P, default=DEFAULTS["n_steps"], show_default=True, help="Coded steps.")),
    (("--t-end",), dict(type=_P, default=None,
                        help="Last channel-simulated t [the t_end of the model's learned x_0 layer, else 10].")),
    (("--budget",), dict(type=_P, default=DEFAULTS["budget_bits"], show_default=True,
                         help="PFR chunk budget, bits.")),
    (("--margin",), dict(type=_N, default=DEFAULTS["margin_bits"], show_default=True,
                         help="PFR extra candidate bits.")),
    (("--prior",), dict(type=click.Choice(["calibrated", "fixedlarge"]), default="calibrated", show_default=True,
                        help="Prior variance of the codec.")),
    (("--seed",), dict(type=_N, default=DEFAULTS["seed"], show_default=True,
                       help="Codec seed (the bound uses --bound-seed).")),
    (("--bound-seed",), dict(type=_N, default=0, show_default=True, help="Noise seed of the bound.")),
    (("--bound-batch",), dict(type=_P, default=None, help="(image, t) pairs per call (default 64 CPU / 1024 CUDA).")),
    (("--no-classic",), dict(is_flag=True, help="Skip the classic-codec sweeps.")),
    (("--bitsback-json",), dict(default=BITSBACK_JSON, show_default=True,
                                help="Results of eval.bitsback_bench, if run.")),
    (("--device",), dict(default="auto", show_default=True, help="auto (CUDA when present), cpu or cuda[:N].")),
    (("--threads",), dict(type=_P, default=None, help="Torch CPU threads (default: torch's choice).")),
    (("--ray",), dict(default=None, metavar="ADDRESS",
                      help="Compute the uncached bound, ideal MS-SSIM and codec chunks as Ray tasks: auto, local or "
                           'an address (pip install "ddpmcodec[cluster]").')),
    (("--out",), dict(default="docs/report", show_default=True, help="Output folder.")),
    (("--cache",), dict(default="eval/out/cache", show_default=True, help="Cache folder.")),
    (("--no-cache",), dict(is_flag=True, help="Recompute everything (results still written to the cache).")),
    (("--no-literature",), dict(is_flag=True, help="Leave published reference points off the plot.")),
    (("-q", "--quiet"), dict(is_flag=True, help="No progress bars or log lines.")),
]


class OneLineCommand(click.Command):
    """A click command whose usage errors are one line ``error: ...`` and exit status 1 (not click's usage block
    and status 2), also when it runs as a subcommand of the ``ddpmcodec`` group."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            click.echo(f"error: {exc.format_message()} (see --help)", err=True)
            raise click.exceptions.Exit(1) from None


def command_line(params: dict, prog: str = PROG) -> str:
    """The canonical command line that reproduces ``params`` (only options that differ from their defaults)."""
    parts = [prog]
    for decls, kw in OPTIONS:
        name = decls[-1]
        key = name.lstrip("-").replace("-", "_")
        value = params.get(key, kw.get("default"))
        if kw.get("is_flag"):
            if value:
                parts.append(name)
        elif value != kw.get("default") and value is not None:
            parts += [name, shlex.quote(str(value))]
    return " ".join(parts)


def _run(params: dict) -> int:
    from ddpmcodec.errors import CodecError

    try:
        from eval.report.main import run

        run(SimpleNamespace(**params), command_line(params))
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        raise click.exceptions.Exit(130) from None
    except CodecError as exc:
        click.echo(f"error: {exc}", err=True)
        raise click.exceptions.Exit(1) from None
    except Exception as exc:  # noqa: BLE001  one line for every failure, as the other commands
        msg = " ".join(str(exc).split()) or "no message"
        click.echo(f"error: {type(exc).__name__}: {msg}", err=True)
        raise click.exceptions.Exit(1) from None
    return 0


def make_command(name: str = "report", short_help: str | None = None) -> click.Command:
    """A fresh click command with :data:`OPTIONS` that runs the report."""

    def callback(**params):
        return _run(params)

    params = [click.Option(list(decls), **kw) for decls, kw in OPTIONS]
    return OneLineCommand(name=name, callback=callback, params=params, help=HELP,
                          short_help=short_help or "Regenerate the evaluation report (curves, baselines, lossless).",
                          context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 118})


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Run the report command on ``argv`` (default: sys.argv[1:]); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    code = make_command().main(args=argv, prog_name=prog, standalone_mode=False)
    return int(code or 0)
