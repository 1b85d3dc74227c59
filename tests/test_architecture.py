"""The package's shape (ARCHITECTURE.md), checked on its source: imports point one way, with no
cycle even through imports inside functions; one place iterates an epoch's batches; no module
reaches into another's private names. The floors themselves are import-linter's contract in
pyproject.toml (`lint-imports`, run by .ci/run); these checks need nothing but the source."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dtrain"

# Imports of dtrain modules inside functions, each for a reason that is not a cycle:
LAZY_ALLOWED = {
    # `dtrain --help` starts without Dask, NumPy or the training modules (tests/test_cli.py checks it)
    "dtrain.cli",
    # the Dask and NCCL backends import distributed and CuPy: `import dtrain.comm` imports neither
    "dtrain.comm",
    # the NCCL id is made only where the ranks have GPUs (CuPy)
    "dtrain.cluster.launch",
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _resolve(module: str, path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The dtrain modules an import statement loads (a name imported from a package counts as
    its submodule when there is one)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "dtrain"]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    if node.level:
        base = package
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
    if base.split(".")[0] != "dtrain":
        return []
    targets = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        targets.append(sub if sub in MODULES else base)
    return targets


def _imports() -> dict[str, list[tuple[str, bool, int]]]:
    """module -> [(imported dtrain module, inside a function?, line)]."""
    graph: dict[str, list[tuple[str, bool, int]]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = []

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    edges.extend((target, in_function, child.lineno) for target in _resolve(module, path, child))  # noqa: B023
                inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                visit(child, inner)

        visit(tree, False)
        graph[module] = [(t, lazy, line) for t, lazy, line in edges if t != module and t in MODULES]
    return graph


GRAPH = _imports()


def test_no_import_cycle_counting_imports_inside_functions():
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []
    cycles = []

    def walk(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target, _, _ in GRAPH[module]:
            if target == "dtrain" or module == "dtrain":
                continue  # the package's own __init__ re-exports everything; nothing imports it back
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                walk(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            walk(module)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_nothing_imports_the_package_root_back():
    """`from dtrain import x` inside dtrain would make the package's __init__ part of a cycle."""
    offenders = [(m, line) for m, edges in GRAPH.items() for t, _, line in edges if t == "dtrain" and m != "dtrain"]
    assert offenders == []


def test_dtrain_modules_are_imported_inside_functions_only_where_said_why():
    lazy = sorted({m for m, edges in GRAPH.items() for _, inside, _ in edges if inside} - LAZY_ALLOWED)
    assert lazy == [], (
        f"function-level imports of dtrain modules in {lazy}: import at the top, or say why in LAZY_ALLOWED"
    )


def test_one_place_iterates_an_epochs_batches():
    users = sorted(m for m, path in MODULES.items() if "EpochSampler" in path.read_text() and m != "dtrain.sampling")
    assert users == ["dtrain.training.loop"]
    loop = MODULES["dtrain.training.loop"].read_text()
    assert loop.count("sampler.epoch(") == 1


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and _resolve(module, path, node):
                offenders += [
                    f"{module}: {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and alias.name != "__version__"
                ]
    assert offenders == []
