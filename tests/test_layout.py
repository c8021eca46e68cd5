"""The package's layout: imports go one way (ARCHITECTURE.md), the run folder needs no models."""

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "roa_jax"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{roa_jax module: the roa_jax modules it imports, anywhere in it (functions included)}.

    `from package import name` is an import of the module `package.name` where that is one,
    else of `package`. A submodule's implicit import of its package is not an edge: Python
    initialises the package first, whatever the package's __init__ imports.
    """
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                # `from . import x` (level 1) is from `package`, level 2 from its parent, ...
                parts = package.split(".")[: len(package.split(".")) + 1 - node.level]
                source = (
                    ".".join(parts + [node.module or ""]).rstrip(".") if node.level else node.module
                )
                for alias in node.names:
                    module = f"{source}.{alias.name}"
                    edges.add(module if module in files else source)
        graph[name] = {m for m in edges if m in files and m != name}
    return graph


def test_the_import_graph_sees_function_level_and_package_imports():
    graph = import_graph()
    assert "roa_jax.distributed" in graph["roa_jax.figures"]  # inside a function
    assert "roa_jax.data.paths" in graph["roa_jax.data.omniglot"]  # from roa_jax.data import paths
    assert "roa_jax.data.episodes" in graph["roa_jax.data"]
    assert "roa_jax.batching" in graph["roa_jax"]


def test_no_module_imports_one_that_imports_it_back():
    try:
        order = list(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as error:
        raise AssertionError(f"an import cycle: {' -> '.join(error.args[1])}") from None
    assert len(order) > 20


def test_the_run_folder_imports_no_model_code():
    code = (
        "import sys, roa_jax.rundir; "
        "print(sorted(m for m in ('roa_jax.models', 'roa_jax.evaluation', 'roa_jax.maml', "
        "'roa_jax.train', 'flax') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PACKAGE.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"
