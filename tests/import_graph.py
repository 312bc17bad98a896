"""The import graph of a package, read from its source (every import statement, those inside
functions too: a lazy import is still a dependency), and the cycles in it.

Used by tests/test_architecture.py; a plain module so that its own test can build a small
package with known cycles and check what it finds.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for the package at `root` (its folder)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (`from pkg import name` counts as
    importing pkg.name where that is a module, else pkg)."""
    modules = module_files(root)
    top = root.name
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                           for alias in node.names]
            else:
                continue
            for target in targets:
                if target == top or target.startswith(top + "."):
                    while target not in modules:  # `import pep.a.b.name`: the module it names
                        target = target.rpartition(".")[0]
                    if target != name:
                        graph[name].add(target)
    return graph


def unit_of(module: str, depth: int = 2) -> str:
    """The top-level part of the package a module belongs to: pep.engine.train -> pep.engine."""
    return ".".join(module.split(".")[:depth])


def units(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between the package's top-level files and folders."""
    condensed: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph.items():
        condensed[unit_of(source)]
        for target in targets:
            if unit_of(target) != unit_of(source):
                condensed[unit_of(source)].add(unit_of(target))
    return dict(condensed)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected part with more
    than one node; empty when the graph is acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    parts: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            part = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                part.append(member)
                if member == node:
                    break
            if len(part) > 1:
                parts.append(part)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_path_through(graph, set(part)) for part in parts]


def _path_through(graph: dict[str, set[str]], part: set[str]) -> list[str]:
    """A shortest cycle from the part's first node back to itself, inside the part."""
    start = min(part)
    previous = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph.get(node, ()) & part):
                if target == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]  # path runs node ... start
                if target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {sorted(part)}")


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each node's floor in an acyclic graph: 0 for what imports nothing, else one above the
    highest floor it imports."""
    floor: dict[str, int] = {}

    def of(node: str) -> int:
        if node not in floor:
            floor[node] = 1 + max((of(target) for target in graph.get(node, ())), default=-1)
        return floor[node]

    for node in graph:
        of(node)
    return floor
