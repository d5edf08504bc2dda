"""Option parsing shared by the click commands."""

from __future__ import annotations

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
