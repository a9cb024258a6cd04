"""The layers hold: the domain (``pamflow/`` outside its CLI) never imports Prefect or the
Prefect layer (``flows``, ``tasks``, ``blocks``), and its modules import each other without
a cycle at import time, so each family can be read, tested and changed on its own."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREFECT_LAYER = ("prefect", "flows", "tasks", "blocks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _domain_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / "pamflow").rglob("*.py"))
            if "migrations" not in p.parts and "cli" not in p.parts}


def _imports(path: Path, module: str, *, top_level_only: bool) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def test_the_domain_never_imports_the_prefect_layer():
    offenders = []
    for module, path in _domain_modules().items():
        for name in _imports(path, module, top_level_only=False):
            if name.split(".")[0] in PREFECT_LAYER:
                offenders.append(f"{module} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_domain_modules_import_each_other_without_a_cycle():
    modules = _domain_modules()
    graph = {m: {n for n in _imports(p, m, top_level_only=True) if n in modules and n != m}
             for m, p in modules.items()}
    # a package importing its own submodules (re-exports) is not a cycle of the design
    for m in graph:
        graph[m] = {n for n in graph[m] if not n.startswith(m + ".")}

    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checks_above_see_what_they_claim(tmp_path):
    """The import reader resolves relative imports and finds imports inside functions."""
    source = tmp_path / "mod.py"
    source.write_text("from ..x import y\n\ndef f():\n    import prefect\n")
    found = _imports(source, "pamflow.fam.mod", top_level_only=False)
    assert {"pamflow.x", "pamflow.x.y", "prefect"} <= found
    assert "prefect" not in _imports(source, "pamflow.fam.mod", top_level_only=True)
