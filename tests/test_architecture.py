"""The package's layering: no import cycle between its files, none between its top-level files
and folders (an import that ran back up to a higher floor would make one), and MLflow's code
(pep.tracking) apart from the engine, which only hands it what to record."""

from __future__ import annotations

from pathlib import Path

import import_graph

PACKAGE = Path(__file__).resolve().parents[1] / "pep"


def _describe(found: list[list[str]]) -> str:
    return "; ".join(" -> ".join(cycle) for cycle in found)


def test_no_file_imports_itself_back():
    found = import_graph.cycles(import_graph.imports(PACKAGE))
    assert not found, f"import cycles: {_describe(found)}"


def test_the_top_level_files_and_folders_stand_on_floors():
    graph = import_graph.units(import_graph.imports(PACKAGE))
    found = import_graph.cycles(graph)
    assert not found, f"imports running back up a floor: {_describe(found)}"
    floor = import_graph.floors(graph)
    # what the command line stands on: everything; what stands on nothing: errors
    assert floor["pep.cli"] == max(floor.values()) and floor["pep.errors"] == 0


def test_tracking_and_the_engine_do_not_import_each_other():
    graph = import_graph.imports(PACKAGE)
    crossing = sorted(f"{source} -> {target}" for source, targets in graph.items() for target in targets
                      if {import_graph.unit_of(source), import_graph.unit_of(target)} == {"pep.engine", "pep.tracking"})
    assert not crossing, crossing
    assert {"pep.tracking.runs", "pep.tracking.model", "pep.tracking.store"} <= graph.keys()


def test_the_check_finds_a_lazy_cycle_and_an_import_back_up(tmp_path):
    """A package built by hand: low.a imports high.b inside a function, high.b imports low.a."""
    root = tmp_path / "pkg"
    (root / "low").mkdir(parents=True)
    (root / "high").mkdir()
    (root / "__init__.py").write_text("")
    (root / "low" / "__init__.py").write_text("")
    (root / "high" / "__init__.py").write_text("")
    (root / "low" / "a.py").write_text("def f():\n    from pkg.high import b\n    return b\n")
    (root / "high" / "b.py").write_text("from ..low.a import f\n")
    (root / "high" / "c.py").write_text("import pkg.low.a.f\nfrom pkg import low\n")
    (root / "top.py").write_text("from pkg.high import b, c\n")
    graph = import_graph.imports(root)
    assert graph["pkg.low.a"] == {"pkg.high.b"} and graph["pkg.high.b"] == {"pkg.low.a"}
    assert graph["pkg.high.c"] == {"pkg.low.a", "pkg.low"} and graph["pkg.top"] == {"pkg.high.b", "pkg.high.c"}
    assert import_graph.cycles(graph) == [["pkg.high.b", "pkg.low.a", "pkg.high.b"]]
    assert import_graph.cycles(import_graph.units(graph)) == [["pkg.high", "pkg.low", "pkg.high"]]
    (root / "low" / "a.py").write_text("def f():\n    return 1\n")  # the cycle broken
    graph = import_graph.imports(root)
    assert import_graph.cycles(graph) == [] and import_graph.cycles(import_graph.units(graph)) == []
    assert import_graph.floors(import_graph.units(graph)) == {"pkg.low": 0, "pkg.high": 1, "pkg.top": 2,
                                                              "pkg": 0}
