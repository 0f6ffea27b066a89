"""Import rules, checked on the source (tests/import_graph.py reads it with `ast`; nothing is imported):

* libvirt and libvirt_qemu are imported only under kvmkit/virt/ (the seam), kvmkit/lab/ and kvmkit/benchmarks/;
* product packages never import kvmkit.lab (the test bench) or kvmkit.benchmarks;
* kvmkit's modules import each other without cycles — not even through function-level or TYPE_CHECKING imports;
* `kvmkit` starts without loading libvirt (a `kvmkit plan` has no use for it).

The allowlists name today's exceptions, each with the reason; shrinking them is the integrator's job, growing them
needs a reason in the same shape.
"""

from __future__ import annotations

import subprocess
import sys

from tests.import_graph import cycles, graph

SEAMS = ("kvmkit.virt", "kvmkit.lab", "kvmkit.benchmarks")  # where libvirt may be imported (the bench drives the lab)
BENCH_PACKAGES = ("kvmkit.lab", "kvmkit.benchmarks")  # what product code must not import
NOT_PRODUCT = ("kvmkit.lab", "kvmkit.benchmarks", "kvmkit.cli", "kvmkit.__main__")  # may mount the above


def _cli_edge(module: str) -> bool:
    """`kvmkit.<capability>.cli`: the command-line edge of a capability, which mounts its `… bench` command."""
    return module.endswith(".cli")

# Every benchmark and load generator lives in kvmkit/benchmarks/ now; nothing is left to allow.
BENCHMARK_MODULES_IN_PRODUCT_PACKAGES: set[str] = set()

# Product modules (owned by other branches this session) that still call libvirt directly; each should go through
# kvmkit.virt: restore checks that no running domain uses a destination.
LIBVIRT_OUTSIDE_VIRT = {
    "kvmkit.backup.restore_targets",  # lists every defined domain's disks to refuse restoring onto one
}

# Product modules that import kvmkit.lab: none (a production host behaves the same with or without a lab).
LAB_IMPORTS_IN_PRODUCT: set[str] = set()


def _under(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_libvirt_is_imported_only_under_virt_and_lab():
    edges = graph()
    offenders = sorted({f"{imp.importer}:{imp.line} imports {imp.imported}" for mod, imps in edges.items()
                        for imp in imps if imp.imported.split(".")[0] in ("libvirt", "libvirt_qemu")
                        and not _under(mod, SEAMS) and mod not in BENCHMARK_MODULES_IN_PRODUCT_PACKAGES
                        and mod not in LIBVIRT_OUTSIDE_VIRT})
    assert offenders == [], "go through kvmkit.virt instead:\n" + "\n".join(offenders)


def test_product_packages_never_import_the_lab_or_benchmarks():
    edges = graph()
    allowed = BENCHMARK_MODULES_IN_PRODUCT_PACKAGES | LAB_IMPORTS_IN_PRODUCT
    offenders = sorted({f"{imp.importer}:{imp.line} imports {imp.imported}" for mod, imps in edges.items()
                        for imp in imps if _under(imp.imported, BENCH_PACKAGES)
                        and not _under(mod, NOT_PRODUCT) and not _cli_edge(mod) and mod not in allowed})
    assert offenders == [], "product code must not depend on the test bench:\n" + "\n".join(offenders)


def test_the_allowlists_hold_no_stale_entries():
    """An entry whose module is gone, or no longer breaks its rule, is deleted (the lists only shrink)."""
    edges = graph()
    for module in BENCHMARK_MODULES_IN_PRODUCT_PACKAGES | LIBVIRT_OUTSIDE_VIRT | LAB_IMPORTS_IN_PRODUCT:
        assert module in edges, f"{module} no longer exists: remove it from the allowlist"
    for module in LIBVIRT_OUTSIDE_VIRT:
        assert any(i.imported.split(".")[0] == "libvirt" for i in edges[module]), module
    for module in LAB_IMPORTS_IN_PRODUCT:
        assert any(_under(i.imported, BENCH_PACKAGES) for i in edges[module]), module


def test_no_import_cycles_even_through_deferred_or_type_only_imports():
    edges = graph()
    assert cycles(edges) == []
    assert cycles(edges, include_deferred=True, include_type_only=True) == []


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """The checker itself: two modules importing each other — one only for type hints — are a cycle."""
    import tests.import_graph as import_graph

    pkg = tmp_path / "kvmkit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from kvmkit import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kvmkit.a import x\n")
    monkeypatch.setattr(import_graph, "SRC", tmp_path)
    edges = import_graph.graph()
    assert cycles(edges) == []
    assert cycles(edges, include_deferred=True, include_type_only=True) == [["kvmkit.a", "kvmkit.b"]]


def test_the_cli_starts_without_loading_libvirt():
    code = "import sys, kvmkit.cli; sys.exit(1 if 'libvirt' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
