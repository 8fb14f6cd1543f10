"""`make package`: the plugin zip's layout, reproducible builds, and the zip installed into a fresh QGIS profile
running msfm algorithms through ``qgis_process`` on real rasters (the vendored engine, not the checkout's)."""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path, PurePosixPath
from types import ModuleType

import numpy as np
import pytest
import rasterio

from tests.conftest import BEN_S1, NAIP, REPO, shared_file

SCRIPT = REPO / "scripts" / "package_plugin.py"
D_DEMO = 192  # embedding width of the bundled smarties-demo-tiny
NEVER_SHIPPED = {"training", "tests", "bench", "__pycache__"}


def _version() -> str:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO / "metadata.txt", encoding="utf-8")
    return cfg["general"]["version"]


def build(out: Path) -> Path:
    """Run the packaging script as `make package` does; return the zip it reports."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.split()[0])
    assert path == out / f"msfm-{_version()}.zip" and path.is_file()
    assert f"{path.stat().st_size} bytes" in proc.stdout
    return path


def packager() -> ModuleType:
    spec = importlib.util.spec_from_file_location("package_plugin", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("dist"))


def test_zip_has_one_plugin_folder_with_code_engine_model_icons_metadata(plugin_zip: Path) -> None:
    with zipfile.ZipFile(plugin_zip) as zf:
        assert zf.testzip() is None
        names = set(zf.namelist())
        files = {n for n in names if not n.endswith("/")}
        metadata = zf.read("msfm/metadata.txt").decode("utf-8")
        init = zf.read("msfm/__init__.py").decode("utf-8")
        license_text = zf.read("msfm/LICENSE")
    assert {n.split("/")[0] for n in names} == {"msfm"}
    assert "def classFactory" in init

    def shipped(folder: str, pattern: str, prefix: str) -> set[str]:
        return {f"{prefix}{p.relative_to(REPO / folder).as_posix()}" for p in (REPO / folder).glob(pattern)
                if "__pycache__" not in p.parts}

    # the plugin code at the root, the engine vendored as msfm/engine with its data and the demo model, the icons
    assert shipped("qgis_plugin", "**/*.py", "msfm/") <= files
    assert shipped("engine", "**/*.py", "msfm/engine/") <= files
    assert {"msfm/engine/__init__.py", "msfm/engine/models/__init__.py", "msfm/engine/spectral/data/sensors.json",
            "msfm/engine/spectral/data/spectrum.json"} <= files
    assert shipped("engine", "data/*.json", "msfm/engine/") <= files
    demo = {f"msfm/engine/weights/smarties-demo-tiny{ext}" for ext in (".safetensors", ".json", ".md", ".loss.csv")}
    assert demo <= files
    icons = shipped("icons", "*.svg", "msfm/icons/")
    assert "msfm/icons/msfm.svg" in icons and icons <= files
    assert {"msfm/metadata.txt", "msfm/LICENSE"} <= files
    assert license_text == (REPO / "LICENSE").read_bytes()
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.optionxform = str
    cfg.read_string(metadata)
    assert cfg["general"]["hasProcessingProvider"] == "yes" and cfg["general"]["version"] == _version()
    assert f"msfm/{cfg['general']['icon']}" in files
    # nothing else: no training, tests, benchmarks, caches, bytecode, demo raster or checkout-only modules
    for name in names:
        parts = PurePosixPath(name).parts
        assert not NEVER_SHIPPED & set(parts), name
        assert not name.endswith((".pyc", ".pyo", ".tif")), name
        assert not any(p.startswith(".") for p in parts), name
    assert not {"msfm/qgis_plugin/", "msfm/engine/engine/"} & names


def test_shipped_code_never_imports_a_top_level_engine(plugin_zip: Path) -> None:
    """Only relative imports or runtime.engine (a top-level ``engine`` does not exist in QGIS's Python), and
    Qt only through ``qgis.PyQt``."""
    with zipfile.ZipFile(plugin_zip) as zf:
        sources = {n: zf.read(n).decode("utf-8") for n in zf.namelist() if n.endswith(".py")}
    assert len(sources) > 20
    check = packager().forbidden_imports
    assert {"engine", "PyQt5"} <= packager().FORBIDDEN_IMPORTS
    assert check("from PyQt5.QtCore import Qt\nimport engine.bands\n") and not check("from .engine import bands\n")
    bad = [hit for name, text in sorted(sources.items()) for hit in check(text, name)]
    assert not bad, bad
    # the plugin reaches the engine through runtime, which prefers the vendored subpackage
    runtime = sources["msfm/runtime.py"]
    assert "from . import engine" in runtime
    fallback = "try:\n    from . import engine\nexcept ImportError:\n    import engine\n"
    assert not check(fallback) and check("import engine\n")


def test_two_builds_are_byte_identical(tmp_path: Path) -> None:
    first = build(tmp_path / "first")  # back to back: the working tree may be edited while tests run
    again = build(tmp_path / "again")
    assert again.read_bytes() == first.read_bytes()
    with zipfile.ZipFile(again) as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}


def _fake_repo(root: Path, init: str = "def classFactory(iface):\n    return None\n",
               files: str = "qgis_plugin/__init__.py") -> Path:
    (root / "qgis_plugin").mkdir(parents=True)
    (root / "qgis_plugin" / "__init__.py").write_text(init)
    (root / "metadata.txt").write_text("[general]\nname=x\nversion=9.9\n")
    (root / "pb_tool.cfg").write_text(f"[plugin]\nname: x\n[files]\npython_files: {files}\nextras: metadata.txt\n")
    return root


def test_build_fails_loudly(tmp_path: Path) -> None:
    pkg = packager()
    ok = _fake_repo(tmp_path / "ok")
    assert pkg.build(tmp_path / "out", repo=ok).name == "x-9.9.zip"
    missing = _fake_repo(tmp_path / "missing", files="qgis_plugin/__init__.py qgis_plugin/gone.py")
    with pytest.raises(pkg.PackagingError, match="qgis_plugin/gone.py"):
        pkg.build(tmp_path / "out2", repo=missing)
    absolute = _fake_repo(tmp_path / "absolute", init="from engine import bands\n")
    with pytest.raises(pkg.PackagingError, match="x/__init__.py:1: engine"):
        pkg.build(tmp_path / "out3", repo=absolute)
    # a docstring showing the public API is not an import
    _fake_repo(tmp_path / "doc", init='"""Use it::\n\n    from engine import load_model\n"""\n')
    pkg.build(tmp_path / "out4", repo=tmp_path / "doc")
    assert not list((tmp_path / "out2").glob("*")) and not list((tmp_path / "out3").glob("*"))


def _qgis_process() -> Path:
    """``qgis_process.bin`` (Debian's ``qgis_process`` wrapper passes an option 3.22 rejects)."""
    wrapper = shutil.which("qgis_process")
    for candidate in ([Path(wrapper).with_name("qgis_process.bin")] if wrapper else []) + [
            Path("/usr/bin/qgis_process.bin")]:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("qgis_process.bin not found (Debian package `qgis`; `make setup` installs it)")


def _run(cmd: list, env: dict, cwd: Path, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    return proc, time.perf_counter() - start


def _json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):])


@pytest.mark.slow  # five qgis_process runs: ~15 s
@pytest.mark.qgis
def test_installed_zip_runs_in_qgis_process(plugin_zip: Path, tmp_path: Path) -> None:
    """Unzip into a plugins folder, fresh profile, enable, run msfm:embed and msfm:bandmapping headless."""
    qgis_process = _qgis_process()
    work = tmp_path / "work"  # cwd of every subprocess: no `engine`/`qgis_plugin` folder beside it
    work.mkdir()
    s1 = work / "s1.tif"  # copies: GDAL may write .aux.xml statistics beside its input
    naip = work / "naip.tif"
    shutil.copyfile(shared_file(*BEN_S1), s1)
    shutil.copyfile(shared_file(*NAIP), naip)
    plugins = tmp_path / "plugins"
    with zipfile.ZipFile(plugin_zip) as zf:
        zf.extractall(plugins)
    assert sorted(p.name for p in plugins.iterdir()) == ["msfm"]

    site_packages = Path(sysconfig.get_paths()["purelib"])  # torch, rasterio… of the venv, without its .pth files
    assert site_packages.is_dir() and site_packages != REPO
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k not in ("VIRTUAL_ENV",)}
    env.update(
        QT_QPA_PLATFORM="offscreen",
        QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"),
        QGIS_PLUGINPATH=str(plugins),
        PYTHONPATH=str(site_packages),
        PYTHONNOUSERSITE="1",
        PYTHONDONTWRITEBYTECODE="1",
        HF_HUB_OFFLINE="1",
        HF_HUB_CACHE=str(tmp_path / "hf-cache"),
    )
    # Precondition: QGIS's Python (Debian's) sees the venv's packages but no checkout `engine` or `qgis_plugin`, so
    # whatever runs below uses msfm/engine from the zip.
    system_python = os.path.realpath(sys.executable)
    probe, _ = _run([system_python, "-c", "import importlib.util as u; print([u.find_spec(m) is None for m in "
                     "('engine', 'qgis_plugin', 'training', 'torch', 'rasterio')])"], env, work)
    assert probe.stdout.strip() == "[True, True, True, False, False]", probe.stdout + probe.stderr

    enable, _ = _run([qgis_process, "plugins", "enable", "msfm"], env, work)
    assert enable.returncode == 0 and "Enabled msfm" in enable.stdout, enable.stdout + enable.stderr

    out = work / "emb.tif"
    embed, seconds = _run([qgis_process, "--json", "run", "msfm:embed", "--", f"INPUT={s1}",
                           "SENSOR=sentinel1_grd_db", "OVERLAP=0", f"OUTPUT={out}"], env, work)
    assert embed.returncode == 0, embed.stdout[-3000:] + embed.stderr[-3000:]
    print(f"qgis_process run msfm:embed: {seconds:.1f} s")
    result = _json(embed.stdout)["results"]
    assert result["OUTPUT"] == str(out) and result["EMBED_DIM"] == D_DEMO
    assert json.loads(result["BANDS"]) == ["microwave_1", "microwave_2"]
    with rasterio.open(s1) as src, rasterio.open(out) as emb:
        assert emb.count == D_DEMO and emb.crs == src.crs
        cell_x, cell_y = emb.res
        for side, cell in (("left", cell_x), ("right", cell_x), ("top", cell_y), ("bottom", cell_y)):
            assert abs(getattr(emb.bounds, side) - getattr(src.bounds, side)) <= cell, side
        assert np.isfinite(emb.read(1)).all()

    report, _ = _run([qgis_process, "--json", "run", "msfm:bandmapping", "--", f"INPUT={naip}"], env, work)
    message = report.stdout + report.stderr
    assert report.returncode != 0, message[-3000:]
    assert "band 1" in message and "could not be mapped" in message, message[-3000:]
    assert "naip_rgbn" in message and "Sensor preset" in message and "Band overrides" in message, message[-3000:]

    # a batch run: QGIS embeds Python, so the Dask workers must start from Python's interpreter, not qgis_process
    batch, seconds = _run([qgis_process, "--json", "run", "msfm:batch_embed", "--", f"INPUTS={s1}",
                           "SENSOR=sentinel1_grd_db", "OVERLAP=0", "WORKERS=1", f"OUTPUT={work / 'batch'}"], env, work)
    assert batch.returncode == 0, batch.stdout[-3000:] + batch.stderr[-3000:]
    print(f"qgis_process run msfm:batch_embed: {seconds:.1f} s")
    result = _json(batch.stdout)["results"]
    assert (result["DONE"], result["SKIPPED"], result["FAILED"]) == (1, 0, "{}")
    with rasterio.open(out) as single, rasterio.open(work / "batch" / "s1.tif") as cog:
        assert (cog.count, cog.transform, cog.shape) == (single.count, single.transform, single.shape)


def test_package_target_in_makefile() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "\npackage: setup\n\t$(PY) scripts/package_plugin.py" in makefile
    assert "make package" in makefile.split("\n\n")[0]
