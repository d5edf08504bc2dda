"""The `medhash` command: a click group whose subcommands live one module each.

Each module in COMMAND_MODULES exposes `commands`, a list of click commands.
Modules import torch/faiss inside the command bodies so `--help` and a job's first log line come fast.
The CLI only parses arguments and calls library functions.

Global options (-v, --log-level, --log-format) are accepted before the command and after it
(`medhash -v encode ...` and `medhash encode -v ...`): `add_global_options` gives every command its own
copies, which update the same settings. Every option can come from the environment
(`auto_envvar_prefix`: MEDHASH_<COMMAND>_<OPTION>).
"""

from __future__ import annotations

import importlib

import click

from medhash import __version__
from medhash.cli.options import ENV_EPILOG, ENV_PREFIX
from medhash.errors import one_line
from medhash.logs import LOG_FORMATS, LOG_LEVELS, setup_logging

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
LOG_LEVEL = "medhash.log_level"  # ctx.meta key: --log-level, if given
LOG_FORMAT = "medhash.log_format"  # ctx.meta key: --log-format, if given


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


def _apply_logging(ctx: click.Context) -> None:
    """Logging as the global options so far say: -v debug, -vv debug with every library's chatter."""
    verbose = ctx.meta.get(VERBOSITY, 0)
    level = ctx.meta.get(LOG_LEVEL) or ("debug" if verbose else "info")
    setup_logging(level, ctx.meta.get(LOG_FORMAT) or "text", chatty=verbose >= 2)


def _set_meta(key: str, add: bool = False):
    def callback(ctx: click.Context, _param, value):
        if add:
            ctx.meta[key] = ctx.meta.get(key, 0) + (value or 0)
        elif value is not None:
            ctx.meta[key] = value
        _apply_logging(ctx)

    return callback


def global_options() -> list[click.Option]:
    return [
        click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_set_meta(VERBOSITY, add=True),
                     help="More log output: -v debug, -vv also Dask's and uvicorn's own logs (and tracebacks)."),
        click.Option(["--log-level"], type=click.Choice(LOG_LEVELS), default=None, expose_value=False,
                     callback=_set_meta(LOG_LEVEL), help="Level of medhash's log lines on stderr [default: info]."),
        click.Option(["--log-format"], type=click.Choice(LOG_FORMATS), default=None, expose_value=False,
                     callback=_set_meta(LOG_FORMAT),
                     help="text: one readable line per record; json: one JSON object per line [default: text]."),
    ]


def add_global_options(command: click.Command, prefix: str = ENV_PREFIX) -> None:
    """Give a command (and every subcommand of a group) the global options, the environment epilog, and
    variables named after each option's flag: MEDHASH_<COMMAND>_<OPTION> (click's automatic names follow the
    Python parameter name, which differs from the flag for --index/index_dir and the like)."""
    command.params.extend(global_options())
    command.epilog = command.epilog or ENV_EPILOG
    prefix = f"{prefix}_{command.name.upper().replace('-', '_')}"
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar is None:
            flag = max(param.opts, key=len).lstrip("-")
            param.envvar = f"{prefix}_{flag.upper().replace('-', '_')}"
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_global_options(sub, prefix)


@click.group(cls=MedhashGroup, epilog=ENV_EPILOG,
             context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": ENV_PREFIX})
@click.version_option(__version__, prog_name="medhash")
def main() -> None:
    """medhash: chest X-ray retrieval by interpretable deep hashing."""
    _apply_logging(click.get_current_context())


main.params.extend(global_options())
for _name in COMMAND_MODULES:
    for _cmd in importlib.import_module(_name).commands:
        add_global_options(_cmd)
        main.add_command(_cmd)
