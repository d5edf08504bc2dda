"""Option parsing shared by the click commands."""

from __future__ import annotations

import click


def int_list(text: str) -> tuple[int, ...]:
    """"0,1, 2" -> (0, 1, 2); a part that is not an integer is a usage error naming the whole value."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None
