"""``embed`` inside QGIS (``qgis_process``) against the command line, same scene, model and precision, interleaved.

Run: ``.venv/bin/python bench/qgis_vs_cli.py [--rounds 3] [--precision auto] [--model smarties-demo-tiny]``. Prints a
markdown table and one JSON line.

The plugin is packaged as a user installs it (``scripts/package_plugin.py``), unzipped into a fresh plugins folder and
profile, enabled, and run with ``qgis_process.bin --json run msfm:embed`` on the demo Sentinel-2 scene; the command
line runs ``msfm embed`` with the same settings. Both report the engine's own ``embed_raster`` seconds (reading,
encoding, writing; not the interpreter's start-up), so the ratio is what QGIS costs a run: the host's BLAS
(docs/performance.md; ``bench/host_blas.py``), threads, the Processing wrapper. Rounds alternate CLI and QGIS.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCENE = REPO / "demo" / "s2_l1c_virginia_13band_10m.tif"


def qgis_process() -> Path:
    """``qgis_process.bin`` (Debian's ``qgis_process`` wrapper passes an option QGIS 3.22 rejects)."""
    for candidate in (Path(shutil.which("qgis_process") or "/usr/bin/qgis_process").with_name("qgis_process.bin"),
                      Path("/usr/bin/qgis_process.bin")):
        if candidate.is_file():
            return candidate
    sys.exit("qgis_process.bin not found (Debian package qgis; make setup installs it)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--model", default="smarties-demo-tiny")
    parser.add_argument("--overlap-px", type=int, default=112)
    args = parser.parse_args()

    from scripts.package_plugin import build

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        plugins = tmp_path / "plugins"
        with zipfile.ZipFile(build(tmp_path / "dist")) as zf:
            zf.extractall(plugins)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
        env.update(QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"),
                   QGIS_PLUGINPATH=str(plugins), PYTHONPATH=sysconfig.get_paths()["purelib"], PYTHONNOUSERSITE="1",
                   HF_HUB_OFFLINE="1")
        work = tmp_path / "work"
        work.mkdir()
        scene = Path(shutil.copy(SCENE, work))  # a copy: QGIS writes .aux.xml statistics beside its input
        subprocess.run([qgis_process(), "plugins", "enable", "msfm"], env=env, cwd=work, check=True,
                       capture_output=True)
        seconds: dict[str, list[float]] = {"msfm embed (CLI)": [], "qgis_process run msfm:embed": []}
        for r in range(args.rounds):
            cli = subprocess.run(
                [str(REPO / ".venv" / "bin" / "msfm"), "embed", str(scene), str(work / f"cli{r}.tif"),
                 "--model", args.model, "--precision", args.precision, "--overlap-px", str(args.overlap_px)],
                capture_output=True, text=True, check=True, cwd=work)
            found = re.search(r"in ([0-9.]+) s", cli.stdout + cli.stderr)
            if found is None:
                sys.exit(f"no timing in the CLI's output:\n{cli.stdout}\n{cli.stderr}")
            seconds["msfm embed (CLI)"].append(float(found.group(1)))
            run = subprocess.run(
                [qgis_process(), "--json", "run", "msfm:embed", "--", f"INPUT={scene}", f"MODEL={args.model}",
                 f"PRECISION={args.precision}", f"OVERLAP={args.overlap_px}", f"OUTPUT={work / f'qgis{r}.tif'}"],
                capture_output=True, text=True, env=env, cwd=work)
            if run.returncode:
                sys.exit(f"qgis_process failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
            results = json.loads(run.stdout[run.stdout.index("{"):])["results"]
            seconds["qgis_process run msfm:embed"].append(float(results["SECONDS"]))
    base = statistics.median(seconds["msfm embed (CLI)"])
    print(f"| embed, demo scene, {args.model}, precision {args.precision} | seconds (median; rounds) | × CLI |")
    print("|---|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {statistics.median(values):.2f} ({' / '.join(f'{v:.2f}' for v in values)}) | "
              f"{statistics.median(values) / base:.2f} |")
    print(json.dumps(seconds))


if __name__ == "__main__":
    main()
