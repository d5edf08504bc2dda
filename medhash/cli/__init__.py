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


class MedhashGroup(click.Group):
    """Turns medhash's own errors (which name the file and the problem) into one clean line and exit 1;
    -vv keeps the traceback."""

    def invoke(self, ctx: click.Context):
        from medhash.errors import MedhashError

        try:
            return super().invoke(ctx)
        except MedhashError as exc:
            if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
                raise
            raise click.ClickException(str(exc)) from exc


@click.group(cls=MedhashGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medhash")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """medhash: chest X-ray retrieval by interpretable deep hashing."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


for _name in COMMAND_MODULES:
    for _cmd in importlib.import_module(_name).commands:
        main.add_command(_cmd)
