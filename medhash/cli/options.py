"""Option parsing shared by the click commands."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import click

from medhash.encoding import ENGINES


def int_list(text: str) -> tuple[int, ...]:
    """"0,1, 2" -> (0, 1, 2); a part that is not an integer is a usage error naming the whole value."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


# The names of medhash.model.backbone.BACKBONES, listed here so `--help` does not import torch
# (tests/test_cli_errors.py checks that the lists agree). Engine names come from medhash.encoding.
BACKBONE_NAMES = ("densenet121", "tiny")
BITS_RANGE = (8, 256)  # medhash.model.config.ModelConfig: a multiple of 8 in this range


class HashBits(click.ParamType):
    """A hash length: a multiple of 8 in [8, 256] (what ModelConfig accepts), refused by click otherwise."""

    name = "bits"

    def convert(self, value, param, ctx) -> int:
        low, high = BITS_RANGE
        try:
            bits = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not an integer; bits takes a multiple of 8 in [{low}, {high}]", param, ctx)
        if bits % 8 or not low <= bits <= high:
            self.fail(f"{bits} is not a multiple of 8 in [{low}, {high}]", param, ctx)
        return bits


def engine_option(default: str = "auto") -> Callable:
    """`--engine`: auto or a name in the encoder's engine registry (medhash.encoding.ENGINES, torch-free)."""
    return click.option("--engine", default=default, show_default=True, type=click.Choice(["auto", *ENGINES]),
                        help="Encoder engine: auto (fastest torch precision of the device), fp32, fp32-cl, bf16 "
                             "(+channels_last), fp16 (CUDA), openvino-fp32 / openvino-bf16 (CPU; extra 'openvino').")
# ------------------------------------------------------------------------------------------ one vocabulary

ENV_PREFIX = "MEDHASH"
ENV_EPILOG = (f"Every option can also come from the environment: {ENV_PREFIX}_<COMMAND>_<OPTION>, upper case, "
              f"dashes as underscores (e.g. {ENV_PREFIX}_ENCODE_BATCH_SIZE=64, {ENV_PREFIX}_INDEX_BUILD_KIND=ivf); "
              "a flag takes 1/0. A command-line option wins over its variable.")


def deprecation_line(old: str, new: str) -> str:
    return f"warning: {old} is deprecated and will be removed in the next release; use {new}"


def rename_deprecated(args: list[str], renamed: dict[str, str]) -> list[str]:
    """Old option spellings -> new ones, each with a deprecation line on stderr.

    `renamed` maps "--old" to "--new"; a key "--old VALUE" renames only when a value follows (so
    `evaluate --json FILE`, the old report-file option, becomes `--json-out FILE` while `--json` alone
    is the new flag). Nothing after "--" is touched."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        name, eq, value = arg.partition("=")
        new = renamed.get(name)
        if new is None and f"{name} VALUE" in renamed:
            follows = eq or (i + 1 < len(args) and not args[i + 1].startswith("-"))
            new = renamed[f"{name} VALUE"] if follows else None
        if new is None:
            out.append(arg)
            continue
        click.echo(deprecation_line(name, new), err=True)
        out.append(f"{new}{eq}{value}")
    return out


class MedhashCommand(click.Command):
    """A command whose renamed options keep working under their old names for one release (hidden from
    --help, with a deprecation line), and whose help ends with how options come from the environment."""

    def __init__(self, *args, renamed: dict[str, str] | None = None, **kwargs):
        kwargs.setdefault("epilog", ENV_EPILOG)
        super().__init__(*args, **kwargs)
        self.renamed = renamed or {}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, rename_deprecated(list(args), self.renamed))


def cutoffs_option(default: str = "10,100"):
    """--cutoffs: the k of mAP@k, P@k, R@k (comma-separated and/or repeated), in evaluate and bench."""

    def parse(ctx, param, values) -> tuple[int, ...]:
        numbers = tuple(n for value in values for n in int_list(value))
        if not numbers or min(numbers) < 1:
            raise click.BadParameter(f"expected integers >= 1, got {','.join(values)!r}")
        return tuple(dict.fromkeys(numbers))

    return click.option("--cutoffs", multiple=True, default=(default,), show_default=True, callback=parse,
                        metavar="K[,K...]", help="Cut-offs k of mAP@k, P@k and R@k, comma-separated or repeated.")


def progress_option(what: str = "bars"):
    """--progress/--no-progress: progress bars on a terminal; elsewhere one log line per shard or epoch."""
    return click.option("--progress/--no-progress", default=True, show_default=True,
                        help=f"Progress {what} (drawn only when stderr is a terminal; a log gets one line per "
                             "shard or epoch instead).")


def json_option():
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the result as one JSON object on stdout (human text goes to stderr).")


def emit(as_json: bool, data: dict, text: str) -> None:
    """The command's result: one JSON object on stdout with --json (its human summary then on stderr),
    else the human summary on stdout."""
    import json

    if as_json:
        click.echo(text, err=True)
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        click.echo(text)


SECRET_ENV = "MEDHASH_PATIENT_KEY_SECRET"


def patient_secret(secret_file: Path | None) -> bytes | None:
    """The site secret for patient_key: the file's (medhash.data.keyed.read_secret_file), else the variable's."""
    from medhash.data.keyed import read_secret_file
    from medhash.errors import InvalidParameterError

    if secret_file is None:
        return os.environ.get(SECRET_ENV, "").encode() or None
    try:
        return read_secret_file(secret_file)
    except InvalidParameterError as exc:
        raise click.BadParameter(str(exc), param_hint="--patient-key-secret-file") from None
