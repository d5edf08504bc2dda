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


def engine_option(default: str = "auto") -> Callable:
    """`--engine`: auto or a name in the encoder's engine registry (medhash.encoding.ENGINES, torch-free)."""
    return click.option("--engine", default=default, show_default=True, type=click.Choice(["auto", *ENGINES]),
                        help="Encoder engine: auto (fastest torch precision of the device), fp32, fp32-cl, bf16 "
                             "(+channels_last), fp16 (CUDA), openvino-fp32 / openvino-bf16 (CPU; extra 'openvino').")
