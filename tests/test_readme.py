"""The README's architecture table matches the tree: every module listed once, nothing listed that is gone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "medhash"


def _table_modules() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Architecture"):text.index("## Benchmarks")]
    names = []
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.extend(re.findall(r"`([^`]+)`", first_cell))
    return names


def _tree_modules() -> set[str]:
    """Every module but package faces (`__init__.py`, optional rows) and `__main__.py`."""
    return {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")
            if path.name not in ("__init__.py", "__main__.py")}


@pytest.mark.timeout(30)
class TestReadmeArchitecture:
    def test_every_module_is_listed_once(self):
        listed = _table_modules()
        assert len(listed) == len(set(listed)), "a module is listed twice"
        missing = sorted(_tree_modules() - set(listed))
        assert not missing, f"modules missing from the README architecture table: {missing}"

    def test_every_listed_module_exists(self):
        gone = [name for name in _table_modules() if not (PACKAGE / name).exists()]
        assert not gone, f"README architecture table lists modules that are not in the tree: {gone}"
