"""The package's layout: layers, no import cycle, no script imported, modules of one concern.

``leukocyte_cnn`` is laid out by layer (``docs/architecture.md``): base < data < splits <
inputs < models < reporting < runs < service. A module imports only from its own layer or a
lower one, never a top-level script, and no two modules import each other, directly or through
others. Checked on the source with ``ast`` (every import, also those inside functions).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "leukocyte_cnn"
LAYERS = ("base", "data", "splits", "inputs", "models", "reporting", "runs", "service")
SCRIPTS = {p.stem for p in REPO.glob("*.py")}
MAX_LINES = 600  # "no module of the package is over ~600 lines"


def package_modules() -> dict[str, Path]:
    """``leukocyte_cnn.base.io`` -> its path, for every module of the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imports_of(path: Path, name: str) -> set[str]:
    """Every module named by an import statement of ``path`` (relative ones resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def internal_graph() -> dict[str, set[str]]:
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in imports_of(path, name) if m in modules and m != name}
    return graph


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_the_package_is_laid_out_by_layer():
    modules = package_modules()
    top = {name for name in modules if name.count(".") == 1}
    assert top == {f"leukocyte_cnn.{layer}" for layer in LAYERS}, (
        "modules directly under leukocyte_cnn/ (put them in a layer): "
        f"{sorted(top - {f'leukocyte_cnn.{layer}' for layer in LAYERS})}")


def test_no_module_imports_a_higher_layer():
    upward = []
    for module, targets in internal_graph().items():
        here = layer_of(module)
        for target in targets:
            there = layer_of(target)
            if here is not None and there is not None and there > here:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    graph = internal_graph()
    state: dict[str, int] = {}  # 1 on the path, 2 done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_cycle(tmp_path):
    """The check above must be able to fail: two modules that import each other."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from leukocyte_cnn.base import b_mod\n")
    b.write_text("import leukocyte_cnn.base.a_mod\n")
    assert "leukocyte_cnn.base.b_mod" in imports_of(a, "leukocyte_cnn.base.a_mod")
    assert "leukocyte_cnn.base.a_mod" in imports_of(b, "leukocyte_cnn.base.b_mod")


def test_no_package_module_imports_a_script():
    found = []
    for name, path in package_modules().items():
        for module in imports_of(path, name):
            if module.split(".")[0] in SCRIPTS:
                found.append(f"{name} imports {module}")
    assert not found, "\n".join(found)


def test_no_script_imports_another_script():
    found = []
    for path in sorted(REPO.glob("*.py")):
        for module in imports_of(path, path.stem):
            if module.split(".")[0] in SCRIPTS - {path.stem}:
                found.append(f"{path.name} imports {module}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")),
                         ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_modules_stay_small(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(REPO)}: {lines} lines; split it by concern"
