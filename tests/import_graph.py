"""kvmkit's import graph, read from the source with `ast` (nothing is imported): who imports what, where.

`python -m tests.import_graph` prints the import cycles among kvmkit's modules and every module that imports
libvirt, kvmkit.lab or kvmkit.benchmarks. tests/test_imports.py turns the same data into rules.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


@dataclass(frozen=True)
class Import:
    importer: str  # kvmkit.snapshot.engine
    imported: str  # kvmkit.snapshot.create, or libvirt
    line: int
    deferred: bool  # inside a function: runs only when called, so it cannot make an import-time cycle
    type_only: bool  # under `if TYPE_CHECKING:`: never runs


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, known: set[str]) -> list[Import]:
    importer = module_name(path)
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, deferred: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_deferred = deferred or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit_stmt(stmt, deferred, True)
                for stmt in child.orelse:
                    visit_stmt(stmt, deferred, type_only)
                continue
            visit_stmt(child, child_deferred, type_only, recurse=False)
            visit(child, child_deferred, type_only)

    def visit_stmt(stmt: ast.AST, deferred: bool, type_only: bool, recurse: bool = True) -> None:
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                found.append(Import(importer, alias.name, stmt.lineno, deferred, type_only))
        elif isinstance(stmt, ast.ImportFrom):
            base = _resolve(importer, is_package, stmt.level, stmt.module)
            for alias in stmt.names:
                full = f"{base}.{alias.name}"
                # `from kvmkit.snapshot import overlay` imports a module; `from x import name` imports x
                found.append(Import(importer, full if full in known else base, stmt.lineno, deferred, type_only))
        if recurse:
            visit(stmt, deferred, type_only)

    visit(ast.parse(path.read_text(), str(path)), False, False)
    return found


def graph(package: str = "kvmkit") -> dict[str, list[Import]]:
    files = sorted((SRC / package).rglob("*.py"))
    known = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, known) for f in files}


def cycles(edges: dict[str, list[Import]], *, include_deferred: bool = False,
           include_type_only: bool = False) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself), by Tarjan.
    By default only import-time edges count; include_deferred/include_type_only add function-level and
    TYPE_CHECKING imports, which hide a cycle from the interpreter but not from a reader."""
    adjacency = {m: sorted({i.imported for i in imps if i.imported in edges
                            and (include_type_only or not i.type_only)
                            and (include_deferred or not i.deferred)}) for m, imps in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strongconnect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in adjacency[node]:
            if nxt not in index:
                strongconnect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in adjacency[node]:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(adjacency):
        if node not in index:
            strongconnect(node)
    return sorted(found)


def main() -> int:
    edges = graph()
    for label, deferred, type_only in (("import-time", False, False), ("with function-level imports", True, False),
                                       ("with function-level and TYPE_CHECKING imports", True, True)):
        found = cycles(edges, include_deferred=deferred, include_type_only=type_only)
        print(f"cycles ({label}): {len(found)}")
        for cycle in found:
            print("  " + " <-> ".join(cycle))
    for what in ("libvirt", "libvirt_qemu", "kvmkit.lab", "kvmkit.benchmarks"):
        users = sorted({m for m, imps in edges.items() for i in imps
                        if i.imported == what or i.imported.startswith(what + ".")})
        print(f"importers of {what}: {', '.join(users) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
