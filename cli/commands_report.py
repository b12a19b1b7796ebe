"""`ddpmcodec report`: regenerate the evaluation report (same options as `python -m eval.report`)."""
from __future__ import annotations

import sys

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                 "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def report(args):
    """Ideal vs coded curves, classic codecs, lossless points and the 1.78/1.97 split as a markdown report with
    plots and CompressAI-style JSON (default: docs/report). Options: see `ddpmcodec report --help`."""
    from eval.report.main import main

    code = main(list(args), prog="ddpmcodec report")
    if code:
        sys.exit(code)


COMMANDS = [report]
