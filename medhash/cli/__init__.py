"""The `medhash` command: a click group whose subcommands live one module each.

Each module in COMMAND_MODULES exposes `commands`, a list of click commands.
Modules import torch/faiss inside the command bodies so `--help` stays fast.
The CLI only parses arguments and calls library functions.
"""

from __future__ import annotations

import importlib
import logging

import click

from medhash import __version__

# One line per command module; add yours here (a registry, not an if-chain).
COMMAND_MODULES = [
    "medhash.cli.data_cmds",
    "medhash.cli.model_cmds",
    "medhash.cli.demo_cmds",
    "medhash.cli.pretrain_cmds",
    "medhash.cli.encode_cmds",
    "medhash.cli.index_cmds",
    "medhash.cli.query_cmds",
    "medhash.cli.serve_cmds",
    "medhash.cli.bench_cmds",
]


VERBOSITY = "medhash.verbose"  # ctx.meta key: how many -v were given


class MedhashGroup(click.Group):
    """Turns the errors user input can cause into one clean line and exit 1: medhash's own errors (which
    name the value or file and what is allowed) and the operating system's (a path that cannot be read or
    written, a full disk). -vv keeps the traceback. Anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context):
        from medhash.errors import MedhashError

        try:
            return super().invoke(ctx)
        except (MedhashError, OSError) as exc:
            if ctx.meta.get(VERBOSITY, 0) >= 2:
                raise
            raise click.ClickException(one_line(exc)) from exc


def one_line(exc: BaseException) -> str:
    """The error as one line: an OSError as "path: reason", anything else as its message."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


@click.group(cls=MedhashGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medhash")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """medhash: chest X-ray retrieval by interpretable deep hashing."""
    click.get_current_context().meta[VERBOSITY] = verbose
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


for _name in COMMAND_MODULES:
    for _cmd in importlib.import_module(_name).commands:
        main.add_command(_cmd)
