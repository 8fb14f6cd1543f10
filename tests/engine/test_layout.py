"""The house rules of the code base, checked on every run (docs/architecture.md, "Rules the tests keep").

- No import cycle between modules of ``engine``, ``training`` or ``qgis_plugin`` (every import counts, function-local
  ones included; ``if TYPE_CHECKING:`` blocks do not).
- ``engine`` never imports QGIS or ``training``; it imports its own modules relatively, so the plugin can vendor it.
- Outside the engine (the plugin, ``training``, ``bench``, ``scripts``) code imports only names the engine exports
  publicly: ``from engine import X`` / ``from engine.<subpackage> import X`` with X in that ``__all__``; never an
  engine module by string (``importlib.import_module("engine…")``), never a ``_private`` name of another package.
- Function-local imports inside the engine are of heavy or optional packages only (torch, onnx, onnxruntime,
  safetensors, huggingface_hub, scikit-learn, GDAL's osgeo, rasterio; Dask (dask, distributed), psutil and pystac of batch
  runs) — they keep torch-free and rasterio-free paths
  free of them — or of an engine module with a one-line reason on the line.
- Every ``__all__`` of the engine is sorted and names only what its module defines or imports.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "training", "qgis_plugin")
CONSUMERS = ("qgis_plugin", "training", "bench", "scripts")
#: Third-party packages the engine may import inside a function (heavy or optional: see the module docstring).
LOCAL_IMPORT_OK = frozenset({"torch", "onnx", "onnxruntime", "safetensors", "huggingface_hub", "sklearn", "osgeo",
                             "rasterio", "scipy", "threadpoolctl", "dask", "distributed", "psutil", "pystac"})


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files(*roots: str) -> list[Path]:
    return sorted(p for root in roots for p in (REPO / root).rglob("*.py"))


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST) -> Iterator[tuple[ast.AST, bool]]:
    """Every import node outside ``if TYPE_CHECKING:`` blocks, with whether it sits inside a function."""

    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.AST, bool]]:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            yield from walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    yield from walk(tree, False)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import names (relative imports resolved against ``module``)."""
    if node.level == 0:
        return node.module or ""
    is_package = (REPO / module.replace(".", "/") / "__init__.py").is_file()
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _exists(module: str) -> bool:
    path = REPO / module.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _defines(module: str, name: str) -> bool:
    """Whether ``module``'s source mentions ``name`` (``from pkg import engine`` of a package without it: no edge)."""
    path = REPO / module.replace(".", "/")
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return path.is_file() and name in path.read_text(encoding="utf-8")


def _graph() -> dict[str, set[str]]:
    """Module → the modules of our packages it imports (a ``from pkg import name`` of a submodule counts it)."""
    graph: dict[str, set[str]] = {}
    for path in _files(*PACKAGES):
        module = _module_name(path)
        edges = graph.setdefault(module, set())
        for node, _ in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:  # ``from pkg import sub`` depends on the submodule; ``from pkg import name`` on the package
                base = _resolve(module, node)
                targets = [f"{base}.{a.name}" if _exists(f"{base}.{a.name}") else base for a in node.names
                           if _exists(f"{base}.{a.name}") or _defines(base, a.name)]
            for target in targets:
                if target.split(".")[0] in PACKAGES and _exists(target) and target != module:
                    edges.add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> Optional[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> Optional[list[str]]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle() -> None:
    graph = _graph()
    assert len(graph) > 80 and graph["engine.maps.embeddings"]  # the graph sees the tree
    assert _cycle(graph) is None, " → ".join(_cycle(graph) or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_engine_imports_neither_qgis_nor_training_and_only_itself_relatively() -> None:
    bad = []
    for path in _files("engine"):
        for node, _ in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            absolute = isinstance(node, ast.Import) or node.level == 0
            for name in names:
                top = name.split(".")[0]
                if top in ("qgis", "training", "qgis_plugin", "PyQt5", "PyQt6") or (absolute and top == "engine"):
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    assert not bad, bad


def _public(module: str) -> set[str]:
    return set(getattr(importlib.import_module(module), "__all__", ()))


def _engine_packages() -> set[str]:
    """The engine's public namespaces: ``engine``, its subpackages and the shared modules ``engine`` exports."""
    subpackages = {f"engine.{p.parent.name}" for p in (REPO / "engine").glob("*/__init__.py")}
    shared = {f"engine.{n}" for n in _public("engine") if (REPO / "engine" / f"{n}.py").is_file()}
    return {"engine"} | subpackages | shared


def test_consumers_import_only_public_engine_names_and_no_private_names() -> None:
    packages, bad = _engine_packages(), []
    for path in _files(*CONSUMERS):
        module = _module_name(path)
        for node, _ in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("engine.") and alias.name not in packages:
                        bad.append(f"{where}: import {alias.name} (an engine module; import its package)")
                continue
            target = _resolve(module, node)
            top = target.split(".")[0]
            for alias in node.names:
                if top == "engine":
                    if target not in packages:
                        bad.append(f"{where}: from {target} (a module; import from its package)")
                    elif alias.name != "*" and alias.name not in _public(target):
                        bad.append(f"{where}: {alias.name} is not in {target}.__all__")
                elif alias.name.startswith("_") and top != module.split(".")[0] and top in PACKAGES + CONSUMERS:
                    bad.append(f"{where}: private {target}.{alias.name}")
    assert not bad, "\n".join(bad)


def test_no_private_name_crosses_a_package_inside_the_engine() -> None:
    bad = []
    for path in _files("engine"):
        module = _module_name(path)
        package = ".".join(module.split(".")[:2])
        for node, _ in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, node)
                if ".".join(target.split(".")[:2]) != package:
                    bad += [f"{path.relative_to(REPO)}:{node.lineno}: {target}.{a.name}" for a in node.names
                            if a.name.startswith("_") and a.name != "__version__"]
    assert not bad, bad


def test_nothing_imports_engine_modules_by_string() -> None:
    bad = []
    for path in _files(*CONSUMERS, "engine"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in ("import_module",
                                                                                        "engine_module"):
                first = node.args[0] if node.args else None
                text = first.value if isinstance(first, ast.Constant) else ast.unparse(first) if first else ""
                in_engine = path.is_relative_to(REPO / "engine")
                if "engine" in str(text) or (not in_engine and "engine" in ast.unparse(node)):
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, bad


def test_function_local_imports_in_the_engine_have_a_reason() -> None:
    bad = []
    for path in _files("engine"):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node, in_function in _imports(ast.parse("\n".join(lines))):
            if not in_function:
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            relative = isinstance(node, ast.ImportFrom) and node.level > 0
            line, above = lines[node.lineno - 1], lines[node.lineno - 2].strip()
            for name in names:
                if relative or name.split(".")[0] == "engine":
                    if "#" not in line and not above.startswith("#"):
                        bad.append(f"{path.relative_to(REPO)}:{node.lineno}: local import of .{name} without a reason")
                elif name.split(".")[0] not in LOCAL_IMPORT_OK:
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno}: local import of {name} (import it at the top)")
    assert not bad, "\n".join(bad)


def test_every_engine_all_is_sorted_and_resolves() -> None:
    for package in sorted(_engine_packages()):
        module = importlib.import_module(package)
        names = list(module.__all__)
        assert names == sorted(names), package
        for name in names:
            assert getattr(module, name) is not None, f"{package}.{name}"


@pytest.mark.parametrize("code, expected", [
    # the band registry and the ONNX runners never import torch; nothing imports QGIS or training
    ("import engine.spectral as s; s.resolve_bands; s.list_sensors(); print('torch' in sys.modules)", "False"),
    ("import engine.models as m, engine.segmentation as g, engine.maps, engine.export, engine.cli; m.OnnxEncoder; "
     "g.OnnxSegmenter; print('torch' in sys.modules)", "False"),
    ("import engine; engine.spectral, engine.raster, engine.models, engine.maps, engine.segmentation, engine.cli; "
     "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('qgis', 'training', 'PyQt5'))))", ""),
])
def test_import_boundaries_in_a_fresh_interpreter(code: str, expected: str) -> None:
    out = subprocess.run([sys.executable, "-c", "import sys\n" + code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == expected
