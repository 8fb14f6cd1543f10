#!/usr/bin/env python3
"""Build the installable QGIS plugin zip: ``dist/msfm-<version>.zip`` (what ``make package`` runs).

    .venv/bin/python scripts/package_plugin.py [--out dist/]

What ships is listed in ``pb_tool.cfg`` (its ``[files]`` section, the single list); the version comes from
``metadata.txt``. The zip holds one folder, the plugin (``msfm/``): the contents of ``qgis_plugin/`` at its root,
the engine vendored as the subpackage ``msfm/engine/`` (with its data files and the bundled demo model), the icons,
``metadata.txt`` and ``LICENSE``. The build is deterministic — entries sorted, fixed timestamps and permissions,
fixed compression level — so two builds of the same tree are byte-identical. It fails (exit 1, with the reason) when
a listed path is missing, when two files would land on the same path, or when a shipped Python file imports a
top-level ``engine`` or ``training`` (the plugin reaches its engine through ``runtime.engine``: the vendored
``from . import engine``, with ``import engine`` only as its ``except ImportError`` fallback for a development
checkout) or a Qt binding directly (``PyQt5``/``PyQt6``: Qt goes through ``qgis.PyQt``, so the
plugin runs on Qt5 and Qt6 builds of QGIS). Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterable

REPO = Path(__file__).resolve().parents[1]
#: Source folder whose contents go to the root of the plugin folder.
PLUGIN_SOURCE = "qgis_plugin"
#: Folder names never shipped, wherever they are.
EXCLUDED_DIRS = frozenset({"__pycache__", "tests", "training", "bench"})
EXCLUDED_SUFFIXES = frozenset({".pyc", ".pyo", ".orig", ".rej", ".swp", ".bak"})
#: Top-level modules shipped Python code must not import absolutely: ours would not exist in QGIS's Python, and Qt
#: bindings are reached through ``qgis.PyQt`` (Qt5 and Qt6 builds of QGIS).
FORBIDDEN_IMPORTS = frozenset({"engine", "training", "qgis_plugin", "PyQt5", "PyQt6"})
#: Timestamp of every entry (the earliest a zip can hold), so that builds are reproducible.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
COMPRESS_LEVEL = 9
_UNIX = 3  # ZipInfo.create_system: Unix, so that external_attr carries permissions


class PackagingError(Exception):
    """The plugin cannot be packaged as listed (the message says what to fix)."""


def _read_config(path: Path) -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.optionxform = str  # keys are case-sensitive (qgisMinimumVersion)
    if not cfg.read(path, encoding="utf-8"):
        raise PackagingError(f"{path} is missing")
    return cfg


def _words(section: configparser.SectionProxy, key: str) -> list[str]:
    return section.get(key, "").split()


def read_manifest(repo: Path = REPO) -> tuple[str, list[str], list[str]]:
    """``(plugin folder name, files, folders)`` listed in ``pb_tool.cfg``, as paths relative to ``repo``."""
    cfg = _read_config(repo / "pb_tool.cfg")
    try:
        name = cfg["plugin"]["name"].strip()
        files_section = cfg["files"]
    except KeyError as exc:
        raise PackagingError(f"pb_tool.cfg lacks {exc}") from exc
    if not name:
        raise PackagingError("pb_tool.cfg: [plugin] name is empty")
    for key in ("main_dialog", "compiled_ui_files", "resource_files", "locales"):
        if _words(files_section, key):
            raise PackagingError(f"pb_tool.cfg: {key} is not supported by this packager (nothing is compiled)")
    files = _words(files_section, "python_files") + _words(files_section, "extras")
    folders = _words(files_section, "extra_dirs")
    return name, files, folders


def plugin_version(repo: Path = REPO) -> str:
    """``version`` of ``metadata.txt``."""
    version = _read_config(repo / "metadata.txt").get("general", "version", fallback="").strip()
    if not version:
        raise PackagingError("metadata.txt has no [general] version")
    return version


def archive_name(relative: str) -> str:
    """Path inside the plugin folder of a repository path (``qgis_plugin/x.py`` → ``x.py``)."""
    parts = PurePosixPath(relative).parts
    if parts and parts[0] == PLUGIN_SOURCE:
        parts = parts[1:]
    return str(PurePosixPath(*parts)) if parts else ""


def _shipped(path: Path) -> bool:
    return not path.name.startswith(".") and not path.name.endswith("~") and path.suffix not in EXCLUDED_SUFFIXES


def collect(repo: Path = REPO) -> tuple[str, dict[str, Path]]:
    """The plugin folder name and ``{path inside the zip: source file}`` of everything that ships."""
    name, files, folders = read_manifest(repo)
    sources: list[tuple[str, Path]] = []
    for rel in files:
        path = repo / rel
        if not path.is_file():
            raise PackagingError(f"pb_tool.cfg lists {rel}, which is not a file in {repo}")
        sources.append((rel, path))
    for rel in folders:
        top = repo / rel
        if not top.is_dir():
            raise PackagingError(f"pb_tool.cfg lists the folder {rel}, which is not a folder in {repo}")
        for folder, subdirs, filenames in os.walk(top):
            subdirs[:] = sorted(d for d in subdirs if d not in EXCLUDED_DIRS and not d.startswith("."))
            for filename in sorted(filenames):
                path = Path(folder) / filename
                if _shipped(path):
                    sources.append((path.relative_to(repo).as_posix(), path))
    entries: dict[str, Path] = {}
    for rel, path in sources:
        arc = archive_name(rel)
        if not arc or any(part in EXCLUDED_DIRS for part in PurePosixPath(arc).parts[:-1]):
            raise PackagingError(f"{rel} would ship as {arc or 'the plugin folder itself'!r}, which is not allowed")
        full = f"{name}/{arc}"
        if full in entries and entries[full].resolve() != path.resolve():
            raise PackagingError(f"{entries[full]} and {path} would both ship as {full}")
        entries[full] = path
    for required in ("__init__.py", "metadata.txt"):
        if f"{name}/{required}" not in entries:
            raise PackagingError(f"the plugin folder would have no {required} (list it in pb_tool.cfg)")
    return name, entries


def forbidden_imports(source: str, filename: str = "<source>") -> list[str]:
    """``"file:line: import engine"`` for each absolute import of a :data:`FORBIDDEN_IMPORTS` module in ``source``.

    Parsed with ``ast``, so docstrings and comments that show ``from engine import …`` do not count. String
    arguments of ``importlib.import_module`` are checked too. An ``import engine`` in the ``except ImportError``
    handler of a ``try: from . import engine`` is the development-checkout fallback and is allowed: in the installed
    plugin the vendored ``from . import engine`` succeeds.
    """
    tree = ast.parse(source, filename)
    fallbacks = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) and _vendors_engine(t)
                 for h in t.handlers for n in ast.walk(h) if isinstance(n, ast.Import)}
    found = []
    for node in ast.walk(tree):
        if id(node) in fallbacks:
            continue
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and not node.args[0].value.startswith(".")):
            modules = [node.args[0].value]
        found += [f"{filename}:{node.lineno}: {m}" for m in modules if m.split(".")[0] in FORBIDDEN_IMPORTS]
    return found


def _vendors_engine(node: ast.Try) -> bool:
    """``try: from . import engine`` (the vendored engine of the installed plugin)."""
    return any(isinstance(n, ast.ImportFrom) and n.level == 1 and [a.name for a in n.names] == ["engine"]
               for n in node.body)


def _check_imports(entries: dict[str, Path]) -> None:
    problems = []
    for arc, path in entries.items():
        if arc.endswith(".py"):
            problems += forbidden_imports(path.read_text(encoding="utf-8"), arc)
    if problems:
        raise PackagingError(
            "shipped code imports modules that do not exist in the installed plugin (use relative imports or "
            "runtime.engine):\n  " + "\n  ".join(problems)
        )


def _directories(names: Iterable[str]) -> set[str]:
    dirs = set()
    for name in names:
        parent = PurePosixPath(name).parent
        while str(parent) != ".":
            dirs.add(f"{parent}/")
            parent = parent.parent
    return dirs


def _info(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, ZIP_DATE)
    info.create_system = _UNIX
    info.external_attr = mode << 16
    if name.endswith("/"):
        info.external_attr |= 0x10  # MS-DOS directory flag
        info.compress_type = zipfile.ZIP_STORED
    else:
        info.compress_type = zipfile.ZIP_DEFLATED
    return info


def build(out_dir: Path, repo: Path = REPO) -> Path:
    """Write ``<out_dir>/<name>-<version>.zip`` (atomically: a failed build leaves no zip) and return its path."""
    name, entries = collect(repo)
    _check_imports(entries)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}-{plugin_version(repo)}.zip"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w") as zf:
            for arc in sorted(_directories(entries) | set(entries)):
                if arc.endswith("/"):
                    zf.writestr(_info(arc, 0o40755), b"")
                else:
                    zf.writestr(_info(arc, 0o100644), entries[arc].read_bytes(), compresslevel=COMPRESS_LEVEL)
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="output folder (default: dist/)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        path = build(args.out)
    except PackagingError as exc:
        print(f"package_plugin: error: {exc}", file=sys.stderr)
        return 1
    size = path.stat().st_size
    with zipfile.ZipFile(path) as zf:
        count = sum(1 for i in zf.infolist() if not i.is_dir())
    print(f"{path} ({size / 1e6:.2f} MB, {size} bytes, {count} files, {time.perf_counter() - start:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
