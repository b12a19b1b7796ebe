"""`ddpmcodec` command-line entry point: a click group that gathers the subcommands in cli/."""
from __future__ import annotations

import os
import sys

import click

# Idle OpenMP threads sleep instead of spinning: on a machine busy with other work, spinning threads made a
# 5-second encode take minutes. Set before torch loads; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class _OneLineErrors(click.Group):
    """Turn the library's expected failures into one-line messages and exit code 1 (no tracebacks)."""

    def invoke(self, ctx):
        from ddpmcodec.errors import CodecError

        try:
            return super().invoke(ctx)
        except CodecError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except OSError as exc:  # a file-system failure the commands' own checks could not foresee (disk full...)
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {where}{exc.strerror or exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ddpmcodec")
def main():
    """Progressive lossy-to-lossless image codec built on a DDPM diffusion model."""


def _register() -> None:
    from cli import commands_bitsback, commands_codec, commands_model, commands_report

    for module in (commands_codec, commands_model, commands_bitsback, commands_report):
        for cmd in getattr(module, "COMMANDS", []):
            main.add_command(cmd)


_register()

if __name__ == "__main__":
    main()
