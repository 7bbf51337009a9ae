"""The code's layout holds: folders are stages, imports run one way, every package installs.

Read from the source files (ast), so an import inside a function or under TYPE_CHECKING
counts as much as one at the top: a circle of either kind makes the code harder to follow,
and a lazy import only hides it.
"""

from __future__ import annotations

import ast
import tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Import name of each top-level code folder (config/ and models/ install under other names).
PACKAGES = {
    "common": "common",
    "dicom_node": "dicom_node",
    "inference": "inference",
    "reporting": "reporting",
    "config": "myonode_config",
    "models": "myonode_models",
}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project."""
    found = {}
    for folder, name in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [name, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(path: Path, module: str, known: set[str], is_package: bool) -> set[str]:
    """Project modules that ``module`` imports (``from a import b`` counts b when b is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if is_package else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: _imports(path, name, known, path.name == "__init__.py")
        for name, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _package_of(module: str, packages: set[str]) -> str:
    return module if module in packages else module.rpartition(".")[0]


def _package_graph(graph: dict[str, set[str]], depth: int | None) -> dict[str, set[str]]:
    """Imports between packages (cut to ``depth`` dotted parts when given), self-edges dropped."""
    modules = _modules()
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}

    def cut(module: str) -> str:
        package = _package_of(module, packages)
        return ".".join(package.split(".")[:depth]) if depth else package

    edges: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph.items():
        for target in targets:
            a, b = cut(source), cut(target)
            # A package's own __init__ importing its children is containment, not a circle.
            if a != b and not b.startswith(a + ".") and not a.startswith(b + "."):
                edges[a].add(b)
    return edges


def test_no_two_modules_import_each_other_in_a_circle() -> None:
    assert _cycles(_graph()) == []


def test_no_circle_between_packages_or_subpackages() -> None:
    graph = _graph()
    assert _cycles(_package_graph(graph, depth=None)) == []
    assert _cycles(_package_graph(graph, depth=1)) == []


def test_the_graph_sees_imports_inside_functions() -> None:
    """The checks above would pass vacuously if lazy imports were missed."""
    graph = _graph()
    assert "dicom_node.process" in graph["dicom_node.cli"]  # imported inside a function
    assert "common.study" in graph["reporting.seg"]


def test_reporting_and_inference_never_import_the_node() -> None:
    for module, targets in _graph().items():
        if module.startswith(("reporting", "inference", "common")):
            assert not [t for t in targets if t.startswith("dicom_node")], module
        if module.startswith(("inference", "common")):
            assert not [t for t in targets if t.startswith("reporting")], module
        if module.startswith("common"):
            assert not [t for t in targets if t.startswith("inference")], module


def test_dicom_node_holds_only_stage_folders_cli_and_process() -> None:
    loose = sorted(p.name for p in (ROOT / "dicom_node").glob("*.py"))
    assert loose == ["__init__.py", "cli.py", "process.py"]


def test_every_module_says_why_it_exists() -> None:
    missing = [
        name
        for name, path in _modules().items()
        if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert missing == []


def test_every_package_is_installed() -> None:
    """A package missing from pyproject.toml works in the source tree and fails once installed."""
    with open(ROOT / "pyproject.toml", "rb") as handle:
        listed = set(tomllib.load(handle)["tool"]["setuptools"]["packages"])
    on_disk = {name for name, path in _modules().items() if path.name == "__init__.py"}
    assert listed == on_disk
