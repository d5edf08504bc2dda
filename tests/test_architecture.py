"""The layering, checked from the source: index and eval stay free of torch and the model; no import cycles.

The import graph is read with `ast` from every module under medhash/ (nothing is imported), so a
violation is reported with the chain of modules that causes it. Edges: `import a.b.c` and
`from a.b import c` (c a module or a name), at module level or inside functions, relative imports
resolved; importing medhash.x.y also runs medhash/__init__ and medhash/x/__init__, so those are
edges too. Imports under `if TYPE_CHECKING:` never run and are left out.

Cycles count module-level and function-level imports alike. A module's edges to its own enclosing
packages are left out of cycle detection: a package is always initialised before its submodules, so
`medhash/x/__init__` importing medhash.x.y, which imports medhash.x, is not a cycle. The package's
edges to its submodules are kept, so a cycle that enters a package through its __init__
(medhash.a.m -> medhash.b -> medhash.b.n -> medhash.a.m) is still found.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medhash"
TORCH_FREE = ("medhash.index", "medhash.eval")
FORBIDDEN_LAYER = "medhash.model"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module):
    """(import node, at module level) for every import that can run."""
    def walk(node: ast.AST, top: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for orelse in child.orelse:
                    yield from walk_one(orelse, top)
                continue
            yield from walk_one(child, top)

    def walk_one(node: ast.AST, top: bool):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, top
        inner = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from walk(node, inner)

    yield from walk(tree, True)


class ImportGraph:
    """medhash module -> {imported medhash module: at module level}, and the external top-level names."""

    def __init__(self, sources: dict[str, Path]):
        self.modules = set(sources)
        self.edges: dict[str, dict[str, bool]] = {}
        self.external: dict[str, dict[str, bool]] = {}
        for name, path in sources.items():
            self.edges[name], self.external[name] = {}, {}
            is_package = path.name == "__init__.py"
            for node, top in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                for target in self._targets(name, is_package, node):
                    table = self.edges[name] if within(target, "medhash") else self.external[name]
                    key = target if within(target, "medhash") else target.split(".")[0]
                    if within(target, "medhash") and target not in self.modules:
                        continue
                    table[key] = table.get(key, False) or top

    def _targets(self, name: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            found = [base] + [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in self.modules]
        out = []
        for target in found:
            out += [a for a in ancestors(target) if within(a, "medhash")] + [target]
        return out

    def reach(self, start: str) -> dict[str, str]:
        """Every module reachable from `start` through module-level imports -> the module it was reached
        from, breadth first (insertion order is shortest chain first)."""
        seen, queue = {start: ""}, deque([start])
        while queue:
            here = queue.popleft()
            for target, top in self.edges.get(here, {}).items():
                if top and target not in seen:
                    seen[target] = here
                    queue.append(target)
        return seen

    @staticmethod
    def chain(came_from: dict[str, str], end: str) -> str:
        path = [end]
        while came_from[path[-1]]:
            path.append(came_from[path[-1]])
        return " -> ".join(reversed(path))

    def cycles(self) -> list[list[str]]:
        """Strongly connected components of more than one module (Tarjan), over all edges but those
        from a module to its own enclosing packages."""
        graph = {m: [t for t in targets if t != m and t not in ancestors(m)] for m, targets in self.edges.items()}
        index, low, on_stack, stack, found = {}, {}, set(), [], []
        counter = [0]

        def visit(node: str) -> None:  # recursion depth is bounded by the number of modules (~100)
            index[node] = low[node] = counter[0]
            counter[0] += 1
            stack.append(node)
            on_stack.add(node)
            for nxt in graph.get(node, []):
                if nxt not in index:
                    visit(nxt)
                    low[node] = min(low[node], low[nxt])
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

        for node in sorted(graph):
            if node not in index:
                visit(node)
        return found


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return ImportGraph(modules())


@pytest.mark.timeout(60)
class TestArchitecture:
    def test_the_graph_sees_every_kind_of_import(self, graph):
        # guards the checks below against passing because edges went unseen
        assert graph.edges["medhash.app.query"]["medhash.index"]  # from-import of a package, module level
        assert graph.edges["medhash.serve.service"]["medhash.app"]  # the package runs before medhash.app.query
        assert "medhash.app.demo" in graph.edges["medhash.cli.demo_cmds"]  # function level
        assert graph.external["medhash.model.encoder"]["torch"]

    def test_index_and_eval_import_neither_torch_nor_the_model(self, graph):
        problems = []
        for name in sorted(graph.modules):
            if not any(within(name, layer) for layer in TORCH_FREE):
                continue
            if "torch" in graph.external[name]:
                problems.append(f"{name} imports torch")
            problems += [f"{name} imports {t}" for t in graph.edges[name] if within(t, FORBIDDEN_LAYER)]
            came_from = graph.reach(name)
            offenders = [m for m in came_from if m != name and (
                within(m, FORBIDDEN_LAYER) or graph.external[m].get("torch"))]
            if offenders:  # the shortest chain is enough to see what to cut
                problems.append(f"{name} reaches torch or the model through module-level imports: "
                                f"{graph.chain(came_from, offenders[0])}")
        assert not problems, "\n".join(problems)

    def test_no_import_cycles(self, graph):
        cycles = graph.cycles()
        assert not cycles, "import cycles among medhash modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)

    def test_importing_index_and_eval_leaves_torch_unloaded(self):
        code = "import sys, medhash, medhash.index, medhash.eval; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('medhash.model')))"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=50)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "[]", f"loaded by `import medhash.index, medhash.eval`: {result.stdout}"
